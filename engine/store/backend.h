/* backend.h — the seam between store.h and its backends (sqlite*.c, pg*.c): the table of
 * functions each backend fills, and the write ops they all apply. Nothing outside the store
 * includes it. */
#ifndef RATCHET_STORE_BACKEND_H
#define RATCHET_STORE_BACKEND_H

#include <pthread.h>

#include "store/store.h"

/* One statement of a write and its bound values (?1..?n in order). Types:
 * 'i' integer, 'd' real, 's' text, 'n' NULL. An op is one allocation: its
 * values, then copies of their texts. The SQL is written in the dialect both
 * backends run (PostgreSQL's gets ?N rewritten to $N). */
typedef struct {
    char t;
    union {
        int64_t i;
        double d;
        const char *s;
    };
} store_val;

struct store_op {
    const char *sql; /* a string constant: statements are cached by its address */
    store_op *next;
    int n;
    store_val v[];
};

/* Adds one statement to w; types: one letter per value: i int64, I int64
 * with 0 as NULL, d double, s text (NULL as NULL). */
void op_add(store_write *w, const char *sql, const char *types, ...);
void store_ops_free(store_op *op);

/* What each backend's submit does first and, when its queue refuses the
 * write, undoes: the write's result arrays allocated, its status cleared.
 * Returns the write's items (what limits.max_pending_writes counts). */
size_t store_write_prepare(store_write *w);
void store_write_unprepare(store_write *w);
/* Marks a write that was not stored: its status, and every trace and
 * feedback result STORE_FAILED. */
void store_write_fail(store_write *w, int status);
/* A dataset's history from its case rows (id, the version that added the
 * row, the one that removed it or 0), read in order of id then added: each
 * backend feeds the rows of its query, then appends one
 * {version, cases, added, removed, changed} per version to versions. */
typedef struct {
    int64_t current;
    int64_t *live, *added, *removed, *changed;
    char prev_id[200];
    int64_t prev_removed;
} store_case_tally;
void store_case_tally_init(store_case_tally *t, int64_t current);
void store_case_tally_row(store_case_tally *t, const char *id, int64_t added, int64_t removed);
void store_case_tally_end(store_case_tally *t, json_t *versions); /* and frees */
/* New traces summed per (prompt, version, minute), what each backend adds to its
 * trace_minutes rollup for a write: traces[0..n) (the caller's array of the
 * write's accepted traces) sorted in place and summed into out, which has room
 * for n; returns how many sums. */
typedef struct {
    const char *prompt;
    int64_t version, minute, traces, retries, lat_n, cost_n, tok_n;
    double lat, cost, tok;
} store_minute_sum;
size_t store_minute_sums(store_trace **traces, size_t n, store_minute_sum *out);
/* The online metrics of a prompt (window.c): the figures of a window, its slices and its
 * series, assembled in one shape from the rows each backend reads in its own SQL. A window
 * [since, until) is read as whole minutes of the rollups (trace_minutes, score_minutes) and
 * the traces and scores of the partial minutes at its edges. */
typedef enum { WINDOW_SCAN, WINDOW_ROLLUP } store_window_source;
typedef struct {
    int64_t traces, evaluated, passed, failures, errors, negative, retries;
    double latency, cost, tokens;        /* sums */
    int64_t latency_n, cost_n, tokens_n; /* how many traces had each */
} store_window_totals;
/* What a backend reads, on one snapshot, for the prompt and version it holds in ctx: each
 * function adds the rows of [from, to) (ms for WINDOW_SCAN, minutes for WINDOW_ROLLUP;
 * never empty) and returns 0, or -1 with err set. with_costs false: the latency, cost and
 * tokens need not be read and are left out of the figures. */
typedef struct store_window_reader store_window_reader;
struct store_window_reader {
    void *ctx;
    bool with_costs;
    int (*totals)(const store_window_reader *r, store_window_source src, int64_t from, int64_t to,
                  store_window_totals *w, char *err, size_t errlen);
    int (*evaluators)(const store_window_reader *r, store_window_source src, int64_t from, int64_t to, json_t *acc,
                      char *err, size_t errlen);
};
/* A totals row: traces, evaluated, passed, failures, errors, negative, retries, latency
 * sum, latency n, cost sum, cost n, tokens sum, tokens n. */
