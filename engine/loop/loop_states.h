/* loop_states.h — the states of a prompt's improvement loop, the events that
 * move it, and the one table of which event moves which state where. Names
 * (the strings) exist only at the store and API boundary. */
#ifndef RATCHET_LOOP_STATES_H
#define RATCHET_LOOP_STATES_H

#include <stdbool.h>

typedef enum {
    LOOP_IDLE,
    LOOP_OPTIMIZING,        /* a cycle: failures read, the optimizer asked */
    LOOP_GATING,            /* its candidates in a gate run */
    LOOP_AWAITING_APPROVAL, /* the gate's winner waits for a human */
    LOOP_CANARY,            /* a canary watched by the rollout policy */
    LOOP_STATES
} loop_state;

typedef enum {
    LOOP_EV_TRIGGER,        /* the trigger policy, or a person, starts a cycle */
    LOOP_EV_NO_CANDIDATE,   /* the optimizer gave no valid candidate */
    LOOP_EV_ABORT,          /* the cycle cannot go on (an error, nothing to learn, a restart mid-cycle) */
    LOOP_EV_GATE_STARTED,   /* the candidates' gate run started */
    LOOP_EV_GATE_NONE,      /* the gate showed no candidate improved */
    LOOP_EV_GATE_HOLD,      /* the winner waits for a human (require_approval, pinned, held) */
    LOOP_EV_GATE_CANARY,    /* the winner becomes the canary */
    LOOP_EV_CANARY_FAILED,  /* the canary could not start */
    LOOP_EV_APPROVE,        /* a human approved the winner: its canary starts */
    LOOP_EV_REJECT,         /* a human rejected the winner */
    LOOP_EV_ADOPT,          /* a canary started by hand is watched */
    LOOP_EV_ADVANCE,        /* the canary's share grows */
    LOOP_EV_PROMOTE,        /* the canary becomes production */
    LOOP_EV_ROLLBACK,       /* the canary is rolled back */
    LOOP_EV_MANUAL,         /* a person moved the canary outside the loop */
    LOOP_EVENTS
} loop_event;

/* One row of the table. */
typedef struct {
    loop_state from;
    loop_event event;
    loop_state to;
    const char *action;     /* what the loop does on the way, in words */
} loop_transition;

/* The whole table, n rows. */
const loop_transition *loop_transitions(int *n);
/* Where event moves a prompt in state from: true and *to, or false when the
 * table has no such row (a forbidden move: the caller must not make it). */
bool loop_next(loop_state from, loop_event event, loop_state *to);

const char *loop_state_name(loop_state s);
const char *loop_event_name(loop_event e);
/* The state a stored name stands for; false for a name no state has. */
bool loop_state_parse(const char *name, loop_state *out);

#endif
