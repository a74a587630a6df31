/* store.h — the one interface to durable storage, on SQLite (sqlite*.c) or PostgreSQL (pg*.c).
 *
 * Writes go to a single writer thread that commits everything pending in one
 * transaction with one fsync (group commit) and then calls each write's done
 * callback on the loop thread. Reads are synchronous and meant for the libuv
 * thread pool; each borrows a read connection (WAL lets them run beside the
 * writer). */
#ifndef RATCHET_STORE_H
#define RATCHET_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>

#include "base/util.h"

typedef struct store store;

enum store_item_result {
    STORE_ACCEPTED = 0,
    STORE_DUPLICATE,
    STORE_NOT_FOUND, /* feedback on a trace the store does not have */
    STORE_FAILED,    /* the transaction failed; nothing of the write is stored */
};

typedef struct {
    char *id;
    char *prompt;
    int64_t version;  /* 0 when the trace names none */
    int64_t ts_ms;
    char *retry_of;   /* NULL when none */
    char *json;       /* the normalised trace, without feedback */
    size_t json_len;
    char **tags;      /* its tags (distinct), indexed for store_trace_query.tag */
    size_t ntags;
    /* the figures the online metrics sum (the body's latency_ms, usage.cost_usd,
     * usage.input_tokens + usage.output_tokens), each when has_* */
    double latency_ms, cost_usd, tokens;
    bool has_latency, has_cost, has_tokens;
    bool join_part;   /* merge the trace part waiting under this id, if any (store_trace_part) */
} store_trace;

/* Part of a trace that arrives apart from it (an OTLP span whose content
 * comes as log records in another request): a JSON object merged into the
 * trace of that id (RFC 7396 merge patch) when the trace is stored, or at
 * once when it already is. A part no trace claims waits at most
 * STORE_PART_TTL_MS; parts of one id merge while they wait. Its "prompt"
 * member is never merged into a trace (the trace's prompt is its row's):
 * it waits with the part, for store_get_trace_parts' readers. */
typedef struct {
    char *id;
    char *json;
    size_t json_len;
    bool waits_only;  /* only to wait for its trace: when the trace is there already, nothing changes (a
                       * duplicate); merged under a part already waiting (that part's fields win) */
} store_trace_part;

#define STORE_PART_TTL_MS (24 * 3600 * 1000LL)
/* part_results: the part was merged into its trace, or waits for it */
enum { STORE_PART_MERGED = 1, STORE_PART_WAITING = 2, STORE_PART_DUPLICATE = 3 };

typedef struct {
    char *id;
    char *trace_id;
    const char *source; /* "explicit", "inline" or "retry" (static strings) */
    int thumbs;         /* 1 up, -1 down, 0 none */
    bool negative;      /* thumbs down or a score under 0.5: the trace fails */
    int64_t ts_ms;
    char *json;         /* the normalised feedback object */
    size_t json_len;
    /* set by the writer when the trace is found: its prompt and version (for metrics) */
    char *trace_prompt;
    int64_t trace_version;
} store_feedback;

enum store_verdict { VERDICT_PASS = 0, VERDICT_FAIL = 1, VERDICT_ERROR = 2 };

/* One evaluator's judgement of one trace. */
typedef struct {
    char *evaluator;   /* the name it is attached under */
    char *script;      /* the evaluator file's name */
    char *version;     /* hash of the file's text */
    bool required;
    const char *status; /* "ok", "error", "killed", "out_of_memory" (static) */
    bool pass;
    double score;
    char *reason;
} store_score;

/* A trace's evaluation: replaces every score it had and sets its verdict. */
typedef struct {
    char *trace_id;
    enum store_verdict verdict;
    store_score *scores;
    size_t nscores;
    int64_t ts_ms;     /* when it was evaluated */
} store_evaluation;

