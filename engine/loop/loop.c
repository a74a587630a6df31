/* loop.c — the self-improvement loop's state machine (see loop.h and
 * docs/loop.md). Everything here runs on the loop thread; reads go to the
 * thread pool, judgments to Lua, and each move is one store commit holding
 * the registry changes, the prompt's state row and its event together. */
#include "loop/loop.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/metrics.h"
#include "script/policy.h"
#include "loop/prompt_metrics.h"
#include "loop/loop_states.h"
#include "loop/provenance.h"
#include "loop/gepa.h"
#include "base/util.h"
#include "base/jtree.h"

#define TICK_MS 200
/* how long a manual optimize waits for a routine step in flight */
#define WANT_WAIT_MS 10000
#define MAX_HISTORY 8

typedef struct lprompt lprompt;
typedef struct loop_cycle loop_cycle;

struct lprompt {
    optloop *lp;
    char *name;
    json_t *set;         /* the loop settings with defaults filled; NULL: not configured now */
    /* durable (the loop_state row) */
    loop_state state;
    char *cycle, *run_id;
    int64_t version;
    int step;
    int64_t step_started, canary_started, last_cycle_at;
    json_t *detail;      /* {step_base} */
    /* volatile */
    bool busy;           /* a step is in flight */
    int64_t next_check;
    size_t burst;        /* traces since the last check */
    char decision[400];  /* the last decision, for status */
    int64_t decided_ms;
    loop_cycle *cyc;
    struct {             /* a manual optimize waiting for a routine step to end */
        char *actor;
        char *tpl;
        loop_done done;
        void *ud;
        int64_t since;
    } want;
    int writing;         /* moves of this prompt submitted, not yet committed */
    uint64_t outcomes[8]; /* cycles ended, by outcome (outcome_names) */
    struct view_waiter *waiters; /* views asked for while one was */
    lprompt *next;
};

/* Someone who wants the prompt's view once what it shows is on disk. */
struct view_waiter {
    loop_view_cb cb;
    void *ud;
    struct view_waiter *next;
};

/* What an optimization cycle carries from step to step. */
struct loop_cycle {
    int64_t baseline;
    json_t *failures;    /* [{trace_id, variables, output, reasons, ts, messages, metadata}] */
    json_t *passing;     /* recent passing traces, the same shape: the replay's pool */
    provenance *prov;    /* the user-controlled text of every trace read */
    provenance *golden;  /* the golden set's text */
    json_t *group_of;    /* failure id -> its group (from the mining policy) */
    json_t *replay;      /* [{id, stratum}] passing traces the gate replays */
    json_t *facts;       /* version -> what the accept policy is told about it */
    json_t *history;     /* [{version, status, note, pass_rate, traces}] */
    json_t *mined;       /* {shown, held, ...} from the mining policy */
    json_t *ctx;         /* what the template is given */
    json_t *editable;    /* roles the template may change */
    json_t *versions;    /* the candidate versions added */
    json_t *invalid;     /* [{index, reason}] */
    llm_call *call;
    char tpl[160];
    char tpl_override[160]; /* `ratchet optimize NAME --template T` */
    gepa *search;        /* a search template's search under way */
    json_t *searched;    /* what it found: the pool and its lineage, for the `search` event */
};

struct optloop {
    uv_loop_t *uv;
    store *st;
    registry *reg;
    runner *rn;
    catalog *cat;
    script_vm *vm;
    llm *l;
    int policy_budget_ms, template_budget_ms, evaluator_budget_ms;
    config_prompt *cfg_prompts; /* the prompts' evaluators, for a search's runs */
    size_t ncfg_prompts;
    uv_timer_t timer;
    bool draining;
    void (*drain_cb)(void *);
    void *drain_arg;
    int inflight;        /* reads, calls and writes under way */
    lprompt *prompts;
    struct loop_counters {
        uint64_t checks, cycles, candidates, invalid, accepted, rejected, canaries, advances, promotions, rollbacks,
            aborted, errors;
    } n;
};

static const char *const DEFAULTS =
    "{\"enabled\":true,\"template\":\"plain\",\"optimizer\":{},\"candidates\":3,\"require_approval\":false,"
    "\"window_ms\":86400000,\"check_interval_ms\":60000,\"max_shown\":12,\"max_failures\":500,\"holdout\":0.3,"
    "\"k\":3,\"concurrency\":8,\"replay\":60,\"replay_pool\":1000,\"trigger\":\"trigger\",\"accept\":\"accept\",\"rollout\":\"rollout\","
    "\"mining\":\"mining\",\"trigger_options\":{},\"accept_options\":{},\"rollout_options\":{},"
    "\"mining_options\":{},\"search\":\"search\",\"search_options\":{}}";
/* loop.gepa's defaults (a search template's search, docs/loop.md) */
static const char *const GEPA_DEFAULTS =
    "{\"iterations\":12,\"minibatch\":3,\"merge_every\":4,\"passing\":6,\"proposals\":3,\"final\":3,"
    "\"cache\":true}";

static void cycle_abort(lprompt *p, const char *kind, const char *why);
static void check_drained(optloop *lp);

/* How an optimization cycle ended, for ratchet_loop_outcomes_total. */
enum outcome { OUT_PROMOTED, OUT_ROLLED_BACK, OUT_NO_WINNER, OUT_NO_CANDIDATE, OUT_REJECTED_BY_HUMAN, OUT_MANUAL,
               OUT_ABORTED, OUT_ERROR };
static const char *const outcome_names[8] = {"promoted", "rolled_back", "no_winner", "no_candidate",
                                             "rejected_by_human", "manual", "aborted", "error"};

static void ended(lprompt *p, enum outcome o)
{
    p->outcomes[o]++;
}

/* ---- settings ---- */

static const char *set_str(lprompt *p, const char *k)
{
    return json_string_value(json_object_get(p->set, k));
}

static int64_t set_int(lprompt *p, const char *k)
{
    return json_integer_value(json_object_get(p->set, k));
}

static double set_num(lprompt *p, const char *k)
{
    return json_number_value(json_object_get(p->set, k));
}

/* ---- the prompts ---- */

static lprompt *find(optloop *lp, const char *name)
{
    for (lprompt *p = lp->prompts; p; p = p->next)
        if (!strcmp(p->name, name))
            return p;
    return NULL;
}

static lprompt *get(optloop *lp, const char *name)
{
    lprompt *p = find(lp, name);
    if (p)
        return p;
    p = xcalloc(1, sizeof *p);
    p->lp = lp;
    p->name = xstrdup(name);
    p->state = LOOP_IDLE;
    p->detail = json_object();
    p->next = lp->prompts;
    lp->prompts = p;
    return p;
}

static void cycle_free(loop_cycle *c)
{
    if (!c)
        return;
    json_decref(c->failures);
    json_decref(c->passing);
    provenance_free(c->prov);
    provenance_free(c->golden);
    json_decref(c->group_of);
    json_decref(c->replay);
    json_decref(c->facts);
    json_decref(c->history);
    json_decref(c->mined);
    json_decref(c->ctx);
    json_decref(c->editable);
    json_decref(c->versions);
    json_decref(c->invalid);
    json_decref(c->searched);
    free(c);
}

static void decide(lprompt *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void decide(lprompt *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->decision, sizeof p->decision, fmt, ap);
    va_end(ap);
    p->decided_ms = now_ms();
}

optloop *loop_new(uv_loop_t *uvl, store *st, registry *reg, runner *rn, catalog *cat, script_vm *vm, llm *l,
               const config *cfg)
{
    optloop *lp = xcalloc(1, sizeof *lp);
    lp->uv = uvl;
    lp->st = st;
    lp->reg = reg;
    lp->rn = rn;
    lp->cat = cat;
    lp->vm = vm;
    lp->l = l;
    uv_timer_init(uvl, &lp->timer);
    lp->timer.data = lp;
    loop_configure(lp, cfg);
    return lp;
}

void loop_configure(optloop *lp, const config *cfg)
{
    lp->policy_budget_ms = cfg->scripts.policy_budget_ms;
    lp->template_budget_ms = cfg->scripts.template_budget_ms;
    lp->evaluator_budget_ms = cfg->scripts.evaluator_budget_ms;
    config_prompts_free(lp->cfg_prompts, lp->ncfg_prompts);
    lp->cfg_prompts = config_prompts_copy(cfg->prompts, cfg->nprompts);
    lp->ncfg_prompts = cfg->nprompts;
    for (lprompt *p = lp->prompts; p; p = p->next) {
        json_decref(p->set);
        p->set = NULL;
    }
    for (size_t i = 0; i < cfg->nprompts; i++) {
        const config_prompt *cp = &cfg->prompts[i];
        if (!cp->loop_json)
            continue;
        lprompt *p = get(lp, cp->name);
        p->set = json_loads(DEFAULTS, 0, NULL);
        json_t *mine = json_loads(cp->loop_json, 0, NULL);
        json_object_update(p->set, mine);
        json_decref(mine);
        json_t *gd = json_loads(GEPA_DEFAULTS, 0, NULL);
        if (json_is_object(json_object_get(p->set, "gepa")))
            json_object_update(gd, json_object_get(p->set, "gepa"));
        json_object_set_new(p->set, "gepa", gd);
        p->next_check = 0;
    }
}

int loop_load(optloop *lp, char *err, size_t errlen)
{
    json_t *rows;
    if (store_load_loop_states(lp->st, &rows, err, errlen)) {
        json_decref(rows);
        return -1;
    }
    loop_apply_states(lp, rows);
    json_decref(rows);
    return 0;
}

void loop_apply_states(optloop *lp, json_t *rows)
{
    const char *name;
    json_t *r;
    json_object_foreach(rows, name, r) {
        lprompt *p = get(lp, name);
        const char *stored = json_string_value(json_object_get(r, "state"));
        if (!loop_state_parse(stored, &p->state)) {
            log_error("loop", "%s: the stored loop state '%s' is none the engine knows; taken as idle", name,
                      stored ? stored : "(none)");
            p->state = LOOP_IDLE;
        }
        const char *s = json_string_value(json_object_get(r, "cycle"));
        free(p->cycle); /* again on a takeover: the last leader's state replaces what was read at start */
        p->cycle = s ? xstrdup(s) : NULL;
        s = json_string_value(json_object_get(r, "run_id"));
        free(p->run_id);
        p->run_id = s ? xstrdup(s) : NULL;
        p->version = json_integer_value(json_object_get(r, "version"));
        p->step = (int)json_integer_value(json_object_get(r, "step"));
        p->step_started = json_integer_value(json_object_get(r, "step_started"));
        p->canary_started = json_integer_value(json_object_get(r, "canary_started"));
        p->last_cycle_at = json_integer_value(json_object_get(r, "last_cycle_at"));
        if (json_is_object(json_object_get(r, "detail"))) {
            json_decref(p->detail);
            p->detail = json_incref(json_object_get(r, "detail"));
        }
        p->next_check = 0; /* a new leader checks at once */
    }
}

/* ---- committing a move ---- */

typedef struct {
    store_write w;
    lprompt *p;
    void (*then)(lprompt *p, int status, void *ud);
    void *ud;
} move;

static void put_state(lprompt *p, store_write *w)
{
    char *detail = json_text(p->detail, JSON_COMPACT);
    store_loop_state ls = {.prompt = p->name,
                           .state = loop_state_name(p->state),
                           .cycle = p->cycle,
                           .run_id = p->run_id,
                           .version = p->version,
                           .step = p->step,
                           .step_started = p->step_started,
                           .canary_started = p->canary_started,
                           .last_cycle_at = p->last_cycle_at,
                           .updated_at = now_ms(),
                           .detail = detail};
    store_put_loop_state(w, &ls);
    free(detail);
}

