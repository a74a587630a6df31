/* pg_registry.c — the PostgreSQL SQL of the prompt registry, datasets and regression runs:
 * reads for the thread pool (the writes are the shared ops of ops.c). The schema is in pg.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/jtree.h"
#include "store/pg_private.h"

#define PG(base) ((pg_store *)(base))

int pg_load_registry(store *s, json_t **prompts, json_t **datasets, char *err, size_t errlen)
{
    pgq *q;
    *prompts = json_object();
    *datasets = json_object();
    if (pg_read_begin(PG(s), "SELECT name, description, created_at, pinned, pin_reason, canary_share FROM prompts",
                      &q, err, errlen))
        return -1;
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_object_set_new(*prompts, pgq_col(q, 0),
                            json_pack("{s:o, s:I, s:b, s:o, s:f, s:{}, s:[]}", "description", pgq_col_text(q, 1),
                                      "created_ms", (json_int_t)pgq_col_int(q, 2), "pinned", (int)pgq_col_int(q, 3),
                                      "pin_reason", pgq_col_text(q, 4), "canary_share", pgq_col_double(q, 5),
                                      "labels", "versions"));
    if (pg_read_end(PG(s), q, rc, err, errlen))
        return -1;
    if (pg_read_begin(PG(s),
                      "SELECT prompt, version, messages, model, parent, author, note, status, created_at "
                      "FROM prompt_versions ORDER BY prompt, version",
                      &q, err, errlen))
        return -1;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        json_t *p = json_object_get(*prompts, pgq_col(q, 0));
        if (!p)
            continue;
        json_t *v = json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:I}", "version", (json_int_t)pgq_col_int(q, 1),
                              "messages", pgq_col_json(q, 2), "model", pgq_col_json(q, 3), "parent",
                              pgq_isnull(q, 4) ? json_null() : json_integer(pgq_col_int(q, 4)), "author",
                              pgq_col_text(q, 5), "note", pgq_col_text(q, 6), "status", pgq_col_text(q, 7),
                              "created_ms", (json_int_t)pgq_col_int(q, 8));
        json_array_append_new(json_object_get(p, "versions"), v);
    }
    if (pg_read_end(PG(s), q, rc, err, errlen))
        return -1;
    if (pg_read_begin(PG(s), "SELECT prompt, label, version FROM prompt_labels", &q, err, errlen))
        return -1;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        json_t *p = json_object_get(*prompts, pgq_col(q, 0));
        if (p)
            json_object_set_new(json_object_get(p, "labels"), pgq_col(q, 1), json_integer(pgq_col_int(q, 2)));
    }
    if (pg_read_end(PG(s), q, rc, err, errlen))
        return -1;
    if (pg_read_begin(PG(s), "SELECT name, description, version, cases, created_at, updated_at FROM datasets", &q, err,
                      errlen))
        return -1;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_object_set_new(*datasets, pgq_col(q, 0),
                            json_pack("{s:o, s:I, s:I, s:I, s:I}", "description", pgq_col_text(q, 1), "version",
                                      (json_int_t)pgq_col_int(q, 2), "cases", (json_int_t)pgq_col_int(q, 3),
                                      "created_ms", (json_int_t)pgq_col_int(q, 4), "updated_ms",
                                      (json_int_t)pgq_col_int(q, 5)));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

int pg_list_transitions_json(store *s, const char *prompt, int64_t after_seq, int limit, buf_t *out, char *err,
                             size_t errlen)
{
    pgq *q;
    if (pg_read_begin(PG(s),
                      "SELECT seq, version, from_status, to_status, reason, actor, ts FROM transitions "
                      "WHERE prompt = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                      &q, err, errlen))
        return -1;
    pgq_text(q, 1, prompt);
    pgq_int(q, 2, after_seq);
    pgq_int(q, 3, limit);
    json_t *items = json_array();
    int rc;
    int64_t last = 0;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        last = pgq_col_int(q, 0);
        json_array_append_new(items, json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o}", "seq", (json_int_t)last,
                                               "version", pgq_isnull(q, 1) ? json_null() : json_integer(pgq_col_int(q, 1)),
                                               "from", pgq_col_text(q, 2), "to", pgq_col_text(q, 3), "reason",
                                               pgq_col_text(q, 4), "actor", pgq_col_text(q, 5), "at",
                                               pgq_col_time(q, 6)));
    }
    int r = pg_read_end(PG(s), q, rc, err, errlen);
    json_t *root = json_pack("{s:o, s:o}", "items", items, "next_cursor",
                             (int)json_array_size(items) == limit ? json_integer(last) : json_null());
    char *text = json_text(root, JSON_COMPACT);
    buf_puts(out, text);
    free(text);
    json_decref(root);
    return r;
}

/* A case from a row of (id, body), in the form asked for. */
static json_t *case_col(const pgq *q, store_case_form form)
{
    return form == STORE_CASE_OBJECTS ? pgq_col_json(q, 1) : pgq_col_text(q, form == STORE_CASE_IDS ? 0 : 1);
}

