/* pg_loop.c — the PostgreSQL SQL of the self-improvement loop: its state rows and event log
 * (the writes are the shared ops of ops.c), and the online metrics read from traces and
 * scores in one snapshot. */
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

/* A number at a path of the body, NULL when it holds none (SQLite's avg skips those too). */
#define NUM(path) "(CASE WHEN json_typeof(body #> '" path "') = 'number' THEN (body #>> '" path "')::float8 END)"
#define COUNT_IF(cond) "count(*) FILTER (WHERE " cond ")"

static int metrics_totals(PGconn *c, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                          json_t **out, char *err, size_t errlen)
{
    pgq *q = window_query(c,
                          "SELECT count(*), " COUNT_IF("verdict IS NOT NULL") ", " COUNT_IF("verdict = 0 AND negative = 0") ", "
                          COUNT_IF("verdict = 1 OR negative = 1") ", " COUNT_IF("verdict = 2") ", "
                          "coalesce(sum(negative), 0), " COUNT_IF("retry_of IS NOT NULL") ", avg(" NUM("{latency_ms}") "), "
                          "avg(" NUM("{usage,cost_usd}") "), "
                          "avg(" NUM("{usage,input_tokens}") " + " NUM("{usage,output_tokens}") ") "
                          "FROM traces WHERE prompt = ?1 AND (?2 = 0 OR version = ?2) AND ts >= ?3 AND ts < ?4",
                          prompt, version, since_ms, until_ms);
    int rc = pgq_step(q);
    if (rc == PGQ_ROW) {
        double evaluated = pgq_col_double(q, 1), passed = pgq_col_double(q, 2);
        *out = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:{}}", "traces",
                         (json_int_t)pgq_col_int(q, 0), "evaluated", (json_int_t)evaluated, "passed",
                         (json_int_t)passed, "failures", (json_int_t)pgq_col_double(q, 3), "errors",
                         (json_int_t)pgq_col_double(q, 4), "negative", (json_int_t)pgq_col_double(q, 5), "retries",
                         (json_int_t)pgq_col_double(q, 6), "pass_rate", evaluated > 0 ? passed / evaluated : 0.0,
                         "latency_ms", pgq_col_double(q, 7), "cost", pgq_col_double(q, 8), "tokens",
                         pgq_col_double(q, 9), "evaluators");
    }
    return finish(q, rc, err, errlen);
}

static int metrics_evaluators(PGconn *c, const char *prompt, int64_t version, int64_t since_ms, int64_t until_ms,
                              json_t *evs, char *err, size_t errlen)
{
    pgq *q = window_query(c,
                          "SELECT s.evaluator, count(*), " COUNT_IF("s.status = 'ok' AND s.pass = 1") ", "
                          COUNT_IF("s.status = 'ok' AND s.pass = 0") ", " COUNT_IF("s.status <> 'ok'") ", max(s.required) "
                          "FROM scores s JOIN traces t ON t.id = s.trace_id "
                          "WHERE t.prompt = ?1 AND (?2 = 0 OR t.version = ?2) AND t.ts >= ?3 AND t.ts < ?4 "
                          "GROUP BY s.evaluator ORDER BY s.evaluator COLLATE \"C\"",
                          prompt, version, since_ms, until_ms);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        double n = pgq_col_double(q, 1), ok = pgq_col_double(q, 2), fail = pgq_col_double(q, 3);
        json_object_set_new(evs, pgq_col(q, 0),
                            json_pack("{s:I, s:I, s:I, s:I, s:f, s:b}", "n", (json_int_t)n, "passed", (json_int_t)ok,
                                      "failures", (json_int_t)fail, "errors", (json_int_t)pgq_col_double(q, 4),
                                      "pass_rate", ok + fail > 0 ? ok / (ok + fail) : 0.0, "required",
                                      (int)pgq_col_int(q, 5)));
    }
    return finish(q, rc, err, errlen);
}

#define MAX_SLICE_VALUES 50

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
        pgq_int(q, 6, MAX_SLICE_VALUES);
        int rc;
        while ((rc = pgq_step(q)) == PGQ_ROW) {
            const char *v = pgq_col(q, 0);
            char name[300];
            snprintf(name, sizeof name, "metadata.%s=%.200s", key, v ? v : "(none)");
            double evaluated = pgq_col_double(q, 1), passed = pgq_col_double(q, 2);
            json_object_set_new(out, name, json_pack("{s:I, s:I, s:f}", "evaluated", (json_int_t)evaluated, "passed",
                                                     (json_int_t)passed, "pass_rate",
                                                     evaluated > 0 ? passed / evaluated : 0.0));
        }
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
    if (!rc)
        rc = metrics_totals(c, prompt, version, since_ms, until_ms, out, err, errlen);
    if (!rc)
        rc = metrics_evaluators(c, prompt, version, since_ms, until_ms, json_object_get(*out, "evaluators"), err,
                                errlen);
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
    if (!rc)
        *points = json_array();
    for (int64_t from = since_ms; !rc && from < until_ms; from += step_ms) {
        int64_t to = from < until_ms - step_ms ? from + step_ms : until_ms;
        json_t *m = NULL;
        rc = metrics_totals(c, prompt, version, from, to, &m, err, errlen);
        if (!rc)
            rc = metrics_evaluators(c, prompt, version, from, to, json_object_get(m, "evaluators"), err, errlen);
        if (m) {
            json_object_set_new(m, "since_ms", json_integer(from));
            json_array_append_new(*points, m);
        }
    }
    char ignored[64];
    pg_exec(c, "COMMIT", ignored, sizeof ignored);
    pg_read_release(PG(s), c);
    if (rc) {
        json_decref(*points);
        *points = NULL;
    }
    return rc;
}
