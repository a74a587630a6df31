/* loop_states.c — the loop's state machine as one table (see loop_states.h
 * and docs/loop.md's picture). */
#include "loop/loop_states.h"

#include <stddef.h>
#include <string.h>

static const char *const state_names[LOOP_STATES] = {"idle", "optimizing", "gating", "awaiting_approval", "canary"};

static const char *const event_names[LOOP_EVENTS] = {
    "trigger", "no_candidate", "abort", "gate_started", "gate_none", "gate_hold", "gate_canary", "canary_failed",
    "approve", "reject",  "adopt",        "advance", "promote",      "rollback",  "manual",
};

static const loop_transition table[] = {
    {LOOP_IDLE, LOOP_EV_TRIGGER, LOOP_OPTIMIZING, "read the window's failures, mine them, ask the optimizer"},
    {LOOP_IDLE, LOOP_EV_ADOPT, LOOP_CANARY, "watch a canary started by hand with the rollout policy"},
    {LOOP_OPTIMIZING, LOOP_EV_NO_CANDIDATE, LOOP_IDLE, "record the candidates refused before the gate"},
    {LOOP_OPTIMIZING, LOOP_EV_ABORT, LOOP_IDLE, "reject the cycle's candidates"},
    {LOOP_OPTIMIZING, LOOP_EV_GATE_STARTED, LOOP_GATING, "move the candidates to testing"},
    {LOOP_GATING, LOOP_EV_ABORT, LOOP_IDLE, "reject the cycle's candidates (the run is gone)"},
    {LOOP_GATING, LOOP_EV_GATE_NONE, LOOP_IDLE, "record the verdicts; nothing moves on"},
    {LOOP_GATING, LOOP_EV_GATE_HOLD, LOOP_AWAITING_APPROVAL, "approve the winner, wait for ratchet approve"},
    {LOOP_GATING, LOOP_EV_GATE_CANARY, LOOP_CANARY, "start the winner as the canary at the first step"},
    {LOOP_GATING, LOOP_EV_CANARY_FAILED, LOOP_IDLE, "record why the canary could not start"},
    {LOOP_AWAITING_APPROVAL, LOOP_EV_APPROVE, LOOP_CANARY, "start the approved winner as the canary"},
    {LOOP_AWAITING_APPROVAL, LOOP_EV_REJECT, LOOP_IDLE, "reject the winner"},
    {LOOP_AWAITING_APPROVAL, LOOP_EV_CANARY_FAILED, LOOP_IDLE, "record why the canary could not start"},
    {LOOP_CANARY, LOOP_EV_ADVANCE, LOOP_CANARY, "grow the canary's share to the next step"},
    {LOOP_CANARY, LOOP_EV_PROMOTE, LOOP_IDLE, "make the canary production, retire the old one"},
    {LOOP_CANARY, LOOP_EV_ROLLBACK, LOOP_IDLE, "roll the canary back, production untouched"},
    {LOOP_CANARY, LOOP_EV_MANUAL, LOOP_IDLE, "stand down: a person moved the canary"},
};

const loop_transition *loop_transitions(int *n)
{
    *n = (int)(sizeof table / sizeof table[0]);
    return table;
}

bool loop_next(loop_state from, loop_event event, loop_state *to)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].from == from && table[i].event == event) {
            *to = table[i].to;
            return true;
        }
    return false;
}

const char *loop_state_name(loop_state s)
{
    return s >= 0 && s < LOOP_STATES ? state_names[s] : "unknown";
}

const char *loop_event_name(loop_event e)
{
    return e >= 0 && e < LOOP_EVENTS ? event_names[e] : "unknown";
}

bool loop_state_parse(const char *name, loop_state *out)
{
    for (int i = 0; name && i < LOOP_STATES; i++)
        if (!strcmp(state_names[i], name)) {
            *out = (loop_state)i;
            return true;
        }
    return false;
}