int pg_dataset_cases(store *s, const char *dataset, int64_t version, store_case_form form, json_t **cases, char *err,
                     size_t errlen)
{
    pgq *q;
    *cases = json_array();
    if (pg_read_begin(PG(s),
                      "SELECT id, body FROM dataset_cases WHERE dataset = ?1 AND added <= ?2 "
                      "AND (removed IS NULL OR removed > ?2) ORDER BY id COLLATE \"C\"",
                      &q, err, errlen))
        return -1;
    pgq_text(q, 1, dataset);
    pgq_int(q, 2, version);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*cases, case_col(q, form));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

/* ?1 prompt, ?2 since, ?3 until, ?4 limit, ?5 version (0: any) */
static int trace_cases(store *s, const char *sql, const char *prompt, int64_t version, int64_t since_ms,
                       int64_t until_ms, int limit, json_t **cases, char *err, size_t errlen)
{
    pgq *q;
    *cases = json_array();
    if (pg_read_begin(PG(s), sql, &q, err, errlen))
        return -1;
    pgq_text(q, 1, prompt);
    pgq_int(q, 2, since_ms);
    pgq_int(q, 3, until_ms);
    pgq_int(q, 4, limit);
    pgq_int(q, 5, version);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*cases, json_pack("{s:o, s:o, s:I, s:o, s:b, s:o, s:o, s:o}", "trace_id",
                                                pgq_col_text(q, 0), "variables", pgq_col_json(q, 1), "ts",
                                                (json_int_t)pgq_col_int(q, 2), "reasons", pgq_col_json(q, 3),
                                                "negative", (int)pgq_col_int(q, 4), "output", pgq_col_text(q, 5),
                                                "messages", pgq_col_json(q, 6), "metadata", pgq_col_json(q, 7)));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

/* #> keeps JSON text (a string quoted), #>> unquotes a string as SQLite's json_extract does */
int pg_failed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int limit,
                          json_t **cases, char *err, size_t errlen)
{
    return trace_cases(
        s,
        "SELECT t.id, t.body #> '{input,variables}', t.ts, "
        "  (SELECT coalesce(json_agg(json_build_object('evaluator', evaluator, 'reason', reason)), '[]'::json) "
        "   FROM scores WHERE trace_id = t.id AND pass = 0 AND status = 'ok'), t.negative, t.body #>> '{output}', "
        "  t.body #> '{input,messages}', t.body #> '{metadata}' "
        "FROM traces t WHERE t.prompt = ?1 AND t.ts >= ?2 AND t.ts < ?3 AND (?5 = 0 OR t.version = ?5) "
        "AND (t.verdict = 1 OR t.negative = 1) "
        "AND json_typeof(t.body #> '{input,variables}') = 'object' "
        "ORDER BY t.ts DESC, t.seq DESC LIMIT ?4",
        prompt, version, since_ms, until_ms, limit, cases, err, errlen);
}

int pg_passed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms, int limit,
                          json_t **cases, char *err, size_t errlen)
{
    return trace_cases(s,
                       "SELECT t.id, t.body #> '{input,variables}', t.ts, '[]', t.negative, t.body #>> '{output}', "
                       "  t.body #> '{input,messages}', t.body #> '{metadata}' "
                       "FROM traces t WHERE t.prompt = ?1 AND t.ts >= ?2 AND t.ts < ?3 AND (?5 = 0 OR t.version = ?5) "
                       "AND t.verdict = 0 AND t.negative = 0 "
                       "AND json_typeof(t.body #> '{input,variables}') = 'object' "
                       "ORDER BY t.ts DESC, t.seq DESC LIMIT ?4",
                       prompt, version, since_ms, until_ms, limit, cases, err, errlen);
}

