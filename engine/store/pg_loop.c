/* pg_loop.c — the PostgreSQL SQL of the self-improvement loop: its state rows and event log
 * (the writes are the shared ops of ops.c), and the online metrics read from the per-minute
 * rollups and the traces and scores of a window's partial minutes, in one snapshot. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/pg_private.h"

#define PG(base) ((pg_store *)(base))

int pg_load_loop_states(store *s, json_t **states, char *err, size_t errlen)
{
    pgq *q;
    *states = json_object();
    if (pg_read_begin(PG(s),
                      "SELECT prompt, state, cycle, run_id, version, step, step_started, canary_started, last_cycle_at, "
                      "updated_at, detail FROM loop_state",
                      &q, err, errlen))
        return -1;
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_object_set_new(*states, pgq_col(q, 0),
                            json_pack("{s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "state",
                                      pgq_col_text(q, 1), "cycle", pgq_col_text(q, 2), "run_id", pgq_col_text(q, 3),
                                      "version", (json_int_t)pgq_col_int(q, 4), "step", (json_int_t)pgq_col_int(q, 5),
                                      "step_started", (json_int_t)pgq_col_int(q, 6), "canary_started",
                                      (json_int_t)pgq_col_int(q, 7), "last_cycle_at", (json_int_t)pgq_col_int(q, 8),
                                      "updated_at", (json_int_t)pgq_col_int(q, 9), "detail", pgq_col_json(q, 10)));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

int pg_list_loop_events(store *s, const char *prompt, int64_t after_seq, int limit, json_t **items, char *err,
                        size_t errlen)
{
    pgq *q;
    *items = json_array();
    if (pg_read_begin(PG(s),
                      "SELECT seq, ts, cycle, kind, message, detail FROM loop_events WHERE prompt = ?1 AND seq > ?2 "
                      "ORDER BY seq LIMIT ?3",
                      &q, err, errlen))
        return -1;
    pgq_text(q, 1, prompt);
    pgq_int(q, 2, after_seq);
    pgq_int(q, 3, limit);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*items, json_pack("{s:I, s:o, s:o, s:o, s:o, s:o}", "seq", (json_int_t)pgq_col_int(q, 0),
                                                "at", pgq_col_time(q, 1), "cycle", pgq_col_text(q, 2), "kind",
                                                pgq_col_text(q, 3), "message", pgq_col_text(q, 4), "detail",
                                                pgq_col_json(q, 5)));
    return pg_read_end(PG(s), q, rc, err, errlen);
}

/* ?1 prompt, ?2 version (0: any), ?3 since, ?4 until */
static pgq *window_query(PGconn *c, const char *sql, const char *prompt, int64_t version, int64_t since_ms,
                         int64_t until_ms)
{
    pgq *q = pgq_new(c, sql);
    pgq_text(q, 1, prompt);
    pgq_int(q, 2, version);
    pgq_int(q, 3, since_ms);
    pgq_int(q, 4, until_ms);
    return q;
}

static int finish(pgq *q, int rc, char *err, size_t errlen)
{
    if (rc == PGQ_ERROR)
        snprintf(err, errlen, "store read failed: %s", q->err);
    pgq_free(q);
    return rc == PGQ_ERROR ? -1 : 0;
}

/* The online figures of a window (window.c), read from whole minutes of the rollups
 * (trace_minutes, score_minutes: migration 7 in pg.c) and the traces and scores of the
 * partial minutes at its edges, as sqlite_loop.c does. */

/* A number at a path of the body, NULL when it holds none (SQLite's avg skips those too). */
#define NUM(path) "(CASE WHEN json_typeof(body #> '" path "') = 'number' THEN (body #>> '" path "')::float8 END)"
#define COUNT_IF(cond) "count(*) FILTER (WHERE " cond ")"
#define TOKENS "(" NUM("{usage,input_tokens}") " + " NUM("{usage,output_tokens}") ")"

/* ?1 prompt, ?2 version (0: any), ?3 from, ?4 to (ms for the scans, minutes for the rollups) */
static const char totals_scan_sql[] =
    "SELECT count(*), " COUNT_IF("verdict IS NOT NULL") ", " COUNT_IF("verdict = 0 AND negative = 0") ", "
    COUNT_IF("verdict = 1 OR negative = 1") ", " COUNT_IF("verdict = 2") ", coalesce(sum(negative), 0), "
    COUNT_IF("retry_of IS NOT NULL") ", coalesce(sum(" NUM("{latency_ms}") "), 0), count(" NUM("{latency_ms}") "), "
    "coalesce(sum(" NUM("{usage,cost_usd}") "), 0), count(" NUM("{usage,cost_usd}") "), "
    "coalesce(sum(" TOKENS "), 0), count(" TOKENS ") "
    "FROM traces WHERE prompt = ?1 AND (?2 = 0 OR version = ?2) AND ts >= ?3 AND ts < ?4";
/* of one version along the primary key, of every version along (prompt, minute) */
#define TOTALS_ROLLUP(VERSION)                                                                                      \
    "SELECT coalesce(sum(traces), 0), coalesce(sum(evaluated), 0), coalesce(sum(passed), 0), "                      \
    "coalesce(sum(failures), 0), coalesce(sum(errors), 0), coalesce(sum(negative), 0), coalesce(sum(retries), 0), " \
    "coalesce(sum(latency_sum), 0), coalesce(sum(latency_n), 0), coalesce(sum(cost_sum), 0), "                      \
    "coalesce(sum(cost_n), 0), coalesce(sum(tokens_sum), 0), coalesce(sum(tokens_n), 0) "                           \
    "FROM trace_minutes WHERE prompt = ?1 " VERSION " AND minute >= ?3 AND minute < ?4"
