/* ops.c — what every backend shares of a write: the registry, dataset, run and loop changes
 * (store_put_*) as statements in the SQL both backends run, and the freeing of writes. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/backend.h"

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

void store_put_loop_state(store_write *w, const store_loop_state *ls)
{
    static const char sql[] =
        "INSERT INTO loop_state(prompt, state, cycle, run_id, version, step, step_started, canary_started, "
        "last_cycle_at, updated_at, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) "
        "ON CONFLICT(prompt) DO UPDATE SET state = ?2, cycle = ?3, run_id = ?4, version = ?5, step = ?6, "
        "step_started = ?7, canary_started = ?8, last_cycle_at = ?9, updated_at = ?10, detail = ?11";
    op_add(w, sql, "ssssIiIIIis", ls->prompt, ls->state, ls->cycle, ls->run_id, ls->version, (int64_t)ls->step,
           ls->step_started, ls->canary_started, ls->last_cycle_at, ls->updated_at, ls->detail);
}

void store_delete_old_traces(store_write *w, int64_t before_ms, int64_t limit)
{
    /* PostgreSQL reads these and runs its own (pg_partitions.c); SQLite runs the ops */
    w->upkeep = true;
    w->retention_before_ms = before_ms;
    w->retention_limit = limit;
    if (before_ms <= 0)
        return;
    /* the same batch in each statement: the writer runs them in one transaction */
    static const char scores[] = "DELETE FROM scores WHERE trace_id IN "
                                 "(SELECT id FROM traces WHERE ts < ?1 ORDER BY ts, seq LIMIT ?2)";
    static const char feedback[] = "DELETE FROM feedback WHERE trace_id IN "
                                   "(SELECT id FROM traces WHERE ts < ?1 ORDER BY ts, seq LIMIT ?2)";
    static const char traces[] = "DELETE FROM traces WHERE seq IN "
                                 "(SELECT seq FROM traces WHERE ts < ?1 ORDER BY ts, seq LIMIT ?2)";
    static const char parts[] = "DELETE FROM trace_parts WHERE id IN "
                                "(SELECT id FROM trace_parts WHERE ts < ?1 ORDER BY ts LIMIT ?2)";
    op_add(w, scores, "ii", before_ms, limit);
    op_add(w, feedback, "ii", before_ms, limit);
    op_add(w, traces, "ii", before_ms, limit);
    op_add(w, parts, "ii", before_ms, limit);
}

void store_put_loop_event(store_write *w, const char *prompt, const char *cycle, const char *kind, const char *message,
                          const char *detail_json, int64_t ts_ms)
{
    static const char sql[] =
        "INSERT INTO loop_events(prompt, ts, cycle, kind, message, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    op_add(w, sql, "sissss", prompt, ts_ms, cycle, kind, message, detail_json);
}

size_t store_write_prepare(store_write *w)
{
    w->next = NULL;
    w->status = 0;
    w->trace_results = w->ntraces ? xcalloc(w->ntraces, 1) : NULL;
    w->feedback_results = w->nfeedback ? xcalloc(w->nfeedback, 1) : NULL;
    w->part_results = w->nparts ? xcalloc(w->nparts, 1) : NULL;
    return w->ntraces + w->nfeedback + w->nevals + w->nparts + w->nllm_calls + w->nops;
}

void store_write_unprepare(store_write *w)
{
    free(w->trace_results);
    free(w->feedback_results);
    free(w->part_results);
    w->trace_results = w->feedback_results = w->part_results = NULL;
}

void store_write_fail(store_write *w, int status)
{
    w->status = status;
    if (w->ntraces) /* no results array for no items (memset of NULL is undefined) */
        memset(w->trace_results, STORE_FAILED, w->ntraces);
    if (w->nfeedback)
        memset(w->feedback_results, STORE_FAILED, w->nfeedback);
}

void store_case_tally_init(store_case_tally *t, int64_t current)
{
    size_t n = (size_t)current + 2;
    t->current = current;
    t->live = xcalloc(n, sizeof *t->live);
    t->added = xcalloc(n, sizeof *t->added);
    t->removed = xcalloc(n, sizeof *t->removed);
    t->changed = xcalloc(n, sizeof *t->changed);
    t->prev_id[0] = 0;
    t->prev_removed = 0;
}

void store_case_tally_row(store_case_tally *t, const char *id, int64_t a, int64_t r)
{
    if (a < 1 || a > t->current || r < 0 || r > t->current + 1)
        return;
    t->live[a]++;
    if (r)
        t->live[r]--;
    /* the same id removed and added back at one version: an upsert that replaced it */
    if (id && !strcmp(id, t->prev_id) && t->prev_removed == a)
        t->changed[a]++, t->removed[a]--;
    else
        t->added[a]++;
    if (r)
        t->removed[r]++;
    snprintf(t->prev_id, sizeof t->prev_id, "%s", id ? id : "");
    t->prev_removed = r;
}

