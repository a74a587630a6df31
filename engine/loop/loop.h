/* loop.h — the self-improvement loop: a durable state machine per prompt
 * that has a `loop` table in the config (docs/loop.md).
 *
 *   idle --trigger--> optimizing --candidates--> gating --accept--> canary --> idle
 *                          |                        |   \--(approval)--> awaiting_approval --> canary
 *                          \--nothing valid--> idle \--nothing accepted--> idle
 *
 * The core does the mechanism (reads, LLM calls, runs, registry moves, the
 * state row and an event per step, all committed together); the judgment
 * is Lua: policies/trigger.lua, policies/mining.lua, the meta-prompt
 * templates in scripts/metaprompts/, policies/accept.lua (through the
 * gate run) and policies/rollout.lua. After a crash, a prompt resumes where
 * its state row says: an optimization in flight is aborted (its candidates
 * rejected), a gate run resumes or its stored verdict is applied, a canary
 * keeps being watched. One state row per prompt: never two cycles, runs
 * or canaries at once. */
#ifndef RATCHET_LOOP_H
#define RATCHET_LOOP_H

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "script/catalog.h"
#include "conf/config.h"
#include "llm/llm.h"
#include "loop/registry.h"
#include "loop/runner.h"
#include "store/store.h"

typedef struct optloop optloop;

optloop *loop_new(uv_loop_t *uvl, store *st, registry *reg, runner *rn, catalog *cat, script_vm *vm, llm *l,
               const config *cfg);
/* Takes each prompt's loop settings (at start and on reload). */
void loop_configure(optloop *lp, const config *cfg);
/* Reads the state rows (at start, before serving). */
int loop_load(optloop *lp, char *err, size_t errlen);
/* Takes the states of store_load_loop_states (read on a pool thread) as the loop's own: at a
 * takeover, the last leader's decisions. */
void loop_apply_states(optloop *lp, json_t *rows);
/* Starts the checks and recovers what a stop interrupted (after runs resumed). */
void loop_start(optloop *lp);
/* Notes n traces of prompt were ingested: a burst brings its check forward. */
void loop_note_traces(optloop *lp, const char *prompt, size_t n);

typedef void (*loop_done)(json_t *view, const reg_error *e, void *ud);
/* Starts an optimization cycle (manual). 0 and done runs with the prompt's
 * view, now or once a routine step of the idle loop in flight has ended (it
 * may then run with an error instead); or an HTTP status with e. tpl (or
 * NULL: loop.template) is the meta-prompt template of this cycle; one that
 * is not loaded is refused (400 unknown_template). */
int loop_optimize(optloop *lp, const char *prompt, const char *actor, const char *tpl, loop_done done, void *ud,
                  reg_error *e);
/* A human's answer to a gate run waiting for approval: approve starts its
 * canary, otherwise the version is rejected. done runs after the commit. */
int loop_approve(optloop *lp, const char *run_id, bool approve, const char *reason, const char *actor, loop_done done,
                 void *ud, reg_error *e);

/* {prompts: {name: {state, ...}}, counters} and one prompt's view. */
json_t *loop_status_json(optloop *lp);
/* Each prompt's state and canary step, and the loop's counters, for /metrics. */
void loop_metrics(optloop *lp, buf_t *b);
/* "; NAME STATE[ SHARE%]" for each prompt whose loop is not idle (STATUS=). */
void loop_summary(optloop *lp, buf_t *b);
json_t *loop_prompt_json(optloop *lp, const char *prompt);
/* The same once every move of the prompt submitted so far is committed, so
 * that its state agrees with its stored events (cb may run now; view is NULL
 * for a prompt the loop does not know). */
typedef void (*loop_view_cb)(json_t *view, void *ud);
void loop_prompt_view(optloop *lp, const char *prompt, loop_view_cb cb, void *ud);
/* Stops checking; cb runs once no step of the loop is in flight. */
void loop_drain(optloop *lp, void (*cb)(void *), void *arg);
void loop_free(optloop *lp);

#endif
