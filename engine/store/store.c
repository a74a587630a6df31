/* store.c — the store's one front door: opens the backend the config names (SQLite or
 * PostgreSQL) and hands each call of store.h to it through its store_backend table. */
#include "store/store.h"

#include <stdio.h>
#include <string.h>

#include "store/backend.h"

int store_open(store **out, uv_loop_t *loop, const store_options *o, char *err, size_t errlen)
{
    if (!o->kind || !strcmp(o->kind, "sqlite"))
        return sqlite_open(out, loop, o->dir, o->max_pending, err, errlen);
    if (!strcmp(o->kind, "postgres"))
        return pg_open(out, loop, o, err, errlen);
    snprintf(err, errlen, "store.kind: '%s' is no store kind (sqlite or postgres)", o->kind);
    return -1;
}

const char *store_kind(store *s)
{
    return s->be->name;
}

void store_status(store *s, json_t *out)
{
    json_object_set_new(out, "kind", json_string(s->be->name));
    json_object_set_new(out, "healthy", json_boolean(s->be->healthy(s)));
    if (s->be->status)
        s->be->status(s, out);
}

bool store_shared(store *s)
{
    return s->be->shared;
}

bool store_has_upkeep(store *s)
{
    return s->be->upkeep;
}

bool store_leader(store *s)
{
    return s->be->leader ? s->be->leader(s) : true;
}

bool store_lease_fresh(store *s)
{
    return s->be->lease_fresh ? s->be->lease_fresh(s) : true;
}

uint64_t store_lease_generation(store *s)
{
    return s->be->lease_generation ? s->be->lease_generation(s) : 0;
}

int store_live_engines(store *s)
{
    int n = s->be->live_engines ? s->be->live_engines(s) : 1;
    return n > 0 ? n : 1;
}

int store_reclaim_runs(store *s, const json_t *ids, json_t **kept, char *err, size_t errlen)
{
    if (!s->be->reclaim_runs) {
        *kept = json_copy((json_t *)ids);
        return 0;
    }
    return s->be->reclaim_runs(s, ids, kept, err, errlen);
}

int store_reclaim_traces(store *s, char *const *ids, size_t n, bool *keep, char *err, size_t errlen)
{
    if (!s->be->reclaim_traces) {
        for (size_t i = 0; i < n; i++)
            keep[i] = true;
        return 0;
    }
    return s->be->reclaim_traces(s, ids, n, keep, err, errlen);
}

void store_on_cluster(store *s, store_cluster_cb fn, void *data)
{
    if (s->be->on_cluster)
        s->be->on_cluster(s, fn, data);
}

void store_set_scripts(store *s, const json_t *scripts)
{
    if (s->be->set_scripts)
        s->be->set_scripts(s, scripts);
}

int store_prompt_metrics(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                         json_t **out, char *err, size_t errlen)
{
    return s->be->prompt_metrics_sliced(s, prompt, version, since_ms, until_ms, NULL, out, err, errlen);
}

int store_prompt_series(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                        int64_t step_ms, json_t **points, char *err, size_t errlen)
{
    *points = NULL;
    if (step_ms <= 0 || until_ms <= since_ms || (until_ms - since_ms) / step_ms >= STORE_SERIES_MAX) {
        snprintf(err, errlen, "a series has 1 to %d buckets", STORE_SERIES_MAX);
        return -1;
    }
    return s->be->prompt_series(s, prompt, version, since_ms, until_ms, step_ms, points, err, errlen);
}

void store_metrics(store *s, buf_t *b)
{
    s->be->metrics(s, b);
}

void store_flush(store *s)
{
    s->be->flush(s);
}

void store_close(store *s)
{
    s->be->close(s);
}

int store_submit(store *s, store_write *w)
{
    return s->be->submit(s, w);
}

bool store_healthy(store *s)
{
    return s->be->healthy(s);
}

int store_get_trace_json(store *s, const char *id, buf_t *out, char *err, size_t errlen)
{
    return s->be->get_trace_json(s, id, out, err, errlen);
}

int store_list_traces_json(store *s, const store_trace_query *q, buf_t *out, char *err, size_t errlen)
{
    return s->be->list_traces_json(s, q, out, err, errlen);
}

int store_get_traces_for_eval(store *s, char *const *ids, size_t n, char **json, char **prompt, int64_t *version, char *err, size_t errlen)
{
    return s->be->get_traces_for_eval(s, ids, n, json, prompt, version, err, errlen);
}