void store_window_totals_add(store_window_totals *w, const double row[13]);
/* An evaluators row of one evaluator: n, passed, failures, errors, required. */
void store_window_evaluator_add(json_t *acc, const char *evaluator, const double row[5]);
/* {traces, evaluated, passed, failures, errors, negative, retries, pass_rate, [latency_ms,
 * cost, tokens,] evaluators} of [since, until) */
int store_window_metrics(const store_window_reader *r, int64_t since, int64_t until, json_t **out, char *err,
                         size_t errlen);
/* One point a step from since to until, each the window's figures with its since_ms. */
int store_window_series(const store_window_reader *r, int64_t since, int64_t until, int64_t step, json_t **points,
                        char *err, size_t errlen);
/* A slice row (a metadata key's value, NULL when none, and its evaluated and passed traces)
 * into slices as "metadata.KEY=VALUE". At most STORE_SLICE_VALUES values a key. */
#define STORE_SLICE_VALUES 50
void store_window_slice_add(json_t *slices, const char *key, const char *value, double evaluated, double passed);
/* The group-commit writer's queue (wqueue.c), one per store: the loop thread submits, the
 * writer thread takes everything queued as one batch and hands it back committed (or failed);
 * the loop thread then drains the done list (its done callbacks) after the backend's uv_async.
 * mu also guards the backend's own fields marked "under mu". */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;                  /* wakes the writer: a write queued, or stopping */
    pthread_cond_t idle_cond;             /* the writer finished a batch */
    bool writing;                         /* the writer holds a batch */
    store_write *queue_head, *queue_tail; /* waiting for the writer */
    store_write *done_head, *done_tail;   /* committed, waiting for the loop */
    size_t queued_items;                  /* the items of the writes waiting */
    size_t max_pending;                   /* limits.max_pending_writes */
    bool stopping;
} store_wqueue;
void store_wqueue_init(store_wqueue *q, size_t max_pending);
void store_wqueue_destroy(store_wqueue *q);
/* Queues w for the writer; -1 (w untouched, unprepared) when stopping or when its items
 * would pass max_pending. */
int store_wqueue_submit(store_wqueue *q, store_write *w);
/* Under mu: everything queued as one batch (NULL when none), its items in *items; the
 * writer holds it until store_wqueue_done_locked. */
store_write *store_wqueue_take_locked(store_wqueue *q, size_t *items);
/* Under mu: batch (a list, may be NULL) onto the done list; the writer holds nothing. */
void store_wqueue_done_locked(store_wqueue *q, store_write *batch);
/* On the loop thread: the done callbacks of every write on the done list. */
void store_wqueue_drain(store_wqueue *q);
/* On the loop thread: waits until the writer is idle with nothing queued, draining the
 * done list, until no callback queues another write. */
void store_wqueue_flush(store_wqueue *q);
/* Refuses further writes and wakes the writer to finish what is queued and stop. */
void store_wqueue_stop(store_wqueue *q);
/* Calls done on each write of a committed list (linked by next), in order,
 * on the loop thread. */
void store_writes_done(store_write *w);