static void event(lprompt *p, store_write *w, const char *kind, json_t *detail, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void event(lprompt *p, store_write *w, const char *kind, json_t *detail, const char *fmt, ...)
{
    char msg[2000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *d = detail ? json_text(detail, JSON_COMPACT) : NULL;
    store_put_loop_event(w, p->name, p->cycle, kind, msg, d, now_ms());
    log_info("loop", "%s: %s: %s", p->name, kind, msg);
    free(d);
    json_decref(detail);
}

/* Moves p along the state table (loop/loop_states.c) by ev. A move the
 * table does not have is a bug: it is logged and counted, and the state
 * stays. */
static bool set_state(lprompt *p, loop_event ev)
{
    loop_state to;
    if (!loop_next(p->state, ev, &to)) {
        p->lp->n.errors++;
        log_error("loop", "%s: no move on '%s' from %s (a bug: the state stays)", p->name, loop_event_name(ev),
                  loop_state_name(p->state));
        return false;
    }
    p->state = to;
    return true;
}

/* The prompt's moves are all on disk: what its view shows is stored. */
static void view_settled(lprompt *p)
{
    while (p->waiters) {
        struct view_waiter *w = p->waiters;
        p->waiters = w->next;
        json_t *v = loop_prompt_json(p->lp, p->name);
        w->cb(v, w->ud);
        json_decref(v);
        free(w);
    }
}

static void on_moved(store_write *w)
{
    move *m = (move *)w;
    lprompt *p = m->p;
    optloop *lp = p->lp;
    int st = w->status;
    store_write_clear(w);
    if (st != 0) {
        lp->n.errors++;
        log_error("loop", "%s: a move of the loop could not be stored (SQLite %d); the next start resumes from "
                  "the stored state", p->name, st);
    }
    lp->inflight--;
    if (--p->writing == 0)
        view_settled(p);
    if (m->then)
        m->then(p, st, m->ud);
    free(m);
    check_drained(lp);
}

/* Submits w (its state row is added here) and calls then after the commit. */
static void commit(lprompt *p, move *m, void (*then)(lprompt *, int, void *), void *ud)
{
    put_state(p, &m->w);
    m->p = p;
    m->then = then;
    m->ud = ud;
    m->w.done = on_moved;
    p->lp->inflight++;
    p->writing++;
    m->w.fenced = true; /* a stale leader's decision is refused by the store */
    if (store_submit(p->lp->st, &m->w) != 0) {
        m->w.status = -1;
        on_moved(&m->w);
    }
}

static move *move_new(void)
{
    return xcalloc(1, sizeof(move));
}

static void release(lprompt *p, int status, void *ud)
{
    (void)status;
    (void)ud;
    p->busy = false;
}

/* ---- thread-pool reads ---- */

typedef struct {
    uv_work_t w;
    lprompt *p;
    char *name;
    int64_t versions[2];
    int64_t since, limit;
    json_t *out[2];
    json_t *history;
    json_t *run;
    char *run_id;
    json_t *slices;      /* metadata keys to break the metrics down by */
    char *dataset;       /* the golden set to read, and its version */
    int64_t dataset_version;
    provenance *prov, *golden;
    char err[512];
    int rc;
    void (*work)(void *);
    void (*after)(void *);
} pool_read;

static void pool_work(uv_work_t *w)
{
    pool_read *r = w->data;
    r->work(r);
}

static void pool_after(uv_work_t *w, int status)
{
    (void)status;
    pool_read *r = w->data;
    optloop *lp = r->p->lp;
    lp->inflight--;
    if (lp->draining)
        r->p->busy = false;
    else
        r->after(r);
    json_decref(r->out[0]);
    json_decref(r->out[1]);
    json_decref(r->history);
    json_decref(r->run);
    provenance_free(r->prov);
    provenance_free(r->golden);
    json_decref(r->slices);
    free(r->name);
    free(r->run_id);
    free(r->dataset);
    free(r);
    check_drained(lp);
}

static pool_read *pool_new(lprompt *p, void (*work)(void *), void (*after)(void *))
{
    pool_read *r = xcalloc(1, sizeof *r);
    r->p = p;
    r->name = xstrdup(p->name);
    r->work = work;
    r->after = after;
    r->w.data = r;
    return r;
}

static void pool_go(pool_read *r)
{
    r->p->lp->inflight++;
    uv_queue_work(r->p->lp->uv, &r->w, pool_work, pool_after);
}

/* ---- policy and template calls ---- */

typedef struct {
    lprompt *p;
    void (*then)(lprompt *p, json_t *res, const char *err);
} pcall;

static void on_pcall(const char *result, const char *error, void *ud)
{
    pcall *c = ud;
    lprompt *p = c->p;
    optloop *lp = p->lp;
    lp->inflight--;
    if (lp->draining) {
        p->busy = false;
    } else {
        json_t *res = result ? json_loads(result, JSON_DECODE_ANY, NULL) : NULL;
        c->then(p, res, error);
        json_decref(res);
    }
    free(c);
    check_drained(lp);
}

/* Calls kind/NAME's fn with the arguments (a JSON array, taken). Returns
 * false (with why) when the script is not loaded. */
static bool lua_call_fn(lprompt *p, const char *kind, const char *name, const char *fn, json_t *args,
                        void (*then)(lprompt *, json_t *, const char *), char *why, size_t whylen)
{
    char slot[200];
    snprintf(slot, sizeof slot, "%s/%s", kind, name);
    const loaded_evaluator *le = catalog_peek(p->lp->cat, slot);
    if (!le) {
        snprintf(why, whylen, "%s/%s.lua is not loaded (see /v1/status scripts.errors)", kind, name);
        json_decref(args);
        return false;
    }
    pcall *c = xcalloc(1, sizeof *c);
    c->p = p;
    c->then = then;
    char *text = json_text(args, JSON_COMPACT);
    json_decref(args);
    p->lp->inflight++;
    policy_call_args(p->lp->vm, le->ev.ref, slot, fn, !strcmp(kind, "metaprompts") ? p->lp->template_budget_ms
                                                                                   : p->lp->policy_budget_ms,
                     text, on_pcall, c);
    free(text);
    return true;
}

/* ---- the trigger ---- */

static void trigger_decided(lprompt *p, json_t *res, const char *err);
static void begin_cycle(lprompt *p, const char *actor, const char *reason);
static void serve_want(lprompt *p);

static void metrics_work(void *ud)
{
    pool_read *r = ud;
    for (int i = 0; i < 2; i++)
        if (r->versions[i] && store_prompt_metrics_sliced(r->p->lp->st, r->name, r->versions[i], r->since,
                                                          INT64_MAX, r->slices, &r->out[i], r->err, sizeof r->err))
            r->rc = -1;
}

static json_t *state_json(lprompt *p)
{
    json_t *pr = registry_prompt(p->lp->reg, p->name);
    int64_t now = now_ms();
    int64_t canary = registry_version_in(p->lp->reg, p->name, "canary");
    /* absent, not null: a JSON null reaches Lua as a value, not nil */
    return json_pack("{s:s, s:s, s:b, s:o*, s:o*, s:o*, s:I, s:O}", "prompt", p->name, "state", loop_state_name(p->state), "pinned",
                     json_is_true(json_object_get(pr, "pinned")), "canary", canary ? json_integer(canary) : NULL,
                     "last_cycle_at", p->last_cycle_at ? json_integer(p->last_cycle_at) : NULL,
                     "since_last_cycle_ms", p->last_cycle_at ? json_integer(now - p->last_cycle_at) : NULL, "now_ms",
                     (json_int_t)now, "options", json_object_get(p->set, "trigger_options"));
}

static void trigger_read(void *ud)
{
    pool_read *r = ud;
    lprompt *p = r->p;
    if (r->rc) {
        decide(p, "the window statistics could not be read: %s", r->err);
        p->busy = false;
        return;
    }
    json_t *stats = json_incref(r->out[0]);
    double ev = (double)json_integer_value(json_object_get(stats, "evaluated"));
    json_object_set_new(stats, "failure_rate",
                        json_real(ev > 0 ? (double)json_integer_value(json_object_get(stats, "failures")) / ev : 0));
    json_object_set_new(stats, "window_ms", json_integer(set_int(p, "window_ms")));
    json_object_set_new(stats, "version", json_integer(r->versions[0]));
    char why[300];
    if (!lua_call_fn(p, "policies", set_str(p, "trigger"), "should_optimize", json_pack("[o, o]", stats, state_json(p)),
                     trigger_decided, why, sizeof why)) {
        decide(p, "%s", why);
        p->busy = false;
    }
}

static void trigger_decided(lprompt *p, json_t *res, const char *err)
{
    if (!res || !json_is_object(res)) {
        p->lp->n.errors++;
        decide(p, "trigger: %s", err ? err : "should_optimize must return {optimize = bool, reason = \"...\"}");
        p->busy = false;
        return;
    }
    const char *reason = json_string_value(json_object_get(res, "reason"));
    if (!json_is_true(json_object_get(res, "optimize")) || p->state != LOOP_IDLE ||
        json_is_true(json_object_get(registry_prompt(p->lp->reg, p->name), "pinned"))) {
        decide(p, "no optimization: %s", reason ? reason : "(no reason given)");
        p->busy = false;
        return;
    }
    begin_cycle(p, "loop", reason ? reason : "the trigger policy said so");
}

static void trigger_check(lprompt *p)
{
    registry *reg = p->lp->reg;
    json_t *pr = registry_prompt(reg, p->name);
    if (!pr) {
        decide(p, "the prompt is not in the registry");
        return;
    }
    if (json_is_true(json_object_get(pr, "pinned"))) {
        decide(p, "pinned: the loop leaves it alone");
        return;
    }
    int64_t prod = registry_version_in(reg, p->name, "production");
    if (!prod) {
        decide(p, "no production version to improve");
        return;
    }
    p->busy = true;
    pool_read *r = pool_new(p, metrics_work, trigger_read);
    r->versions[0] = prod;
    r->since = now_ms() - set_int(p, "window_ms");
    pool_go(r);
}

/* ---- an optimization cycle ---- */

static void cycle_read(lprompt *p, int status, void *ud);

static void begin_cycle(lprompt *p, const char *actor, const char *reason)
{
    optloop *lp = p->lp;
    char id[37];
    id_uuid7(id);
    free(p->cycle);
    p->cycle = xstrdup(id);
    free(p->run_id);
    p->run_id = NULL;
    p->version = 0;
    p->last_cycle_at = now_ms();
    set_state(p, LOOP_EV_TRIGGER);
    cycle_free(p->cyc);
    p->cyc = xcalloc(1, sizeof *p->cyc);
    p->cyc->baseline = registry_version_in(lp->reg, p->name, "production");
    p->cyc->versions = json_array();
    p->cyc->invalid = json_array();
    lp->n.cycles++;
    p->busy = true;
    decide(p, "optimizing: %s", reason);
    move *m = move_new();
    event(p, &m->w, "trigger", json_pack("{s:s, s:I}", "actor", actor, "baseline", (json_int_t)p->cyc->baseline),
          "%s (baseline v%lld)", reason, (long long)p->cyc->baseline);
    commit(p, m, cycle_read, NULL);
}

/* The golden set's text, for telling tokens it holds from tokens only
 * traffic has. */
static provenance *golden_text(json_t *texts)
{
    provenance *g = provenance_new(PROVENANCE_WINDOW);
    size_t i;
    json_t *t;
    json_array_foreach(texts, i, t) {
        json_t *c = json_loads(json_string_value(t), 0, NULL);
        json_t *both = json_pack("[O*, O*]", json_object_get(c, "variables"), json_object_get(c, "expected"));
        provenance_add_trace(g, both, NULL);
        json_decref(both);
        json_decref(c);
    }
    provenance_seal(g);
    return g;
}

static void failures_work(void *ud)
{
    pool_read *r = ud;
    store *st = r->p->lp->st;
    /* the failures of the version being improved */
    if (store_failed_trace_cases(st, r->name, r->versions[0], r->since, INT64_MAX, (int)r->limit, &r->out[0], r->err,
                                 sizeof r->err)) {
        r->rc = -1;
        return;
    }
    /* its passing traces, for the gate's replay */
    if (r->versions[1] > 0 && store_passed_trace_cases(st, r->name, r->versions[0], r->since, INT64_MAX,
                                                       (int)r->versions[1], &r->out[1], r->err, sizeof r->err)) {
        r->rc = -1;
        return;
    }
    /* the history: the newest versions with their online scores */
    r->history = json_array();
    for (int64_t v = r->versions[0]; v >= 1 && v > r->versions[0] - MAX_HISTORY; v--) {
        json_t *m = NULL;
        if (store_prompt_metrics(st, r->name, v, 0, INT64_MAX, &m, r->err, sizeof r->err)) {
            r->rc = -1;
            return;
        }
        json_array_append_new(r->history, m);
    }
    /* what traffic said, for the copy check and the rare-token facts */
    r->prov = provenance_new(PROVENANCE_WINDOW);
    for (int i = 0; i < 2; i++) {
        size_t j;
        json_t *t;
        json_array_foreach(r->out[i], j, t)
            provenance_add_trace(r->prov, json_object_get(t, "variables"), json_object_get(t, "messages"));
    }
    provenance_seal(r->prov);
    json_t *texts = NULL;
    if (r->dataset) {
        if (store_dataset_cases(st, r->dataset, r->dataset_version, STORE_CASE_TEXTS, &texts, r->err,
                                sizeof r->err)) {
            json_decref(texts);
            r->rc = -1;
            return;
        }
    }
    r->golden = golden_text(texts);
    json_decref(texts);
}

static void mined(lprompt *p, json_t *res, const char *err);
static void replayed(lprompt *p, json_t *res, const char *err);
static void ask_template(lprompt *p);
static void start_search(lprompt *p);
static json_t *check_candidate(lprompt *p, json_t *cand, char *why, size_t whylen);

static void cycle_failures(void *ud)
{
    pool_read *r = ud;
    lprompt *p = r->p;
    loop_cycle *c = p->cyc;
    if (r->rc) {
        cycle_abort(p, "error", r->err);
        return;
    }
    c->failures = json_incref(r->out[0]);
    c->passing = r->out[1] ? json_incref(r->out[1]) : json_array();
    c->prov = r->prov;
    c->golden = r->golden;
    r->prov = r->golden = NULL;
    /* history entries: version, status, note, pass rate */
    c->history = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(r->history, i, m) {
        int64_t v = r->versions[0] - (int64_t)i;
        json_t *ver = registry_version(p->lp->reg, p->name, v);
        if (!ver)
            continue;
        json_array_append_new(c->history,
                              json_pack("{s:I, s:O, s:O, s:O, s:O, s:O}", "version", (json_int_t)v, "status",
                                        json_object_get(ver, "status"), "note", json_object_get(ver, "note"),
                                        "messages", json_object_get(ver, "messages"), "pass_rate",
                                        json_object_get(m, "pass_rate"), "traces", json_object_get(m, "evaluated")));
    }
    if (json_array_size(c->failures) == 0) {
        cycle_abort(p, "aborted", "no failed trace with input.variables in the window: nothing to learn from");
        return;
    }
    json_t *list = json_array();
    json_t *f;
    json_array_foreach(c->failures, i, f)
        json_array_append_new(list, json_pack("{s:O, s:O, s:O, s:O, s:O}", "id", json_object_get(f, "trace_id"),
                                              "input", json_object_get(f, "variables"), "reasons",
                                              json_object_get(f, "reasons"), "ts", json_object_get(f, "ts"),
                                              "negative", json_object_get(f, "negative")));
    json_t *opts = json_deep_copy(json_object_get(p->set, "mining_options"));
    json_object_set_new(opts, "max_shown", json_integer(set_int(p, "max_shown")));
    json_object_set_new(opts, "holdout", json_real(set_num(p, "holdout")));
    char why[300];
    if (!lua_call_fn(p, "policies", set_str(p, "mining"), "select", json_pack("[o, o]", list, opts), mined, why,
                     sizeof why))
        cycle_abort(p, "error", why);
}

static void cycle_read(lprompt *p, int status, void *ud)
{
    (void)ud;
    if (status) {
        p->busy = false;
        return;
    }
    if (p->lp->draining) {
        p->busy = false;
        return;
    }
    pool_read *r = pool_new(p, failures_work, cycle_failures);
    r->since = now_ms() - set_int(p, "window_ms");
    r->limit = set_int(p, "max_failures");
    r->versions[0] = p->cyc->baseline;
    r->versions[1] = set_int(p, "replay") > 0 ? set_int(p, "replay_pool") : 0;
    const char *ds = set_str(p, "dataset");
    json_t *d = ds ? registry_dataset(p->lp->reg, ds) : NULL;
    if (d) {
        r->dataset = xstrdup(ds);
        r->dataset_version = json_integer_value(json_object_get(d, "version"));
    }
    pool_go(r);
}

static json_t *failure_by_id(loop_cycle *c, const char *id)
{
    size_t i;
    json_t *f;
    json_array_foreach(c->failures, i, f) if (!strcmp(json_string_value(json_object_get(f, "trace_id")), id)) return f;
    return NULL;
}

static void built(lprompt *p, json_t *res, const char *err);

/* Lua's empty table crosses as {}: a list field holding {} is an empty list. */
static void fix_list(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_object(v) && json_object_size(v) == 0)
        json_object_set_new(obj, key, json_array());
}

static void mined(lprompt *p, json_t *res, const char *err)
{
    loop_cycle *c = p->cyc;
    fix_list(res, "shown");
    fix_list(res, "held");
    json_t *shown = json_object_get(res, "shown"), *held = json_object_get(res, "held");
    if (!json_is_array(shown) || !json_is_array(held)) {
        char why[900];
        snprintf(why, sizeof why, "mining: %s", err ? err : "select must return {shown = {ids}, held = {ids}}");
        cycle_abort(p, "error", why);
        return;
    }
    c->mined = json_incref(res);
    c->group_of = json_is_object(json_object_get(res, "group_of")) ? json_incref(json_object_get(res, "group_of"))
                                                                    : json_object();
    if (set_int(p, "replay") > 0 && json_array_size(c->passing) > 0) {
        json_t *list = json_array();
        size_t i;
        json_t *t;
        json_array_foreach(c->passing, i, t)
            json_array_append_new(list, json_pack("{s:O, s:O, s:O, s:O}", "id", json_object_get(t, "trace_id"), "input",
                                                  json_object_get(t, "variables"), "metadata",
                                                  json_object_get(t, "metadata"), "ts", json_object_get(t, "ts")));
        json_t *opts = json_deep_copy(json_object_get(p->set, "mining_options"));
        json_object_set_new(opts, "replay", json_integer(set_int(p, "replay")));
        char why[300];
        if (!lua_call_fn(p, "policies", set_str(p, "mining"), "replay", json_pack("[o, o]", list, opts), replayed, why,
                         sizeof why))
            cycle_abort(p, "error", why);
        return;
    }
    ask_template(p);
}

/* The mining policy's replay(traces, options): {cases = {{id, stratum}}, strata = {...}}. */
static void replayed(lprompt *p, json_t *res, const char *err)
{
    loop_cycle *c = p->cyc;
    fix_list(res, "cases");
    json_t *cases = json_object_get(res, "cases");
    if (!json_is_array(cases)) {
        char why[900];
        snprintf(why, sizeof why, "mining: %s", err ? err : "replay must return {cases = {{id = ..., stratum = ...}}}");
        cycle_abort(p, "error", why);
        return;
    }
    c->replay = json_incref(cases);
    json_object_set(c->mined, "strata", json_object_get(res, "strata") ? json_object_get(res, "strata") : json_null());
    ask_template(p);
}

/* Hands the shown failures to the meta-prompt template's build. */
static void ask_template(lprompt *p)
{
    loop_cycle *c = p->cyc;
    json_t *fails = json_array();
    size_t i;
    json_t *id;
    json_array_foreach(json_object_get(c->mined, "shown"), i, id) {
        json_t *f = json_is_string(id) ? failure_by_id(c, json_string_value(id)) : NULL;
        if (f) {
            json_t *o = json_object_get(f, "output");
            json_array_append_new(fails, json_pack("{s:O, s:O, s:O*, s:O}", "id", json_object_get(f, "trace_id"),
                                                   "input", json_object_get(f, "variables"), "output",
                                                   json_is_null(o) ? NULL : o, "reasons",
                                                   json_is_array(json_object_get(f, "reasons"))
                                                       ? json_object_get(f, "reasons")
                                                       : json_array()));
        }
    }
    if (json_array_size(fails) == 0) {
        json_decref(fails);
        cycle_abort(p, "aborted", "the mining policy showed the optimizer no failure");
        return;
    }
    json_t *cur = registry_version(p->lp->reg, p->name, c->baseline);
    snprintf(c->tpl, sizeof c->tpl, "%s", c->tpl_override[0] ? c->tpl_override : set_str(p, "template"));
    char slot[200];
    snprintf(slot, sizeof slot, "metaprompts/%s", c->tpl);
    const loaded_evaluator *le = catalog_peek(p->lp->cat, slot);
    char *ed = le ? script_field_json(p->lp->vm, le->ev.ref, "editable") : NULL;
    c->editable = ed ? json_loads(ed, 0, NULL) : NULL;
    free(ed);
    if (!json_is_array(c->editable) || json_array_size(c->editable) == 0) {
        json_decref(c->editable);
        c->editable = json_pack("[s]", "system");
    }
    c->ctx = json_pack("{s:s, s:{s:I, s:O, s:O}, s:O, s:o, s:o, s:O, s:I}", "prompt", p->name, "current", "version",
                       (json_int_t)c->baseline, "messages", json_object_get(cur, "messages"), "note",
                       json_object_get(cur, "note"), "editable", c->editable, "variables",
                       template_variables(json_object_get(cur, "messages")), "failures", fails, "history", c->history,
                       "candidates", (json_int_t)set_int(p, "candidates"));
    char *search = le ? script_field_json(p->lp->vm, le->ev.ref, "search") : NULL;
    bool is_search = search && !strcmp(search, "\"gepa\"");
    free(search);
    if (is_search) {
        start_search(p);
        return;
    }
    char why[300];
    if (!lua_call_fn(p, "metaprompts", c->tpl, "build", json_pack("[O]", c->ctx), built, why, sizeof why))
        cycle_abort(p, "error", why);
}

/* ---- a search template (gepa): the engine's search proposes the candidates ---- */

static void parsed(lprompt *p, json_t *res, const char *err);

static json_t *search_check(void *ud, json_t *cand, char *why, size_t whylen)
{
    return check_candidate(ud, cand, why, whylen);
}

static void searched(void *ud, json_t *result, const char *err, bool draining)
{
    lprompt *p = ud;
    optloop *lp = p->lp;
    lp->inflight--;
    llm_run_forget(lp->l, p->cycle);
    if (draining) {
        p->busy = false; /* the cycle stays 'optimizing' in the store: the next start aborts it */
        check_drained(lp);
        return;
    }
    loop_cycle *c = p->cyc;
    if (!result) {
        char why[1000];
        snprintf(why, sizeof why, "the %s search failed: %s", c->tpl, err ? err : "unknown error");
        cycle_abort(p, "error", why);
        return;
    }
    c->searched = json_incref(result);
    /* the members the search policy chose, as the candidates of the cycle */
    json_t *list = json_array();
    size_t i;
    json_t *id;
    json_array_foreach(json_object_get(result, "final"), i, id) {
        json_t *m = json_array_get(json_object_get(result, "pool"), (size_t)json_integer_value(id));
        if (!m)
            continue;
        char note[1100];
        const char *r = json_string_value(json_object_get(m, "rationale"));
        snprintf(note, sizeof note, "%s pool member #%lld (%s, mean %.3f on the feedback set): %.900s", c->tpl,
                 (long long)json_integer_value(id), json_string_value(json_object_get(m, "origin")),
                 json_number_value(json_object_get(m, "mean")), r ? r : "");
        json_array_append_new(list, json_pack("{s:O, s:s}", "messages", json_object_get(m, "messages"), "rationale",
                                              note));
    }
    json_t *res = json_pack("{s:o}", "candidates", list);
    parsed(p, res, NULL);
    json_decref(res);
}

static void start_search(lprompt *p)
{
    optloop *lp = p->lp;
    loop_cycle *c = p->cyc;
    json_t *opt = json_object_get(p->set, "optimizer");
    if (!json_string_value(json_object_get(opt, "provider"))) {
        cycle_abort(p, "error", "loop.optimizer.provider is not set: name the provider the optimizer model is on");
        return;
    }
    const config_prompt *cp = NULL;
    for (size_t i = 0; i < lp->ncfg_prompts; i++)
        if (!strcmp(lp->cfg_prompts[i].name, p->name))
            cp = &lp->cfg_prompts[i];
    if (!cp || cp->nevaluators == 0) {
        cycle_abort(p, "error", "the prompt has no evaluators in the configuration: a search cannot judge outputs");
        return;
    }
    /* the feedback set: the failures shown, and passing traces the gate does
     * not replay (never a held-out case) */
    json_t *gs = json_object_get(p->set, "gepa");
    json_t *fb = json_array();
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(c->ctx, "failures"), i, f) {
        json_t *tr = failure_by_id(c, json_string_value(json_object_get(f, "id")));
        json_t *meta = tr ? json_object_get(tr, "metadata") : NULL;
        json_array_append_new(fb, json_pack("{s:O, s:O, s:s, s:O*}", "id", json_object_get(f, "id"), "variables",
                                            json_object_get(f, "input"), "source", "shown", "metadata",
                                            json_is_object(meta) ? meta : NULL));
    }
    /* passing traces the gate does not replay first; when traffic is too
     * thin for both, the ones taken leave the replay, so the gate never
     * judges a candidate on a case its search saw */
    json_int_t want = json_integer_value(json_object_get(gs, "passing"));
    json_int_t took = 0;
    for (int pass = 0; pass < 2 && took < want; pass++) {
        json_array_foreach(c->passing, i, f) {
            if (took >= want)
                break;
            const char *tid = json_string_value(json_object_get(f, "trace_id"));
            if (!tid)
                continue;
            size_t j, at = (size_t)-1;
            json_t *r;
            json_array_foreach(c->replay, j, r) {
                const char *rid = json_string_value(json_object_get(r, "id"));
                if (rid && !strcmp(rid, tid))
                    at = j;
            }
            bool in_fb = false;
            json_array_foreach(fb, j, r) in_fb |= !strcmp(json_string_value(json_object_get(r, "id")), tid);
            if (in_fb || (pass == 0 && at != (size_t)-1))
                continue;
            if (at != (size_t)-1)
                json_array_remove(c->replay, at);
            json_t *meta = json_object_get(f, "metadata");
            json_array_append_new(fb, json_pack("{s:s, s:O, s:s, s:O*}", "id", tid, "variables",
                                                json_object_get(f, "variables"), "source", "passing", "metadata",
                                                json_is_object(meta) ? meta : NULL));
            took++;
        }
    }
    json_t *cur = registry_version(lp->reg, p->name, c->baseline);
    uint64_t seed;
    if (json_is_integer(json_object_get(gs, "seed"))) {
        seed = (uint64_t)json_integer_value(json_object_get(gs, "seed"));
    } else {
        char u[37];
        id_uuid7(u);
        seed = (uint64_t)now_ms();
        for (const char *x = u; *x; x++)
            seed = seed * 131 + (unsigned char)*x;
        seed &= 0x1fffffffffffffULL; /* exact in JSON numbers */
    }
    json_t *req = json_deep_copy(opt);
    json_t *ctx = json_deep_copy(c->ctx);
    json_object_del(ctx, "failures");
    gepa_env env = {.uv = lp->uv, .st = lp->st, .l = lp->l, .cat = lp->cat, .vm = lp->vm,
                    .policy_budget_ms = lp->policy_budget_ms, .template_budget_ms = lp->template_budget_ms,
                    .evaluator_budget_ms = lp->evaluator_budget_ms};
    gepa_spec spec = {.prompt = p->name, .cycle = p->cycle, .tpl = c->tpl, .policy = set_str(p, "search"),
                      .policy_options = json_object_get(p->set, "search_options"), .settings = gs, .ctx = ctx,
                      .seed_messages = json_object_get(cur, "messages"), .model = json_object_get(cur, "model"),
                      .optimizer = req, .feedback = fb, .atts = cp->evaluators, .natts = cp->nevaluators,
                      .seed = seed, .check = search_check, .done = searched, .ud = p};
    decide(p, "optimizing: %s search over %zu feedback case(s), seed %llu", c->tpl, json_array_size(fb),
           (unsigned long long)seed);
    lp->inflight++;
    gepa_start(&env, &spec, &c->search);
    json_decref(req);
    json_decref(ctx);
    json_decref(fb);
}

