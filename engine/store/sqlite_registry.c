/* sqlite_registry.c — the SQL of the prompt registry, datasets and regression
 * runs: write ops for the group-commit writer and reads for the thread pool.
 * The schema is migration 4 in sqlite.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite_private.h"
#include "base/jtree.h"

/* ---- writes ---- */

/* ---- reads ---- */

/* A read: borrows a connection, prepares sql, and leaves both in *db, *st. */
int read_begin(sqlite_store *s, const char *sql, sqlite3 **db, sqlite3_stmt **st, char *err, size_t errlen)
{
    *db = sqlite_read_acquire(s, err, errlen);
    if (!*db)
        return -1;
    if (sqlite3_prepare_v2(*db, sql, -1, st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "store read failed: %s", sqlite3_errmsg(*db));
        sqlite_read_release(s, *db);
        return -1;
    }
    return 0;
}

/* Finishes a read: rc is the last sqlite3_step result. */
int read_end(sqlite_store *s, sqlite3 *db, sqlite3_stmt *st, int rc, char *err, size_t errlen)
{
    int out = 0;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        snprintf(err, errlen, "store read failed: %s", sqlite3_errmsg(db));
        out = -1;
    }
    sqlite3_finalize(st);
    sqlite_read_release(s, db);
    return out;
}

json_t *col_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? json_string((const char *)t) : json_null();
}

json_t *col_json(sqlite3_stmt *st, int i)
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    if (!t)
        return json_null();
    json_t *v = json_loads(t, JSON_DECODE_ANY, NULL);
    return v ? v : json_string(t);
}

json_t *col_time(sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return json_null();
    char t[32];
    rfc3339_format(sqlite3_column_int64(st, i), t);
    return json_string(t);
}

int sqlite_load_registry(store *base, json_t **prompts, json_t **datasets, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *prompts = json_object();
    *datasets = json_object();
    if (read_begin(s, "SELECT name, description, created_at, pinned, pin_reason, canary_share FROM prompts", &db, &st,
                   err, errlen))
        return -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_object_set_new(*prompts, (const char *)sqlite3_column_text(st, 0),
                            json_pack("{s:o, s:I, s:b, s:o, s:f, s:{}, s:[]}", "description", col_text(st, 1),
                                      "created_ms", (json_int_t)sqlite3_column_int64(st, 2), "pinned",
                                      sqlite3_column_int(st, 3), "pin_reason", col_text(st, 4), "canary_share",
                                      sqlite3_column_double(st, 5), "labels", "versions"));
    if (read_end(s, db, st, rc, err, errlen))
        return -1;
    if (read_begin(s,
                   "SELECT prompt, version, messages, model, parent, author, note, status, created_at "
                   "FROM prompt_versions ORDER BY prompt, version",
                   &db, &st, err, errlen))
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *p = json_object_get(*prompts, (const char *)sqlite3_column_text(st, 0));
        if (!p)
            continue;
        json_t *v = json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:I}", "version",
                              (json_int_t)sqlite3_column_int64(st, 1), "messages", col_json(st, 2), "model",
                              col_json(st, 3), "parent",
                              sqlite3_column_type(st, 4) == SQLITE_NULL ? json_null()
                                                                        : json_integer(sqlite3_column_int64(st, 4)),
                              "author", col_text(st, 5), "note", col_text(st, 6), "status", col_text(st, 7),
                              "created_ms", (json_int_t)sqlite3_column_int64(st, 8));
        json_array_append_new(json_object_get(p, "versions"), v);
    }
    if (read_end(s, db, st, rc, err, errlen))
        return -1;
    if (read_begin(s, "SELECT prompt, label, version FROM prompt_labels", &db, &st, err, errlen))
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *p = json_object_get(*prompts, (const char *)sqlite3_column_text(st, 0));
        if (p)
            json_object_set_new(json_object_get(p, "labels"), (const char *)sqlite3_column_text(st, 1),
                                json_integer(sqlite3_column_int64(st, 2)));
    }
    if (read_end(s, db, st, rc, err, errlen))
        return -1;
    if (read_begin(s, "SELECT name, description, version, cases, created_at, updated_at FROM datasets", &db, &st,
                   err, errlen))
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_object_set_new(*datasets, (const char *)sqlite3_column_text(st, 0),
                            json_pack("{s:o, s:I, s:I, s:I, s:I}", "description", col_text(st, 1), "version",
                                      (json_int_t)sqlite3_column_int64(st, 2), "cases",
                                      (json_int_t)sqlite3_column_int64(st, 3), "created_ms",
                                      (json_int_t)sqlite3_column_int64(st, 4), "updated_ms",
                                      (json_int_t)sqlite3_column_int64(st, 5)));
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_list_transitions_json(store *base, const char *prompt, int64_t after_seq, int limit, buf_t *out, char *err,
                                size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    if (read_begin(s,
                   "SELECT seq, version, from_status, to_status, reason, actor, ts FROM transitions "
                   "WHERE prompt = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                   &db, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, prompt, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after_seq);
    sqlite3_bind_int(st, 3, limit);
    json_t *items = json_array();
    int rc;
    int64_t last = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        last = sqlite3_column_int64(st, 0);
        json_array_append_new(
            items, json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o}", "seq", (json_int_t)last, "version",
                             sqlite3_column_type(st, 1) == SQLITE_NULL ? json_null()
                                                                       : json_integer(sqlite3_column_int64(st, 1)),
                             "from", col_text(st, 2), "to", col_text(st, 3), "reason", col_text(st, 4), "actor",
                             col_text(st, 5), "at", col_time(st, 6)));
    }
    int r = read_end(s, db, st, rc, err, errlen);
    json_t *root = json_pack("{s:o, s:o}", "items", items, "next_cursor",
                             (int)json_array_size(items) == limit ? json_integer(last) : json_null());
    char *text = json_text(root, JSON_COMPACT);
    buf_puts(out, text);
    free(text);
    json_decref(root);
    return r;
}

