/* online.c — online evaluation (see online.h). Everything here runs on the
 * loop thread except the two store reads, which run in the thread pool. */
#include "loop/online.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "script/evaluator.h"
#include "base/log.h"
#include "base/metrics.h"
#include "loop/prompt_metrics.h"
#include "base/util.h"

#define FETCH_BATCH 32   /* traces read back per thread-pool job */
#define LIST_PAGE 500    /* ids a re-evaluation job queues at a time */
#define FLUSH_EVALS 256  /* evaluations per store write, at most */
#define FLUSH_MS 5       /* how long finished evaluations wait for company */
#define MAX_JOBS_KEPT 16 /* finished re-evaluation jobs shown in status */
#define INGEST_RECENT_MS 250 /* traces arrived this recently: ingest is active */
#define SAMPLE_NS 50000000u  /* how often the CPU use is sampled */
#define BUSY_PERCENT 75      /* CPU use from which the engine counts as busy */
#define CALM_PERCENT 50      /* and below which it is no longer */
#define CREDIT_MS 50         /* at most this much unused share is saved up */
#define HOLD_MS 250          /* while the lease is not fresh: how often it is looked at again */

/* The prompts and their attachments, as configured; shared by the
 * evaluations that started under it and freed after the last one. */
typedef struct {
    int refs;
    config_prompt *prompts;
    size_t nprompts;
    int budget_ms;
} plan;

typedef struct queued {
    char *id;
    struct queued *next;
} queued;

typedef struct {
    int id;
    char *prompt;
    int64_t since, until;
    bool only_unevaluated;
    int64_t cur_ts, cur_seq;
    uint64_t queued, skipped;
    bool done, listing;
    char *error;
    int64_t started_ms, finished_ms;
} reeval_job;

typedef struct trace_eval trace_eval;

struct online {
    uv_loop_t *loop;
    store *st;
    script_vm *vm;
    catalog *cat;
    plan *plan;
    int max_backlog;
    int concurrency;
    queued *head, *tail;
    size_t backlog;
    int fetching;          /* thread-pool reads under way */
    int running;           /* traces being evaluated */
    uv_idle_t pump;
    uv_timer_t flush_timer;
    /* the store's lease lapsed (several engines): no evaluation starts; the queue is held and,
     * once the lease is back, re-claimed (the traces another engine took meanwhile dropped) */
    uv_timer_t hold_timer;
    bool held;
    uint64_t lease_gen;  /* store_lease_generation the queue was last claimed under */
    uint64_t held_dropped;
    store_evaluation *pending;
    size_t npending;
    int writes_in_flight;
    bool draining;
    void (*drained_cb)(void *);
    void *drained_arg;
    reeval_job **jobs;
    size_t njobs;
    int next_job;
    /* pacing: while ingest is active and the CPUs are busy, evaluation
     * takes at most busy_share % of the loop thread */
    int busy_share;
    int ncpu;                 /* CPUs the engine may run on */
    uint64_t last_ingest_ms;  /* uv_now when a trace last arrived */
    bool limited;
    uint64_t sampled_at, proc_ns, thread_ns; /* the last CPU sample */
    int64_t debt_ns;          /* evaluation time not yet covered by the share */
    uint64_t credited_at;
    uv_timer_t pace_timer;
    /* counters */
    uint64_t enqueued, dropped, evaluated, failed, errored, errors, write_failures, invocations_killed, held_back;
    pmetrics *pm;             /* per prompt and version (production and canary) */
};

struct trace_eval {
    online *o;
    plan *plan;
    const config_prompt *prompt;
    int64_t version;     /* the trace's version (0: none named), for the per-version metrics */
    char *id;
    char *json;
    store_score *scores;
    int remaining;
};

typedef struct {
    trace_eval *te;
    size_t index;
    loaded_evaluator *le;
} attachment_run;

static void pump_start(online *o);
static void push_id(online *o, char *id);

/* ---- plans ---- */

static void plan_release(plan *p)
{
    if (!p || --p->refs > 0)
        return;
    config_prompts_free(p->prompts, p->nprompts);
    free(p);
}

static const config_prompt *plan_find(const plan *p, const char *prompt)
{
    for (size_t i = 0; i < p->nprompts; i++)
        if (strcmp(p->prompts[i].name, prompt) == 0)
            return p->prompts[i].nevaluators ? &p->prompts[i] : NULL;
    return NULL;
}