/* One LLM call (all its attempts), for the ledger. Strings owned. */
typedef struct {
    char *id;
    int64_t ts_ms;
    char *caller_kind;  /* evaluator, run, template, policy, other */
    char *caller;
    char *run_id;       /* NULL when none */
    char *provider;
    char *model;
    int64_t input_tokens, output_tokens;
    double cost;
    int attempts;
    char *status;       /* "ok" or the error kind */
    char *error;        /* NULL when ok */
    double latency_ms;
    char *request_id;   /* NULL when none */
} store_llm_call;

/* A claim on the daily budgets every engine on the database shares (PostgreSQL;
 * docs/scale-out.md): the amounts are added to the day's row only if no limit (> 0) would be
 * passed, and granted says whether they were. With every limit 0 it always applies (settling a
 * claim by the difference, negative amounts too). */
typedef struct {
    char day[16];       /* YYYY-MM-DD, UTC */
    double calls, tokens, cost;
    double max_calls, max_tokens, max_cost;
    bool granted;       /* set by the store */
} store_budget_claim;

typedef struct store_write store_write;
typedef void (*store_done_cb)(store_write *w);
/* A registry, dataset or run change, built by the store_put_* functions. */
typedef struct store_op store_op;

struct store_write {
    /* filled by the caller */
    store_trace *traces;
    size_t ntraces;
    store_feedback *feedback;  /* explicit feedback items, and inline ones */
    size_t nfeedback;
    store_evaluation *evals;
    size_t nevals;
    store_trace_part *parts;   /* applied after traces */
    size_t nparts;
    store_llm_call *llm_calls;
    size_t nllm_calls;
    store_op *ops, *ops_tail;  /* applied in order, after the items above */
    size_t nops;
    store_budget_claim *claim; /* or NULL; not owned */
    bool upkeep;               /* store_delete_old_traces: retention and the store's upkeep */
    int64_t retention_before_ms, retention_limit;
    bool fenced;               /* a decision of the loop leader: on PostgreSQL it commits only while
                                * this engine still holds the leadership it had (docs/scale-out.md) */
    store_done_cb done;
    void *data;
    /* filled by the store before done runs */
    unsigned char *trace_results;    /* enum store_item_result per trace */
    unsigned char *feedback_results; /* per feedback item */
    unsigned char *part_results;     /* per part: STORE_PART_MERGED or STORE_PART_WAITING */
    int status;                      /* 0, or nonzero when the commit failed (a SQLite result code; -1 on PostgreSQL) */
    /* private */
    store_write *next;
};

typedef struct {
    const char *prompt;  /* NULL: any */
    int64_t version;     /* 0: any */
    int64_t since_ms;    /* inclusive; INT64_MIN: none */
    int64_t until_ms;    /* exclusive; INT64_MAX: none */
    int limit;
    bool has_cursor;
    int64_t cursor_ts;   /* items strictly after (older than) this position */
    int64_t cursor_seq;
    int failed;          /* 1: only failed traces, 0: only not failed, -1: any */
    const char *evaluator; /* NULL: any; else only traces this evaluator failed */
    int feedback;        /* 0: any; 1: only with negative feedback; 2: only with feedback of any kind */
    const char *text;    /* NULL: any; else only traces whose stored body contains it (case-sensitive) */
    const char *tag;     /* NULL: any; else only traces carrying this tag (read along a tag index) */
} store_trace_query;

/* Commits, their latency, the queue, for /metrics (any time, loop thread). */
void store_metrics(store *s, buf_t *b);
/* Which store to open (the config's `store` table, docs/scale-out.md). */
typedef struct {
    const char *kind;   /* "sqlite" (NULL too) or "postgres" */
    const char *dir;    /* sqlite: the data directory, which must exist (the caller holds its lock: store/datadir.h) */
    const char *dsn;    /* postgres: a libpq connection string */
    int max_pending;
    int read_pool;      /* postgres: read connections kept open (0: 4) */
    int retention_days; /* store.retention_days (0: none): postgres makes no partition for days past it */
    int read_timeout_ms; /* postgres: each read's deadline (0: none) */
} store_options;
/* The message of a read that passed its deadline (store.read_timeout_ms, PostgreSQL): the
 * API answers it with 503. */
