/* runner.h — regression runs: a prompt's baseline and candidate versions run
 * on a set of cases (a dataset version and the failed traces of a window), k
 * samples each, concurrently through the LLM client and within a budget;
 * every output is judged by the prompt's evaluators and stored; the accept
 * policy (policies/accept.lua) gives each candidate its verdict.
 *
 * Outputs are cached by the SHA-256 of (rendered messages, model parameters,
 * sample index), so an unchanged baseline is never paid for twice. A run's
 * cases are stored with the run before it starts, and results stream to the
 * store as they come, so a run survives a restart: it resumes where its
 * stored results end. Memory is O(concurrency) plus a few bytes per case. */
#ifndef RATCHET_RUNNER_H
#define RATCHET_RUNNER_H

#include <jansson.h>
#include <uv.h>

#include "script/catalog.h"
#include "conf/config.h"
#include "llm/llm.h"
#include "loop/registry.h"
#include "store/store.h"

typedef struct runner runner;

runner *runner_new(uv_loop_t *loop, store *st, registry *reg, catalog *cat, script_vm *vm, llm *l, const config *cfg);
/* Takes the prompts' evaluators and the policy budget (at start, on reload);
 * running runs keep what they started with. */
void runner_configure(runner *r, const config *cfg);
/* Resumes the runs a stop interrupted (at start). Returns how many. */
int runner_resume(runner *r, char *err, size_t errlen);
/* The same in two halves, for a takeover (docs/scale-out.md): the reads of the runs ids names
 * ([id, ...]) into *snap, on any thread; then, on the loop thread, the runs made from them
 * (those this engine already runs are skipped). Return as above. */
int runner_resume_read(store *st, const json_t *ids, json_t **snap, char *err, size_t errlen);
int runner_resume_apply(runner *r, const json_t *snap);
/* The runs this engine stopped starting jobs of because its lease on a shared store lapsed
 * (store_lease_fresh), once their jobs in flight have ended: freed without a final state (the
 * run stays unfinished in the store), their ids returned. The caller re-claims them
 * (store_reclaim_runs) and resumes those still its own (docs/scale-out.md, "Leases"). */
json_t *runner_set_aside(runner *r);

/* Starts a run. spec (see docs/gate.md):
 *   {prompt, baseline, candidates: [v...], dataset?, dataset_version?, tags?,
 *    failed?: {since?, until?, limit?}, k?, concurrency?, budget?: {calls, tokens, cost},
 *    cache?, policy?, policy_options?, kind?}
 * The spec is checked at once (errors in e, return an HTTP status); the
 * cases are then read and checked (every variable a template uses must be
 * in every case) and stored with the run; started runs once that commit is
 * done: with the run's id and its first view, or with an error. */
typedef void (*runner_started)(const char *id, json_t *view, const reg_error *e, void *ud);
int runner_start(runner *r, json_t *spec, const char *actor, runner_started cb, void *ud, reg_error *e);
/* Stops a run: what finished stays, the run ends as incomplete. */
int runner_cancel(runner *r, const char *id, reg_error *e);
/* The live progress of a running run ({jobs, done, running, calls, cached,
 * cost, ...}), or NULL when the run is not running here. */
json_t *runner_progress(runner *r, const char *id);
/* Waits for a running run: cb runs once its end is stored, after ms, or when
 * the engine starts draining, whichever comes first (never inside this call).
 * Returns false, with nothing to wait for, when run id is not running here
 * or the engine is draining. */
typedef void (*runner_woken)(void *ud);
bool runner_wait(runner *r, const char *id, uint64_t ms, runner_woken cb, void *ud);
/* Called with each run's final record (as GET /v1/runs/{id} shows it). */
typedef void (*runner_finished)(const char *id, json_t *run, void *ud);
void runner_on_finish(runner *r, runner_finished cb, void *ud);
json_t *runner_status_json(runner *r);
/* Runs started, ended by verdict, under way, for /metrics. */
void runner_metrics(runner *r, buf_t *b);
/* Runs under way. */
int runner_active(const runner *r);
/* Stops dispatching; cb runs once no call or write is in flight. Runs stay
 * 'running' in the store, so the next start resumes them. */
void runner_drain(runner *r, void (*cb)(void *), void *arg);
void runner_free(runner *r);

#endif