static void parsed(lprompt *p, json_t *res, const char *err);

static void on_optimizer(llm_call *call, json_t *result, const char *err_kind, const char *err, void *ud)
{
    (void)call;
    lprompt *p = ud;
    optloop *lp = p->lp;
    lp->inflight--;
    p->cyc->call = NULL;
    if (lp->draining) {
        p->busy = false;
        check_drained(lp);
        return;
    }
    if (!result) {
        char why[900];
        snprintf(why, sizeof why, "the optimizer model failed: %s: %s", err_kind, err);
        cycle_abort(p, "error", why);
        return;
    }
    const char *text = json_string_value(json_object_get(result, "text"));
    char why[300];
    if (!lua_call_fn(p, "metaprompts", p->cyc->tpl, "parse", json_pack("[s, O]", text ? text : "", p->cyc->ctx), parsed,
                     why, sizeof why))
        cycle_abort(p, "error", why);
}

static void built(lprompt *p, json_t *res, const char *err)
{
    json_t *msgs = json_is_array(res) ? res : json_object_get(res, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        char why[900];
        snprintf(why, sizeof why, "template %s: %s", p->cyc->tpl,
                 err ? err : "build must return the optimizer's messages (a list of {role, content})");
        cycle_abort(p, "error", why);
        return;
    }
    json_t *opt = json_object_get(p->set, "optimizer");
    if (!json_string_value(json_object_get(opt, "provider"))) {
        cycle_abort(p, "error", "loop.optimizer.provider is not set: name the provider the optimizer model is on");
        return;
    }
    json_t *req = json_deep_copy(opt);
    json_object_set(req, "messages", msgs);
    char *text = json_text(req, JSON_COMPACT);
    json_decref(req);
    char who_name[300];
    snprintf(who_name, sizeof who_name, "metaprompts/%s:%s", p->cyc->tpl, p->name);
    llm_caller who = {.kind = "template", .name = who_name, .run_id = p->cycle};
    p->lp->inflight++;
    p->cyc->call = llm_chat(p->lp->l, text, &who, on_optimizer, p);
    free(text);
}