static const char totals_rollup_sql[] = TOTALS_ROLLUP("AND version = ?2");
static const char totals_rollup_any_sql[] = TOTALS_ROLLUP("AND ?2::bigint = 0");
static const char evaluators_scan_sql[] =
    "SELECT s.evaluator, count(*), " COUNT_IF("s.status = 'ok' AND s.pass = 1") ", "
    COUNT_IF("s.status = 'ok' AND s.pass = 0") ", " COUNT_IF("s.status <> 'ok'") ", " COUNT_IF("s.required <> 0") " "
    "FROM scores s JOIN traces t ON t.id = s.trace_id "
    "WHERE t.prompt = ?1 AND (?2 = 0 OR t.version = ?2) AND t.ts >= ?3 AND t.ts < ?4 GROUP BY s.evaluator";
#define EVALUATORS_ROLLUP(VERSION)                                                                                  \
    "SELECT evaluator, sum(n), sum(passed), sum(failures), sum(errors), sum(required) "                             \
    "FROM score_minutes WHERE prompt = ?1 " VERSION " AND minute >= ?3 AND minute < ?4 GROUP BY evaluator"
static const char evaluators_rollup_sql[] = EVALUATORS_ROLLUP("AND version = ?2");
static const char evaluators_rollup_any_sql[] = EVALUATORS_ROLLUP("AND ?2::bigint = 0");

/* What a window reads, on one connection inside one snapshot. */
typedef struct {
    PGconn *c;
    const char *prompt;
    int64_t version;
} pg_window;

static int totals_add(const store_window_reader *r, store_window_source src, int64_t from, int64_t to,
                      store_window_totals *w, char *err, size_t errlen)
{
    pg_window *pw = r->ctx;
    const char *sql = src == WINDOW_SCAN ? totals_scan_sql : pw->version ? totals_rollup_sql : totals_rollup_any_sql;
    pgq *q = window_query(pw->c, sql, pw->prompt, pw->version, from, to);
    int rc = pgq_step(q);
    if (rc == PGQ_ROW) {
        double row[13];
        for (int i = 0; i < 13; i++)
            row[i] = pgq_col_double(q, i);
        store_window_totals_add(w, row);
    }
    return finish(q, rc, err, errlen);
}

static int evaluators_add(const store_window_reader *r, store_window_source src, int64_t from, int64_t to,
                          json_t *acc, char *err, size_t errlen)
{
    pg_window *pw = r->ctx;
    const char *sql =
        src == WINDOW_SCAN ? evaluators_scan_sql : pw->version ? evaluators_rollup_sql : evaluators_rollup_any_sql;
    pgq *q = window_query(pw->c, sql, pw->prompt, pw->version, from, to);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        double row[5];
        for (int i = 0; i < 5; i++)
            row[i] = pgq_col_double(q, i + 1);
        store_window_evaluator_add(acc, pgq_col(q, 0), row);
    }
    return finish(q, rc, err, errlen);
}

static int metrics_slices(PGconn *c, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                          const json_t *keys, json_t *out, char *err, size_t errlen)
{
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k) {
        const char *key = json_string_value(k);
        pgq *q = window_query(c,
                              "SELECT body #>> ARRAY['metadata', ?5::text] AS v, " COUNT_IF("verdict IS NOT NULL") ", "
                              COUNT_IF("verdict = 0 AND negative = 0") " "
                              "FROM traces WHERE prompt = ?1 AND (?2 = 0 OR version = ?2) AND ts >= ?3 AND ts < ?4 "
                              "GROUP BY v ORDER BY count(*) DESC LIMIT ?6",
                              prompt, version, since_ms, until_ms);
        pgq_text(q, 5, key);
        pgq_int(q, 6, STORE_SLICE_VALUES);
        int rc;
        while ((rc = pgq_step(q)) == PGQ_ROW)
            store_window_slice_add(out, key, pgq_col(q, 0), pgq_col_double(q, 1), pgq_col_double(q, 2));
        if (finish(q, rc, err, errlen))
            return -1;
    }
    return 0;
}

int pg_prompt_metrics_sliced(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                             const json_t *slice_keys, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    PGconn *c = pg_read_acquire(PG(s), err, errlen);
    if (!c)
        return -1;
    /* one snapshot for every statement */
    int rc = pg_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err, errlen);
    pg_window pw = {c, prompt, version};
    store_window_reader r = {&pw, true, totals_add, evaluators_add};
    if (!rc)
        rc = store_window_metrics(&r, since_ms, until_ms, out, err, errlen);
    if (!rc && json_array_size(slice_keys)) {
        json_object_set_new(*out, "slices", json_object());
        rc = metrics_slices(c, prompt, version, since_ms, until_ms, slice_keys, json_object_get(*out, "slices"), err,
                            errlen);
    }
    char ignored[64];
    pg_exec(c, "COMMIT", ignored, sizeof ignored);
    pg_read_release(PG(s), c);
    if (rc) {
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}

int pg_prompt_series(store *s, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                     int64_t step_ms, json_t **points, char *err, size_t errlen)
{
    *points = NULL;
    PGconn *c = pg_read_acquire(PG(s), err, errlen);
    if (!c)
        return -1;
    int rc = pg_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err, errlen);
    pg_window pw = {c, prompt, version};
    store_window_reader r = {&pw, true, totals_add, evaluators_add};
    if (!rc)
        rc = store_window_series(&r, since_ms, until_ms, step_ms, points, err, errlen);
    char ignored[64];
    pg_exec(c, "COMMIT", ignored, sizeof ignored);
    pg_read_release(PG(s), c);
    if (rc) {
        json_decref(*points);
        *points = NULL;
    }
    return rc;
}