int pg_select_traces(store *s, const store_trace_filter *f, json_t **traces, char *err, size_t errlen)
{
    buf_t sql;
    buf_init(&sql);
    buf_puts(&sql, "SELECT t.id, t.body #> '{input,variables}', t.body #> '{output}' "
                   "FROM traces t WHERE t.prompt = ?1 AND t.ts >= ?2 AND t.ts < ?3 AND (?4 = 0 OR t.version = ?4) "
                   "AND json_typeof(t.body #> '{input,variables}') = 'object' "
                   "AND (?5 < 0 OR (?5 = 1) = (coalesce(t.verdict = 1, false) OR t.negative = 1)) "
                   "AND (?6::text IS NULL OR EXISTS (SELECT 1 FROM scores sc WHERE sc.trace_id = t.id "
                   "     AND sc.evaluator = ?6 AND sc.pass = 0 AND sc.status = 'ok')) ");
    /* metadata[key] is the value, or a list holding it (strings and numbers compared as text) */
    for (int i = 0; i < f->nmeta; i++)
        buf_printf(&sql,
                   "AND json_typeof(t.body #> ARRAY['metadata', ?%d::text]) IN ('string', 'number', 'array') "
                   "AND EXISTS (SELECT 1 FROM json_array_elements(CASE WHEN json_typeof(t.body #> ARRAY['metadata', "
                   "?%d::text]) = 'array' THEN t.body #> ARRAY['metadata', ?%d::text] ELSE json_build_array(t.body "
                   "#> ARRAY['metadata', ?%d::text]) END) m "
                   "     WHERE json_typeof(m) IN ('string', 'number') AND m #>> '{}' = ?%d) ",
                   8 + 2 * i, 8 + 2 * i, 8 + 2 * i, 8 + 2 * i, 9 + 2 * i);
    buf_puts(&sql, "ORDER BY t.ts DESC, t.seq DESC LIMIT ?7");
    pgq *q;
    *traces = json_array();
    int bad = pg_read_begin(PG(s), sql.data, &q, err, errlen);
    buf_free(&sql);
    if (bad)
        return -1;
    pgq_text(q, 1, f->prompt);
    pgq_int(q, 2, f->since_ms);
    pgq_int(q, 3, f->until_ms);
    pgq_int(q, 4, f->version);
    pgq_int(q, 5, f->failed);
    pgq_text(q, 6, f->evaluator);
    pgq_int(q, 7, f->limit);
    for (int i = 0; i < f->nmeta; i++) {
        pgq_text(q, 8 + 2 * i, f->meta_key[i]);
        pgq_text(q, 9 + 2 * i, f->meta_value[i]);
    }
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*traces, json_pack("{s:o, s:o, s:o}", "id", pgq_col_text(q, 0), "variables",
                                                 pgq_col_json(q, 1), "output", pgq_col_json(q, 2)));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

int pg_dataset_versions(store *s, const char *dataset, int64_t current, json_t **versions, char *err, size_t errlen)
{
    pgq *q;
    *versions = json_array();
    if (current < 1)
        return 0;
    if (pg_read_begin(PG(s),
                      "SELECT id, added, removed FROM dataset_cases WHERE dataset = ?1 ORDER BY id COLLATE \"C\", added",
                      &q, err, errlen))
        return -1;
    pgq_text(q, 1, dataset);
    store_case_tally t;
    store_case_tally_init(&t, current);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        store_case_tally_row(&t, pgq_col(q, 0), pgq_col_int(q, 1), pgq_isnull(q, 2) ? 0 : pgq_col_int(q, 2));
    store_case_tally_end(&t, *versions);
    return pg_read_end(PG(s), q, rc, err, errlen);
}

int pg_cache_get(store *s, char *const *keys, size_t n, char **results, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++)
        results[i] = NULL;
    PGconn *c = pg_read_acquire(PG(s), err, errlen);
    if (!c)
        return -1;
    int ret = 0;
    for (size_t i = 0; i < n && !ret; i++) {
        pgq *q = pgq_new(c, "SELECT result FROM result_cache WHERE key = ?1");
        pgq_text(q, 1, keys[i]);
        int rc = pgq_step(q);
        if (rc == PGQ_ROW)
            results[i] = xstrdup(pgq_col(q, 0));
        if (rc == PGQ_ERROR) {
            snprintf(err, errlen, "store read failed: %s", q->err);
            ret = -1;
        }
        pgq_free(q);
    }
    pg_read_release(PG(s), c);
    return ret;
}

static json_t *run_row(const pgq *q, bool full)
{
    json_t *r = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I}", "id", pgq_col_text(q, 0), "kind",
                          pgq_col_text(q, 1), "prompt", pgq_col_text(q, 2), "state", pgq_col_text(q, 4), "verdict",
                          pgq_col_text(q, 5), "error", pgq_col_text(q, 7), "created_at", pgq_col_time(q, 8),
                          "created_ms", (json_int_t)pgq_col_int(q, 8));
    json_object_set_new(r, "finished_at", pgq_col_time(q, 9));
    json_object_set_new(r, "spec", pgq_col_json(q, 3));
    if (full)
        json_object_set_new(r, "report", pgq_col_json(q, 6));
    return r;
}