void store_case_tally_end(store_case_tally *t, json_t *versions)
{
    int64_t cases = 0;
    for (int64_t v = 1; v <= t->current; v++) {
        cases += t->live[v];
        json_array_append_new(versions, json_pack("{s:I, s:I, s:I, s:I, s:I}", "version", (json_int_t)v, "cases",
                                                  (json_int_t)cases, "added", (json_int_t)t->added[v], "removed",
                                                  (json_int_t)t->removed[v], "changed", (json_int_t)t->changed[v]));
    }
    free(t->live);
    free(t->added);
    free(t->removed);
    free(t->changed);
}

static int by_minute(const void *a, const void *b)
{
    const store_trace *x = *(const store_trace *const *)a, *y = *(const store_trace *const *)b;
    int c = strcmp(x->prompt, y->prompt);
    if (c)
        return c;
    if (x->version != y->version)
        return x->version < y->version ? -1 : 1;
    int64_t mx = x->ts_ms / 60000, my = y->ts_ms / 60000;
    return mx < my ? -1 : mx > my;
}

size_t store_minute_sums(store_trace **acc, size_t n, store_minute_sum *out)
{
    qsort(acc, n, sizeof *acc, by_minute);
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        store_minute_sum *m = &out[k++];
        memset(m, 0, sizeof *m);
        m->prompt = acc[i]->prompt;
        m->version = acc[i]->version;
        m->minute = acc[i]->ts_ms / 60000;
        size_t j = i;
        for (; j < n && by_minute(&acc[i], &acc[j]) == 0; j++) {
            const store_trace *t = acc[j];
            m->traces++;
            m->retries += t->retry_of != NULL;
            if (t->has_latency)
                m->lat += t->latency_ms, m->lat_n++;
            if (t->has_cost)
                m->cost += t->cost_usd, m->cost_n++;
            if (t->has_tokens)
                m->tok += t->tokens, m->tok_n++;
        }
        i = j;
    }
    return k;
}

void store_writes_done(store_write *w)
{
    while (w) {
        store_write *next = w->next;
        w->done(w);
        w = next;
    }
}

void store_write_clear(store_write *w)
{
    for (size_t i = 0; i < w->ntraces; i++) {
        free(w->traces[i].id);
        free(w->traces[i].prompt);
        free(w->traces[i].retry_of);
        free(w->traces[i].json);
        for (size_t k = 0; k < w->traces[i].ntags; k++)
            free(w->traces[i].tags[k]);
        free(w->traces[i].tags);
    }
    for (size_t i = 0; i < w->nfeedback; i++) {
        free(w->feedback[i].id);
        free(w->feedback[i].trace_id);
        free(w->feedback[i].json);
        free(w->feedback[i].trace_prompt);
    }
    for (size_t i = 0; i < w->nevals; i++)
        store_evaluation_clear(&w->evals[i]);
    free(w->evals);
    for (size_t i = 0; i < w->nparts; i++) {
        free(w->parts[i].id);
        free(w->parts[i].json);
    }
    free(w->parts);
    free(w->part_results);
    w->parts = NULL;
    w->part_results = NULL;
    w->nparts = 0;
    for (size_t i = 0; i < w->nllm_calls; i++)
        store_llm_call_clear(&w->llm_calls[i]);
    free(w->llm_calls);
    w->llm_calls = NULL;
    w->nllm_calls = 0;
    free(w->traces);
    free(w->feedback);
    w->evals = NULL;
    w->nevals = 0;
    free(w->trace_results);
    free(w->feedback_results);
    store_ops_free(w->ops);
    w->ops = w->ops_tail = NULL;
    w->nops = 0;
    w->traces = NULL;
    w->feedback = NULL;
    w->trace_results = w->feedback_results = NULL;
    w->ntraces = w->nfeedback = 0;
}

void store_evaluation_clear(store_evaluation *e)
{
    for (size_t i = 0; i < e->nscores; i++) {
        free(e->scores[i].evaluator);
        free(e->scores[i].script);
        free(e->scores[i].version);
        free(e->scores[i].reason);
    }
    free(e->scores);
    free(e->trace_id);
    memset(e, 0, sizeof *e);
}

void store_ops_free(store_op *op)
{
    while (op) {
        store_op *next = op->next;
        free(op);
        op = next;
    }
}

void store_llm_call_clear(store_llm_call *c)
{
    free(c->id);
    free(c->caller_kind);
    free(c->caller);
    free(c->run_id);
    free(c->provider);
    free(c->model);
    free(c->status);
    free(c->error);
    free(c->request_id);
    memset(c, 0, sizeof *c);
}
