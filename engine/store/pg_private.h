/* pg_private.h — what pg.c shares with pg_registry.c and pg_loop.c: the statement helper over
 * a blocking libpq connection (used on the writer thread and on thread-pool threads only,
 * never on the loop thread) and the read-connection pool. */
#ifndef RATCHET_STORE_PG_PRIVATE_H
#define RATCHET_STORE_PG_PRIVATE_H

#include <libpq-fe.h>
#include <pthread.h>

#include "store/backend.h"

typedef struct pg_store pg_store;

#define PGQ_MAX_PARAMS 32

/* One statement: SQL with ?N placeholders (rewritten to $N), values bound by
 * number, run by the first pgq_step, whose rows later steps walk. */
typedef struct {
    PGconn *conn;
    char *sql;
    int nparams;
    Oid types[PGQ_MAX_PARAMS];
    char *values[PGQ_MAX_PARAMS];
    PGresult *res;
    int row;        /* the row the last step gave; -1 before the first */
    char err[256];
} pgq;

enum { PGQ_ERROR = -1, PGQ_DONE = 0, PGQ_ROW = 1 };

pgq *pgq_new(PGconn *conn, const char *sql);
void pgq_free(pgq *q);
void pgq_text(pgq *q, int i, const char *s); /* NULL binds NULL */
void pgq_textn(pgq *q, int i, const char *s, size_t len);
void pgq_int(pgq *q, int i, int64_t v);
void pgq_double(pgq *q, int i, double v);
void pgq_null(pgq *q, int i);
/* Runs the statement on the first call; returns PGQ_ROW per row, then PGQ_DONE, or PGQ_ERROR (q->err). */
int pgq_step(pgq *q);
/* Forgets the result (the bound values stay), for the next run. */
void pgq_reset(pgq *q);
/* Rows an INSERT/UPDATE/DELETE changed. */
int64_t pgq_changes(const pgq *q);
bool pgq_isnull(const pgq *q, int col);
const char *pgq_col(const pgq *q, int col); /* NULL for NULL */
int pgq_len(const pgq *q, int col);
int64_t pgq_col_int(const pgq *q, int col);
double pgq_col_double(const pgq *q, int col);
bool pgq_col_bool(const pgq *q, int col);
json_t *pgq_col_text(const pgq *q, int col);
json_t *pgq_col_json(const pgq *q, int col);
json_t *pgq_col_time(const pgq *q, int col);
/* Runs SQL without parameters (several statements allowed); 0 or -1 with err. */
int pg_exec(PGconn *c, const char *sql, char *err, size_t errlen);

/* A read connection from the pool (a new one when none is free); NULL with err. */
PGconn *pg_read_acquire(pg_store *s, char *err, size_t errlen);
/* Back to the pool, or closed when it broke. */
void pg_read_release(pg_store *s, PGconn *c);
/* A read: borrows a connection and makes the statement. */
int pg_read_begin(pg_store *s, const char *sql, pgq **q, char *err, size_t errlen);
/* Ends it: rc the last step's result; -1 with err on an error. */
int pg_read_end(pg_store *s, pgq *q, int rc, char *err, size_t errlen);

/* the backend functions of the SQL files (backend.h) */
int pg_load_registry(store *s, json_t **prompts, json_t **datasets, char *err, size_t errlen);
int pg_list_transitions_json(store *s, const char *prompt, int64_t after_seq, int limit, buf_t *out, char *err,
                             size_t errlen);
int pg_dataset_cases(store *s, const char *dataset, int64_t version, store_case_form form, json_t **cases, char *err,
                     size_t errlen);
int pg_select_traces(store *s, const store_trace_filter *f, json_t **traces, char *err, size_t errlen);
int pg_dataset_versions(store *s, const char *dataset, int64_t current, json_t **versions, char *err, size_t errlen);
int pg_failed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int limit,
                          json_t **cases, char *err, size_t errlen);
