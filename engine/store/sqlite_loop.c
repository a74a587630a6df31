/* sqlite_loop.c — the SQL of the self-improvement loop: its per-prompt state
 * row and event log (migration 5 in sqlite.c), and the online metrics the
 * trigger and rollout policies are given (and the metrics and series
 * endpoints), read from the per-minute rollups (migration 7) and, for the
 * partial minutes at a window's edges, from traces and scores. */
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

/* The online figures of a window (window.c), read from whole minutes of the
 * rollups (trace_minutes, score_minutes: migration 7 in sqlite.c) and the
 * traces and scores of the partial minutes at its edges. */

/* ?1 prompt, ?2 version (0: any), ?3 from, ?4 to (ms, or minutes for the rollup) */
static const char totals_scan_sql[] =
    "SELECT count(*), total(verdict IS NOT NULL), total(verdict = 0 AND negative = 0), "
    "  total(verdict = 1 OR negative = 1), total(verdict = 2), total(negative), total(retry_of IS NOT NULL), "
    "  total(json_extract(body, '$.latency_ms')), count(json_extract(body, '$.latency_ms')), "
    "  total(json_extract(body, '$.usage.cost_usd')), count(json_extract(body, '$.usage.cost_usd')), "
    "  total(json_extract(body, '$.usage.input_tokens') + json_extract(body, '$.usage.output_tokens')), "
    "  count(json_extract(body, '$.usage.input_tokens') + json_extract(body, '$.usage.output_tokens')) "
    "FROM traces WHERE prompt = ?1 AND (?2 = 0 OR version = ?2) AND ts >= ?3 AND ts < ?4";
/* the counts only (the series): no trace body is read */
static const char counts_scan_sql[] =
    "SELECT count(*), total(verdict IS NOT NULL), total(verdict = 0 AND negative = 0), "
    "  total(verdict = 1 OR negative = 1), total(verdict = 2), total(negative), total(retry_of IS NOT NULL), "
    "  0, 0, 0, 0, 0, 0 "
    "FROM traces WHERE prompt = ?1 AND (?2 = 0 OR version = ?2) AND ts >= ?3 AND ts < ?4";
/* the rollups: of one version along the primary key, of every version
 * (?2 = 0, not bound in the SQL) along the (prompt, minute) index */
#define TOTALS_ROLLUP(VERSION)                                                                                      \
    "SELECT total(traces), total(evaluated), total(passed), total(failures), total(errors), total(negative), "       \
    "  total(retries), total(latency_sum), total(latency_n), total(cost_sum), total(cost_n), total(tokens_sum), "   \
    "  total(tokens_n) "                                                                                            \
    "FROM trace_minutes WHERE prompt = ?1 " VERSION " AND minute >= ?3 AND minute < ?4"
static const char totals_rollup_sql[] = TOTALS_ROLLUP("AND version = ?2");
static const char totals_rollup_any_sql[] = TOTALS_ROLLUP("AND ?2 = 0");
static const char evaluators_scan_sql[] =
    "SELECT s.evaluator, count(*), total(s.status = 'ok' AND s.pass = 1), total(s.status = 'ok' AND s.pass = 0), "
    "  total(s.status <> 'ok'), total(s.required <> 0) "
    "FROM scores s JOIN traces t ON t.id = s.trace_id "
    "WHERE t.prompt = ?1 AND (?2 = 0 OR t.version = ?2) AND t.ts >= ?3 AND t.ts < ?4 GROUP BY s.evaluator";
#define EVALUATORS_ROLLUP(VERSION)                                                                                  \
    "SELECT evaluator, total(n), total(passed), total(failures), total(errors), total(required) "                   \
    "FROM score_minutes WHERE prompt = ?1 " VERSION " AND minute >= ?3 AND minute < ?4 GROUP BY evaluator"
static const char evaluators_rollup_sql[] = EVALUATORS_ROLLUP("AND version = ?2");
static const char evaluators_rollup_any_sql[] = EVALUATORS_ROLLUP("AND ?2 = 0");

/* The statements of one snapshot, each prepared once (a series runs them
 * for every bucket): keyed by their SQL text's address. */
#define CACHED_STMTS 8
typedef struct {
    sqlite3 *db;
    const char *sql[CACHED_STMTS];
    sqlite3_stmt *st[CACHED_STMTS];
} stmt_cache;