/* A case from a row of (id, body), in the form asked for. */
static json_t *case_col(sqlite3_stmt *st, store_case_form form)
{
    return form == STORE_CASE_OBJECTS ? col_json(st, 1) : col_text(st, form == STORE_CASE_IDS ? 0 : 1);
}

int sqlite_dataset_cases(store *base, const char *dataset, int64_t version, store_case_form form, json_t **cases,
                        char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *cases = json_array();
    if (read_begin(s,
                   "SELECT id, body FROM dataset_cases WHERE dataset = ?1 AND added <= ?2 "
                   "AND (removed IS NULL OR removed > ?2) ORDER BY id",
                   &db, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, dataset, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(*cases, case_col(st, form));
    return read_end(s, db, st, rc, err, errlen);
}

/* ?1 prompt, ?2 since, ?3 until, ?4 limit, ?5 version (0: any) */
static int trace_cases(sqlite_store *s, const char *sql, const char *prompt, int64_t version, int64_t since_ms,
                       int64_t until_ms, int limit, json_t **cases, char *err, size_t errlen)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    *cases = json_array();
    if (read_begin(s, sql, &db, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, prompt, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, since_ms);
    sqlite3_bind_int64(st, 3, until_ms);
    sqlite3_bind_int(st, 4, limit);
    sqlite3_bind_int64(st, 5, version);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *c = json_pack("{s:o, s:o, s:I, s:o, s:b, s:o, s:o, s:o}", "trace_id", col_text(st, 0), "variables",
                              col_json(st, 1), "ts", (json_int_t)sqlite3_column_int64(st, 2), "reasons",
                              col_json(st, 3), "negative", sqlite3_column_int(st, 4), "output", col_text(st, 5),
                              "messages", col_json(st, 6), "metadata", col_json(st, 7));
        json_array_append_new(*cases, c);
    }
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_failed_trace_cases(store *base, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                             int limit, json_t **cases, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    return trace_cases(
        s,
        "SELECT t.id, json_extract(t.body, '$.input.variables'), t.ts, "
        "  (SELECT json_group_array(json_object('evaluator', evaluator, 'reason', reason)) FROM scores "
        "   WHERE trace_id = t.id AND pass = 0 AND status = 'ok'), t.negative, json_extract(t.body, '$.output'), "
        "  json_extract(t.body, '$.input.messages'), json_extract(t.body, '$.metadata') "
        "FROM traces t WHERE t.prompt = ?1 AND t.ts >= ?2 AND t.ts < ?3 AND (?5 = 0 OR t.version = ?5) "
        "AND (t.verdict = 1 OR t.negative = 1) "
        "AND json_type(t.body, '$.input.variables') = 'object' "
        "ORDER BY t.ts DESC, t.seq DESC LIMIT ?4",
        prompt, version, since_ms, until_ms, limit, cases, err, errlen);
}

int sqlite_passed_trace_cases(store *base, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                             int limit, json_t **cases, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    return trace_cases(s,
                       "SELECT t.id, json_extract(t.body, '$.input.variables'), t.ts, json('[]'), t.negative, "
                       "  json_extract(t.body, '$.output'), json_extract(t.body, '$.input.messages'), "
                       "  json_extract(t.body, '$.metadata') "
                       "FROM traces t WHERE t.prompt = ?1 AND t.ts >= ?2 AND t.ts < ?3 AND (?5 = 0 OR t.version = ?5) "
                       "AND t.verdict = 0 AND t.negative = 0 "
                       "AND json_type(t.body, '$.input.variables') = 'object' "
                       "ORDER BY t.ts DESC, t.seq DESC LIMIT ?4",
                       prompt, version, since_ms, until_ms, limit, cases, err, errlen);
}

int sqlite_select_traces(store *base, const store_trace_filter *f, json_t **traces, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    /* the fixed part binds ?1..?7; each metadata pair adds a path and a value */
    buf_t sql;
    buf_init(&sql);
    /* -> keeps the JSON form (a string output stays a string; json_extract would unquote it) */
    buf_puts(&sql, "SELECT t.id, t.body -> '$.input.variables', t.body -> '$.output' "
                   "FROM traces t WHERE t.prompt = ?1 AND t.ts >= ?2 AND t.ts < ?3 AND (?4 = 0 OR t.version = ?4) "
                   "AND json_type(t.body, '$.input.variables') = 'object' "
                   "AND (?5 < 0 OR (?5 = 1) = (t.verdict IS 1 OR t.negative IS 1)) "
                   "AND (?6 IS NULL OR EXISTS (SELECT 1 FROM scores sc WHERE sc.trace_id = t.id "
                   "     AND sc.evaluator = ?6 AND sc.pass = 0 AND sc.status = 'ok')) ");
    for (int i = 0; i < f->nmeta; i++)
        buf_printf(&sql,
                   "AND json_type(t.body, ?%d) IN ('text', 'integer', 'real', 'array') "
                   "AND EXISTS (SELECT 1 FROM json_each(t.body, ?%d) m "
                   "     WHERE m.type IN ('text', 'integer', 'real') AND CAST(m.value AS TEXT) = ?%d) ",
                   8 + 2 * i, 8 + 2 * i, 9 + 2 * i);
    buf_puts(&sql, "ORDER BY t.ts DESC, t.seq DESC LIMIT ?7");
    sqlite3 *db;
    sqlite3_stmt *st;
    *traces = json_array();
    int bad = read_begin(s, sql.data, &db, &st, err, errlen);
    buf_free(&sql);
    if (bad)
        return -1;
    sqlite3_bind_text(st, 1, f->prompt, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, f->since_ms);
    sqlite3_bind_int64(st, 3, f->until_ms);
    sqlite3_bind_int64(st, 4, f->version);
    sqlite3_bind_int(st, 5, f->failed);
    if (f->evaluator)
        sqlite3_bind_text(st, 6, f->evaluator, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 7, f->limit);
    char paths[STORE_TRACE_FILTER_META][200];
    for (int i = 0; i < f->nmeta; i++) {
        /* a quoted label: the key is checked (letters, digits, - _ .) before it gets here */
        snprintf(paths[i], sizeof paths[i], "$.metadata.\"%s\"", f->meta_key[i]);
        sqlite3_bind_text(st, 8 + 2 * i, paths[i], -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 9 + 2 * i, f->meta_value[i], -1, SQLITE_STATIC);
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(*traces, json_pack("{s:o, s:o, s:o}", "id", col_text(st, 0), "variables",
                                                 col_json(st, 1), "output", col_json(st, 2)));
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_dataset_versions(store *base, const char *dataset, int64_t current, json_t **versions, char *err,
                           size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *versions = json_array();
    if (current < 1)
        return 0;
    if (read_begin(s, "SELECT id, added, removed FROM dataset_cases WHERE dataset = ?1 ORDER BY id, added", &db, &st,
                   err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, dataset, -1, SQLITE_STATIC);
    store_case_tally t;
    store_case_tally_init(&t, current);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        store_case_tally_row(&t, (const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1),
                             sqlite3_column_type(st, 2) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 2));
    store_case_tally_end(&t, *versions);
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_cache_get(store *base, char *const *keys, size_t n, char **results, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    for (size_t i = 0; i < n; i++)
        results[i] = NULL;
    if (read_begin(s, "SELECT result FROM result_cache WHERE key = ?1", &db, &st, err, errlen))
        return -1;
    int rc = SQLITE_DONE;
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(st, 1, keys[i], -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            results[i] = xstrdup((const char *)sqlite3_column_text(st, 0));
            rc = SQLITE_DONE;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            break;
    }
    return read_end(s, db, st, rc, err, errlen);
}

static json_t *run_row(sqlite3_stmt *st, bool full)
{
    json_t *r = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I}", "id", col_text(st, 0), "kind", col_text(st, 1),
                          "prompt", col_text(st, 2), "state", col_text(st, 4), "verdict", col_text(st, 5), "error",
                          col_text(st, 7), "created_at", col_time(st, 8), "created_ms",
                          (json_int_t)sqlite3_column_int64(st, 8));
    json_object_set_new(r, "finished_at", col_time(st, 9));
    json_object_set_new(r, "spec", col_json(st, 3));
    if (full)
        json_object_set_new(r, "report", col_json(st, 6));
    return r;
}

#define RUN_COLUMNS "id, kind, prompt, spec, state, verdict, report, error, created_at, finished_at"

int sqlite_get_run(store *base, const char *id, json_t **run, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *run = NULL;
    if (read_begin(s, "SELECT " RUN_COLUMNS " FROM runs WHERE id = ?1", &db, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *run = run_row(st, true);
    if (read_end(s, db, st, rc, err, errlen))
        return -1;
    return *run ? 0 : 1;
}

int sqlite_list_runs(store *base, const char *prompt, int limit, json_t **runs, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *runs = json_array();
    if (read_begin(s,
                   "SELECT " RUN_COLUMNS " FROM runs WHERE ?1 IS NULL OR prompt = ?1 "
                   "ORDER BY created_at DESC, id DESC LIMIT ?2",
                   &db, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, prompt, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, limit);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(*runs, run_row(st, false));
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_unfinished_runs(store *base, json_t **ids, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *ids = json_array();
    if (read_begin(s, "SELECT id FROM runs WHERE state IN ('preparing', 'running') ORDER BY created_at", &db, &st,
                   err, errlen))
        return -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(*ids, col_text(st, 0));
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_run_cases(store *base, const char *run_id, store_case_form form, json_t **cases, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *cases = json_array();
    if (read_begin(s, "SELECT idx, body FROM run_cases WHERE run_id = ?1 ORDER BY idx", &db, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(*cases, case_col(st, form));
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_run_result_keys(store *base, const char *run_id, json_t **rows, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *rows = json_array();
    if (read_begin(s, "SELECT case_idx, version, sample, status, cached FROM run_results WHERE run_id = ?1", &db, &st,
                   err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(*rows, json_pack("[I, I, I, o, b]", (json_int_t)sqlite3_column_int64(st, 0),
                                               (json_int_t)sqlite3_column_int64(st, 1),
                                               (json_int_t)sqlite3_column_int64(st, 2), col_text(st, 3),
                                               sqlite3_column_int(st, 4)));
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_run_results(store *base, const char *run_id, const int64_t *case_idx, size_t ncase, int64_t after_idx,
                      int limit, json_t **rows, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *rows = json_array();
    if (read_begin(s,
                   "SELECT case_idx, version, sample, status, output, error, verdicts, input_tokens, output_tokens, "
                   "cost, latency_ms, cached FROM run_results WHERE run_id = ?1 AND (?2 IS NULL OR case_idx = ?2) "
                   "AND case_idx > ?3 ORDER BY case_idx, version, sample LIMIT ?4",
                   &db, &st, err, errlen))
        return -1;
    int rc = SQLITE_DONE;
    for (size_t k = 0; k < (case_idx ? ncase : 1); k++) {
        sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC);
        if (case_idx)
            sqlite3_bind_int64(st, 2, case_idx[k]);
        else
            sqlite3_bind_null(st, 2);
        sqlite3_bind_int64(st, 3, after_idx);
        sqlite3_bind_int(st, 4, limit);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            json_array_append_new(
                *rows, json_pack("{s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:I, s:I, s:f, s:f, s:b}", "case",
                                 (json_int_t)sqlite3_column_int64(st, 0), "version",
                                 (json_int_t)sqlite3_column_int64(st, 1), "sample",
                                 (json_int_t)sqlite3_column_int64(st, 2), "status", col_text(st, 3), "output",
                                 col_text(st, 4), "error", col_text(st, 5), "verdicts", col_json(st, 6),
                                 "input_tokens", (json_int_t)sqlite3_column_int64(st, 7), "output_tokens",
                                 (json_int_t)sqlite3_column_int64(st, 8), "cost", sqlite3_column_double(st, 9),
                                 "latency_ms", sqlite3_column_double(st, 10), "cached", sqlite3_column_int(st, 11)));
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_DONE)
            break;
    }
    return read_end(s, db, st, rc, err, errlen);
}