#define STORE_READ_TIMEOUT "the store did not answer within its read deadline"
bool store_read_timed_out(const char *err);
/* Opens (creating and migrating) the store and starts its writer thread (and,
 * on SQLite, the checkpointer). Returns 0, or -1 with a message in err. */
int store_open(store **out, uv_loop_t *loop, const store_options *o, char *err, size_t errlen);
/* "sqlite" or "postgres". */
const char *store_kind(store *s);
/* Adds {kind, healthy, ...} of the backend's state to out (for status and /readyz); on
 * PostgreSQL also this engine's id and role and every engine's heartbeat. */
void store_status(store *s, json_t *out);

/* ---- several engines on one database (PostgreSQL; docs/scale-out.md) ----
 * On SQLite there is one engine and it always leads. */
/* Whether other engines may share the store (and so budgets need claims): PostgreSQL. */
bool store_shared(store *s);
/* Whether this engine runs the loop, canary checks and run resumption now. */
bool store_leader(store *s);
/* Whether this engine's lease is fresh: its last committed heartbeat is recent enough that no
 * other engine can have claimed its work (PostgreSQL; always on SQLite). While it is not, the
 * work it owns (runs, online evaluations, the loop) starts no LLM call (docs/scale-out.md). */
bool store_lease_fresh(store *s);
/* Changes each time the lease lapsed, even if it is fresh again now: work that began under one
 * generation and finds another must re-claim what it holds before going on (0 on SQLite). */
uint64_t store_lease_generation(store *s);
/* Engines sharing the store now (their heartbeats of the last 15 s, as last read; this one
 * included): at least 1. No database round trip: the coordinator's last read. */
int store_live_engines(store *s);
/* After a lapse: which of the runs ids (set aside by this engine) are still its own and
 * unfinished, re-claimed so no other engine claims them meanwhile; kept is a new array. */
int store_reclaim_runs(store *s, const json_t *ids, json_t **kept, char *err, size_t errlen);
/* The same for n traces held back from online evaluation: keep[i] says which. */
int store_reclaim_traces(store *s, char *const *ids, size_t n, bool *keep, char *err, size_t errlen);
/* Calls fn on the loop thread when this engine becomes the leader (gained = true) or loses
 * the leadership, and when another engine changed the registry (registry = true). */
typedef void (*store_cluster_cb)(void *data, bool leadership_changed, bool registry_changed);
void store_on_cluster(store *s, store_cluster_cb fn, void *data);
/* What the heartbeat says of this engine's scripts ({name: version}; copied), for status. */
void store_set_scripts(store *s, const json_t *scripts);
/* Waits on the loop thread until every write queued so far is committed and
 * its callback has run (and those the callbacks queued): after it, no write
 * of the caller's waits for an answer, and its objects can be freed. */
void store_flush(store *s);
/* Flushes every pending write (their callbacks run), stops the writer and
 * the checkpointer and closes; the memory goes once the loop has run the
 * close of the store's async handle. */
void store_close(store *s);

/* Queues a write. Returns 0, or -1 when the queue is over its bound (the
 * caller should answer 503); done is then never called. */
int store_submit(store *s, store_write *w);
/* Frees the fields a store_write owns (items, results); not w itself. */
void store_write_clear(store_write *w);

/* Reads; safe from any thread. Each returns 0 on success, 1 for not found,
 * -1 on error (message in err). The JSON produced goes into out. */
int store_get_trace_json(store *s, const char *id, buf_t *out, char *err, size_t errlen);
/* The trace parts waiting under ids (store_trace_part): bodies[i] is the
 * part's JSON text (free it), or NULL when none waits. Returns 0, or -1 with
 * err (every bodies[i] NULL). Blocking: call it in the thread pool. */
int store_get_trace_parts(store *s, char *const *ids, size_t n, char **bodies, char *err, size_t errlen);
/* Writes {"items":[...],"next_cursor":...} */
int store_list_traces_json(store *s, const store_trace_query *q, buf_t *out, char *err, size_t errlen);
bool store_healthy(store *s);