static sqlite3_stmt *cached(stmt_cache *c, const char *sql, char *err, size_t errlen)
{
    int i = 0;
    while (i < CACHED_STMTS && c->sql[i] && c->sql[i] != sql)
        i++;
    if (i == CACHED_STMTS) { /* cannot happen: there are fewer texts */
        snprintf(err, errlen, "store read failed: statement cache full");
        return NULL;
    }
    if (c->sql[i]) {
        sqlite3_reset(c->st[i]);
        sqlite3_clear_bindings(c->st[i]);
        return c->st[i];
    }
    if (prepare(c->db, sql, &c->st[i], err, errlen))
        return NULL;
    c->sql[i] = sql;
    return c->st[i];
}

static void cache_clear(stmt_cache *c)
{
    for (int i = 0; i < CACHED_STMTS; i++)
        sqlite3_finalize(c->st[i]);
}

/* 0 when the statement ran to its end; else -1 with the message (it stays prepared) */
static int step_done(stmt_cache *c, int rc, char *err, size_t errlen)
{
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
        return 0;
    snprintf(err, errlen, "store read failed: %s", sqlite3_errmsg(c->db));
    return -1;
}

/* What a window reads: the statements of one snapshot, the prompt and version. */
typedef struct {
    stmt_cache cache;
    const char *prompt;
    int64_t version;
} sqlite_window;

static int totals_add(const store_window_reader *r, store_window_source src, int64_t from, int64_t to,
                      store_window_totals *w, char *err, size_t errlen)
{
    sqlite_window *sw = r->ctx;
    const char *sql = src == WINDOW_ROLLUP ? (sw->version ? totals_rollup_sql : totals_rollup_any_sql)
                      : r->with_costs      ? totals_scan_sql
                                           : counts_scan_sql;
    sqlite3_stmt *st = cached(&sw->cache, sql, err, errlen);
    if (!st)
        return -1;
    bind_window(st, sw->prompt, sw->version, from, to);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        double row[13];
        for (int i = 0; i < 13; i++)
            row[i] = col_num(st, i);
        store_window_totals_add(w, row);
        rc = SQLITE_DONE;
    }
    return step_done(&sw->cache, rc, err, errlen);
}

static int evaluators_add(const store_window_reader *r, store_window_source src, int64_t from, int64_t to,
                          json_t *acc, char *err, size_t errlen)
{
    sqlite_window *sw = r->ctx;
    const char *sql = src == WINDOW_SCAN ? evaluators_scan_sql
                      : sw->version      ? evaluators_rollup_sql
                                         : evaluators_rollup_any_sql;
    sqlite3_stmt *st = cached(&sw->cache, sql, err, errlen);
    if (!st)
        return -1;
    bind_window(st, sw->prompt, sw->version, from, to);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        double row[5];
        for (int i = 0; i < 5; i++)
            row[i] = col_num(st, i + 1);
        store_window_evaluator_add(acc, (const char *)sqlite3_column_text(st, 0), row);
    }
    return step_done(&sw->cache, rc, err, errlen);
}

/* A slice's figures: evaluated and passed traces per value of each
 * metadata key, the most frequent STORE_SLICE_VALUES values of each. */
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
        sqlite3_bind_int(st, 6, STORE_SLICE_VALUES);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            store_window_slice_add(out, key, (const char *)sqlite3_column_text(st, 0), col_num(st, 1),
                                   col_num(st, 2));
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
    sqlite_window sw = {.cache = {.db = db}, .prompt = prompt, .version = version};
    store_window_reader r = {&sw, true, totals_add, evaluators_add};
    int rc = store_window_metrics(&r, since_ms, until_ms, out, err, errlen);
    cache_clear(&sw.cache);
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

int sqlite_prompt_series(store *base, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                         int64_t step_ms, json_t **points, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db = snapshot_begin(s, err, errlen);
    if (!db)
        return -1;
    sqlite_window sw = {.cache = {.db = db}, .prompt = prompt, .version = version};
    store_window_reader r = {&sw, false, totals_add, evaluators_add};
    int rc = store_window_series(&r, since_ms, until_ms, step_ms, points, err, errlen);
    cache_clear(&sw.cache);
    snapshot_end(s, db);
    if (rc) {
        json_decref(*points);
        *points = NULL;
    }
    return rc;
}