/* ---- checking a candidate before it costs a run ---- */

static bool role_editable(json_t *editable, const char *role)
{
    size_t i;
    json_t *r;
    json_array_foreach(editable, i, r) if (!strcmp(json_string_value(r) ? json_string_value(r) : "", role)) return true;
    return false;
}

static void text_of(json_t *msgs, buf_t *b)
{
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        const char *t = json_string_value(json_object_get(m, "content"));
        if (t) {
            buf_puts(b, t);
            buf_puts(b, "\n");
        }
    }
}

/* What the accept policy is told about a candidate beside the gate's
 * numbers: the words it adds that traffic holds ({token, traces, golden}),
 * rarest first, out of how many traces read. */
static json_t *candidate_facts(loop_cycle *c, json_t *msgs, json_t *cur)
{
    buf_t a, b;
    buf_init(&a);
    buf_init(&b);
    text_of(msgs, &a);
    text_of(cur, &b);
    json_t *toks = provenance_new_tokens(c->prov, a.data ? a.data : "", b.data ? b.data : "", 20);
    buf_free(&a);
    buf_free(&b);
    size_t i;
    json_t *t;
    json_array_foreach(toks, i, t)
        json_object_set_new(t, "golden",
                            json_boolean(provenance_token_traces(c->golden, json_string_value(json_object_get(t, "token")))
                                         > 0));
    return json_pack("{s:o, s:I}", "trace_tokens", toks, "traces", (json_int_t)provenance_traces(c->prov));
}