/* For evaluation: the traces (with their feedback) of ids[0..n), as JSON
 * texts in json[i], their prompt names in prompt[i] (both NULL when the
 * store has no such trace; free each) and versions in version[i] (0: none). */
int store_get_traces_for_eval(store *s, char *const *ids, size_t n, char **json, char **prompt, int64_t *version,
                              char *err, size_t errlen);
/* A page of the ids of a prompt's traces with since <= ts < until, in
 * (ts, seq) order after the cursor (*cur_ts, *cur_seq), which moves past the
 * last one; only those never evaluated with only_unevaluated. */
int store_list_trace_ids(store *s, const char *prompt, int64_t since_ms, int64_t until_ms, bool only_unevaluated,
                         int64_t *cur_ts, int64_t *cur_seq, int limit, char ***ids, size_t *n, char *err,
                         size_t errlen);
void store_evaluation_clear(store_evaluation *e);
void store_llm_call_clear(store_llm_call *c);
/* Calls, tokens and cost in the ledger since since_ms (of one run when run_id). */
int store_llm_totals(store *s, int64_t since_ms, const char *run_id, int64_t *calls, int64_t *tokens, double *cost,
                     char *err, size_t errlen);
/* Writes {"items":[...]} of the newest calls since since_ms, of one caller kind when given. */
int store_list_llm_calls_json(store *s, int64_t since_ms, const char *caller_kind, int limit, buf_t *out, char *err,
                              size_t errlen);

/* ---- the prompt registry, datasets and regression runs (sqlite_registry.c) ----
 * Writes: each function adds one change to w (strings are copied). The loop
 * thread keeps the registry's state and checks every change before it gets
 * here, so none of these can conflict in the writer. */
void store_put_prompt(store_write *w, const char *name, const char *description, int64_t created_ms, bool pinned,
                      const char *pin_reason, double canary_share);
void store_put_version(store_write *w, const char *prompt, int64_t version, const char *messages_json,
                       const char *model_json, int64_t parent, const char *author, const char *note,
                       const char *status, int64_t created_ms);
void store_set_version_status(store_write *w, const char *prompt, int64_t version, const char *status);
void store_put_transition(store_write *w, const char *prompt, int64_t version, const char *from, const char *to,
                          const char *reason, const char *actor, int64_t ts_ms);
/* version 0 deletes the label */
void store_put_label(store_write *w, const char *prompt, const char *label, int64_t version);
void store_put_dataset(store_write *w, const char *name, const char *description, int64_t version, int64_t cases,
                       int64_t created_ms, int64_t updated_ms);
/* Ends the case's current row at version (it stays in the older versions). */
void store_remove_case(store_write *w, const char *dataset, const char *id, int64_t version);
void store_remove_all_cases(store_write *w, const char *dataset, int64_t version);
void store_put_case(store_write *w, const char *dataset, const char *id, int64_t version, const char *body_json);
void store_put_run(store_write *w, const char *id, const char *kind, const char *prompt, const char *spec_json,
                   const char *state, int64_t created_ms);
void store_finish_run(store_write *w, const char *id, const char *state, const char *verdict, const char *report_json,
                      const char *error, int64_t finished_ms);
void store_put_run_case(store_write *w, const char *run_id, int64_t idx, const char *body_json);
typedef struct {
    const char *run_id;
    int64_t case_idx, version, sample;
    const char *status;   /* pass, fail, error */
    const char *output;   /* NULL when the call failed */
    const char *error;
    const char *verdicts; /* JSON array, or NULL */
    int64_t input_tokens, output_tokens;
    double cost, latency_ms;
    bool cached;
} store_run_result;
void store_put_run_result(store_write *w, const store_run_result *r);
void store_put_cache(store_write *w, const char *key, const char *result_json, int64_t ts_ms);