void online_configure(online *o, const config *cfg)
{
    plan *p = xcalloc(1, sizeof *p);
    p->refs = 1;
    p->budget_ms = cfg->scripts.evaluator_budget_ms;
    p->nprompts = cfg->nprompts;
    p->prompts = config_prompts_copy(cfg->prompts, cfg->nprompts);
    plan_release(o->plan);
    o->plan = p;
    o->max_backlog = cfg->evaluation.max_backlog;
    o->concurrency = cfg->evaluation.concurrency;
    o->busy_share = cfg->evaluation.busy_share;
}

bool online_has_prompt(const online *o, const char *prompt)
{
    return plan_find(o->plan, prompt) != NULL;
}

/* ---- writing results ---- */

static void on_results_written(store_write *w)
{
    online *o = w->data;
    o->writes_in_flight--;
    if (w->status != 0)
        o->write_failures += w->nevals;
    store_write_clear(w);
    free(w);
    pump_start(o); /* a drain may be waiting for this */
}

static void flush_results(online *o)
{
    uv_timer_stop(&o->flush_timer);
    if (!o->npending)
        return;
    store_write *w = xcalloc(1, sizeof *w);
    w->evals = o->pending;
    w->nevals = o->npending;
    w->done = on_results_written;
    w->data = o;
    o->pending = NULL;
    o->npending = 0;
    if (store_submit(o->st, w) != 0) {
        o->write_failures += w->nevals;
        log_warn("evaluation", "the store's queue is full: %zu evaluations not stored (the traces stay unevaluated)",
                 w->nevals);
        store_write_clear(w);
        free(w);
        return;
    }
    o->writes_in_flight++;
}

static void on_flush_timer(uv_timer_t *t)
{
    flush_results(t->data);
}

static void trace_done(trace_eval *te)
{
    online *o = te->o;
    const config_prompt *cp = te->prompt;
    bool failed = false, errored = false;
    for (size_t i = 0; i < cp->nevaluators; i++) {
        if (!cp->evaluators[i].required)
            continue;
        if (strcmp(te->scores[i].status, "ok") != 0)
            errored = true;
        else if (!te->scores[i].pass)
            failed = true;
    }
    o->pending = xrealloc(o->pending, (o->npending + 1) * sizeof *o->pending);
    store_evaluation *e = &o->pending[o->npending++];
    e->trace_id = te->id;
    e->verdict = failed ? VERDICT_FAIL : errored ? VERDICT_ERROR : VERDICT_PASS;
    e->scores = te->scores;
    e->nscores = cp->nevaluators;
    e->ts_ms = now_ms();
    o->evaluated++;
    if (failed)
        o->failed++;
    else if (errored)
        o->errored++;
    if (te->version > 0 && cp->nevaluators <= 64) {
        const char *names[64];
        enum pm_result results[64];
        for (size_t i = 0; i < cp->nevaluators; i++) {
            names[i] = cp->evaluators[i].name;
            results[i] = strcmp(te->scores[i].status, "ok") ? PM_ERROR : te->scores[i].pass ? PM_PASS : PM_FAIL;
        }
        pmetrics_trace(o->pm, cp->name, te->version, failed ? PM_FAIL : errored ? PM_ERROR : PM_PASS, names, results,
                       cp->nevaluators);
    }
    free(te->json);
    plan_release(te->plan);
    free(te);
    o->running--;
    if (o->npending >= FLUSH_EVALS || o->draining)
        flush_results(o);
    else if (!uv_is_active((uv_handle_t *)&o->flush_timer))
        uv_timer_start(&o->flush_timer, on_flush_timer, FLUSH_MS, 0);
    pump_start(o);
}

/* ---- evaluating ---- */

static const char *status_name(enum script_status s)
{
    switch (s) {
    case SCRIPT_OK: return "ok";
    case SCRIPT_KILLED: return "killed";
    case SCRIPT_NOMEM: return "out_of_memory";
    default: return "error";
    }
}

static void on_evaluated(const eval_result *r, void *ud)
{
    attachment_run *ar = ud;
    trace_eval *te = ar->te;
    online *o = te->o;
    o->debt_ns += (int64_t)r->lua_ns;
    store_score *sc = &te->scores[ar->index];
    sc->status = status_name(r->status);
    sc->pass = r->status == SCRIPT_OK && r->pass;
    sc->score = r->status == SCRIPT_OK ? r->score : 0;
    sc->reason = xstrdup(r->reason);
    if (r->status != SCRIPT_OK)
        o->errors++;
    if (r->status == SCRIPT_KILLED)
        o->invocations_killed++;
    catalog_release(ar->le);
    free(ar);
    if (--te->remaining == 0)
        trace_done(te);
}

