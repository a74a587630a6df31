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

/* types: one letter per value: i int64, I int64 with 0 as NULL, d double,
 * s text (NULL as NULL) */
void op_add(store_write *w, const char *sql, const char *types, ...)
{
    size_t n = strlen(types), text = 0;
    if (n > 16)
        n = 16;
    va_list ap;
    va_start(ap, types); /* first pass: the room the texts need */
    for (size_t k = 0; k < n; k++) {
        if (types[k] == 'd') {
            (void)va_arg(ap, double);
        } else if (types[k] == 'i' || types[k] == 'I') {
            (void)va_arg(ap, int64_t);
        } else {
            const char *s = va_arg(ap, const char *);
            text += s ? strlen(s) + 1 : 0;
        }
    }
    va_end(ap);
    store_op *op = xmalloc(sizeof *op + n * sizeof(store_val) + text);
    op->sql = sql;
    op->next = NULL;
    op->n = (int)n;
    char *copy = (char *)&op->v[n];
    va_start(ap, types);
    for (size_t k = 0; k < n; k++) {
        store_val *v = &op->v[k];
        switch (types[k]) {
        case 'i':
            v->t = 'i';
            v->i = va_arg(ap, int64_t);
            break;
        case 'I':
            v->i = va_arg(ap, int64_t);
            v->t = v->i ? 'i' : 'n';
            break;
        case 'd':
            v->t = 'd';
            v->d = va_arg(ap, double);
            break;
        default: {
            const char *s = va_arg(ap, const char *);
            v->t = s ? 's' : 'n';
            if (s) {
                size_t len = strlen(s) + 1;
                memcpy(copy, s, len);
                v->s = copy;
                copy += len;
            }
        }
        }
    }
    va_end(ap);
    if (w->ops_tail)
        w->ops_tail->next = op;
    else
        w->ops = op;
    w->ops_tail = op;
    w->nops++;
}

void store_put_prompt(store_write *w, const char *name, const char *description, int64_t created_ms, bool pinned,
                      const char *pin_reason, double canary_share)
{
    static const char sql[] = "INSERT INTO prompts(name, description, created_at, pinned, pin_reason, canary_share) "
                              "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(name) DO UPDATE SET "
                              "description = ?2, pinned = ?4, pin_reason = ?5, canary_share = ?6";
    op_add(w, sql, "ssiisd", name, description, created_ms, (int64_t)pinned, pin_reason, canary_share);
}

void store_put_version(store_write *w, const char *prompt, int64_t version, const char *messages_json,
                       const char *model_json, int64_t parent, const char *author, const char *note,
                       const char *status, int64_t created_ms)
{
    static const char sql[] = "INSERT INTO prompt_versions(prompt, version, messages, model, parent, author, note, "
                              "status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
    op_add(w, sql, "sissIsssi", prompt, version, messages_json, model_json, parent, author, note, status, created_ms);
}

void store_set_version_status(store_write *w, const char *prompt, int64_t version, const char *status)
{
    static const char sql[] = "UPDATE prompt_versions SET status = ?3 WHERE prompt = ?1 AND version = ?2";
    op_add(w, sql, "sis", prompt, version, status);
}

void store_put_transition(store_write *w, const char *prompt, int64_t version, const char *from, const char *to,
                          const char *reason, const char *actor, int64_t ts_ms)
{
    static const char sql[] = "INSERT INTO transitions(prompt, version, from_status, to_status, reason, actor, ts) "
                              "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
    op_add(w, sql, "sIssssi", prompt, version, from, to, reason, actor, ts_ms);
}

void store_put_label(store_write *w, const char *prompt, const char *label, int64_t version)
{
    static const char put[] = "INSERT INTO prompt_labels(prompt, label, version) VALUES (?1, ?2, ?3) "
                              "ON CONFLICT(prompt, label) DO UPDATE SET version = ?3";
    static const char del[] = "DELETE FROM prompt_labels WHERE prompt = ?1 AND label = ?2";
    if (version)
        op_add(w, put, "ssi", prompt, label, version);
    else
        op_add(w, del, "ss", prompt, label);
}

