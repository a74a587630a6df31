/* sqlite_loop.c — the SQL of the self-improvement loop: its per-prompt state
 * row and event log (migration 5 in sqlite.c), and the online metrics the
 * trigger and rollout policies are given, read from traces and scores. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite_private.h"

int sqlite_load_loop_states(store *base, json_t **states, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *states = json_object();
    if (read_begin(s,
                   "SELECT prompt, state, cycle, run_id, version, step, step_started, canary_started, last_cycle_at, "
                   "updated_at, detail FROM loop_state",
                   &db, &st, err, errlen))
        return -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_object_set_new(*states, (const char *)sqlite3_column_text(st, 0),
                            json_pack("{s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "state", col_text(st, 1),
                                      "cycle", col_text(st, 2), "run_id", col_text(st, 3), "version",
                                      (json_int_t)sqlite3_column_int64(st, 4), "step",
                                      (json_int_t)sqlite3_column_int64(st, 5), "step_started",
                                      (json_int_t)sqlite3_column_int64(st, 6), "canary_started",
                                      (json_int_t)sqlite3_column_int64(st, 7), "last_cycle_at",
                                      (json_int_t)sqlite3_column_int64(st, 8), "updated_at",
                                      (json_int_t)sqlite3_column_int64(st, 9), "detail", col_json(st, 10)));
    return read_end(s, db, st, rc, err, errlen);
}

int sqlite_list_loop_events(store *base, const char *prompt, int64_t after_seq, int limit, json_t **items, char *err,
                           size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db;
    sqlite3_stmt *st;
    *items = json_array();
    if (read_begin(s,
                   "SELECT seq, ts, cycle, kind, message, detail FROM loop_events WHERE prompt = ?1 AND seq > ?2 "
                   "ORDER BY seq LIMIT ?3",
                   &db, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, prompt, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after_seq);
    sqlite3_bind_int(st, 3, limit);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(*items, json_pack("{s:I, s:o, s:o, s:o, s:o, s:o}", "seq",
                                                (json_int_t)sqlite3_column_int64(st, 0), "at", col_time(st, 1),
                                                "cycle", col_text(st, 2), "kind", col_text(st, 3), "message",
                                                col_text(st, 4), "detail", col_json(st, 5)));
    return read_end(s, db, st, rc, err, errlen);
}

static double col_num(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? 0 : sqlite3_column_double(st, i);
}

/* ?1 prompt, ?2 version (0: any), ?3 since, ?4 until */
static void bind_window(sqlite3_stmt *st, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms)
{
    sqlite3_bind_text(st, 1, prompt, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    sqlite3_bind_int64(st, 3, since_ms);
    sqlite3_bind_int64(st, 4, until_ms);
}

/* Runs a read transaction on a borrowed connection: every statement of a
 * snapshot reads the same database state. */
static sqlite3 *snapshot_begin(sqlite_store *s, char *err, size_t errlen)
{
    sqlite3 *db = sqlite_read_acquire(s, err, errlen);
    if (db && sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "store read failed: %s", sqlite3_errmsg(db));
        sqlite_read_release(s, db);
        return NULL;
    }
    return db;
}

static int snapshot_end(sqlite_store *s, sqlite3 *db)
{
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite_read_release(s, db);
    return 0;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err, size_t errlen)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK)
        return 0;
    snprintf(err, errlen, "store read failed: %s", sqlite3_errmsg(db));
    return -1;
}

static int finish(sqlite3 *db, sqlite3_stmt *st, int rc, char *err, size_t errlen)
{
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
        return 0;
    snprintf(err, errlen, "store read failed: %s", sqlite3_errmsg(db));
    return -1;
}

/* The totals of one version over the window into *out. */
static int metrics_totals(sqlite3 *db, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                          json_t **out, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (prepare(db,
                "SELECT count(*), total(verdict IS NOT NULL), total(verdict = 0 AND negative = 0), "
                "  total(verdict = 1 OR negative = 1), total(verdict = 2), total(negative), "
                "  total(retry_of IS NOT NULL), avg(json_extract(body, '$.latency_ms')), "
                "  avg(json_extract(body, '$.usage.cost_usd')), "
                "  avg(json_extract(body, '$.usage.input_tokens') + json_extract(body, '$.usage.output_tokens')) "
                "FROM traces WHERE prompt = ?1 AND (?2 = 0 OR version = ?2) AND ts >= ?3 AND ts < ?4",
                &st, err, errlen))
        return -1;
    bind_window(st, prompt, version, since_ms, until_ms);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        double evaluated = col_num(st, 1), passed = col_num(st, 2);
        *out = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:{}}", "traces",
                         (json_int_t)sqlite3_column_int64(st, 0), "evaluated", (json_int_t)evaluated, "passed",
                         (json_int_t)passed, "failures", (json_int_t)col_num(st, 3), "errors",
                         (json_int_t)col_num(st, 4), "negative", (json_int_t)col_num(st, 5), "retries",
                         (json_int_t)col_num(st, 6), "pass_rate", evaluated > 0 ? passed / evaluated : 0.0,
                         "latency_ms", col_num(st, 7), "cost", col_num(st, 8), "tokens", col_num(st, 9),
                         "evaluators");
        rc = SQLITE_DONE;
    }
    return finish(db, st, rc, err, errlen);
}