static void evaluate_trace(online *o, char *id, char *json, int64_t version, plan *p, const config_prompt *cp)
{
    uint64_t t0 = mono_ns(); /* starting the evaluators decodes the trace for each */
    trace_eval *te = xcalloc(1, sizeof *te);
    te->o = o;
    te->plan = p;
    p->refs++;
    te->prompt = cp;
    te->version = version;
    te->id = id;
    te->json = json;
    te->scores = xcalloc(cp->nevaluators, sizeof *te->scores);
    te->remaining = (int)cp->nevaluators + 1; /* +1 while starting them */
    o->running++;
    for (size_t i = 0; i < cp->nevaluators; i++) {
        const config_attachment *a = &cp->evaluators[i];
        store_score *sc = &te->scores[i];
        sc->evaluator = xstrdup(a->name);
        sc->script = xstrdup(a->evaluator);
        sc->required = a->required;
        loaded_evaluator *le = catalog_get(o->cat, a->evaluator);
        if (!le) {
            sc->version = xstrdup("");
            sc->status = "error";
            sc->reason = xstrdup("no evaluator by this name is loaded (evaluators/<name>.lua)");
            o->errors++;
            te->remaining--;
            continue;
        }
        sc->version = xstrdup(le->ev.version);
        attachment_run *ar = xcalloc(1, sizeof *ar);
        ar->te = te;
        ar->index = i;
        ar->le = le;
        evaluator_run(o->vm, &le->ev, p->budget_ms, true, te->json, a->options_json, on_evaluated, ar);
    }
    o->debt_ns += (int64_t)(mono_ns() - t0);
    if (--te->remaining == 0)
        trace_done(te);
}

/* ---- fetching traces from the store ---- */

typedef struct {
    uv_work_t work;
    online *o;
    char *ids[FETCH_BATCH];
    char *json[FETCH_BATCH];
    char *prompt[FETCH_BATCH];
    int64_t version[FETCH_BATCH];
    size_t n;
    int rc;
    char err[256];
} fetch_job;

static void fetch_work(uv_work_t *w)
{
    fetch_job *f = w->data;
    f->rc = store_get_traces_for_eval(f->o->st, f->ids, f->n, f->json, f->prompt, f->version, f->err, sizeof f->err);
}

static void fetch_after(uv_work_t *w, int status)
{
    (void)status;
    fetch_job *f = w->data;
    online *o = f->o;
    o->fetching--;
    if (f->rc != 0)
        log_error("evaluation", "cannot read %zu traces back for evaluation: %s", f->n, f->err);
    /* read back while the lease lapsed, or with a lapse since (the read waited on a stalled
     * database): held, and re-claimed before anything is evaluated */
    bool lapsed = f->rc == 0 && !o->draining &&
                  (!store_lease_fresh(o->st) || store_lease_generation(o->st) != o->lease_gen);
    for (size_t i = 0; i < f->n && lapsed; i++) {
        push_id(o, f->ids[i]);
        free(f->json[i]);
        free(f->prompt[i]);
    }
    if (lapsed) {
        o->held = true;
        f->n = 0;
    }
    for (size_t i = 0; i < f->n; i++) {
        /* the plan is looked up again: the configuration may have changed since queueing */
        const config_prompt *cp = f->rc == 0 && f->prompt[i] ? plan_find(o->plan, f->prompt[i]) : NULL;
        free(f->prompt[i]);
        if (cp && !o->draining) {
            evaluate_trace(o, f->ids[i], f->json[i], f->version[i], o->plan, cp);
        } else {
            free(f->ids[i]);
            free(f->json[i]);
        }
    }
    free(f);
    pump_start(o);
}

/* ---- re-evaluation jobs ---- */

typedef struct {
    uv_work_t work;
    online *o;
    reeval_job *job;
    char **ids;
    size_t n;
    int rc;
    char err[256];
} list_job;

static void list_work(uv_work_t *w)
{
    list_job *l = w->data;
    reeval_job *j = l->job;
    l->rc = store_list_trace_ids(l->o->st, j->prompt, j->since, j->until, j->only_unevaluated, &j->cur_ts,
                                 &j->cur_seq, LIST_PAGE, &l->ids, &l->n, l->err, sizeof l->err);
}