void store_put_dataset(store_write *w, const char *name, const char *description, int64_t version, int64_t cases,
                       int64_t created_ms, int64_t updated_ms)
{
    static const char sql[] = "INSERT INTO datasets(name, description, version, cases, created_at, updated_at) "
                              "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(name) DO UPDATE SET "
                              "description = ?2, version = ?3, cases = ?4, updated_at = ?6";
    op_add(w, sql, "ssiiii", name, description, version, cases, created_ms, updated_ms);
}

void store_remove_case(store_write *w, const char *dataset, const char *id, int64_t version)
{
    static const char sql[] = "UPDATE dataset_cases SET removed = ?3 WHERE dataset = ?1 AND id = ?2 AND removed IS NULL";
    op_add(w, sql, "ssi", dataset, id, version);
}

void store_remove_all_cases(store_write *w, const char *dataset, int64_t version)
{
    static const char sql[] = "UPDATE dataset_cases SET removed = ?2 WHERE dataset = ?1 AND removed IS NULL";
    op_add(w, sql, "si", dataset, version);
}

void store_put_case(store_write *w, const char *dataset, const char *id, int64_t version, const char *body_json)
{
    static const char sql[] = "INSERT INTO dataset_cases(dataset, id, added, body) VALUES (?1, ?2, ?3, ?4)";
    op_add(w, sql, "ssis", dataset, id, version, body_json);
}

void store_put_run(store_write *w, const char *id, const char *kind, const char *prompt, const char *spec_json,
                   const char *state, int64_t created_ms)
{
    static const char sql[] = "INSERT INTO runs(id, kind, prompt, spec, state, created_at) "
                              "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id) DO UPDATE SET state = ?5";
    op_add(w, sql, "sssssi", id, kind, prompt, spec_json, state, created_ms);
}

void store_finish_run(store_write *w, const char *id, const char *state, const char *verdict, const char *report_json,
                      const char *error, int64_t finished_ms)
{
    static const char sql[] = "UPDATE runs SET state = ?2, verdict = ?3, report = ?4, error = ?5, finished_at = ?6 "
                              "WHERE id = ?1";
    op_add(w, sql, "sssssi", id, state, verdict, report_json, error, finished_ms);
}

void store_put_run_case(store_write *w, const char *run_id, int64_t idx, const char *body_json)
{
    static const char sql[] = "INSERT INTO run_cases(run_id, idx, body) VALUES (?1, ?2, ?3) "
                              "ON CONFLICT(run_id, idx) DO NOTHING";
    op_add(w, sql, "sis", run_id, idx, body_json);
}

void store_put_run_result(store_write *w, const store_run_result *r)
{
    static const char sql[] = "INSERT INTO run_results(run_id, case_idx, version, sample, status, output, error, "
                              "verdicts, input_tokens, output_tokens, cost, latency_ms, cached) VALUES "
                              "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) "
                              "ON CONFLICT(run_id, case_idx, version, sample) DO NOTHING";
    op_add(w, sql, "siiissssiiddi", r->run_id, r->case_idx, r->version, r->sample, r->status, r->output, r->error,
           r->verdicts, r->input_tokens, r->output_tokens, r->cost, r->latency_ms, (int64_t)r->cached);
}

void store_put_cache(store_write *w, const char *key, const char *result_json, int64_t ts_ms)
{
    static const char sql[] = "INSERT INTO result_cache(key, result, created_at) VALUES (?1, ?2, ?3) "
                              "ON CONFLICT(key) DO NOTHING";
    op_add(w, sql, "ssi", key, result_json, ts_ms);
}

/* ---- reads ---- */

/* A read: borrows a connection, prepares sql, and leaves both in *db, *st. */
int read_begin(store *s, const char *sql, sqlite3 **db, sqlite3_stmt **st, char *err, size_t errlen)
{
    *db = store_read_acquire(s, err, errlen);
    if (!*db)
        return -1;
    if (sqlite3_prepare_v2(*db, sql, -1, st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "store read failed: %s", sqlite3_errmsg(*db));
        store_read_release(s, *db);
        return -1;
    }
    return 0;
}

