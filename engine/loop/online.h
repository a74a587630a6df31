/* online.h — online evaluation: after a trace is acknowledged, the
 * evaluators attached to its prompt judge it, off the request path, and the
 * scores and the trace's verdict are stored.
 *
 * The backlog is a bounded queue of trace ids; past its bound new traces are
 * counted and left unevaluated (ingest never waits on evaluation). Traces are
 * read back from the store in batches in the thread pool, evaluated as
 * coroutines on the loop (time-sliced, each under the evaluator budget), and
 * their results written by the store's writer in groups. Re-evaluation jobs
 * walk a window of a prompt's traces through the same queue. */
#ifndef RATCHET_ONLINE_H
#define RATCHET_ONLINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "script/catalog.h"
#include "conf/config.h"
#include "loop/registry.h"
#include "store/store.h"

typedef struct online online;

online *online_new(uv_loop_t *loop, store *st, script_vm *vm, catalog *cat, const config *cfg);
/* Takes the prompts, budgets and bounds of cfg (at start and on reload);
 * evaluations running keep the attachments they started with. */
void online_configure(online *o, const config *cfg);
/* Queues an acknowledged trace when its prompt has evaluators. */
void online_enqueue(online *o, const char *trace_id, const char *prompt);
/* Starts re-evaluating prompt's traces with since <= ts < until (all of
 * them, or only those not evaluated yet). Returns the job's number. */
int online_reevaluate(online *o, const char *prompt, int64_t since_ms, int64_t until_ms, bool only_unevaluated);
bool online_has_prompt(const online *o, const char *prompt);
json_t *online_status_json(const online *o);
/* The backlog and the traces evaluated, for /metrics. */
void online_metrics(const online *o, buf_t *b);
/* Feedback stored on a trace of prompt/version, for the per-version metrics. */
void online_feedback(online *o, const char *prompt, int64_t version, bool negative);
/* The per prompt and version families (prompt_metrics.h). */
void online_prompt_metrics(online *o, registry *reg, buf_t *b);
/* Traces waiting for evaluation. */
size_t online_backlog(const online *o);
/* Stops taking work; cb runs once nothing is running (results written). */
void online_drain(online *o, void (*cb)(void *), void *arg);
void online_free(online *o);

#endif