static void push_id(online *o, char *id)
{
    queued *q = xmalloc(sizeof *q);
    q->id = id;
    q->next = NULL;
    if (o->tail)
        o->tail->next = q;
    else
        o->head = q;
    o->tail = q;
    o->backlog++;
}

static void list_after(uv_work_t *w, int status)
{
    (void)status;
    list_job *l = w->data;
    online *o = l->o;
    reeval_job *j = l->job;
    j->listing = false;
    o->fetching--;
    if (l->rc != 0) {
        j->error = xstrdup(l->err);
        j->done = true;
        j->finished_ms = now_ms();
        log_error("evaluation", "re-evaluation %d of %s stopped: %s", j->id, j->prompt, l->err);
    }
    for (size_t i = 0; i < l->n; i++) {
        if (l->rc == 0 && !o->draining) {
            push_id(o, l->ids[i]);
            j->queued++;
        } else {
            free(l->ids[i]);
        }
    }
    if (l->rc == 0 && l->n < LIST_PAGE && !j->done) {
        j->done = true;
        j->finished_ms = now_ms();
        log_info("evaluation", "re-evaluation %d of %s: %llu traces queued", j->id, j->prompt,
                 (unsigned long long)j->queued);
    }
    free(l->ids);
    free(l);
    pump_start(o);
}

int online_reevaluate(online *o, const char *prompt, int64_t since_ms, int64_t until_ms, bool only_unevaluated)
{
    reeval_job *j = xcalloc(1, sizeof *j);
    j->id = ++o->next_job;
    j->prompt = xstrdup(prompt);
    j->since = since_ms;
    j->until = until_ms;
    j->only_unevaluated = only_unevaluated;
    j->cur_ts = INT64_MIN;
    j->cur_seq = INT64_MIN;
    j->started_ms = now_ms();
    /* keep the running jobs and the last few finished ones */
    size_t w = 0;
    size_t finished = 0;
    for (size_t i = o->njobs; i-- > 0;)
        if (o->jobs[i]->done && ++finished >= MAX_JOBS_KEPT) {
            free(o->jobs[i]->prompt);
            free(o->jobs[i]->error);
            free(o->jobs[i]);
            o->jobs[i] = NULL;
        }
    for (size_t i = 0; i < o->njobs; i++)
        if (o->jobs[i])
            o->jobs[w++] = o->jobs[i];
    o->njobs = w;
    o->jobs = xrealloc(o->jobs, (o->njobs + 1) * sizeof *o->jobs);
    o->jobs[o->njobs++] = j;
    pump_start(o);
    return j->id;
}

/* ---- pacing: evaluation gives way to ingest ----
 * Overload degrades evaluation, never ingest. While traces keep arriving
 * and the CPUs the engine may use are busy (the process at BUSY_PERCENT of
 * them, or the loop thread at BUSY_PERCENT of one, until both are under
 * CALM_PERCENT), evaluation's time on
 * the loop thread (starting evaluators, which decodes the trace, and the
 * evaluators' Lua) is held to busy_share % of the time passing: the pump
 * starts no new traces while that time is in debt, and waits on a timer for
 * the share to pay it off. When ingest pauses or the CPUs have room,
 * evaluation runs at full speed and the backlog drains. */

static uint64_t cpu_ns(clockid_t clock)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pace_update(online *o, uint64_t now)
{
    if (o->limited) {
        o->debt_ns -= (int64_t)((now - o->credited_at) * (uint64_t)o->busy_share / 100);
        int64_t floor_ns = -(int64_t)CREDIT_MS * 1000000 * o->busy_share / 100;
        if (o->debt_ns < floor_ns)
            o->debt_ns = floor_ns;
    }
    o->credited_at = now;
    if (now - o->sampled_at < SAMPLE_NS)
        return;
    uint64_t proc = cpu_ns(CLOCK_PROCESS_CPUTIME_ID), thread = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t wall = now - o->sampled_at;
    int pct = o->limited ? CALM_PERCENT : BUSY_PERCENT; /* hysteresis: no flapping at the line */
    bool busy = o->sampled_at && ((proc - o->proc_ns) * 100 >= wall * (uint64_t)o->ncpu * (uint64_t)pct ||
                                  (thread - o->thread_ns) * 100 >= wall * (uint64_t)pct);
    bool ingesting = uv_now(o->loop) - o->last_ingest_ms < INGEST_RECENT_MS;
    bool limited = busy && ingesting && o->busy_share < 100;
    if (!limited || !o->limited)
        o->debt_ns = 0;
    o->limited = limited;
    o->sampled_at = now;
    o->proc_ns = proc;
    o->thread_ns = thread;
}

