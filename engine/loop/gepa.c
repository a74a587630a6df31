/* gepa.c — the GEPA search's mechanism (see gepa.h): the pool, runs of a
 * member on cases (render, cache or model, evaluators), the optimizer's
 * reflection and merge calls, seeded draws, the budget stop. Every
 * judgment is a call into the search policy or the template. Everything
 * here runs on the loop thread; cache reads go to the thread pool. */
#include "loop/gepa.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/jtree.h"
#include "base/log.h"
#include "base/util.h"
#include "loop/registry.h"
#include "script/evaluator.h"
#include "script/policy.h"

#define MAX_POOL 64

struct gepa {
    gepa_env env;
    char *prompt, *cycle, *tpl, *policy;
    json_t *popts, *settings, *ctx, *model, *optimizer, *feedback;
    char *model_json;
    config_attachment *atts;
    size_t natts;
    uint64_t seed, rng;
    int iterations, minibatch, merge_every;
    bool use_cache;
    json_t *pool;      /* [{id, parents, origin, rationale, messages, results: [null | {pass, score, output, reasons}]}] */
    json_t *invalid;   /* [{iteration, reason}] */
    int it;            /* iterations begun */
    int64_t calls, cached;
    double cost;
    const char *stop;  /* why the search ended (static) */
    bool budget_hit, draining, finished;
    int inflight;      /* calls, reads, writes, scripts under way */
    /* the step under way */
    int parent;        /* the parent's id (reflection), or -1 */
    json_t *parents;   /* the child's parents' ids */
    const char *origin;
    json_t *mb;        /* the minibatch: case indexes */
    json_t *proposals; /* what the optimizer proposed, not yet tried */
    json_t *child;     /* the member being run */
    json_t *stepctx;   /* what the template's build or merge was given, for parse */
    int pending;       /* case runs outstanding */
    void (*batch_done)(gepa *g);
    gepa_check check;
    gepa_done done;
    void *ud;
    gepa **slot;       /* the caller's pointer to the search, cleared when it ends */
    struct gcall *calls_out; /* calls to a model under way */
};

static void next_iteration(gepa *g);
static void finish(gepa *g);
static void ask_optimizer(gepa *g, const char *fn, json_t *ctx);

/* ---- small helpers ---- */

