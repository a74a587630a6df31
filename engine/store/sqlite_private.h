/* sqlite_private.h — what sqlite.c shares with sqlite_registry.c and sqlite_loop.c (the SQL of
 * the registry, datasets, runs and loop); nothing outside the store includes it. */
#ifndef RATCHET_STORE_PRIVATE_H
#define RATCHET_STORE_PRIVATE_H

#include <sqlite3.h>

#include "store/backend.h"

#define READ_POOL_MAX 8

typedef struct sqlite_store sqlite_store;

sqlite3 *sqlite_read_acquire(sqlite_store *s, char *err, size_t errlen);
void sqlite_read_release(sqlite_store *s, sqlite3 *db);

/* Shared by the SQL files (sqlite_registry.c, sqlite_loop.c). */
/* A read: borrows a connection, prepares sql, and leaves both in *db, *st. */
int read_begin(sqlite_store *s, const char *sql, sqlite3 **db, sqlite3_stmt **st, char *err, size_t errlen);
/* Finishes a read: rc is the last sqlite3_step result. */
int read_end(sqlite_store *s, sqlite3 *db, sqlite3_stmt *st, int rc, char *err, size_t errlen);
json_t *col_text(sqlite3_stmt *st, int i);
json_t *col_json(sqlite3_stmt *st, int i);
json_t *col_time(sqlite3_stmt *st, int i);

/* the backend functions of the SQL files (backend.h) */
int sqlite_get_trace_json(store *s, const char *id, buf_t *out, char *err, size_t errlen);
int sqlite_get_trace_parts(store *s, char *const *ids, size_t n, char **bodies, char *err, size_t errlen);
int sqlite_list_traces_json(store *s, const store_trace_query *q, buf_t *out, char *err, size_t errlen);
int sqlite_get_traces_for_eval(store *s, char *const *ids, size_t n, char **json, char **prompt, int64_t *version, char *err, size_t errlen);
int sqlite_list_trace_ids(store *s, const char *prompt, int64_t since_ms, int64_t until_ms, bool only_unevaluated, int64_t *cur_ts, int64_t *cur_seq, int limit, char ***ids, size_t *n, char *err, size_t errlen);
int sqlite_llm_totals(store *s, int64_t since_ms, const char *run_id, int64_t *calls, int64_t *tokens, double *cost, char *err, size_t errlen);
int sqlite_list_llm_calls_json(store *s, int64_t since_ms, const char *caller_kind, int limit, buf_t *out, char *err, size_t errlen);
int sqlite_load_registry(store *s, json_t **prompts, json_t **datasets, char *err, size_t errlen);
int sqlite_list_transitions_json(store *s, const char *prompt, int64_t after_seq, int limit, buf_t *out, char *err, size_t errlen);
int sqlite_dataset_cases(store *s, const char *dataset, int64_t version, store_case_form form, json_t **cases, char *err, size_t errlen);
int sqlite_select_traces(store *s, const store_trace_filter *f, json_t **traces, char *err, size_t errlen);
int sqlite_dataset_versions(store *s, const char *dataset, int64_t current, json_t **versions, char *err, size_t errlen);
int sqlite_failed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int limit, json_t **cases, char *err, size_t errlen);
int sqlite_passed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int limit, json_t **cases, char *err, size_t errlen);
int sqlite_cache_get(store *s, char *const *keys, size_t n, char **results, char *err, size_t errlen);
int sqlite_get_run(store *s, const char *id, json_t **run, char *err, size_t errlen);
int sqlite_list_runs(store *s, const char *prompt, int limit, json_t **runs, char *err, size_t errlen);
int sqlite_unfinished_runs(store *s, json_t **ids, char *err, size_t errlen);
int sqlite_run_cases(store *s, const char *run_id, store_case_form form, json_t **cases, char *err, size_t errlen);
int sqlite_run_result_keys(store *s, const char *run_id, json_t **rows, char *err, size_t errlen);
int sqlite_run_results(store *s, const char *run_id, const int64_t *case_idx, size_t ncase, int64_t after_idx, int limit, json_t **rows, char *err, size_t errlen);
int sqlite_load_loop_states(store *s, json_t **states, char *err, size_t errlen);
int sqlite_list_loop_events(store *s, const char *prompt, int64_t after_seq, int limit, json_t **items, char *err, size_t errlen);
int sqlite_prompt_metrics_sliced(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, const json_t *slice_keys, json_t **out, char *err, size_t errlen);
int sqlite_prompt_series(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int64_t step_ms, json_t **points, char *err, size_t errlen);

#endif