static void on_pace_timer(uv_timer_t *t)
{
    pump_start(t->data);
}

/* true: start nothing now (the pace timer restarts the pump) */
static bool pace_hold(online *o)
{
    pace_update(o, mono_ns());
    if (!o->limited || o->debt_ns <= 0)
        return false;
    uint64_t wait_ms = (uint64_t)o->debt_ns * 100 / (uint64_t)o->busy_share / 1000000u + 1;
    if (!uv_is_active((uv_handle_t *)&o->pace_timer))
        uv_timer_start(&o->pace_timer, on_pace_timer, wait_ms, 0);
    o->held_back++;
    return true;
}

/* ---- the pump: one step per loop turn ---- */

/* ---- the lease (several engines on one database) ---- */

typedef struct {
    uv_work_t work;
    online *o;
    char **ids;
    bool *keep;
    size_t n;
    int rc;
    char err[256];
} reclaim_job;

static void on_hold_timer(uv_timer_t *t)
{
    pump_start(t->data);
}

static void reclaim_work(uv_work_t *w)
{
    reclaim_job *r = w->data;
    r->rc = store_reclaim_traces(r->o->st, r->ids, r->n, r->keep, r->err, sizeof r->err);
}

static void reclaim_after(uv_work_t *w, int status)
{
    (void)status;
    reclaim_job *r = w->data;
    online *o = r->o;
    o->fetching--;
    size_t dropped = 0;
    if (r->rc != 0) {
        /* held again: tried at the next look */
        log_error("evaluation", "cannot re-claim %zu traces held while the lease lapsed: %s", r->n, r->err);
        o->held = true;
    }
    for (size_t i = 0; i < r->n; i++) {
        if (r->rc != 0 || r->keep[i]) {
            push_id(o, r->ids[i]);
        } else {
            free(r->ids[i]);
            dropped++;
        }
    }
    o->held_dropped += dropped;
    if (dropped)
        log_info("evaluation", "%zu traces held while the lease lapsed are another engine's now: not evaluated here",
                 dropped);
    free(r->ids);
    free(r->keep);
    free(r);
    if (o->held)
        uv_timer_start(&o->hold_timer, on_hold_timer, HOLD_MS, 0);
    else
        pump_start(o);
}

/* Whether the queue waits for the lease: while it is not fresh, and while the traces held are
 * re-claimed once it is. */
static bool hold(online *o)
{
    if (!store_lease_fresh(o->st)) {
        if (!o->held)
            log_warn("evaluation", "this engine's lease on the store lapsed: %zu traces held, no evaluation starts",
                     o->backlog);
        o->held = true;
        uv_timer_start(&o->hold_timer, on_hold_timer, HOLD_MS, 0);
        return true;
    }
    uint64_t gen = store_lease_generation(o->st);
    if (!o->held && gen == o->lease_gen)
        return false;
    o->held = false;
    o->lease_gen = gen;
    reclaim_job *r = xcalloc(1, sizeof *r);
    r->o = o;
    r->work.data = r;
    r->ids = xcalloc(o->backlog ? o->backlog : 1, sizeof *r->ids);
    r->keep = xcalloc(o->backlog ? o->backlog : 1, sizeof *r->keep);
    while (o->head) {
        queued *q = o->head;
        o->head = q->next;
        r->ids[r->n++] = q->id;
        free(q);
    }
    o->tail = NULL;
    o->backlog = 0;
    o->fetching++;
    uv_queue_work(o->loop, &r->work, reclaim_work, reclaim_after);
    return true;
}

static bool idle_now(const online *o)
{
    return o->running == 0 && o->fetching == 0 && o->writes_in_flight == 0 && o->npending == 0;
}