/* splitmix64: the search's one source of chance, from the recorded seed */
static uint64_t draw_u64(gepa *g)
{
    uint64_t z = (g->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double draw(gepa *g)
{
    return (double)(draw_u64(g) >> 11) / 9007199254740992.0;
}

static void sha256_key(const char *a, const char *b, const char *c, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    EVP_DigestInit_ex(x, EVP_sha256(), NULL);
    EVP_DigestUpdate(x, a, strlen(a));
    EVP_DigestUpdate(x, "\n", 1);
    EVP_DigestUpdate(x, b, strlen(b));
    EVP_DigestUpdate(x, c, strlen(c));
    EVP_DigestFinal_ex(x, md, &n);
    EVP_MD_CTX_free(x);
    for (unsigned i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

static int64_t set_int(gepa *g, const char *k, int64_t dflt)
{
    json_t *v = json_object_get(g->settings, k);
    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

static json_t *member(gepa *g, int id)
{
    return json_array_get(g->pool, (size_t)id);
}

static void gepa_free(gepa *g);
static void end(gepa *g, json_t *result, const char *err, bool draining);

/* At the end of every callback: the search is freed once it has ended and
 * nothing of it is in flight (never inside a callback's own work). */
static void settle(gepa *g)
{
    if (g->inflight == 0 && g->draining && !g->finished)
        end(g, NULL, "the engine is stopping", true);
    if (g->inflight == 0 && g->finished)
        gepa_free(g);
}

/* ---- calls: the output cache, then the model ---- */

typedef void (*call_cb)(gepa *g, json_t *result, const char *err_kind, const char *err, void *ud);
struct gcall;

static void unlink_call(struct gcall *c);

typedef struct gcall {
    uv_work_t work;
    gepa *g;
    json_t *req;
    char key[65];
    bool keyed;
    char *hit;
    const char *kind;
    call_cb cb;
    void *ud;
    llm_call *call;     /* while the model is asked */
    struct gcall *prev, *next;
} gcall;

typedef struct {
    store_write w;
    gepa *g;
} cache_put;

static void on_cache_put(store_write *w)
{
    cache_put *c = (cache_put *)w;
    gepa *g = c->g;
    store_write_clear(w);
    free(c);
    g->inflight--;
    settle(g);
}

struct job;
static void on_target(gepa *g, json_t *result, const char *err_kind, const char *err, void *ud);
static void job_end(struct job *j, json_t *result);

/* A call whose answer is not delivered (the search is stopping) still ends
 * what it carried: a run call's job holds the member and its trees. */
static void drop_call(gcall *c)
{
    if (c->cb == on_target && c->ud)
        job_end(c->ud, NULL);
}

static void unlink_call(gcall *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (c->g->calls_out == c)
        c->g->calls_out = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void on_call(llm_call *call, json_t *result, const char *err_kind, const char *err, void *ud)
{
    (void)call;
    gcall *c = ud;
    gepa *g = c->g;
    c->call = NULL;
    unlink_call(c);
    if (result) {
        g->calls++;
        g->cost += json_number_value(json_object_get(result, "cost"));
        if (c->keyed) {
            cache_put *p = xcalloc(1, sizeof *p);
            p->g = g;
            char *text = jtree_dump(result);
            store_put_cache(&p->w, c->key, text, now_ms());
            free(text);
            p->w.done = on_cache_put;
            g->inflight++;
            if (store_submit(g->env.st, &p->w) != 0) {
                p->w.status = -1;
                on_cache_put(&p->w);
            }
        }
    } else if (err_kind && !strcmp(err_kind, "budget")) {
        g->budget_hit = true;
    } else {
        g->calls++;
    }
    if (!g->draining)
        c->cb(g, result, err_kind, err, c->ud);
    else
        drop_call(c);
    json_decref(c->req);
    free(c);
    g->inflight--;
    settle(g);
}

static void send_call(gcall *c)
{
    gepa *g = c->g;
    char name[300];
    snprintf(name, sizeof name, "%s:%s", c->kind[0] == 't' ? g->tpl : "gepa", g->prompt);
    llm_caller who = {.kind = c->kind, .name = c->kind[0] == 't' ? name : g->prompt, .run_id = g->cycle};
    g->inflight++;
    c->next = g->calls_out;
    if (g->calls_out)
        g->calls_out->prev = c;
    g->calls_out = c;
    c->call = llm_chat_json(g->env.l, c->req, &who, on_call, c);
}

static void cache_work(uv_work_t *w)
{
    gcall *c = w->data;
    char err[256];
    char *key = c->key;
    store_cache_get(c->g->env.st, &key, 1, &c->hit, err, sizeof err);
}

static void cache_after(uv_work_t *w, int status)
{
    (void)status;
    gcall *c = w->data;
    gepa *g = c->g;
    json_t *res = NULL;
    char perr[120];
    if (c->hit)
        res = jtree_parse(c->hit, strlen(c->hit), perr, sizeof perr);
    free(c->hit);
    c->hit = NULL;
    if (g->draining) {
        json_decref(res);
        drop_call(c);
        json_decref(c->req);
        free(c);
    } else if (json_is_object(res)) {
        g->cached++;
        c->cb(g, res, NULL, NULL, c->ud);
        json_decref(res);
        json_decref(c->req);
        free(c);
    } else {
        json_decref(res);
        send_call(c);
    }
    g->inflight--;
    settle(g);
}

/* Asks a model: req (taken) is a chat request; salt (or NULL: not cached)
 * tells answers apart that may differ for the same request. */
static void call_model(gepa *g, json_t *req, const char *kind, const char *salt, call_cb cb, void *ud)
{
    gcall *c = xcalloc(1, sizeof *c);
    c->g = g;
    c->req = req;
    c->kind = kind;
    c->cb = cb;
    c->ud = ud;
    if (g->use_cache && salt) {
        char *msgs = jtree_dump(json_object_get(req, "messages"));
        char *params = kind[0] == 'r' ? xstrdup(g->model_json) : NULL;
        if (!params) {
            json_t *p = json_copy(req);
            json_object_del(p, "messages");
            params = json_text(p, JSON_COMPACT | JSON_SORT_KEYS);
            json_decref(p);
        }
        sha256_key(msgs, params, salt, c->key);
        free(msgs);
        free(params);
        c->keyed = true;
        c->work.data = c;
        g->inflight++;
        uv_queue_work(g->env.uv, &c->work, cache_work, cache_after);
        return;
    }
    send_call(c);
}

/* ---- running a member on cases ---- */

typedef struct job {
    gepa *g;
    json_t *m;        /* the member */
    size_t ci;        /* the case's index in the feedback set */
    json_t *msgs;     /* rendered */
    json_t *res;      /* the model's reply */
    json_t *case_tree;
    size_t att;
    bool pass, error;
    double score_sum;
    int scored;
    json_t *reasons;
    loaded_evaluator *le;
} job;

static void job_end(job *j, json_t *result)
{
    gepa *g = j->g;
    if (result)
        json_array_set_new(json_object_get(j->m, "results"), j->ci, result);
    json_decref(j->m);
    json_decref(j->msgs);
    json_decref(j->res);
    json_decref(j->case_tree);
    json_decref(j->reasons);
    free(j);
    if (--g->pending == 0 && !g->draining)
        g->batch_done(g);
}

static void next_eval(job *j);

static void on_eval(const eval_result *r, void *ud)
{
    job *j = ud;
    gepa *g = j->g;
    catalog_release(j->le);
    j->le = NULL;
    const config_attachment *a = &g->atts[j->att];
    if (a->required) {
        if (r->status != SCRIPT_OK) {
            j->error = true;
            j->pass = false;
        } else if (!r->pass) {
            j->pass = false;
        }
        j->score_sum += r->status == SCRIPT_OK ? r->score : 0;
        j->scored++;
    }
    if (a->required && (r->status != SCRIPT_OK || !r->pass))
        json_array_append_new(j->reasons, json_pack("{s:s, s:s}", "evaluator", a->name, "reason", r->reason));
    j->att++;
    if (g->draining)
        job_end(j, NULL);
    else
        next_eval(j);
    g->inflight--;
    settle(g);
}

static void next_eval(job *j)
{
    gepa *g = j->g;
    while (j->att < g->natts) {
        const config_attachment *a = &g->atts[j->att];
        j->le = catalog_get(g->env.cat, a->evaluator);
        if (j->le)
            break;
        if (a->required) {
            j->pass = false;
            j->error = true;
            json_array_append_new(j->reasons, json_pack("{s:s, s:s}", "evaluator", a->name, "reason",
                                                        "the evaluator is not loaded"));
        }
        j->att++;
    }
    if (j->att >= g->natts) {
        json_t *out = json_object_get(j->res, "text");
        if (!json_is_string(out) && json_array_size(json_object_get(j->res, "tool_calls")))
            out = json_object_get(j->res, "tool_calls");
        json_t *result = json_pack("{s:i, s:f, s:O*, s:O}", "pass", j->pass ? 1 : 0, "score",
                                   j->pass ? 1.0 : 0.0, "output", out, "reasons", j->reasons);
        job_end(j, result);
        return;
    }
    const config_attachment *a = &g->atts[j->att];
    g->inflight++;
    evaluator_run_tree(g->env.vm, &j->le->ev, g->env.evaluator_budget_ms, j->case_tree, a->options_json, on_eval, j);
}

/* What an evaluator judges here: the shape of a run's case
 * (docs/evaluators.md#the-case), source "search". */
static json_t *case_tree(json_t *c, json_t *res, json_t *msgs)
{
    json_t *output = json_object_get(res, "text");
    output = json_is_string(output) ? json_incref(output) : json_string("");
    json_t *input = json_pack("{s:O, s:O}", "variables", json_object_get(c, "variables"), "messages", msgs);
    json_t *tc = json_object_get(res, "tool_calls");
    json_t *meta = json_object_get(c, "metadata");
    json_t *trace = json_pack("{s:O, s:O, s:[], s:O, s:O, s:O*}", "input", input, "output", output, "feedback",
                              "tool_calls", json_is_array(tc) ? tc : json_array(), "metadata",
                              json_is_object(meta) ? meta : json_object(), "usage", json_object_get(res, "usage"));
    if (!json_is_array(tc))
        json_decref(json_object_get(trace, "tool_calls"));
    if (!json_is_object(meta))
        json_decref(json_object_get(trace, "metadata"));
    json_t *cs = json_pack("{s:O*, s:o, s:o, s:o, s:O*, s:s, s:i}", "id", json_object_get(c, "id"), "input", input,
                           "output", output, "trace", trace, "tags", json_object_get(c, "tags"), "source", "search",
                           "sample", 0);
    if (json_object_get(c, "expected"))
        json_object_set(cs, "expected", json_object_get(c, "expected"));
    return cs;
}

static void on_target(gepa *g, json_t *result, const char *err_kind, const char *err, void *ud)
{
    job *j = ud;
    if (!result) {
        if (err_kind && !strcmp(err_kind, "budget")) {
            job_end(j, NULL); /* not run: the search stops */
            return;
        }
        char msg[600];
        snprintf(msg, sizeof msg, "%s: %s", err_kind ? err_kind : "error", err ? err : "");
        job_end(j, json_pack("{s:i, s:f, s:n, s:[{s:s, s:s}]}", "pass", 0, "score", 0.0, "output", "reasons",
                             "evaluator", "(call)", "reason", msg));
        return;
    }
    j->res = json_incref(result);
    j->case_tree = case_tree(json_array_get(g->feedback, j->ci), result, j->msgs);
    next_eval(j);
}

/* Runs member m on the cases listed (indexes) it has no result for; then
 * calls then. */
static void run_member(gepa *g, json_t *m, json_t *cases, void (*then)(gepa *g))
{
    g->batch_done = then;
    g->pending = 1; /* held until every job is started */
    size_t i;
    json_t *x;
    json_array_foreach(cases, i, x) {
        size_t ci = (size_t)json_integer_value(x);
        if (!json_is_null(json_array_get(json_object_get(m, "results"), ci)))
            continue;
        if (g->budget_hit)
            break;
        json_t *c = json_array_get(g->feedback, ci);
        json_t *msgs = NULL;
        reg_error e;
        job *j = xcalloc(1, sizeof *j);
        j->g = g;
        j->m = json_incref(m);
        j->ci = ci;
        j->pass = true;
        j->reasons = json_array();
        g->pending++;
        if (template_render(json_object_get(m, "messages"), json_object_get(c, "variables"), &msgs, &e)) {
            job_end(j, json_pack("{s:i, s:f, s:n, s:[{s:s, s:s}]}", "pass", 0, "score", 0.0, "output", "reasons",
                                 "evaluator", "(render)", "reason", e.message));
            continue;
        }
        j->msgs = msgs;
        json_t *req = json_copy(g->model);
        json_object_set(req, "messages", msgs);
        call_model(g, req, "run", "\n0", on_target, j);
    }
    if (--g->pending == 0 && !g->draining)
        g->batch_done(g);
}

/* ---- what the policy sees ---- */

static json_t *scores_of(json_t *m, json_t *only)
{
    json_t *out = json_array();
    json_t *res = json_object_get(m, "results");
    if (only) {
        size_t i;
        json_t *x;
        json_array_foreach(only, i, x) {
            json_t *r = json_array_get(res, (size_t)json_integer_value(x));
            json_array_append_new(out, json_is_null(r) || !r ? json_null() : json_real(json_number_value(json_object_get(r, "score"))));
        }
        return out;
    }
    size_t i;
    json_t *r;
    json_array_foreach(res, i, r)
        json_array_append_new(out, json_is_null(r) ? json_null() : json_real(json_number_value(json_object_get(r, "score"))));
    return out;
}

static json_t *pool_view(gepa *g)
{
    json_t *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(g->pool, i, m)
        json_array_append_new(out, json_pack("{s:O, s:O, s:O, s:o}", "id", json_object_get(m, "id"), "parents",
                                             json_object_get(m, "parents"), "origin", json_object_get(m, "origin"),
                                             "scores", scores_of(m, NULL)));
    return out;
}

typedef void (*decided)(gepa *g, json_t *res, const char *err);

typedef struct {
    gepa *g;
    decided then;
} pcall;

static void on_pcall(const char *result, const char *error, void *ud)
{
    pcall *c = ud;
    gepa *g = c->g;
    if (!g->draining && !g->finished) {
        json_t *res = result ? json_loads(result, JSON_DECODE_ANY, NULL) : NULL;
        c->then(g, res, error);
        json_decref(res);
    }
    free(c);
    g->inflight--;
    settle(g);
}

/* kind/name's fn(args...) (args: a JSON array, taken). */
static bool search_call(gepa *g, const char *slot, const char *fn, json_t *args, decided then)
{
    const loaded_evaluator *le = catalog_peek(g->env.cat, slot);
    if (!le) {
        json_decref(args);
        char why[300];
        snprintf(why, sizeof why, "%s.lua is not loaded (see /v1/status scripts.errors)", slot);
        end(g, NULL, why, false);
        return false;
    }
    pcall *c = xcalloc(1, sizeof *c);
    c->g = g;
    c->then = then;
    char *text = json_text(args, JSON_COMPACT);
    json_decref(args);
    g->inflight++;
    policy_call_args(g->env.vm, le->ev.ref, slot, fn,
                     !strncmp(slot, "metaprompts/", 12) ? g->env.template_budget_ms : g->env.policy_budget_ms, text,
                     on_pcall, c);
    free(text);
    return true;
}

static void fail(gepa *g, const char *what, const char *err)
{
    char why[900];
    snprintf(why, sizeof why, "%s: %s", what, err ? err : "no answer");
    end(g, NULL, why, false);
}

static char *slot_of(const char *dir, const char *name)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s/%s", dir, name);
    return buf_steal(&b);
}

/* ---- the search ---- */

static json_t *new_member(gepa *g, json_t *msgs, json_t *parents, const char *origin, const char *rationale)
{
    json_t *res = json_array();
    for (size_t i = 0; i < json_array_size(g->feedback); i++)
        json_array_append_new(res, json_null());
    return json_pack("{s:I, s:o, s:s, s:s, s:o, s:o}", "id", (json_int_t)json_array_size(g->pool), "parents",
                     parents, "origin", origin, "rationale", rationale ? rationale : "", "messages", msgs, "results",
                     res);
}

static json_t *all_cases(gepa *g)
{
    json_t *a = json_array();
    for (size_t i = 0; i < json_array_size(g->feedback); i++)
        json_array_append_new(a, json_integer((json_int_t)i));
    return a;
}

static void seeded(gepa *g)
{
    next_iteration(g);
}

static void end(gepa *g, json_t *result, const char *err, bool draining)
{
    if (g->finished)
        return;
    g->finished = true;
    if (g->slot)
        *g->slot = NULL;
    g->done(g->ud, result, err, draining);
}

void gepa_start(const gepa_env *env, const gepa_spec *s, gepa **slot)
{
    gepa *g = xcalloc(1, sizeof *g);
    g->slot = slot;
    *slot = g;
    g->inflight++; /* held while starting */
    g->env = *env;
    g->prompt = xstrdup(s->prompt);
    g->cycle = xstrdup(s->cycle);
    g->tpl = xstrdup(s->tpl);
    g->policy = xstrdup(s->policy);
    g->popts = json_deep_copy(s->policy_options ? s->policy_options : json_object());
    if (!g->popts)
        g->popts = json_object();
    g->settings = json_deep_copy(s->settings);
    g->ctx = json_deep_copy(s->ctx);
    g->model = json_deep_copy(s->model ? s->model : json_object());
    g->model_json = json_text(g->model, JSON_COMPACT | JSON_SORT_KEYS);
    g->optimizer = json_deep_copy(s->optimizer);
    g->feedback = json_deep_copy(s->feedback);
    g->natts = s->natts;
    g->atts = xcalloc(s->natts ? s->natts : 1, sizeof *g->atts);
    for (size_t i = 0; i < s->natts; i++) {
        g->atts[i] = s->atts[i];
        g->atts[i].name = xstrdup(s->atts[i].name);
        g->atts[i].evaluator = xstrdup(s->atts[i].evaluator);
        g->atts[i].options_json = xstrdup(s->atts[i].options_json);
    }
    g->seed = g->rng = s->seed;
    g->iterations = (int)set_int(g, "iterations", 12);
    g->minibatch = (int)set_int(g, "minibatch", 3);
    g->merge_every = (int)set_int(g, "merge_every", 4);
    g->use_cache = !json_is_false(json_object_get(g->settings, "cache"));
    g->check = s->check;
    g->done = s->done;
    g->ud = s->ud;
    g->pool = json_array();
    g->invalid = json_array();
    g->parent = -1;
    json_t *b = json_object_get(g->settings, "budget");
    if (json_is_object(b))
        llm_run_budget(g->env.l, g->cycle, json_number_value(json_object_get(b, "calls")),
                       json_number_value(json_object_get(b, "tokens")), json_number_value(json_object_get(b, "cost")),
                       0, 0, 0);
    json_t *seed = new_member(g, json_deep_copy(s->seed_messages), json_array(), "seed", "the production version");
    json_array_append_new(g->pool, seed);
    json_t *all = all_cases(g);
    run_member(g, seed, all, seeded);
    json_decref(all);
    g->inflight--;
    settle(g);
}

static void job_end(struct job *j, json_t *result);

void gepa_drain(gepa *g)
{
    g->draining = true;
    g->inflight++;
    /* calls under way are abandoned: the cycle stays 'optimizing' in the
     * store and the next start aborts it */
    while (g->calls_out) {
        gcall *c = g->calls_out;
        unlink_call(c);
        llm_cancel(c->call);
        if (c->kind[0] == 'r')
            job_end(c->ud, NULL);
        json_decref(c->req);
        free(c);
        g->inflight--;
    }
    g->inflight--;
    settle(g);
}

static void gepa_free(gepa *g)
{
    free(g->prompt);
    free(g->cycle);
    free(g->tpl);
    free(g->policy);
    free(g->model_json);
    json_decref(g->popts);
    json_decref(g->settings);
    json_decref(g->ctx);
    json_decref(g->model);
    json_decref(g->optimizer);
    json_decref(g->feedback);
    json_decref(g->pool);
    json_decref(g->invalid);
    json_decref(g->parents);
    json_decref(g->mb);
    json_decref(g->proposals);
    json_decref(g->child);
    json_decref(g->stepctx);
    for (size_t i = 0; i < g->natts; i++) {
        free(g->atts[i].name);
        free(g->atts[i].evaluator);
        free(g->atts[i].options_json);
    }
    free(g->atts);
    free(g);
}

static void try_next_child(gepa *g);
static void reflect(gepa *g);
static void merge_picked(gepa *g, json_t *res, const char *err);
static void parent_picked(gepa *g, json_t *res, const char *err);

static json_t *options_with(gepa *g, double d)
{
    json_t *o = json_deep_copy(g->popts);
    json_object_set_new(o, "draw", json_real(d));
    json_object_set_new(o, "minibatch", json_integer(g->minibatch));
    json_object_set_new(o, "candidates", json_integer(set_int(g, "final", 3)));
    return o;
}

static void next_iteration(gepa *g)
{
    if (g->draining)
        return;
    if (g->budget_hit) {
        g->stop = "budget";
        finish(g);
        return;
    }
    /* the seed's results must all be in: a failed seed run cannot be searched from */
    if (g->it >= g->iterations) {
        g->stop = "iterations";
        finish(g);
        return;
    }
    if (json_array_size(g->pool) >= MAX_POOL) {
        g->stop = "pool_full";
        finish(g);
        return;
    }
    g->it++;
    json_decref(g->parents);
    g->parents = NULL;
    json_decref(g->mb);
    g->mb = NULL;
    g->parent = -1;
    char *slot = slot_of("policies", g->policy);
    if (g->merge_every > 0 && g->it % g->merge_every == 0 && json_array_size(g->pool) >= 3) {
        search_call(g, slot, "pick_merge", json_pack("[o, o]", pool_view(g), options_with(g, draw(g))), merge_picked);
    } else {
        search_call(g, slot, "select_parent", json_pack("[o, o]", pool_view(g), options_with(g, draw(g))),
                    parent_picked);
    }
    free(slot);
}

/* a minibatch of distinct case indexes, drawn with the seed */
static json_t *draw_minibatch(gepa *g)
{
    size_t n = json_array_size(g->feedback);
    size_t *idx = xcalloc(n ? n : 1, sizeof *idx);
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    size_t m = (size_t)g->minibatch < n ? (size_t)g->minibatch : n;
    json_t *out = json_array();
    for (size_t i = 0; i < m; i++) {
        size_t j = i + (size_t)(draw_u64(g) % (n - i));
        size_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
        json_array_append_new(out, json_integer((json_int_t)idx[i]));
    }
    free(idx);
    return out;
}

static void parent_picked(gepa *g, json_t *res, const char *err)
{
    json_t *p = json_is_object(res) ? json_object_get(res, "parent") : res;
    if (!json_is_integer(p) || json_integer_value(p) < 0 ||
        (size_t)json_integer_value(p) >= json_array_size(g->pool)) {
        fail(g, "policy select_parent", err ? err : "must return {parent = ID} of a pool member");
        return;
    }
    g->parent = (int)json_integer_value(p);
    g->parents = json_pack("[i]", g->parent);
    g->origin = "reflect";
    g->mb = draw_minibatch(g);
    reflect(g);
}

static void on_optimizer(gepa *g, json_t *result, const char *err_kind, const char *err, void *ud);

/* the failures and passes of the parent on the minibatch, for the template */
static void reflect(gepa *g)
{
    json_t *par = member(g, g->parent);
    json_t *fails = json_array(), *passes = json_array();
    size_t i;
    json_t *x;
    json_array_foreach(g->mb, i, x) {
        size_t ci = (size_t)json_integer_value(x);
        json_t *r = json_array_get(json_object_get(par, "results"), ci);
        json_t *c = json_array_get(g->feedback, ci);
        if (!json_is_object(r))
            continue;
        json_t *o = json_object_get(r, "output");
        json_t *item = json_pack("{s:O, s:O, s:O*, s:O, s:O}", "id", json_object_get(c, "id"), "input",
                                 json_object_get(c, "variables"), "output", json_is_null(o) ? NULL : o, "reasons",
                                 json_object_get(r, "reasons"), "source", json_object_get(c, "source"));
        json_array_append_new(json_integer_value(json_object_get(r, "pass")) ? passes : fails, item);
    }
    if (json_array_size(fails) == 0) {
        /* nothing on this minibatch to learn from: the iteration is spent */
        json_decref(fails);
        json_decref(passes);
        next_iteration(g);
        return;
    }
    json_t *ctx = json_deep_copy(g->ctx);
    json_t *cur = json_object_get(ctx, "current");
    json_object_set(cur, "messages", json_object_get(par, "messages"));
    json_object_set(cur, "pool_id", json_object_get(par, "id"));
    json_object_set_new(ctx, "failures", fails);
    json_object_set_new(ctx, "passing", passes);
    json_object_set_new(ctx, "iteration", json_integer(g->it));
    ask_optimizer(g, "build", ctx);
}

static void built(gepa *g, json_t *res, const char *err);
static void parsed(gepa *g, json_t *res, const char *err);

/* template fn(ctx) gives the optimizer's messages (ctx taken, kept for parse) */
static void ask_optimizer(gepa *g, const char *fn, json_t *ctx)
{
    json_decref(g->stepctx);
    g->stepctx = ctx;
    char *slot = slot_of("metaprompts", g->tpl);
    search_call(g, slot, fn, json_pack("[O]", ctx), built);
    free(slot);
}

static void built(gepa *g, json_t *res, const char *err)
{
    json_t *msgs = json_is_array(res) ? res : json_object_get(res, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        fail(g, "template", err ? err : "must return the optimizer's messages (a list of {role, content})");
        return;
    }
    json_t *req = json_deep_copy(g->optimizer);
    json_object_set(req, "messages", msgs);
    char salt[64];
    snprintf(salt, sizeof salt, "\ngepa:%llu:%d", (unsigned long long)g->seed, g->it);
    call_model(g, req, "template", salt, on_optimizer, NULL);
}

static void on_optimizer(gepa *g, json_t *result, const char *err_kind, const char *err, void *ud)
{
    (void)ud;
    if (!result) {
        if (err_kind && !strcmp(err_kind, "budget")) {
            next_iteration(g); /* stops: budget_hit */
            return;
        }
        char why[700];
        snprintf(why, sizeof why, "the optimizer model failed: %s: %s", err_kind ? err_kind : "error", err ? err : "");
        json_array_append_new(g->invalid, json_pack("{s:i, s:s}", "iteration", g->it, "reason", why));
        next_iteration(g);
        return;
    }
    const char *text = json_string_value(json_object_get(result, "text"));
    char *slot = slot_of("metaprompts", g->tpl);
    search_call(g, slot, "parse", json_pack("[s, O]", text ? text : "", g->stepctx), parsed);
    free(slot);
}

static void parsed(gepa *g, json_t *res, const char *err)
{
    json_t *list = json_is_array(res) ? res : json_object_get(res, "candidates");
    if (json_is_object(list) && json_object_size(list) == 0)
        list = NULL; /* Lua's empty table */
    if (!json_is_array(list)) {
        char why[900];
        snprintf(why, sizeof why, "template %s: %s", g->tpl, err ? err : "parse gave no candidates");
        json_array_append_new(g->invalid, json_pack("{s:i, s:s}", "iteration", g->it, "reason", why));
        next_iteration(g);
        return;
    }
    json_decref(g->proposals);
    g->proposals = json_copy(list);
    /* at most `proposals` children per answer */
    while (json_array_size(g->proposals) > (size_t)set_int(g, "proposals", 3))
        json_array_remove(g->proposals, json_array_size(g->proposals) - 1);
    try_next_child(g);
}

static void child_on_minibatch(gepa *g);
static void child_judged(gepa *g, json_t *res, const char *err);
static void child_scored(gepa *g);

static bool same_as_member(gepa *g, json_t *msgs)
{
    size_t i;
    json_t *m;
    json_array_foreach(g->pool, i, m) if (json_equal(json_object_get(m, "messages"), msgs)) return true;
    return false;
}

static void try_next_child(gepa *g)
{
    while (json_array_size(g->proposals) > 0 && !g->budget_hit) {
        json_t *cand = json_incref(json_array_get(g->proposals, 0));
        json_array_remove(g->proposals, 0);
        char why[700];
        json_t *msgs = json_is_object(cand) ? g->check(g->ud, cand, why, sizeof why) : NULL;
        if (!json_is_object(cand))
            snprintf(why, sizeof why, "a candidate must be a table {system = ...} or {messages = ...}");
        if (msgs && same_as_member(g, msgs)) {
            snprintf(why, sizeof why, "it repeats a pool member");
            json_decref(msgs);
            msgs = NULL;
        }
        if (!msgs) {
            json_array_append_new(g->invalid, json_pack("{s:i, s:s}", "iteration", g->it, "reason", why));
            json_decref(cand);
            continue;
        }
        const char *rat = json_string_value(json_object_get(cand, "rationale"));
        json_decref(g->child);
        g->child = new_member(g, msgs, json_incref(g->parents), g->origin, rat);
        json_decref(cand);
        run_member(g, g->child, g->mb, child_on_minibatch);
        return;
    }
    next_iteration(g);
}

static void child_on_minibatch(gepa *g)
{
    if (g->budget_hit) {
        next_iteration(g);
        return;
    }
    json_t *ps = json_array();
    size_t i;
    json_t *pid;
    json_array_foreach(g->parents, i, pid)
        json_array_append_new(ps, json_pack("{s:O, s:o}", "id", pid,
                                            "scores", scores_of(member(g, (int)json_integer_value(pid)), g->mb)));
    json_t *child = json_pack("{s:O, s:o}", "origin", json_object_get(g->child, "origin"), "scores",
                              scores_of(g->child, g->mb));
    char *slot = slot_of("policies", g->policy);
    search_call(g, slot, "accept_child", json_pack("[o, o, o]", child, ps, options_with(g, draw(g))), child_judged);
    free(slot);
}

static void child_judged(gepa *g, json_t *res, const char *err)
{
    json_t *a = json_is_object(res) ? json_object_get(res, "accept") : res;
    if (!json_is_boolean(a)) {
        fail(g, "policy accept_child", err ? err : "must return {accept = true|false, reason = ...}");
        return;
    }
    if (!json_is_true(a)) {
        const char *r = json_string_value(json_object_get(res, "reason"));
        char why[600];
        snprintf(why, sizeof why, "not admitted to the pool: %s", r ? r : "no better on the minibatch");
        json_array_append_new(g->invalid, json_pack("{s:i, s:s}", "iteration", g->it, "reason", why));
        try_next_child(g);
        return;
    }
    json_t *all = all_cases(g);
    run_member(g, g->child, all, child_scored);
    json_decref(all);
}

static void child_scored(gepa *g)
{
    if (g->budget_hit) {
        /* a member must have every score: one cut short by the budget stays out */
        next_iteration(g);
        return;
    }
    json_object_set_new(g->child, "iteration", json_integer(g->it));
    json_array_append(g->pool, g->child);
    try_next_child(g);
}

static void merge_picked(gepa *g, json_t *res, const char *err)
{
    if (err) {
        fail(g, "policy pick_merge", err);
        return;
    }
    json_t *a = json_object_get(res, "a"), *b = json_object_get(res, "b");
    size_t n = json_array_size(g->pool);
    if (!json_is_integer(a) || !json_is_integer(b) || json_integer_value(a) < 0 || json_integer_value(b) < 0 ||
        (size_t)json_integer_value(a) >= n || (size_t)json_integer_value(b) >= n ||
        json_integer_value(a) == json_integer_value(b)) {
        /* no pair worth merging: a reflection instead */
        char *slot = slot_of("policies", g->policy);
        search_call(g, slot, "select_parent", json_pack("[o, o]", pool_view(g), options_with(g, draw(g))),
                    parent_picked);
        free(slot);
        return;
    }
    json_t *ma = member(g, (int)json_integer_value(a)), *mb = member(g, (int)json_integer_value(b));
    g->parents = json_pack("[O, O]", a, b);
    g->origin = "merge";
    g->mb = draw_minibatch(g);
    json_t *ctx = json_deep_copy(g->ctx);
    json_object_set_new(ctx, "a", json_pack("{s:O, s:O, s:O}", "id", a, "messages", json_object_get(ma, "messages"),
                                            "rationale", json_object_get(ma, "rationale")));
    json_object_set_new(ctx, "b", json_pack("{s:O, s:O, s:O}", "id", b, "messages", json_object_get(mb, "messages"),
                                            "rationale", json_object_get(mb, "rationale")));
    json_object_set_new(ctx, "iteration", json_integer(g->it));
    ask_optimizer(g, "merge", ctx);
}

/* ---- the end ---- */

static void final_picked(gepa *g, json_t *res, const char *err);

static void finish(gepa *g)
{
    if (json_array_size(g->pool) < 2) {
        json_t *none = json_array();
        final_picked(g, none, NULL);
        json_decref(none);
        return;
    }
    char *slot = slot_of("policies", g->policy);
    search_call(g, slot, "final", json_pack("[o, o]", pool_view(g), options_with(g, 0)), final_picked);
    free(slot);
}

static double mean_of(json_t *m)
{
    double s = 0;
    size_t n = 0, i;
    json_t *r;
    json_array_foreach(json_object_get(m, "results"), i, r) if (json_is_object(r)) {
        s += json_number_value(json_object_get(r, "score"));
        n++;
    }
    return n ? s / (double)n : 0;
}

static void final_picked(gepa *g, json_t *res, const char *err)
{
    json_t *ids = json_is_array(res) ? res : json_object_get(res, "ids");
    if (json_is_object(ids) && json_object_size(ids) == 0)
        ids = NULL;
    if (!ids && json_is_object(res) && json_object_size(res) == 0)
        ids = NULL;
    json_t *final = json_array();
    size_t i;
    json_t *x;
    json_array_foreach(ids, i, x) {
        if (json_is_integer(x) && json_integer_value(x) > 0 && (size_t)json_integer_value(x) < json_array_size(g->pool))
            json_array_append(final, x);
    }
    if (err && !ids) {
        json_decref(final);
        fail(g, "policy final", err);
        return;
    }
    json_t *pool = json_array();
    json_t *m;
    json_array_foreach(g->pool, i, m)
        json_array_append_new(pool, json_pack("{s:O, s:O, s:O, s:O, s:O*, s:o, s:f, s:O}", "id",
                                              json_object_get(m, "id"), "parents", json_object_get(m, "parents"),
                                              "origin", json_object_get(m, "origin"), "rationale",
                                              json_object_get(m, "rationale"), "iteration",
                                              json_object_get(m, "iteration"), "scores", scores_of(m, NULL), "mean",
                                              mean_of(m), "messages", json_object_get(m, "messages")));
    json_t *fb = json_array();
    json_array_foreach(g->feedback, i, x)
        json_array_append_new(fb, json_pack("{s:O, s:O}", "id", json_object_get(x, "id"), "source",
                                            json_object_get(x, "source")));
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)g->seed);
    json_t *out = json_pack("{s:s, s:s, s:i, s:I, s:I, s:f, s:o, s:o, s:o, s:O}", "seed", seed, "stop",
                            g->stop ? g->stop : "iterations", "iterations", g->it, "calls", (json_int_t)g->calls,
                            "cached", (json_int_t)g->cached, "cost", g->cost, "feedback", fb, "pool", pool, "final",
                            final, "invalid", g->invalid);
    end(g, out, NULL, false);
    json_decref(out);
}