/* Returns the candidate's messages, or NULL with why. */
static json_t *check_candidate(lprompt *p, json_t *cand, char *why, size_t whylen)
{
    loop_cycle *c = p->cyc;
    json_t *cur = json_object_get(json_object_get(c->ctx, "current"), "messages");
    json_t *msgs = NULL;
    if (!json_is_object(cand)) {
        snprintf(why, whylen, "a candidate must be a table {messages = ... | system = ..., rationale = ...}");
        return NULL;
    }
    if (json_is_array(json_object_get(cand, "messages"))) {
        msgs = json_deep_copy(json_object_get(cand, "messages"));
    } else if (json_is_string(json_object_get(cand, "system"))) {
        msgs = json_deep_copy(cur);
        size_t i;
        json_t *m;
        bool found = false;
        json_array_foreach(msgs, i, m) if (!found && !strcmp(json_string_value(json_object_get(m, "role")), "system")) {
            json_object_set(m, "content", json_object_get(cand, "system"));
            found = true;
        }
        if (!found) {
            json_decref(msgs);
            snprintf(why, whylen, "it rewrites the system message, but the current version has none");
            return NULL;
        }
    } else {
        snprintf(why, whylen, "it has neither 'messages' nor 'system'");
        return NULL;
    }
    reg_error e;
    if (template_check(msgs, "candidate.messages", &e)) {
        snprintf(why, whylen, "it breaks the template: %s", e.message);
        json_decref(msgs);
        return NULL;
    }
    if (json_array_size(msgs) != json_array_size(cur)) {
        snprintf(why, whylen, "it has %zu messages where the current version has %zu; templates may only edit "
                 "messages, not add or remove them", json_array_size(msgs), json_array_size(cur));
        json_decref(msgs);
        return NULL;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        json_t *o = json_array_get(cur, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (strcmp(role, json_string_value(json_object_get(o, "role")))) {
            snprintf(why, whylen, "message %zu changes role (%s -> %s)", i, json_string_value(json_object_get(o, "role")),
                     role);
            json_decref(msgs);
            return NULL;
        }
        if (!json_equal(json_object_get(m, "content"), json_object_get(o, "content")) &&
            !role_editable(c->editable, role)) {
            snprintf(why, whylen, "it changes the %s message (%zu), which template %s may not change", role, i, c->tpl);
            json_decref(msgs);
            return NULL;
        }
    }
    json_t *va = template_variables(cur), *vb = template_variables(msgs);
    json_t *x;
    json_array_foreach(va, i, x) {
        bool has = false;
        size_t j;
        json_t *y;
        json_array_foreach(vb, j, y) has |= json_equal(x, y);
        if (!has) {
            snprintf(why, whylen, "it drops the placeholder {{%s}}", json_string_value(x));
            goto bad_vars;
        }
    }
    json_array_foreach(vb, i, x) {
        bool has = false;
        size_t j;
        json_t *y;
        json_array_foreach(va, j, y) has |= json_equal(x, y);
        if (!has) {
            snprintf(why, whylen, "it adds the placeholder {{%s}}, which no case provides", json_string_value(x));
            goto bad_vars;
        }
    }
    json_decref(va);
    json_decref(vb);
    if (json_equal(msgs, cur)) {
        snprintf(why, whylen, "it is the current version unchanged");
        json_decref(msgs);
        return NULL;
    }
    buf_t a, b;
    buf_init(&a);
    buf_init(&b);
    text_of(msgs, &a);
    text_of(cur, &b);
    char found[200];
    bool leak = provenance_copied(c->prov, a.data ? a.data : "", b.data ? b.data : "", found, sizeof found);
    buf_free(&a);
    buf_free(&b);
    if (leak) {
        snprintf(why, whylen, "it copies trace text into the prompt (\"%s\", as normalised): trace text is data, "
                 "never instructions", found);
        json_decref(msgs);
        return NULL;
    }
    return msgs;
bad_vars:
    json_decref(va);
    json_decref(vb);
    json_decref(msgs);
    return NULL;
}

/* ---- the gate ---- */

static void gate_started(const char *id, json_t *view, const reg_error *e, void *ud);

static void start_gate(lprompt *p, int status, void *ud)
{
    (void)ud;
    optloop *lp = p->lp;
    loop_cycle *c = p->cyc;
    if (status || lp->draining) {
        p->busy = false;
        return;
    }
    json_t *cases = json_array();
    size_t i;
    json_t *id;
    json_array_foreach(json_object_get(c->mined, "held"), i, id) {
        json_t *f = json_is_string(id) ? failure_by_id(c, json_string_value(id)) : NULL;
        if (!f)
            continue;
        char cid[200];
        snprintf(cid, sizeof cid, "trace:%s", json_string_value(id));
        json_t *group = json_object_get(c->group_of, json_string_value(id));
        json_t *meta = json_object_get(f, "metadata");
        json_array_append_new(cases, json_pack("{s:s, s:s, s:O, s:[s], s:O, s:O, s:O*, s:O*}", "id", cid, "source",
                                               "failed", "variables", json_object_get(f, "variables"), "tags",
                                               "failed", "trace_id", id, "reasons", json_object_get(f, "reasons"),
                                               "group", json_is_string(group) ? group : NULL, "metadata",
                                               json_is_object(meta) ? meta : NULL));
    }
    /* passing production traces, replayed: nothing that worked may break */
    json_t *r;
    json_array_foreach(c->replay, i, r) {
        const char *tid = json_string_value(json_object_get(r, "id"));
        json_t *t = NULL, *x;
        size_t j;
        json_array_foreach(c->passing, j, x) if (tid && !strcmp(json_string_value(json_object_get(x, "trace_id")), tid))
            t = x;
        if (!t)
            continue;
        char cid[200];
        snprintf(cid, sizeof cid, "replay:%s", tid);
        json_t *stratum = json_object_get(r, "stratum"), *meta = json_object_get(t, "metadata");
        json_array_append_new(cases, json_pack("{s:s, s:s, s:O, s:[s], s:s, s:O*, s:O*}", "id", cid, "source",
                                               "replay", "variables", json_object_get(t, "variables"), "tags",
                                               "replay", "trace_id", tid, "stratum",
                                               json_is_string(stratum) ? stratum : NULL, "metadata",
                                               json_is_object(meta) ? meta : NULL));
    }
    json_t *spec = json_pack("{s:s, s:I, s:O, s:s, s:I, s:I, s:s, s:O}", "prompt", p->name, "baseline",
                             (json_int_t)c->baseline, "candidates", c->versions, "kind", "gate", "k",
                             (json_int_t)set_int(p, "k"), "concurrency", (json_int_t)set_int(p, "concurrency"),
                             "policy", set_str(p, "accept"), "policy_options",
                             json_object_get(p->set, "accept_options"));
    if (json_array_size(cases))
        json_object_set(spec, "cases", cases);
    json_decref(cases);
    if (json_object_size(c->facts))
        json_object_set(spec, "candidate_facts", c->facts);
    if (set_str(p, "dataset"))
        json_object_set_new(spec, "dataset", json_string(set_str(p, "dataset")));
    if (json_object_get(p->set, "budget"))
        json_object_set(spec, "budget", json_object_get(p->set, "budget"));
    reg_error e;
    char actor[80];
    snprintf(actor, sizeof actor, "loop:%.36s", p->cycle);
    lp->inflight++;
    if (runner_start(lp->rn, spec, actor, gate_started, p, &e)) {
        lp->inflight--;
        json_decref(spec);
        char why[800];
        snprintf(why, sizeof why, "the gate run could not start: %s", e.message);
        cycle_abort(p, "error", why);
        return;
    }
    json_decref(spec);
}

static void gate_started(const char *id, json_t *view, const reg_error *e, void *ud)
{
    (void)view;
    lprompt *p = ud;
    optloop *lp = p->lp;
    lp->inflight--;
    if (!id) {
        char why[800];
        snprintf(why, sizeof why, "the gate run could not start: %s", e ? e->message : "unknown error");
        cycle_abort(p, "error", why);
        check_drained(lp);
        return;
    }
    free(p->run_id);
    p->run_id = xstrdup(id);
    set_state(p, LOOP_EV_GATE_STARTED);
    move *m = move_new();
    size_t i;
    json_t *v;
    char reason[200];
    snprintf(reason, sizeof reason, "gate run %s", id);
    json_array_foreach(p->cyc->versions, i, v) {
        reg_error re;
        registry_transition(lp->reg, p->name, json_integer_value(v), "testing", reason, "loop", &m->w, &re);
    }
    event(p, &m->w, "gate_started", json_pack("{s:s, s:O}", "run", id, "candidates", p->cyc->versions),
          "gate run %s: baseline v%lld against %zu candidate(s)", id, (long long)p->cyc->baseline,
          json_array_size(p->cyc->versions));
    decide(p, "gating: run %s", id);
    commit(p, m, release, NULL);
    check_drained(lp);
}

static void parsed(lprompt *p, json_t *res, const char *err)
{
    optloop *lp = p->lp;
    loop_cycle *c = p->cyc;
    fix_list(res, "candidates");
    json_t *list = json_is_array(res) ? res : json_object_get(res, "candidates");
    if (!json_is_array(list)) {
        char why[900];
        snprintf(why, sizeof why, "template %s: %s", c->tpl,
                 err ? err : "parse must return the candidates: {candidates = {{system = ..., rationale = ...}}}");
        cycle_abort(p, "error", why);
        return;
    }
    move *m = move_new();
    size_t i;
    json_t *cand;
    size_t max = (size_t)set_int(p, "candidates");
    json_t *cur = registry_version(lp->reg, p->name, c->baseline);
    json_t *seen = json_array();
    json_decref(c->facts);
    c->facts = json_object();
    json_array_foreach(list, i, cand) {
        if (i >= max) {
            json_array_append_new(c->invalid, json_pack("{s:I, s:s}", "index", (json_int_t)i, "reason",
                                                        "over the number of candidates asked for"));
            continue;
        }
        char why[700];
        json_t *msgs = check_candidate(p, cand, why, sizeof why);
        if (msgs) {
            size_t j;
            json_t *s;
            json_array_foreach(seen, j, s) if (msgs && json_equal(s, msgs)) {
                snprintf(why, sizeof why, "it repeats candidate %zu", j + 1);
                json_decref(msgs);
                msgs = NULL;
            }
        }
        if (!msgs) {
            lp->n.invalid++;
            json_array_append_new(c->invalid, json_pack("{s:I, s:s}", "index", (json_int_t)i, "reason", why));
            continue;
        }
        json_array_append(seen, msgs);
        json_t *fact = candidate_facts(c, msgs, json_object_get(cur, "messages"));
        const char *rationale = json_string_value(json_object_get(cand, "rationale"));
        char note[1100], author[80];
        snprintf(note, sizeof note, "%.1000s", rationale ? rationale : "(no rationale given)");
        snprintf(author, sizeof author, "loop:%.36s", p->cycle);
        json_t *body = json_pack("{s:o, s:O, s:I, s:s, s:s}", "messages", msgs, "model",
                                 json_object_get(cur, "model") ? json_object_get(cur, "model") : json_object(),
                                 "parent", (json_int_t)c->baseline, "author", author, "note", note);
        if (!json_object_get(cur, "model"))
            json_decref(json_object_get(body, "model"));
        int64_t v = 0;
        reg_error e;
        if (registry_add_version(lp->reg, p->name, body, "loop", &m->w, &v, &e) == 0) {
            json_array_append_new(c->versions, json_integer(v));
            char key[24];
            snprintf(key, sizeof key, "%lld", (long long)v);
            json_object_set_new(c->facts, key, json_incref(fact));
            lp->n.candidates++;
        } else {
            json_array_append_new(c->invalid, json_pack("{s:I, s:s}", "index", (json_int_t)i, "reason", e.message));
        }
        json_decref(body);
        json_decref(fact);
    }
    json_decref(seen);
    if (c->searched) {
        json_t *sr = c->searched;
        json_t *final = json_object_get(sr, "final");
        event(p, &m->w, "search", json_incref(sr),
              "%s search (seed %s): %zu pool member(s) after %lld iteration(s), %lld call(s) (%lld cached), stopped "
              "by %s; %zu to the gate",
              c->tpl, json_string_value(json_object_get(sr, "seed")), json_array_size(json_object_get(sr, "pool")),
              (long long)json_integer_value(json_object_get(sr, "iterations")),
              (long long)json_integer_value(json_object_get(sr, "calls")),
              (long long)json_integer_value(json_object_get(sr, "cached")),
              json_string_value(json_object_get(sr, "stop")), json_array_size(final));
    }
    buf_t msg;
    buf_init(&msg);
    buf_printf(&msg, "%zu candidate(s) from template %s", json_array_size(c->versions), c->tpl);
    if (json_array_size(c->versions)) {
        buf_puts(&msg, ": ");
        json_t *v;
        json_array_foreach(c->versions, i, v) buf_printf(&msg, "%sv%lld", i ? ", " : "", (long long)json_integer_value(v));
    }
    json_t *inv;
    json_array_foreach(c->invalid, i, inv)
        buf_printf(&msg, "; candidate %lld rejected before the gate: %s",
                   (long long)json_integer_value(json_object_get(inv, "index")) + 1,
                   json_string_value(json_object_get(inv, "reason")));
    json_t *mined_counts = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "failures",
                                     (json_int_t)json_array_size(c->failures), "shown",
                                     (json_int_t)json_array_size(json_object_get(c->ctx, "failures")), "held",
                                     (json_int_t)json_array_size(json_object_get(c->mined, "held")), "passing",
                                     (json_int_t)json_array_size(c->passing), "traces_read",
                                     (json_int_t)provenance_traces(c->prov), "text_bytes",
                                     (json_int_t)provenance_bytes(c->prov));
    event(p, &m->w, "candidates",
          json_pack("{s:O, s:O, s:o, s:O}", "versions", c->versions, "invalid", c->invalid, "mined", mined_counts,
                    "groups", json_object_get(c->mined, "groups") ? json_object_get(c->mined, "groups") : json_null()),
          "%s", msg.data);
    buf_free(&msg);
    if (json_array_size(c->versions) == 0) {
        set_state(p, LOOP_EV_NO_CANDIDATE);
        ended(p, OUT_NO_CANDIDATE);
        decide(p, "no valid candidate");
        commit(p, m, release, NULL);
        return;
    }
    commit(p, m, start_gate, NULL);
}

/* Ends a cycle that cannot go on: its candidates are rejected, the prompt is idle. */
static void cycle_abort(lprompt *p, const char *kind, const char *why)
{
    optloop *lp = p->lp;
    if (!strcmp(kind, "error"))
        lp->n.errors++;
    else
        lp->n.aborted++;
    move *m = move_new();
    json_t *pr = registry_prompt(lp->reg, p->name);
    size_t i;
    json_t *v;
    char author[80];
    snprintf(author, sizeof author, "loop:%.36s", p->cycle ? p->cycle : "");
    json_array_foreach(json_object_get(pr, "versions"), i, v) {
        const char *st = json_string_value(json_object_get(v, "status"));
        const char *au = json_string_value(json_object_get(v, "author"));
        if (au && !strcmp(au, author) && (!strcmp(st, "candidate") || !strcmp(st, "testing"))) {
            reg_error e;
            registry_transition(lp->reg, p->name, (int64_t)i + 1, "rejected", why, "loop", &m->w, &e);
        }
    }
    set_state(p, LOOP_EV_ABORT);
    ended(p, !strcmp(kind, "error") ? OUT_ERROR : OUT_ABORTED);
    event(p, &m->w, kind, NULL, "%s", why);
    decide(p, "%s: %s", kind, why);
    cycle_free(p->cyc);
    p->cyc = NULL;
    commit(p, m, release, NULL);
}

/* ---- after the gate ---- */

static void rollout_first_share(lprompt *p, double *share);
static void begin_canary(lprompt *p, store_write *w, int64_t version, const char *actor);

