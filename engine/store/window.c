/* window.c — the online metrics of a prompt in the one shape both backends give them: a
 * window's figures summed from the rollups' whole minutes and the traces of its edges, the
 * metadata slices and the series. Each backend reads the rows in its own SQL
 * (sqlite_loop.c, pg_loop.c) and hands them here. */
#include <stdio.h>
#include <stdlib.h>

#include "store/backend.h"

#define MINUTE_MS 60000

static void window_split(int64_t since, int64_t until, int64_t *m0, int64_t *m1, int64_t *e0, int64_t *e1);
static json_t *evaluators_json(json_t *acc);

void store_window_totals_add(store_window_totals *w, const double row[13])
{
    int64_t *counts[] = {&w->traces, &w->evaluated, &w->passed, &w->failures, &w->errors, &w->negative, &w->retries};
    for (int i = 0; i < 7; i++)
        *counts[i] += (int64_t)row[i];
    w->latency += row[7];
    w->latency_n += (int64_t)row[8];
    w->cost += row[9];
    w->cost_n += (int64_t)row[10];
    w->tokens += row[11];
    w->tokens_n += (int64_t)row[12];
}

/* acc: evaluator -> [n, passed, failures, errors, required], summed over the reads */
void store_window_evaluator_add(json_t *acc, const char *evaluator, const double row[5])
{
    json_t *a = json_object_get(acc, evaluator);
    if (!a) {
        a = json_pack("[I, I, I, I, I]", (json_int_t)0, (json_int_t)0, (json_int_t)0, (json_int_t)0, (json_int_t)0);
        json_object_set_new(acc, evaluator, a);
    }
    for (int i = 0; i < 5; i++)
        json_array_set_new(a, (size_t)i,
                           json_integer(json_integer_value(json_array_get(a, (size_t)i)) + (json_int_t)row[i]));
}

int store_window_metrics(const store_window_reader *r, int64_t since, int64_t until, json_t **out, char *err,
                         size_t errlen)
{
    *out = NULL;
    int64_t m0, m1, e0, e1;
    window_split(since, until, &m0, &m1, &e0, &e1);
    /* the parts of the window: [since, e0) scanned; then, with whole minutes, [m0, m1) from
     * the rollups and [e1, until) scanned */
    struct {
        store_window_source src;
        int64_t from, to;
    } parts[] = {{WINDOW_SCAN, since, e0}, {WINDOW_ROLLUP, m0, m1}, {WINDOW_SCAN, e1, until}};
    int nparts = m1 > m0 ? 3 : 1;
    store_window_totals w = {0};
    json_t *acc = json_object();
    for (int i = 0; i < nparts; i++) {
        if (parts[i].from >= parts[i].to) /* an empty edge */
            continue;
        if (r->totals(r, parts[i].src, parts[i].from, parts[i].to, &w, err, errlen) ||
            r->evaluators(r, parts[i].src, parts[i].from, parts[i].to, acc, err, errlen)) {
            json_decref(acc);
            return -1;
        }
    }
    *out = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "traces", (json_int_t)w.traces, "evaluated",
                     (json_int_t)w.evaluated, "passed", (json_int_t)w.passed, "failures", (json_int_t)w.failures,
                     "errors", (json_int_t)w.errors, "negative", (json_int_t)w.negative, "retries",
                     (json_int_t)w.retries, "pass_rate",
                     w.evaluated > 0 ? (double)w.passed / (double)w.evaluated : 0.0);
    if (r->with_costs) {
        /* the mean over the traces that carry the figure, 0 when none does */
        json_object_set_new(*out, "latency_ms", json_real(w.latency_n ? w.latency / (double)w.latency_n : 0.0));
        json_object_set_new(*out, "cost", json_real(w.cost_n ? w.cost / (double)w.cost_n : 0.0));
        json_object_set_new(*out, "tokens", json_real(w.tokens_n ? w.tokens / (double)w.tokens_n : 0.0));
    }
    json_object_set_new(*out, "evaluators", evaluators_json(acc));
    json_decref(acc);
    return 0;
}

int store_window_series(const store_window_reader *r, int64_t since, int64_t until, int64_t step, json_t **points,
                        char *err, size_t errlen)
{
    *points = json_array();
    for (int64_t from = since; from < until; from += step) {
        int64_t to = from < until - step ? from + step : until;
        json_t *m;
        if (store_window_metrics(r, from, to, &m, err, errlen)) {
            json_decref(*points);
            *points = NULL;
            return -1;
        }
        json_object_set_new(m, "since_ms", json_integer(from));
        json_array_append_new(*points, m);
    }
    return 0;
}

void store_window_slice_add(json_t *slices, const char *key, const char *value, double evaluated, double passed)
{
    char name[300];
    snprintf(name, sizeof name, "metadata.%s=%.200s", key, value ? value : "(none)");
    json_object_set_new(slices, name, json_pack("{s:I, s:I, s:f}", "evaluated", (json_int_t)evaluated, "passed",
                                                (json_int_t)passed, "pass_rate",
                                                evaluated > 0 ? passed / evaluated : 0.0));
}

/* The window [since, until) as whole minutes [*m0, *m1) and the edges [since, *e0) and
 * [*e1, until) read from the traces. A window shorter than a whole minute is all edge. */
static void window_split(int64_t since, int64_t until, int64_t *m0, int64_t *m1, int64_t *e0, int64_t *e1)
{
    if (since < 0 || until <= since || since > INT64_MAX - MINUTE_MS) { /* no rollup before 1970 */
        *m0 = *m1 = 0;
        *e0 = *e1 = until;
        return;
    }
    *m0 = (since + MINUTE_MS - 1) / MINUTE_MS;
    *m1 = until / MINUTE_MS;
    if (*m1 <= *m0) {
        *m0 = *m1 = 0;
        *e0 = *e1 = until;
        return;
    }
    *e0 = *m0 * MINUTE_MS;
    *e1 = *m1 * MINUTE_MS;
}

/* acc's evaluators as {name: {n, passed, failures, errors, pass_rate, required}} */
static json_t *evaluators_json(json_t *acc)
{
    json_t *evs = json_object();
    const char *name;
    json_t *a;
    json_object_foreach(acc, name, a) {
        json_int_t n = json_integer_value(json_array_get(a, 0)), ok = json_integer_value(json_array_get(a, 1)),
                   fail = json_integer_value(json_array_get(a, 2));
        if (n > 0) /* an evaluator whose scores were all replaced has none here */
            json_object_set_new(evs, name,
                                json_pack("{s:I, s:I, s:I, s:O, s:f, s:b}", "n", n, "passed", ok, "failures", fail,
                                          "errors", json_array_get(a, 3), "pass_rate",
                                          ok + fail > 0 ? (double)ok / (double)(ok + fail) : 0.0, "required",
                                          json_integer_value(json_array_get(a, 4)) > 0));
    }
    return evs;
}