int store_list_trace_ids(store *s, const char *prompt, int64_t since_ms, int64_t until_ms, bool only_unevaluated, int64_t *cur_ts, int64_t *cur_seq, int limit, char ***ids, size_t *n, char *err, size_t errlen)
{
    return s->be->list_trace_ids(s, prompt, since_ms, until_ms, only_unevaluated, cur_ts, cur_seq, limit, ids, n, err, errlen);
}

int store_llm_totals(store *s, int64_t since_ms, const char *run_id, int64_t *calls, int64_t *tokens, double *cost, char *err, size_t errlen)
{
    return s->be->llm_totals(s, since_ms, run_id, calls, tokens, cost, err, errlen);
}

int store_list_llm_calls_json(store *s, int64_t since_ms, const char *caller_kind, int limit, buf_t *out, char *err, size_t errlen)
{
    return s->be->list_llm_calls_json(s, since_ms, caller_kind, limit, out, err, errlen);
}

int store_load_registry(store *s, json_t **prompts, json_t **datasets, char *err, size_t errlen)
{
    return s->be->load_registry(s, prompts, datasets, err, errlen);
}

int store_list_transitions_json(store *s, const char *prompt, int64_t after_seq, int limit, buf_t *out, char *err, size_t errlen)
{
    return s->be->list_transitions_json(s, prompt, after_seq, limit, out, err, errlen);
}

int store_dataset_cases(store *s, const char *dataset, int64_t version, store_case_form form, json_t **cases, char *err, size_t errlen)
{
    return s->be->dataset_cases(s, dataset, version, form, cases, err, errlen);
}

int store_select_traces(store *s, const store_trace_filter *f, json_t **traces, char *err, size_t errlen)
{
    return s->be->select_traces(s, f, traces, err, errlen);
}

int store_dataset_versions(store *s, const char *dataset, int64_t current, json_t **versions, char *err, size_t errlen)
{
    return s->be->dataset_versions(s, dataset, current, versions, err, errlen);
}

int store_failed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int limit, json_t **cases, char *err, size_t errlen)
{
    return s->be->failed_trace_cases(s, prompt, version, since_ms, until_ms, limit, cases, err, errlen);
}

int store_passed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int limit, json_t **cases, char *err, size_t errlen)
{
    return s->be->passed_trace_cases(s, prompt, version, since_ms, until_ms, limit, cases, err, errlen);
}

int store_cache_get(store *s, char *const *keys, size_t n, char **results, char *err, size_t errlen)
{
    return s->be->cache_get(s, keys, n, results, err, errlen);
}

int store_get_run(store *s, const char *id, json_t **run, char *err, size_t errlen)
{
    return s->be->get_run(s, id, run, err, errlen);
}

int store_list_runs(store *s, const char *prompt, int limit, json_t **runs, char *err, size_t errlen)
{
    return s->be->list_runs(s, prompt, limit, runs, err, errlen);
}

int store_unfinished_runs(store *s, json_t **ids, char *err, size_t errlen)
{
    return s->be->unfinished_runs(s, ids, err, errlen);
}

int store_claim_unevaluated(store *s, const char *prompt, int limit, char ***ids, size_t *n, char *err,
                            size_t errlen)
{
    *ids = NULL;
    *n = 0;
    return s->be->claim_unevaluated ? s->be->claim_unevaluated(s, prompt, limit, ids, n, err, errlen) : 0;
}

int store_run_cases(store *s, const char *run_id, store_case_form form, json_t **cases, char *err, size_t errlen)
{
    return s->be->run_cases(s, run_id, form, cases, err, errlen);
}

int store_run_result_keys(store *s, const char *run_id, json_t **rows, char *err, size_t errlen)
{
    return s->be->run_result_keys(s, run_id, rows, err, errlen);
}

int store_run_results(store *s, const char *run_id, const int64_t *case_idx, size_t ncase, int64_t after_idx, int limit, json_t **rows, char *err, size_t errlen)
{
    return s->be->run_results(s, run_id, case_idx, ncase, after_idx, limit, rows, err, errlen);
}

int store_load_loop_states(store *s, json_t **states, char *err, size_t errlen)
{
    return s->be->load_loop_states(s, states, err, errlen);
}

int store_list_loop_events(store *s, const char *prompt, int64_t after_seq, int limit, json_t **items, char *err, size_t errlen)
{
    return s->be->list_loop_events(s, prompt, after_seq, limit, items, err, errlen);
}

int store_prompt_metrics_sliced(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, const json_t *slice_keys, json_t **out, char *err, size_t errlen)
{
    return s->be->prompt_metrics_sliced(s, prompt, version, since_ms, until_ms, slice_keys, out, err, errlen);
}