static void gate_apply(lprompt *p, json_t *report, const char *run_state)
{
    optloop *lp = p->lp;
    move *m = move_new();
    size_t i;
    json_t *v;
    buf_t msg;
    buf_init(&msg);
    buf_printf(&msg, "gate run %s %s", p->run_id, run_state);
    json_array_foreach(json_object_get(report, "verdicts"), i, v) {
        int64_t ver = json_integer_value(json_object_get(v, "version"));
        const char *verdict = json_string_value(json_object_get(v, "verdict"));
        buf_t why;
        buf_init(&why);
        buf_printf(&why, "gate %s: %s", p->run_id, verdict ? verdict : "?");
        size_t j;
        json_t *r;
        json_array_foreach(json_object_get(v, "reasons"), j, r) buf_printf(&why, "%s%s", j ? "; " : ": ",
                                                                          json_string_value(r) ? json_string_value(r)
                                                                                               : "");
        bool ok = verdict && !strcmp(verdict, "improved");
        json_t *cur = registry_version(lp->reg, p->name, ver);
        if (cur && !strcmp(json_string_value(json_object_get(cur, "status")), "testing")) {
            reg_error e;
            registry_transition(lp->reg, p->name, ver, ok ? "approved" : "rejected", why.data, "loop", &m->w, &e);
        }
        ok ? lp->n.accepted++ : lp->n.rejected++;
        buf_printf(&msg, "; v%lld %s", (long long)ver, verdict ? verdict : "?");
        json_t *r0 = json_array_get(json_object_get(v, "reasons"), 0);
        if (json_string_value(r0))
            buf_printf(&msg, " (%s)", json_string_value(r0));
        buf_free(&why);
    }
    /* versions a run never judged (it did not finish) go back as rejected */
    json_t *pr = registry_prompt(lp->reg, p->name);
    char author[80];
    snprintf(author, sizeof author, "loop:%.36s", p->cycle ? p->cycle : "");
    json_array_foreach(json_object_get(pr, "versions"), i, v) {
        const char *au = json_string_value(json_object_get(v, "author"));
        if (au && !strcmp(au, author) && !strcmp(json_string_value(json_object_get(v, "status")), "testing")) {
            reg_error e;
            registry_transition(lp->reg, p->name, (int64_t)i + 1, "rejected", "the gate run gave it no verdict",
                                "loop", &m->w, &e);
        }
    }
    json_t *winner = json_object_get(report, "winner");
    const char *hold = json_string_value(json_object_get(report, "hold"));
    const char *winner_reason = json_string_value(json_object_get(report, "winner_reason"));
    if (winner_reason)
        buf_printf(&msg, "; winner %s", winner_reason);
    event(p, &m->w, "gate", json_pack("{s:s, s:O, s:O, s:s*, s:s*}", "run", p->run_id, "verdicts",
                                      json_object_get(report, "verdicts") ? json_object_get(report, "verdicts")
                                                                          : json_null(),
                                      "winner", winner ? winner : json_null(), "winner_reason", winner_reason, "hold",
                                      hold),
          "%s", msg.data);
    buf_free(&msg);
    bool pinned = json_is_true(json_object_get(pr, "pinned"));
    if (json_is_integer(winner) && (json_is_true(json_object_get(p->set, "require_approval")) || pinned || hold)) {
        p->version = json_integer_value(winner);
        set_state(p, LOOP_EV_GATE_HOLD);
        event(p, &m->w, "approval", hold ? json_pack("{s:s}", "hold", hold) : NULL,
              "v%lld passed the gate and waits for a human: ratchet approve %s%s%s", (long long)p->version, p->run_id,
              hold ? "; held: " : pinned ? " (the prompt is pinned)" : "", hold ? hold : "");
        decide(p, "waiting for approval of v%lld (run %s)%s%s", (long long)p->version, p->run_id, hold ? ": " : "",
               hold ? hold : "");
    } else if (json_is_integer(winner) && p->set) {
        begin_canary(p, &m->w, json_integer_value(winner), "loop");
    } else {
        set_state(p, LOOP_EV_GATE_NONE);
        ended(p, OUT_NO_WINNER);
        decide(p, "the gate showed no candidate improved");
    }
    cycle_free(p->cyc);
    p->cyc = NULL;
    p->busy = true;
    commit(p, m, release, NULL);
}

static void on_run_finished(const char *id, json_t *run, void *ud)
{
    optloop *lp = ud;
    for (lprompt *p = lp->prompts; p; p = p->next)
        if (p->state == LOOP_GATING && p->run_id && !strcmp(p->run_id, id)) {
            gate_apply(p, json_object_get(run, "report"), json_string_value(json_object_get(run, "state")));
            return;
        }
}

/* A gate run that ended while the engine was down, or whose end was stored
 * but not applied: read it back. */
static void run_work(void *ud)
{
    pool_read *r = ud;
    r->rc = store_get_run(r->p->lp->st, r->run_id, &r->run, r->err, sizeof r->err);
}

static void run_read(void *ud)
{
    pool_read *r = ud;
    lprompt *p = r->p;
    if (p->state != LOOP_GATING || !p->run_id || strcmp(p->run_id, r->run_id)) {
        p->busy = false;
        return;
    }
    const char *st = json_string_value(json_object_get(r->run, "state"));
    if (r->rc != 0 || !st) {
        cycle_abort(p, "aborted", "the gate run is gone from the store");
        return;
    }
    if (!strcmp(st, "running") || !strcmp(st, "preparing")) {
        p->busy = false; /* the runner still has it */
        return;
    }
    gate_apply(p, json_object_get(r->run, "report"), st);
}

/* ---- the canary ---- */

/* The first traffic step from the rollout policy's settings (steps in
 * percent), overridden by loop.rollout_options.steps. */
/* A setting of the rollout policy the engine needs itself: the prompt's
 * loop.rollout_options, else the policy's own settings. The caller decrefs. */
static json_t *rollout_setting(lprompt *p, const char *key)
{
    json_t *v = json_object_get(json_object_get(p->set, "rollout_options"), key);
    if (v)
        return json_incref(v);
    char slot[200];
    snprintf(slot, sizeof slot, "policies/%s", set_str(p, "rollout"));
    const loaded_evaluator *le = catalog_peek(p->lp->cat, slot);
    char *s = le ? script_field_json(p->lp->vm, le->ev.ref, "settings") : NULL;
    json_t *settings = s ? json_loads(s, 0, NULL) : NULL;
    free(s);
    v = json_incref(json_object_get(settings, key));
    json_decref(settings);
    return v;
}

/* The first traffic step from the rollout policy's settings (steps in percent). */
static void rollout_first_share(lprompt *p, double *share)
{
    json_t *steps = rollout_setting(p, "steps");
    double pct = json_number_value(json_array_get(steps, 0));
    *share = pct > 0 && pct <= 100 ? pct / 100.0 : 0.05;
    json_decref(steps);
}

/* The metadata keys of the rollout's slices ("metadata.KEY" in its
 * settings), or NULL with why when one is not of that form. */