#define RUN_COLUMNS "id, kind, prompt, spec, state, verdict, report, error, created_at, finished_at"

int pg_get_run(store *s, const char *id, json_t **run, char *err, size_t errlen)
{
    pgq *q;
    *run = NULL;
    if (pg_read_begin(PG(s), "SELECT " RUN_COLUMNS " FROM runs WHERE id = ?1", &q, err, errlen))
        return -1;
    pgq_text(q, 1, id);
    int rc = pgq_step(q);
    if (rc == PGQ_ROW)
        *run = run_row(q, true);
    if (pg_read_end(PG(s), q, rc, err, errlen))
        return -1;
    return *run ? 0 : 1;
}

int pg_list_runs(store *s, const char *prompt, int limit, json_t **runs, char *err, size_t errlen)
{
    pgq *q;
    *runs = json_array();
    if (pg_read_begin(PG(s),
                      "SELECT " RUN_COLUMNS " FROM runs WHERE ?1::text IS NULL OR prompt = ?1 "
                      "ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT ?2",
                      &q, err, errlen))
        return -1;
    pgq_text(q, 1, prompt);
    pgq_int(q, 2, limit);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*runs, run_row(q, false));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

int pg_run_cases(store *s, const char *run_id, store_case_form form, json_t **cases, char *err, size_t errlen)
{
    pgq *q;
    *cases = json_array();
    if (pg_read_begin(PG(s), "SELECT idx, body FROM run_cases WHERE run_id = ?1 ORDER BY idx", &q, err, errlen))
        return -1;
    pgq_text(q, 1, run_id);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*cases, case_col(q, form));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

int pg_run_result_keys(store *s, const char *run_id, json_t **rows, char *err, size_t errlen)
{
    pgq *q;
    *rows = json_array();
    if (pg_read_begin(PG(s), "SELECT case_idx, version, sample, status, cached FROM run_results WHERE run_id = ?1", &q,
                      err, errlen))
        return -1;
    pgq_text(q, 1, run_id);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*rows, json_pack("[I, I, I, o, b]", (json_int_t)pgq_col_int(q, 0),
                                               (json_int_t)pgq_col_int(q, 1), (json_int_t)pgq_col_int(q, 2),
                                               pgq_col_text(q, 3), (int)pgq_col_int(q, 4)));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

int pg_run_results(store *s, const char *run_id, const int64_t *case_idx, size_t ncase, int64_t after_idx, int limit,
                   json_t **rows, char *err, size_t errlen)
{
    *rows = json_array();
    PGconn *c = pg_read_acquire(PG(s), err, errlen);
    if (!c)
        return -1;
    int ret = 0;
    for (size_t k = 0; k < (case_idx ? ncase : 1) && !ret; k++) {
        pgq *q = pgq_new(c, "SELECT case_idx, version, sample, status, output, error, verdicts, input_tokens, "
                            "output_tokens, cost, latency_ms, cached FROM run_results WHERE run_id = ?1 "
                            "AND (?2::bigint IS NULL OR case_idx = ?2) AND case_idx > ?3 "
                            "ORDER BY case_idx, version, sample LIMIT ?4");
        pgq_text(q, 1, run_id);
        if (case_idx)
            pgq_int(q, 2, case_idx[k]);
        else
            pgq_null(q, 2);
        pgq_int(q, 3, after_idx);
        pgq_int(q, 4, limit);
        int rc;
        while ((rc = pgq_step(q)) == PGQ_ROW)
            json_array_append_new(
                *rows, json_pack("{s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:I, s:I, s:f, s:f, s:b}", "case",
                                 (json_int_t)pgq_col_int(q, 0), "version", (json_int_t)pgq_col_int(q, 1), "sample",
                                 (json_int_t)pgq_col_int(q, 2), "status", pgq_col_text(q, 3), "output",
                                 pgq_col_text(q, 4), "error", pgq_col_text(q, 5), "verdicts", pgq_col_json(q, 6),
                                 "input_tokens", (json_int_t)pgq_col_int(q, 7), "output_tokens",
                                 (json_int_t)pgq_col_int(q, 8), "cost", pgq_col_double(q, 9), "latency_ms",
                                 pgq_col_double(q, 10), "cached", (int)pgq_col_int(q, 11)));
        if (rc == PGQ_ERROR) {
            snprintf(err, errlen, "store read failed: %s", q->err);
            ret = -1;
        }
        pgq_free(q);
    }
    pg_read_release(PG(s), c);
    return ret;
}