static void on_pump(uv_idle_t *h)
{
    online *o = h->data;
    if (o->draining) {
        /* drop what waits; finish what runs */
        while (o->head) {
            queued *q = o->head;
            o->head = q->next;
            free(q->id);
            free(q);
        }
        o->tail = NULL;
        o->backlog = 0;
        if (o->npending)
            flush_results(o);
        uv_idle_stop(h);
        if (idle_now(o) && o->drained_cb) {
            void (*cb)(void *) = o->drained_cb;
            o->drained_cb = NULL;
            cb(o->drained_arg);
        }
        return;
    }
    if (o->head && hold(o)) {
        uv_idle_stop(h);
        return;
    }
    /* refill the queue from a re-evaluation job when there is room */
    for (size_t i = 0; i < o->njobs; i++) {
        reeval_job *j = o->jobs[i];
        if (j->done || j->listing || o->backlog + LIST_PAGE > (size_t)o->max_backlog)
            continue;
        j->listing = true;
        list_job *l = xcalloc(1, sizeof *l);
        l->o = o;
        l->job = j;
        l->work.data = l;
        o->fetching++;
        uv_queue_work(o->loop, &l->work, list_work, list_after);
        break;
    }
    if (o->head && o->running < o->concurrency && o->fetching < 2 && !pace_hold(o)) {
        fetch_job *f = xcalloc(1, sizeof *f);
        f->o = o;
        f->work.data = f;
        while (o->head && f->n < FETCH_BATCH) {
            queued *q = o->head;
            o->head = q->next;
            f->ids[f->n++] = q->id;
            free(q);
            o->backlog--;
        }
        if (!o->head)
            o->tail = NULL;
        o->fetching++;
        uv_queue_work(o->loop, &f->work, fetch_work, fetch_after);
    }
    /* nothing more to start until a callback says so */
    uv_idle_stop(h);
}

static void pump_start(online *o)
{
    if (!uv_is_closing((uv_handle_t *)&o->pump))
        uv_idle_start(&o->pump, on_pump);
}

void online_enqueue(online *o, const char *trace_id, const char *prompt)
{
    o->last_ingest_ms = uv_now(o->loop);
    if (o->draining || !plan_find(o->plan, prompt))
        return;
    if (o->backlog >= (size_t)o->max_backlog) {
        if (o->dropped++ % 10000 == 0)
            log_warn("evaluation", "the evaluation backlog is full (%d traces): new traces stay unevaluated "
                     "(%llu so far); re-evaluate them later", o->max_backlog, (unsigned long long)o->dropped);
        return;
    }
    push_id(o, xstrdup(trace_id));
    o->enqueued++;
    pump_start(o);
}

/* ---- life cycle and status ---- */

online *online_new(uv_loop_t *loop, store *st, script_vm *vm, catalog *cat, const config *cfg)
{
    online *o = xcalloc(1, sizeof *o);
    o->loop = loop;
    o->st = st;
    o->vm = vm;
    o->cat = cat;
    uv_idle_init(loop, &o->pump);
    o->pump.data = o;
    uv_timer_init(loop, &o->flush_timer);
    o->flush_timer.data = o;
    uv_timer_init(loop, &o->pace_timer);
    o->pace_timer.data = o;
    uv_timer_init(loop, &o->hold_timer);
    o->hold_timer.data = o;
    cpu_set_t cpus;
    o->ncpu = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    if (o->ncpu < 1)
        o->ncpu = 1;
    o->pm = pmetrics_new();
    o->lease_gen = store_lease_generation(st);
    online_configure(o, cfg);
    return o;
}

void online_feedback(online *o, const char *prompt, int64_t version, bool negative)
{
    pmetrics_feedback(o->pm, prompt, version, negative);
}

void online_prompt_metrics(online *o, registry *reg, buf_t *b)
{
    pmetrics_write(o->pm, reg, b);
}

void online_drain(online *o, void (*cb)(void *), void *arg)
{
    o->draining = true;
    o->drained_cb = cb;
    o->drained_arg = arg;
    uv_idle_start(&o->pump, on_pump);
}

/* close callbacks run in the order of the uv_close calls: the timer's is last */
static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

void online_free(online *o)
{
    plan_release(o->plan);
    pmetrics_free(o->pm);
    o->pm = NULL;
    for (size_t i = 0; i < o->njobs; i++) {
        free(o->jobs[i]->prompt);
        free(o->jobs[i]->error);
        free(o->jobs[i]);
    }
    free(o->jobs);
    while (o->head) {
        queued *q = o->head;
        o->head = q->next;
        free(q->id);
        free(q);
    }
    uv_close((uv_handle_t *)&o->pump, NULL);
    uv_close((uv_handle_t *)&o->pace_timer, NULL);
    uv_close((uv_handle_t *)&o->hold_timer, NULL);
    uv_close((uv_handle_t *)&o->flush_timer, on_closed);
}