int pg_passed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int limit,
                          json_t **cases, char *err, size_t errlen);
int pg_cache_get(store *s, char *const *keys, size_t n, char **results, char *err, size_t errlen);
int pg_get_run(store *s, const char *id, json_t **run, char *err, size_t errlen);
int pg_list_runs(store *s, const char *prompt, int limit, json_t **runs, char *err, size_t errlen);
int pg_unfinished_runs(store *s, json_t **ids, char *err, size_t errlen);
int pg_run_cases(store *s, const char *run_id, store_case_form form, json_t **cases, char *err, size_t errlen);
int pg_run_result_keys(store *s, const char *run_id, json_t **rows, char *err, size_t errlen);
int pg_run_results(store *s, const char *run_id, const int64_t *case_idx, size_t ncase, int64_t after_idx, int limit,
                   json_t **rows, char *err, size_t errlen);
int pg_load_loop_states(store *s, json_t **states, char *err, size_t errlen);
int pg_list_loop_events(store *s, const char *prompt, int64_t after_seq, int limit, json_t **items, char *err,
                        size_t errlen);
/* The buckets of a series in one snapshot, each as pg_prompt_metrics_sliced's window (a scan
 * per bucket: PostgreSQL has no rollups yet). */
int pg_prompt_series(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                     int64_t step_ms, json_t **points, char *err, size_t errlen);
int pg_prompt_metrics_sliced(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                             const json_t *slice_keys, json_t **out, char *err, size_t errlen);

/* A condition on traces selecting one trace by id, e.g. "WHERE " BY_ID("?1"): the id's ts from
 * the id table prunes the scan to its day's partition at run time. traces has no index on id
 * (one less index per insert): a bare "id = ?" reads every partition. */
#define BY_ID(id) "id = " id " AND ts = (SELECT ts FROM trace_ids WHERE id = " id ")"

/* ---- the daily partitions of traces (pg_partitions.c; docs/scale-out.md) ---- */
#define PG_PARTS_AHEAD_DAYS 3   /* partitions made ahead of today by the leader */
#define PG_PARTS_PAST_DAYS 366  /* without store.retention_days: days back a trace still gets its day's */

typedef struct {
    /* the writer thread's */
    int64_t *days;          /* days (since 1970-01-01 UTC) that have a partition, sorted */
    size_t n, cap;
    bool loaded;
    int retention_days;     /* 0: none */
    int64_t ddl_after;      /* no DDL before (ms): a create or drop failed */
    /* for status and metrics, under mu */
    pthread_mutex_t mu;
    int64_t count, oldest, newest; /* INT64_MIN: none */
    uint64_t created, dropped, create_failures;
} pg_parts;

void pg_parts_init(pg_parts *p, int retention_days);
void pg_parts_free(pg_parts *p);
/* After a reconnect: read the catalog again before the next use. */
void pg_parts_forget(pg_parts *p);
/* Before a batch's transaction: creates the partitions its traces' days need (within the window,
 * a few at most); a failure is logged and those traces go to traces_default. */
void pg_parts_for_batch(pg_parts *p, PGconn *c, const int64_t *ts, size_t n, int64_t now);
/* The leader's upkeep, in transactions of its own: yesterday's to PG_PARTS_AHEAD_DAYS ahead
 * created, and with before_ms > 0 the partitions of days wholly before it dropped. */
int pg_parts_upkeep(pg_parts *p, PGconn *c, int64_t now, int64_t before_ms, char *err, size_t errlen);
/* In the batch's transaction: up to limit ids of traces older than before_ms's day (the dropped
 * days', and those traces_default kept) deleted with their scores, feedback and trace rows; and
 * the trace parts older than before_ms. */
int pg_parts_cleanup(PGconn *c, int64_t before_ms, int64_t limit, char *err, size_t errlen);
void pg_parts_status(pg_parts *p, json_t *out);
void pg_parts_metrics(pg_parts *p, buf_t *b);

#endif