/* Finishes a read: rc is the last sqlite3_step result. */
int read_end(store *s, sqlite3 *db, sqlite3_stmt *st, int rc, char *err, size_t errlen)
{
    int out = 0;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        snprintf(err, errlen, "store read failed: %s", sqlite3_errmsg(db));
        out = -1;
    }
    sqlite3_finalize(st);
    store_read_release(s, db);
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

int store_load_registry(store *s, json_t **prompts, json_t **datasets, char *err, size_t errlen)
{
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

int store_list_transitions_json(store *s, const char *prompt, int64_t after_seq, int limit, buf_t *out, char *err,
                                size_t errlen)
{
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

int store_dataset_cases(store *s, const char *dataset, int64_t version, store_case_form form, json_t **cases,
                        char *err, size_t errlen)
{
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
static int trace_cases(store *s, const char *sql, const char *prompt, int64_t version, int64_t since_ms,
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

int store_failed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                             int limit, json_t **cases, char *err, size_t errlen)
{
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

int store_passed_trace_cases(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                             int limit, json_t **cases, char *err, size_t errlen)
{
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

int store_select_traces(store *s, const store_trace_filter *f, json_t **traces, char *err, size_t errlen)
{
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

int store_dataset_versions(store *s, const char *dataset, int64_t current, json_t **versions, char *err,
                           size_t errlen)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    *versions = json_array();
    if (current < 1)
        return 0;
    if (read_begin(s, "SELECT id, added, removed FROM dataset_cases WHERE dataset = ?1 ORDER BY id, added", &db, &st,
                   err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, dataset, -1, SQLITE_STATIC);
    size_t n = (size_t)current + 2;
    int64_t *live = xcalloc(n, sizeof *live), *added = xcalloc(n, sizeof *added), *removed = xcalloc(n, sizeof *removed),
            *changed = xcalloc(n, sizeof *changed);
    char prev_id[200] = "";
    int64_t prev_removed = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        int64_t a = sqlite3_column_int64(st, 1);
        int64_t r = sqlite3_column_type(st, 2) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 2);
        if (a < 1 || a > current || r < 0 || r > current + 1)
            continue;
        live[a]++;
        if (r)
            live[r]--;
        /* the same id removed and added back at one version: an upsert that replaced it */
        if (id && !strcmp(id, prev_id) && prev_removed == a)
            changed[a]++, removed[a]--;
        else
            added[a]++;
        if (r)
            removed[r]++;
        snprintf(prev_id, sizeof prev_id, "%s", id ? id : "");
        prev_removed = r;
    }
    int64_t cases = 0;
    for (int64_t v = 1; v <= current; v++) {
        cases += live[v];
        json_array_append_new(*versions, json_pack("{s:I, s:I, s:I, s:I, s:I}", "version", (json_int_t)v, "cases",
                                                   (json_int_t)cases, "added", (json_int_t)added[v], "removed",
                                                   (json_int_t)removed[v], "changed", (json_int_t)changed[v]));
    }
    free(live);
    free(added);
    free(removed);
    free(changed);
    return read_end(s, db, st, rc, err, errlen);
}

int store_cache_get(store *s, char *const *keys, size_t n, char **results, char *err, size_t errlen)
{
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

int store_get_run(store *s, const char *id, json_t **run, char *err, size_t errlen)
{
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

int store_list_runs(store *s, const char *prompt, int limit, json_t **runs, char *err, size_t errlen)
{
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

int store_unfinished_runs(store *s, json_t **ids, char *err, size_t errlen)
{
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

int store_run_cases(store *s, const char *run_id, store_case_form form, json_t **cases, char *err, size_t errlen)
{
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

int store_run_result_keys(store *s, const char *run_id, json_t **rows, char *err, size_t errlen)
{
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

int store_run_results(store *s, const char *run_id, const int64_t *case_idx, size_t ncase, int64_t after_idx,
                      int limit, json_t **rows, char *err, size_t errlen)
{
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