/* Reads (any thread). The registry's whole state at start:
 * prompts {name: {description, created_at, pinned, pin_reason, canary_share,
 * labels {}, versions [..]}} and datasets {name: {description, version, cases,
 * created_at, updated_at}}. */
int store_load_registry(store *s, json_t **prompts, json_t **datasets, char *err, size_t errlen);
/* {"items":[{version, from, to, reason, actor, at}]} oldest first, after seq cursor */
int store_list_transitions_json(store *s, const char *prompt, int64_t after_seq, int limit, buf_t *out, char *err,
                                size_t errlen);
/* How case lists come back: parsed objects, their compact JSON text as
 * strings (a tenth of the memory, for lists of any length), or ids only. */
typedef enum { STORE_CASE_OBJECTS, STORE_CASE_TEXTS, STORE_CASE_IDS } store_case_form;
/* The cases of a dataset version, in id order. */
int store_dataset_cases(store *s, const char *dataset, int64_t version, store_case_form form, json_t **cases,
                        char *err, size_t errlen);
/* Traces to turn into dataset cases (POST /v1/datasets/{name}/from-traces). */
#define STORE_TRACE_FILTER_META 8
typedef struct {
    const char *prompt;
    int64_t version;          /* 0: any */
    int64_t since_ms;         /* inclusive */
    int64_t until_ms;         /* exclusive */
    int failed;               /* 1: only failed (verdict fail or negative feedback), 0: only not failed, -1: any */
    const char *evaluator;    /* NULL, or only traces this evaluator (its attachment name) judged failed */
    const char *meta_key[STORE_TRACE_FILTER_META]; /* metadata[key] is value, or a list holding it */
    const char *meta_value[STORE_TRACE_FILTER_META];
    int nmeta;
    int limit;
} store_trace_filter;
/* The newest traces matching f that carry input.variables, newest first:
 * [{id, variables, output}] (output null for a failed call). */
int store_select_traces(store *s, const store_trace_filter *f, json_t **traces, char *err, size_t errlen);
/* A dataset's versions 1..current, oldest first: [{version, cases, added,
 * removed, changed}] (changed: ids replaced by an upsert at that version). */
int store_dataset_versions(store *s, const char *dataset, int64_t current, json_t **versions, char *err,
                           size_t errlen);
/* The newest failed traces of prompt (of one version unless 0) with since <= ts < until that carry
 * input.variables: [{trace_id, variables, ts, reasons, negative, output, messages, metadata}] (reasons:
 * failed scores; messages and metadata null when the trace had none). */
int store_failed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                             int limit, json_t **cases, char *err, size_t errlen);
/* The same for traces that passed (evaluated, every required evaluator
 * passed, no negative feedback); reasons is []. */
int store_passed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                             int limit, json_t **cases, char *err, size_t errlen);
/* Looks up n cache keys; results[i] is the stored JSON or NULL (free each). */
int store_cache_get(store *s, char *const *keys, size_t n, char **results, char *err, size_t errlen);
/* A run: {id, kind, prompt, spec, state, verdict, report, error, created_at, finished_at}; 1 when none. */
int store_get_run(store *s, const char *id, json_t **run, char *err, size_t errlen);
/* Runs, newest first, of one prompt when given; states only (no reports). */
int store_list_runs(store *s, const char *prompt, int limit, json_t **runs, char *err, size_t errlen);
/* Ids of the runs in a state (preparing, running) for this engine to resume: on SQLite all of
 * them (one engine); on PostgreSQL those whose owner engine is gone (no heartbeat for 15 s) or
 * unknown, claimed for this engine by a compare-and-set on runs.owner (docs/scale-out.md). */
int store_unfinished_runs(store *s, json_t **ids, char *err, size_t errlen);
/* Several engines (PostgreSQL): up to limit ids of a prompt's unevaluated traces whose
 * ingesting engine is gone (no heartbeat for 15 s) or unknown, claimed for this engine so no
 * other evaluates them too (free each and the array). None on SQLite (one engine). */
int store_claim_unevaluated(store *s, const char *prompt, int limit, char ***ids, size_t *n, char *err,
                            size_t errlen);