/* Every function of store.h that reads or runs the store, less its store_ prefix. */
typedef struct store_backend {
    const char *name; /* "sqlite", "postgres" */
    bool shared;      /* several engines may use it at once */
    bool upkeep;      /* store_delete_old_traces is wanted without a retention too */
    void (*metrics)(store *s, buf_t *b);
    void (*flush)(store *s);
    void (*close)(store *s);
    int (*submit)(store *s, store_write *w);
    bool (*healthy)(store *s);
    void (*status)(store *s, json_t *out);
    bool (*leader)(store *s);                                  /* NULL: always */
    bool (*lease_fresh)(store *s);                             /* NULL: always */
    uint64_t (*lease_generation)(store *s);                    /* NULL: 0 */
    int (*live_engines)(store *s);                             /* NULL: 1 */
    int (*reclaim_runs)(store *s, const json_t *ids, json_t **kept, char *err, size_t errlen); /* NULL: all kept */
    int (*reclaim_traces)(store *s, char *const *ids, size_t n, bool *keep, char *err, size_t errlen);
    void (*on_cluster)(store *s, store_cluster_cb fn, void *data); /* NULL: nothing to tell */
    void (*set_scripts)(store *s, const json_t *scripts);      /* NULL: ignored */
    int (*get_trace_json)(store *s, const char *id, buf_t *out, char *err, size_t errlen);
    int (*get_trace_parts)(store *s, char *const *ids, size_t n, char **bodies, char *err, size_t errlen);
    int (*list_traces_json)(store *s, const store_trace_query *q, buf_t *out, char *err, size_t errlen);
    int (*get_traces_for_eval)(store *s, char *const *ids, size_t n, char **json, char **prompt, int64_t *version,
                               char *err, size_t errlen);
    int (*list_trace_ids)(store *s, const char *prompt, int64_t since_ms, int64_t until_ms, bool only_unevaluated,
                          int64_t *cur_ts, int64_t *cur_seq, int limit, char ***ids, size_t *n, char *err,
                          size_t errlen);
    int (*llm_totals)(store *s, int64_t since_ms, const char *run_id, int64_t *calls, int64_t *tokens, double *cost,
                      char *err, size_t errlen);
    int (*list_llm_calls_json)(store *s, int64_t since_ms, const char *caller_kind, int limit, buf_t *out, char *err,
                               size_t errlen);
    int (*load_registry)(store *s, json_t **prompts, json_t **datasets, char *err, size_t errlen);
    int (*list_transitions_json)(store *s, const char *prompt, int64_t after_seq, int limit, buf_t *out, char *err,
                                 size_t errlen);
    int (*dataset_cases)(store *s, const char *dataset, int64_t version, store_case_form form, json_t **cases,
                         char *err, size_t errlen);
    int (*select_traces)(store *s, const store_trace_filter *f, json_t **traces, char *err, size_t errlen);
    int (*dataset_versions)(store *s, const char *dataset, int64_t current, json_t **versions, char *err,
                            size_t errlen);
    int (*failed_trace_cases)(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                              int limit, json_t **cases, char *err, size_t errlen);
    int (*passed_trace_cases)(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                              int limit, json_t **cases, char *err, size_t errlen);
    int (*cache_get)(store *s, char *const *keys, size_t n, char **results, char *err, size_t errlen);
    int (*get_run)(store *s, const char *id, json_t **run, char *err, size_t errlen);
    int (*list_runs)(store *s, const char *prompt, int limit, json_t **runs, char *err, size_t errlen);
    int (*unfinished_runs)(store *s, json_t **ids, char *err, size_t errlen);
    /* NULL: one engine per store (SQLite), which re-queues its backlog at start */
    int (*claim_unevaluated)(store *s, const char *prompt, int limit, char ***ids, size_t *n, char *err,
                             size_t errlen);
    int (*run_cases)(store *s, const char *run_id, store_case_form form, json_t **cases, char *err, size_t errlen);
    int (*run_result_keys)(store *s, const char *run_id, json_t **rows, char *err, size_t errlen);
    int (*run_results)(store *s, const char *run_id, const int64_t *case_idx, size_t ncase, int64_t after_idx,
                       int limit, json_t **rows, char *err, size_t errlen);
    int (*load_loop_states)(store *s, json_t **states, char *err, size_t errlen);
    int (*list_loop_events)(store *s, const char *prompt, int64_t after_seq, int limit, json_t **items, char *err,
                            size_t errlen);
    int (*prompt_metrics_sliced)(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                                 const json_t *slice_keys, json_t **out, char *err, size_t errlen);
    int (*prompt_series)(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                         int64_t step_ms, json_t **points, char *err, size_t errlen);
} store_backend;

/* The first member of each backend's own struct. */
struct store {
    const store_backend *be;
};

int sqlite_open(store **out, uv_loop_t *loop, const char *dir, int max_pending, char *err, size_t errlen);
int pg_open(store **out, uv_loop_t *loop, const store_options *o, char *err, size_t errlen);

#endif