size_t online_backlog(const online *o)
{
    return o->backlog;
}

void online_metrics(const online *o, buf_t *b)
{
    metrics_one(b, "ratchet_evaluation_backlog", "gauge", "Traces waiting for online evaluation.", (double)o->backlog);
    metrics_one(b, "ratchet_evaluation_backlog_max", "gauge",
                "The backlog's bound (evaluation.max_backlog).", o->max_backlog);
    metrics_one(b, "ratchet_evaluation_running", "gauge", "Traces being evaluated now.", o->running);
    metrics_one(b, "ratchet_evaluation_enqueued_total", "counter",
                "Traces queued for online evaluation.", (double)o->enqueued);
    metrics_one(b, "ratchet_evaluation_dropped_total", "counter",
                "Traces left unevaluated because the backlog was full (re-evaluate them later).", (double)o->dropped);
    metrics_family(b, "ratchet_evaluation_traces_total", "counter", "Traces evaluated online, by verdict.");
    metrics_sample(b, "ratchet_evaluation_traces_total", (double)(o->evaluated - o->failed - o->errored), "verdict",
                   "pass", NULL);
    metrics_sample(b, "ratchet_evaluation_traces_total", (double)o->failed, "verdict", "fail", NULL);
    metrics_sample(b, "ratchet_evaluation_traces_total", (double)o->errored, "verdict", "error", NULL);
    metrics_one(b, "ratchet_evaluation_write_failures_total", "counter",
                "Verdicts the store failed to record.", (double)o->write_failures);
    metrics_one(b, "ratchet_evaluation_limited", "gauge",
                "1 while evaluation is held to evaluation.busy_share because ingest keeps the CPUs busy.",
                o->limited);
    metrics_one(b, "ratchet_evaluation_held_back_total", "counter",
                "Times evaluation waited for its share while ingest kept the CPUs busy.", (double)o->held_back);
}

json_t *online_status_json(const online *o)
{
    json_t *jobs = json_array();
    for (size_t i = 0; i < o->njobs; i++) {
        const reeval_job *j = o->jobs[i];
        char started[32], finished[32];
        rfc3339_format(j->started_ms, started);
        if (j->done)
            rfc3339_format(j->finished_ms, finished);
        json_array_append_new(jobs, json_pack("{s:i, s:s, s:s, s:b, s:I, s:s, s:s?, s:s?}", "id", j->id, "prompt",
                                              j->prompt, "state", j->error ? "failed" : j->done ? "queued" : "listing",
                                              "only_unevaluated", j->only_unevaluated, "traces_queued",
                                              (json_int_t)j->queued, "started_at", started, "finished_at",
                                              j->done ? finished : NULL, "error", j->error));
    }
    json_t *prompts = json_array();
    for (size_t i = 0; i < o->plan->nprompts; i++) {
        const config_prompt *cp = &o->plan->prompts[i];
        json_t *evs = json_array();
        for (size_t k = 0; k < cp->nevaluators; k++) {
            const loaded_evaluator *le = catalog_peek(o->cat, cp->evaluators[k].evaluator);
            json_array_append_new(evs, json_pack("{s:s, s:s, s:b, s:s?}", "name", cp->evaluators[k].name,
                                                 "evaluator", cp->evaluators[k].evaluator, "required",
                                                 cp->evaluators[k].required, "version",
                                                 le ? le->ev.version : NULL));
        }
        json_array_append_new(prompts, json_pack("{s:s, s:o}", "name", cp->name, "evaluators", evs));
    }
    return json_pack("{s:I, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:i, s:i, s:b, s:I, s:o, s:o}", "backlog",
                     (json_int_t)o->backlog, "max_backlog", o->max_backlog, "running", o->running, "enqueued",
                     (json_int_t)o->enqueued, "dropped", (json_int_t)o->dropped, "evaluated",
                     (json_int_t)o->evaluated, "failed", (json_int_t)o->failed, "evaluator_errors",
                     (json_int_t)o->errors, "killed", (json_int_t)o->invocations_killed, "write_failures",
                     (json_int_t)o->write_failures, "concurrency", o->concurrency, "busy_share", o->busy_share,
                     "limited", o->limited, "held_back", (json_int_t)o->held_back, "prompts", prompts,
                     "reevaluations", jobs);
}
