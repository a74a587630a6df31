/* test_loop_states.c — every move of the loop's state machine, allowed and
 * forbidden, against the moves docs/loop.md draws (written out here, apart
 * from the table in loop/loop_states.c, so the two are checked against each
 * other). */
#include "check.h"
#include "loop/loop_states.h"

#include <stdio.h>
#include <string.h>

/* The picture of docs/loop.md, one line per arrow. */
static const struct {
    const char *from, *event, *to;
} drawn[] = {
    {"idle", "trigger", "optimizing"},
    {"idle", "adopt", "canary"},
    {"optimizing", "no_candidate", "idle"},
    {"optimizing", "abort", "idle"},
    {"optimizing", "gate_started", "gating"},
    {"gating", "abort", "idle"},
    {"gating", "gate_none", "idle"},
    {"gating", "gate_hold", "awaiting_approval"},
    {"gating", "gate_canary", "canary"},
    {"gating", "canary_failed", "idle"},
    {"awaiting_approval", "approve", "canary"},
    {"awaiting_approval", "reject", "idle"},
    {"awaiting_approval", "canary_failed", "idle"},
    {"canary", "advance", "canary"},
    {"canary", "promote", "idle"},
    {"canary", "rollback", "idle"},
    {"canary", "manual", "idle"},
};

static const char *drawn_to(const char *from, const char *event)
{
    for (size_t i = 0; i < sizeof drawn / sizeof drawn[0]; i++)
        if (!strcmp(drawn[i].from, from) && !strcmp(drawn[i].event, event))
            return drawn[i].to;
    return NULL;
}

int main(void)
{
    int allowed = 0, forbidden = 0, wrong = 0;
    for (int s = 0; s < LOOP_STATES; s++)
        for (int e = 0; e < LOOP_EVENTS; e++) {
            loop_state to = LOOP_STATES;
            bool ok = loop_next((loop_state)s, (loop_event)e, &to);
            const char *want = drawn_to(loop_state_name((loop_state)s), loop_event_name((loop_event)e));
            if (want) {
                allowed++;
                if (!ok || strcmp(loop_state_name(to), want)) {
                    wrong++;
                    printf("# %s --%s--> %s expected, got %s\n", loop_state_name((loop_state)s),
                           loop_event_name((loop_event)e), want, ok ? loop_state_name(to) : "refused");
                }
            } else {
                forbidden++;
                if (ok) {
                    wrong++;
                    printf("# %s --%s--> refused expected, got %s\n", loop_state_name((loop_state)s),
                           loop_event_name((loop_event)e), loop_state_name(to));
                }
            }
        }
    CHECK(wrong == 0);
    CHECK(allowed == (int)(sizeof drawn / sizeof drawn[0])); /* every drawn arrow is a state and event pair */
    CHECK(allowed + forbidden == LOOP_STATES * LOOP_EVENTS);
    int n;
    loop_transitions(&n);
    CHECK(n == allowed); /* the table has no row the picture lacks */
    /* names cross the store and the API both ways */
    for (int s = 0; s < LOOP_STATES; s++) {
        loop_state back;
        CHECK(loop_state_parse(loop_state_name((loop_state)s), &back) && back == (loop_state)s);
    }
    loop_state x;
    CHECK(!loop_state_parse("paused", &x));
    CHECK(!loop_state_parse(NULL, &x));
    CHECK_STR(loop_state_name((loop_state)99), "unknown");
    return check_done();
}