static json_t *rollout_slices(lprompt *p, char *why, size_t whylen)
{
    json_t *names = rollout_setting(p, "slices"), *keys = json_array();
    size_t i;
    json_t *n;
    if (names && !json_is_array(names) && !(json_is_object(names) && json_object_size(names) == 0)) {
        snprintf(why, whylen, "rollout: 'slices' must be a list of \"metadata.KEY\"");
        goto bad;
    }
    json_array_foreach(names, i, n) {
        const char *s = json_string_value(n);
        size_t len = s && !strncmp(s, "metadata.", 9) ? strlen(s + 9) : 0;
        if (!len || len > 64 || strspn(s + 9, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != len) {
            snprintf(why, whylen, "rollout: slice %zu must be \"metadata.KEY\", KEY of 1 to 64 letters, digits, _ "
                     "and -", i + 1);
            goto bad;
        }
        json_array_append_new(keys, json_string(s + 9));
    }
    json_decref(names);
    return keys;
bad:
    json_decref(names);
    json_decref(keys);
    return NULL;
}

static void begin_canary(lprompt *p, store_write *w, int64_t version, const char *actor)
{
    optloop *lp = p->lp;
    double share;
    rollout_first_share(p, &share);
    reg_error e;
    char reason[200];
    snprintf(reason, sizeof reason, "canary at %g%% of traffic (gate run %s)", share * 100, p->run_id ? p->run_id : "");
    if (registry_start_canary(lp->reg, p->name, version, share, reason, actor, w, &e)) {
        set_state(p, LOOP_EV_CANARY_FAILED);
        ended(p, OUT_ERROR);
        event(p, w, "error", NULL, "v%lld could not start as a canary: %s", (long long)version, e.message);
        lp->n.errors++;
        return;
    }
    p->version = version;
    p->step = 0;
    p->step_started = p->canary_started = now_ms();
    json_object_set_new(p->detail, "step_base", json_integer(0));
    json_object_set_new(p->detail, "share", json_real(share));
    set_state(p, p->state == LOOP_AWAITING_APPROVAL ? LOOP_EV_APPROVE : LOOP_EV_GATE_CANARY);
    lp->n.canaries++;
    event(p, w, "canary", json_pack("{s:I, s:f}", "version", (json_int_t)version, "share", share),
          "v%lld is the canary at %g%% of traffic", (long long)version, share * 100);
    decide(p, "canary v%lld at %g%%", (long long)version, share * 100);
}

static void rollout_decided(lprompt *p, json_t *res, const char *err);

static void rollout_read(void *ud)
{
    pool_read *r = ud;
    lprompt *p = r->p;
    if (r->rc) {
        decide(p, "the canary metrics could not be read: %s", r->err);
        p->busy = false;
        return;
    }
    if (p->state != LOOP_CANARY || p->version != r->versions[0]) {
        p->busy = false;
        return;
    }
    int64_t now = now_ms();
    json_t *state = json_pack("{s:s, s:I, s:I, s:i, s:f, s:I, s:I, s:I, s:I, s:O}", "prompt", p->name, "version",
                              (json_int_t)p->version, "production", (json_int_t)r->versions[1], "step", p->step,
                              "percent", json_number_value(json_object_get(p->detail, "share")) * 100,
                              "step_started_ms", (json_int_t)p->step_started, "canary_started_ms",
                              (json_int_t)p->canary_started, "now_ms", (json_int_t)now, "step_samples",
                              (json_int_t)(json_integer_value(json_object_get(r->out[0], "evaluated")) -
                                           json_integer_value(json_object_get(p->detail, "step_base"))),
                              "options", json_object_get(p->set, "rollout_options"));
    json_object_set(p->detail, "last_evaluated", json_object_get(r->out[0], "evaluated"));
    char why[300];
    if (!lua_call_fn(p, "policies", set_str(p, "rollout"), "next", json_pack("[o, O, O]", state, r->out[0], r->out[1]),
                     rollout_decided, why, sizeof why)) {
        decide(p, "%s", why);
        p->busy = false;
    }
}

static void rollout_decided(lprompt *p, json_t *res, const char *err)
{
    optloop *lp = p->lp;
    const char *action = json_string_value(json_object_get(res, "action"));
    const char *reason = json_string_value(json_object_get(res, "reason"));
    if (!reason)
        reason = "(no reason given)";
    if (p->state != LOOP_CANARY || registry_version_in(lp->reg, p->name, "canary") != p->version) {
        p->busy = false; /* a human moved it meanwhile: the next check sees it */
        return;
    }
    if (!action || (strcmp(action, "hold") && strcmp(action, "advance") && strcmp(action, "promote") &&
                    strcmp(action, "rollback"))) {
        lp->n.errors++;
        decide(p, "rollout: %s; holding", err ? err : "next must return {action = hold|advance|promote|rollback, "
                                                      "reason = ...}");
        p->busy = false;
        return;
    }
    if (!strcmp(action, "hold")) {
        decide(p, "hold at %g%%: %s", json_number_value(json_object_get(p->detail, "share")) * 100, reason);
        p->busy = false;
        return;
    }
    move *m = move_new();
    reg_error e;
    json_t *stats = json_object_get(res, "stats");
    double pct = json_number_value(json_object_get(res, "percent"));
    if (!strcmp(action, "advance") && pct >= 100)
        action = "promote";
    char why[700];
    if (!strcmp(action, "advance")) {
        double cur = json_number_value(json_object_get(p->detail, "share")) * 100;
        if (!(pct > cur && pct < 100)) {
            free(m);
            lp->n.errors++;
            decide(p, "rollout: advance needs a percent over the current %g and under 100 (got %g); holding", cur,
                   pct);
            p->busy = false;
            return;
        }
        snprintf(why, sizeof why, "canary %g%% -> %g%%: %s", cur, pct, reason);
        if (registry_set_canary_share(lp->reg, p->name, pct / 100, why, "loop", &m->w, &e)) {
            free(m);
            decide(p, "rollout: %s", e.message);
            p->busy = false;
            return;
        }
        set_state(p, LOOP_EV_ADVANCE);
        p->step++;
        p->step_started = now_ms();
        json_object_set_new(p->detail, "share", json_real(pct / 100));
        json_object_set(p->detail, "step_base", json_object_get(p->detail, "last_evaluated"));
        lp->n.advances++;
        event(p, &m->w, "advance", json_pack("{s:I, s:f, s:O}", "version", (json_int_t)p->version, "percent", pct,
                                             "stats", stats ? stats : json_null()),
              "v%lld: %s", (long long)p->version, why);
        decide(p, "advanced to %g%%", pct);
    } else if (!strcmp(action, "promote")) {
        snprintf(why, sizeof why, "promoted by the rollout policy: %s", reason);
        registry_promote(lp->reg, p->name, p->version, why, "loop", &m->w, &e);
        lp->n.promotions++;
        ended(p, OUT_PROMOTED);
        event(p, &m->w, "promote", json_pack("{s:I, s:O}", "version", (json_int_t)p->version, "stats",
                                             stats ? stats : json_null()),
              "v%lld is in production: %s", (long long)p->version, reason);
        decide(p, "promoted v%lld", (long long)p->version);
        set_state(p, LOOP_EV_PROMOTE);
    } else {
        snprintf(why, sizeof why, "rolled back by the rollout policy: %s", reason);
        registry_rollback(lp->reg, p->name, p->version, why, "loop", &m->w, &e);
        lp->n.rollbacks++;
        ended(p, OUT_ROLLED_BACK);
        event(p, &m->w, "rollback", json_pack("{s:I, s:O}", "version", (json_int_t)p->version, "stats",
                                              stats ? stats : json_null()),
              "v%lld rolled back, production untouched: %s", (long long)p->version, reason);
        decide(p, "rolled back v%lld", (long long)p->version);
        set_state(p, LOOP_EV_ROLLBACK);
    }
    commit(p, m, release, NULL);
}

static void canary_check(lprompt *p)
{
    optloop *lp = p->lp;
    int64_t canary = registry_version_in(lp->reg, p->name, "canary");
    if (canary != p->version) {
        /* a human promoted, rolled back or replaced it: manual moves win */
        json_t *v = registry_version(lp->reg, p->name, p->version);
        move *m = move_new();
        set_state(p, LOOP_EV_MANUAL);
        ended(p, OUT_MANUAL);
        event(p, &m->w, "manual", NULL, "the canary v%lld was moved outside the loop (now %s); the loop stands down",
              (long long)p->version, v ? json_string_value(json_object_get(v, "status")) : "gone");
        decide(p, "the canary was moved by hand");
        p->busy = true;
        commit(p, m, release, NULL);
        return;
    }
    if (json_is_true(json_object_get(registry_prompt(lp->reg, p->name), "pinned"))) {
        decide(p, "pinned: the canary holds where it is");
        return;
    }
    if (!p->set) {
        decide(p, "the prompt has no loop settings any more: the canary is left to a human");
        return;
    }
    int64_t prod = registry_version_in(lp->reg, p->name, "production");
    if (!prod) {
        decide(p, "no production version to compare the canary with");
        return;
    }
    char why[200];
    json_t *slices = rollout_slices(p, why, sizeof why);
    if (!slices) {
        lp->n.errors++;
        decide(p, "%s; the canary holds", why);
        return;
    }
    p->busy = true;
    pool_read *r = pool_new(p, metrics_work, rollout_read);
    r->versions[0] = p->version;
    r->versions[1] = prod;
    r->since = p->canary_started;
    r->slices = slices;
    pool_go(r);
}

/* ---- the ticks ---- */

static void check(lprompt *p)
{
    optloop *lp = p->lp;
    lp->n.checks++;
    if (p->state == LOOP_IDLE) {
        int64_t canary = registry_version_in(lp->reg, p->name, "canary");
        if (canary && p->set && !json_is_true(json_object_get(registry_prompt(lp->reg, p->name), "pinned"))) {
            /* a canary started by hand: the rollout policy watches it too */
            free(p->cycle);
            p->cycle = NULL;
            double share = json_number_value(json_object_get(registry_prompt(lp->reg, p->name), "canary_share"));
            p->version = canary;
            p->step = 0;
            p->step_started = p->canary_started = now_ms();
            json_object_set_new(p->detail, "step_base", json_integer(0));
            json_object_set_new(p->detail, "share", json_real(share));
            set_state(p, LOOP_EV_ADOPT);
            move *m = move_new();
            event(p, &m->w, "canary", json_pack("{s:I, s:f}", "version", (json_int_t)canary, "share", share),
                  "watching v%lld, a canary started by hand at %g%% of traffic", (long long)canary, share * 100);
            decide(p, "watching the canary v%lld", (long long)canary);
            p->busy = true;
            commit(p, m, release, NULL);
        } else if (p->set && json_is_true(json_object_get(p->set, "enabled"))) {
            trigger_check(p);
        }
    } else if (p->state == LOOP_CANARY) {
        canary_check(p);
    } else if (p->state == LOOP_GATING) {
        json_t *prog = p->run_id ? runner_progress(lp->rn, p->run_id) : NULL;
        if (prog) {
            json_decref(prog);
            return;
        }
        p->busy = true;
        pool_read *r = pool_new(p, run_work, run_read);
        r->run_id = xstrdup(p->run_id ? p->run_id : "");
        pool_go(r);
    } else if (p->state == LOOP_OPTIMIZING) {
        /* only after a restart: the cycle's in-memory steps are gone */
        p->busy = true;
        cycle_abort(p, "aborted", "the engine stopped during the optimization; its candidates are rejected");
    }
}

static void on_tick(uv_timer_t *t)
{
    optloop *lp = t->data;
    /* with several engines on one database only the leader decides (docs/scale-out.md) */
    if (lp->draining || !store_leader(lp->st))
        return;
    int64_t now = now_ms();
    for (lprompt *p = lp->prompts; p; p = p->next) {
        if (p->want.done && (!p->busy || now - p->want.since >= WANT_WAIT_MS))
            serve_want(p);
        if (p->busy || now < p->next_check)
            continue;
        int64_t every = p->set ? set_int(p, "check_interval_ms") : 60000;
        if (p->state == LOOP_AWAITING_APPROVAL)
            continue;
        if (!p->set && p->state == LOOP_IDLE)
            continue;
        p->next_check = now + every;
        p->burst = 0;
        check(p);
    }
}

void loop_start(optloop *lp)
{
    runner_on_finish(lp->rn, on_run_finished, lp);
    uv_timer_start(&lp->timer, on_tick, TICK_MS, TICK_MS);
}

void loop_note_traces(optloop *lp, const char *prompt, size_t n)
{
    lprompt *p = find(lp, prompt);
    if (!p || !p->set)
        return;
    p->burst += n;
    /* a burst of 100 traces brings the trigger's check forward, a second
     * later so their online evaluation is done */
    int64_t soon = now_ms() + 1000;
    if (p->burst >= 100 && p->state == LOOP_IDLE && p->next_check > soon)
        p->next_check = soon;
}

/* ---- manual moves ---- */

/* Whether a cycle can start now on p, by hand; 0, or an HTTP status with e. */
static int can_optimize(optloop *lp, lprompt *p, const char *prompt, reg_error *e)
{
    json_t *pr = registry_prompt(lp->reg, prompt);
    if (!pr && p && p->set) {
        /* declared in the config, with loop settings, but no version yet: say how to get one */
        reg_fail(e, 409, "no_production", "prompt",
                 "prompt '%s' is in the config but has no versions in the registry yet, so there is nothing to "
                 "improve. Add its first version (a JSON file {\"messages\": [...], \"model\": {...}}) with "
                 "`ratchet prompt add %s VERSION.json`, make it production with `ratchet prompt promote %s 1`, then "
                 "run `ratchet optimize %s` again",
                 prompt, prompt, prompt, prompt);
        return e->status;
    }
    if (!pr) {
        reg_fail(e, 404, "unknown_prompt", "prompt", "no prompt named '%s' in the registry or the config (`ratchet "
                 "prompt list` shows them)", prompt);
        return e->status;
    }
    if (!p || !p->set) {
        reg_fail(e, 409, "no_loop", "prompt", "prompt '%s' has no loop settings: add loop = {...} to its prompt "
                 "block in the config (docs/loop.md)", prompt);
        return e->status;
    }
    if (json_is_true(json_object_get(pr, "pinned"))) {
        reg_fail(e, 409, "pinned", "prompt", "prompt '%s' is pinned; unpin it first", prompt);
        return e->status;
    }
    if (p->state != LOOP_IDLE) {
        reg_fail(e, 409, "busy", "prompt", "prompt '%s' is %s; one cycle at a time", prompt, loop_state_name(p->state));
        return e->status;
    }
    if (!registry_version_in(lp->reg, prompt, "production")) {
        size_t nv = json_array_size(json_object_get(pr, "versions"));
        if (nv == 0)
            reg_fail(e, 409, "no_production", "prompt",
                     "prompt '%s' has no production version to improve, and no versions yet. Add one (a JSON file "
                     "{\"messages\": [...], \"model\": {...}}) with `ratchet prompt add %s VERSION.json`, make it "
                     "production with `ratchet prompt promote %s 1`, then run `ratchet optimize %s` again",
                     prompt, prompt, prompt, prompt);
        else
            reg_fail(e, 409, "no_production", "prompt",
                     "prompt '%s' has no production version to improve. Make one of its %zu version%s production "
                     "with `ratchet prompt promote %s VERSION` (`ratchet prompt show %s` lists them), then run "
                     "`ratchet optimize %s` again",
                     prompt, nv, nv == 1 ? "" : "s", prompt, prompt, prompt);
        return e->status;
    }
    if (registry_version_in(lp->reg, prompt, "canary")) {
        reg_fail(e, 409, "canary_exists", "prompt", "prompt '%s' has a live canary; promote or roll it back first",
                 prompt);
        return e->status;
    }
    if (lp->draining) {
        reg_fail(e, 503, "draining", "", "the engine is shutting down");
        return e->status;
    }
    return 0;
}

static void start_by_hand(lprompt *p, const char *actor, const char *tpl, loop_done done, void *ud)
{
    char reason[300];
    if (tpl)
        snprintf(reason, sizeof reason, "started by hand (%s), template %s", actor, tpl);
    else
        snprintf(reason, sizeof reason, "started by hand (%s)", actor);
    begin_cycle(p, actor, reason);
    if (tpl)
        snprintf(p->cyc->tpl_override, sizeof p->cyc->tpl_override, "%s", tpl);
    json_t *view = loop_prompt_json(p->lp, p->name);
    done(view, NULL, ud);
    json_decref(view);
}

/* The routine step the request waited for has ended (or the engine stops):
 * start the cycle if it still can, or say why not. */
static void serve_want(lprompt *p)
{
    char *actor = p->want.actor;
    char *tpl = p->want.tpl;
    loop_done done = p->want.done;
    void *ud = p->want.ud;
    memset(&p->want, 0, sizeof p->want);
    reg_error e;
    if (can_optimize(p->lp, p, p->name, &e)) {
        done(NULL, &e, ud); /* draining, or the step changed what can be done */
    } else if (p->busy) {
        reg_fail(&e, 409, "busy", "prompt", "prompt '%s': a step of its loop is still under way after %d ms; "
                 "try again", p->name, WANT_WAIT_MS);
        done(NULL, &e, ud);
    } else {
        start_by_hand(p, actor, tpl, done, ud);
    }
    free(actor);
    free(tpl);
}

/* With several engines on one database only the leader runs the loop; the others refuse to
 * act for it rather than forward (docs/scale-out.md). */
static bool not_leader(optloop *lp, reg_error *e)
{
    if (store_leader(lp->st))
        return false;
    reg_fail(e, 409, "not_leader", NULL,
             "this engine does not run the loop: another engine on the same database leads it; send this to the "
             "leader (ratchet status lists the engines and their roles)");
    return true;
}

int loop_optimize(optloop *lp, const char *prompt, const char *actor, const char *tpl, loop_done done, void *ud,
                  reg_error *e)
{
    if (not_leader(lp, e))
        return e->status;
    lprompt *p = find(lp, prompt);
    if (can_optimize(lp, p, prompt, e))
        return e->status;
    if (tpl) {
        char slot[200];
        snprintf(slot, sizeof slot, "metaprompts/%s", tpl);
        if (!catalog_peek(lp->cat, slot)) {
            reg_fail(e, 400, "unknown_template", "template",
                     "no meta-prompt template '%s' is loaded (scripts/metaprompts/%s.lua; see /v1/status "
                     "scripts.errors)", tpl, tpl);
            return e->status;
        }
    }
    if (p->busy) {
        /* a routine check or a write of the idle loop: the request waits for
         * it (milliseconds) rather than failing on the engine's own timing */
        if (p->want.done) {
            reg_fail(e, 409, "busy", "prompt", "prompt '%s' already has a request to optimize waiting", prompt);
            return e->status;
        }
        p->want.actor = xstrdup(actor);
        p->want.tpl = tpl ? xstrdup(tpl) : NULL;
        p->want.done = done;
        p->want.ud = ud;
        p->want.since = now_ms();
        return 0;
    }
    start_by_hand(p, actor, tpl, done, ud);
    return 0;
}

typedef struct {
    loop_done done;
    void *ud;
} approve_ctx;

static void approved(lprompt *p, int status, void *ud)
{
    approve_ctx *a = ud;
    p->busy = false;
    if (status) {
        reg_error e;
        reg_fail(&e, 500, "store_error", "", "the decision could not be stored");
        a->done(NULL, &e, a->ud);
    } else {
        json_t *v = loop_prompt_json(p->lp, p->name);
        a->done(v, NULL, a->ud);
        json_decref(v);
    }
    free(a);
}

int loop_approve(optloop *lp, const char *run_id, bool approve, const char *reason, const char *actor, loop_done done,
                 void *ud, reg_error *e)
{
    if (not_leader(lp, e))
        return e->status;
    lprompt *p = NULL;
    for (lprompt *x = lp->prompts; x; x = x->next)
        if (x->run_id && !strcmp(x->run_id, run_id))
            p = x;
    if (!p) {
        reg_fail(e, 404, "unknown_run", "run", "no loop cycle has run %s (see GET /v1/loop)", run_id);
        return e->status;
    }
    if (p->state != LOOP_AWAITING_APPROVAL || p->busy) {
        reg_fail(e, 409, "not_waiting", "run", "run %s does not wait for approval: prompt '%s' is %s", run_id, p->name,
                 loop_state_name(p->state));
        return e->status;
    }
    json_t *pr = registry_prompt(lp->reg, p->name);
    if (approve && json_is_true(json_object_get(pr, "pinned"))) {
        reg_fail(e, 409, "pinned", "run", "prompt '%s' is pinned; unpin it before approving", p->name);
        return e->status;
    }
    if (approve && registry_version_in(lp->reg, p->name, "canary")) {
        reg_fail(e, 409, "canary_exists", "run", "prompt '%s' already has a canary (v%lld)", p->name,
                 (long long)registry_version_in(lp->reg, p->name, "canary"));
        return e->status;
    }
    json_t *v = registry_version(lp->reg, p->name, p->version);
    if (!v || strcmp(json_string_value(json_object_get(v, "status")), "approved")) {
        reg_fail(e, 409, "invalid_transition", "run", "v%lld of '%s' is %s, no longer approved", (long long)p->version,
                 p->name, v ? json_string_value(json_object_get(v, "status")) : "gone");
        return e->status;
    }
    move *m = move_new();
    if (approve) {
        event(p, &m->w, "approved", json_pack("{s:s}", "actor", actor), "%s approved v%lld%s%s", actor,
              (long long)p->version, reason ? ": " : "", reason ? reason : "");
        begin_canary(p, &m->w, p->version, actor);
    } else {
        char why[600];
        snprintf(why, sizeof why, "rejected by %s%s%s", actor, reason ? ": " : "", reason ? reason : "");
        reg_error re;
        registry_transition(lp->reg, p->name, p->version, "rejected", why, actor, &m->w, &re);
        ended(p, OUT_REJECTED_BY_HUMAN);
        event(p, &m->w, "rejected", json_pack("{s:s}", "actor", actor), "v%lld %s", (long long)p->version, why);
        set_state(p, LOOP_EV_REJECT);
        decide(p, "v%lld rejected by a human", (long long)p->version);
    }
    approve_ctx *a = xcalloc(1, sizeof *a);
    a->done = done;
    a->ud = ud;
    p->busy = true;
    commit(p, m, approved, a);
    return 0;
}

/* ---- status ---- */

json_t *loop_prompt_json(optloop *lp, const char *prompt)
{
    lprompt *p = find(lp, prompt);
    if (!p)
        return NULL;
    char at[32] = "", dec[32] = "", cyc[32] = "";
    if (p->decided_ms)
        rfc3339_format(p->decided_ms, dec);
    if (p->canary_started && p->state == LOOP_CANARY)
        rfc3339_format(p->canary_started, at);
    if (p->last_cycle_at)
        rfc3339_format(p->last_cycle_at, cyc);
    json_t *v = json_pack("{s:s, s:s, s:b, s:b, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?}", "prompt", p->name, "state",
                          loop_state_name(p->state), "configured", p->set != NULL, "busy", p->busy, "cycle", p->cycle, "run",
                          p->run_id, "last_cycle_at", cyc[0] ? cyc : NULL, "decision",
                          p->decision[0] ? p->decision : NULL, "decided_at", dec[0] ? dec : NULL, "canary_since",
                          at[0] ? at : NULL);
    if (p->version && p->state != LOOP_IDLE)
        json_object_set_new(v, "version", json_integer(p->version));
    if (p->state == LOOP_CANARY) {
        json_object_set_new(v, "step", json_integer(p->step));
        json_object_set_new(v, "percent", json_real(json_number_value(json_object_get(p->detail, "share")) * 100));
    }
    if (p->set)
        json_object_set(v, "settings", p->set);
    return v;
}

void loop_prompt_view(optloop *lp, const char *prompt, loop_view_cb cb, void *ud)
{
    lprompt *p = find(lp, prompt);
    if (p && p->writing > 0) {
        struct view_waiter *w = xcalloc(1, sizeof *w), **tail = &p->waiters;
        while (*tail)
            tail = &(*tail)->next;
        w->cb = cb;
        w->ud = ud;
        *tail = w;
        return;
    }
    json_t *v = loop_prompt_json(lp, prompt);
    cb(v, ud);
    json_decref(v);
}

void loop_summary(optloop *lp, buf_t *b)
{
    for (lprompt *p = lp->prompts; p; p = p->next) {
        if (p->state == LOOP_IDLE)
            continue;
        buf_printf(b, "; %s %s", p->name, loop_state_name(p->state));
        if (p->state == LOOP_CANARY)
            buf_printf(b, " %g%%", json_number_value(json_object_get(p->detail, "share")) * 100);
    }
}

void loop_metrics(optloop *lp, buf_t *b)
{
    metrics_family(b, "ratchet_loop_state", "gauge",
                   "1 for the state each prompt's improvement loop is in (idle, optimizing, gating, "
                   "awaiting_approval, canary), else 0.");
    for (lprompt *p = lp->prompts; p; p = p->next)
        for (int i = 0; i < LOOP_STATES; i++)
            metrics_sample(b, "ratchet_loop_state", p->state == (loop_state)i, "prompt", p->name, "state",
                           loop_state_name((loop_state)i), NULL);
    metrics_family(b, "ratchet_loop_canary_step", "gauge",
                   "The rollout step a loop's canary is at (0 is the first share), per prompt in canary.");
    for (lprompt *p = lp->prompts; p; p = p->next)
        if (p->state == LOOP_CANARY)
            metrics_sample(b, "ratchet_loop_canary_step", p->step, "prompt", p->name, NULL);
    metrics_one(b, "ratchet_loop_cycles_total", "counter",
                "Optimization cycles started (automatic and manual).", (double)lp->n.cycles);
    metrics_family(b, "ratchet_loop_outcomes_total", "counter",
                   "Optimization cycles ended, by prompt (the first 100) and outcome: promoted, rolled_back, "
                   "no_winner (the gate accepted none), no_candidate, rejected_by_human, manual (a human moved the "
                   "canary), aborted, error.");
    size_t np = 0;
    for (lprompt *p = lp->prompts; p && np < PMETRICS_MAX_PROMPTS; p = p->next, np++)
        for (int o = 0; o < 8; o++)
            metrics_sample(b, "ratchet_loop_outcomes_total", (double)p->outcomes[o], "prompt", p->name, "outcome",
                           outcome_names[o], NULL);
    metrics_one(b, "ratchet_loop_checks_total", "counter", "Times the trigger policy was asked.", (double)lp->n.checks);
    metrics_family(b, "ratchet_loop_candidates_total", "counter",
                   "Candidate prompts the optimizer proposed, by verdict: invalid (refused before any run), "
                   "accepted or rejected by the gate.");
    metrics_sample(b, "ratchet_loop_candidates_total", (double)lp->n.invalid, "verdict", "invalid", NULL);
    metrics_sample(b, "ratchet_loop_candidates_total", (double)lp->n.accepted, "verdict", "accepted", NULL);
    metrics_sample(b, "ratchet_loop_candidates_total", (double)lp->n.rejected, "verdict", "rejected", NULL);
    static const metrics_counter counters[] = {
        {"ratchet_loop_canaries_total", "Canaries the loop started.", offsetof(struct loop_counters, canaries)},
        {"ratchet_loop_canary_advances_total", "Canary steps to a larger share.",
         offsetof(struct loop_counters, advances)},
        {"ratchet_loop_promotions_total", "Canaries the rollout policy promoted.",
         offsetof(struct loop_counters, promotions)},
        {"ratchet_loop_rollbacks_total", "Canaries the rollout policy rolled back.",
         offsetof(struct loop_counters, rollbacks)},
        {"ratchet_loop_aborted_total", "Cycles that ended without a verdict (optimizer failed, engine restarted).",
         offsetof(struct loop_counters, aborted)},
        {"ratchet_loop_errors_total", "Loop steps that failed (a policy error, a store failure).",
         offsetof(struct loop_counters, errors)},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        metrics_family(b, counters[i].name, "counter", counters[i].help);
        metrics_sample(b, counters[i].name, metrics_field(&lp->n, counters[i].off), NULL);
    }
}

json_t *loop_status_json(optloop *lp)
{
    json_t *ps = json_object();
    for (lprompt *p = lp->prompts; p; p = p->next)
        json_object_set_new(ps, p->name, loop_prompt_json(lp, p->name));
    return json_pack("{s:o, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}", "prompts", ps,
                     "counters", "checks", (json_int_t)lp->n.checks, "cycles", (json_int_t)lp->n.cycles, "candidates",
                     (json_int_t)lp->n.candidates, "candidates_invalid", (json_int_t)lp->n.invalid,
                     "candidates_accepted", (json_int_t)lp->n.accepted, "candidates_rejected",
                     (json_int_t)lp->n.rejected, "canaries", (json_int_t)lp->n.canaries, "advances",
                     (json_int_t)lp->n.advances, "promotions", (json_int_t)lp->n.promotions, "rollbacks",
                     (json_int_t)lp->n.rollbacks, "aborted", (json_int_t)lp->n.aborted, "errors",
                     (json_int_t)lp->n.errors);
}

/* ---- stopping ---- */

static void check_drained(optloop *lp)
{
    if (!lp->draining || lp->inflight > 0 || !lp->drain_cb)
        return;
    void (*cb)(void *) = lp->drain_cb;
    lp->drain_cb = NULL;
    cb(lp->drain_arg);
}

void loop_drain(optloop *lp, void (*cb)(void *), void *arg)
{
    lp->draining = true;
    uv_timer_stop(&lp->timer);
    for (lprompt *p = lp->prompts; p; p = p->next)
        if (p->want.done)
            serve_want(p); /* answers 503: the engine is stopping */
    for (lprompt *p = lp->prompts; p; p = p->next)
        if (p->cyc && p->cyc->call) {
            /* the cycle stays 'optimizing' in the store: the next start aborts it */
            llm_cancel(p->cyc->call);
            p->cyc->call = NULL;
            lp->inflight--;
        }
    for (lprompt *p = lp->prompts; p; p = p->next)
        if (p->cyc && p->cyc->search)
            gepa_drain(p->cyc->search); /* its done ends the inflight count it holds */
    lp->drain_cb = cb;
    lp->drain_arg = arg;
    if (cb)
        check_drained(lp);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void loop_free(optloop *lp)
{
    if (!lp)
        return;
    while (lp->prompts) {
        lprompt *p = lp->prompts;
        lp->prompts = p->next;
        free(p->name);
        free(p->cycle);
        free(p->run_id);
        free(p->want.actor);
        free(p->want.tpl);
        json_decref(p->set);
        json_decref(p->detail);
        cycle_free(p->cyc);
        free(p);
    }
    config_prompts_free(lp->cfg_prompts, lp->ncfg_prompts);
    uv_close((uv_handle_t *)&lp->timer, on_timer_closed);
}