/* A run's cases in order (with STORE_CASE_IDS, their indexes). */
int store_run_cases(store *s, const char *run_id, store_case_form form, json_t **cases, char *err, size_t errlen);
/* Every result of a run, compact: [[case_idx, version, sample, status, cached], ...] */
int store_run_result_keys(store *s, const char *run_id, json_t **rows, char *err, size_t errlen);
/* Full results of some cases (all when case_idx is NULL): [{case, version, sample, status, output, error,
 * verdicts, input_tokens, output_tokens, cost, latency_ms, cached}] */
int store_run_results(store *s, const char *run_id, const int64_t *case_idx, size_t ncase, int64_t after_idx,
                      int limit, json_t **rows, char *err, size_t errlen);

/* ---- the self-improvement loop (sqlite_loop.c) ---- */
typedef struct {
    const char *prompt, *state, *cycle, *run_id;
    int64_t version;
    int step;
    int64_t step_started, canary_started, last_cycle_at, updated_at;
    const char *detail; /* JSON or NULL */
} store_loop_state;
void store_put_loop_state(store_write *w, const store_loop_state *ls);
/* Retention and upkeep (docs/scale-out.md), queued by the leader every second. On SQLite:
 * deletes up to limit traces with ts < before_ms, oldest first, with their scores and feedback,
 * and the trace parts older than before_ms. On PostgreSQL: makes the daily partitions of traces
 * ahead, drops those of days wholly before before_ms, and deletes up to limit ids of such traces
 * with their scores and feedback. before_ms 0: no retention (PostgreSQL's upkeep only). */
void store_delete_old_traces(store_write *w, int64_t before_ms, int64_t limit);
/* Whether the store wants store_delete_old_traces without a retention too (PostgreSQL). */
bool store_has_upkeep(store *s);
void store_put_loop_event(store_write *w, const char *prompt, const char *cycle, const char *kind, const char *message,
                          const char *detail_json, int64_t ts_ms);
/* {prompt: {state, cycle, run_id, version, step, step_started, canary_started, last_cycle_at, updated_at, detail}} */
int store_load_loop_states(store *s, json_t **states, char *err, size_t errlen);
/* [{seq, at, cycle, kind, message, detail}] oldest first, after seq */
int store_list_loop_events(store *s, const char *prompt, int64_t after_seq, int limit, json_t **items, char *err,
                           size_t errlen);
/* Online metrics of a prompt's traces (of one version unless 0) with since <= ts < until
 * (the same figures as a scan of those traces and their scores; the SQLite
 * backend sums whole minutes from rollups kept in the transaction of each
 * trace, verdict, feedback and score, and scans only the partial minutes at
 * the edges; means are sums over counts, equal to the scan's to the last
 * bits of rounding):
 * {traces, evaluated, passed, failures, errors, negative, retries, pass_rate, latency_ms, cost, tokens,
 *  evaluators: {name: {n, passed, failures, errors, pass_rate, required}}} */
int store_prompt_metrics(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                         json_t **out, char *err, size_t errlen);
/* The same, read in one transaction with, for each metadata key named in
 * slice_keys (an array of strings, or NULL), slices: {"metadata.KEY=VALUE":
 * {evaluated, passed, pass_rate}} over the key's 50 most frequent values. */
int store_prompt_metrics_sliced(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                                const json_t *slice_keys, json_t **out, char *err, size_t errlen);
/* The same figures, without latency_ms, cost and tokens, for the buckets
 * [since + i*step, since + (i+1)*step) up to until (the last one ends at
 * until), at most STORE_SERIES_MAX of them, all read in one transaction:
 * *points is [{since_ms, traces, evaluated, passed, failures, errors,
 * negative, retries, pass_rate, evaluators}]. Buckets that start and end on
 * whole minutes are read from the rollups alone. */
#define STORE_SERIES_MAX 100
int store_prompt_series(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                        int64_t step_ms, json_t **points, char *err, size_t errlen);

#endif