/* Per evaluator, into evs. */
static int metrics_evaluators(sqlite3 *db, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                              json_t *evs, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (prepare(db,
                "SELECT s.evaluator, count(*), total(s.status = 'ok' AND s.pass = 1), "
                "  total(s.status = 'ok' AND s.pass = 0), total(s.status <> 'ok'), max(s.required) "
                "FROM scores s JOIN traces t ON t.id = s.trace_id "
                "WHERE t.prompt = ?1 AND (?2 = 0 OR t.version = ?2) AND t.ts >= ?3 AND t.ts < ?4 "
                "GROUP BY s.evaluator ORDER BY s.evaluator",
                &st, err, errlen))
        return -1;
    bind_window(st, prompt, version, since_ms, until_ms);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        double n = (double)sqlite3_column_int64(st, 1), ok = col_num(st, 2), fail = col_num(st, 3);
        json_object_set_new(evs, (const char *)sqlite3_column_text(st, 0),
                            json_pack("{s:I, s:I, s:I, s:I, s:f, s:b}", "n", (json_int_t)n, "passed", (json_int_t)ok,
                                      "failures", (json_int_t)fail, "errors", (json_int_t)col_num(st, 4), "pass_rate",
                                      ok + fail > 0 ? ok / (ok + fail) : 0.0, "required",
                                      sqlite3_column_int(st, 5)));
    }
    return finish(db, st, rc, err, errlen);
}

/* A slice's figures: evaluated and passed traces per value of each
 * metadata key, the most frequent MAX_SLICE_VALUES values of each. */
#define MAX_SLICE_VALUES 50
static int metrics_slices(sqlite3 *db, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                          const json_t *keys, json_t *out, char *err, size_t errlen)
{
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k) {
        const char *key = json_string_value(k);
        sqlite3_stmt *st;
        if (prepare(db,
                    "SELECT json_extract(body, '$.metadata.\"' || ?5 || '\"') AS v, total(verdict IS NOT NULL), "
                    "  total(verdict = 0 AND negative = 0) "
                    "FROM traces WHERE prompt = ?1 AND (?2 = 0 OR version = ?2) AND ts >= ?3 AND ts < ?4 "
                    "GROUP BY v ORDER BY count(*) DESC LIMIT ?6",
                    &st, err, errlen))
            return -1;
        bind_window(st, prompt, version, since_ms, until_ms);
        sqlite3_bind_text(st, 5, key, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 6, MAX_SLICE_VALUES);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *v = (const char *)sqlite3_column_text(st, 0);
            char name[300];
            snprintf(name, sizeof name, "metadata.%s=%.200s", key, v ? v : "(none)");
            double evaluated = col_num(st, 1), passed = col_num(st, 2);
            json_object_set_new(out, name, json_pack("{s:I, s:I, s:f}", "evaluated", (json_int_t)evaluated, "passed",
                                                     (json_int_t)passed, "pass_rate",
                                                     evaluated > 0 ? passed / evaluated : 0.0));
        }
        if (finish(db, st, rc, err, errlen))
            return -1;
    }
    return 0;
}

int sqlite_prompt_metrics_sliced(store *base, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                                const json_t *slice_keys, json_t **out, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    *out = NULL;
    sqlite3 *db = snapshot_begin(s, err, errlen);
    if (!db)
        return -1;
    int rc = metrics_totals(db, prompt, version, since_ms, until_ms, out, err, errlen);
    if (!rc)
        rc = metrics_evaluators(db, prompt, version, since_ms, until_ms, json_object_get(*out, "evaluators"), err,
                                errlen);
    if (!rc && json_array_size(slice_keys)) {
        json_object_set_new(*out, "slices", json_object());
        rc = metrics_slices(db, prompt, version, since_ms, until_ms, slice_keys, json_object_get(*out, "slices"), err,
                            errlen);
    }
    snapshot_end(s, db);
    if (rc) {
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}
