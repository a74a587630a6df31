/* runner.c — regression runs (see runner.h). Each run walks its jobs
 * (case × version × sample) in case order, at most `concurrency` at a time:
 * render the version's messages with the case's variables, look the output
 * up in the cache, else call the model; judge it with the prompt's
 * evaluators; write the result. When every job is written, the accept
 * policy judges each candidate against the baseline. */
#include "loop/runner.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#include "conf/confcheck.h"
#include "base/jtree.h"
#include "base/log.h"
#include "base/metrics.h"
#include "script/policy.h"

#define MAX_VERSIONS 9     /* a baseline and up to 8 candidates */
#define MAX_CASES 200000
#define MAX_CHANGED 500    /* changed cases listed in a report */

typedef struct run run;

typedef struct waiter {
    uv_timer_t timer;
    runner *r;
    struct waiter *next;
    char id[37];
    runner_woken cb;
    void *ud;
} waiter;

struct runner {
    uv_loop_t *loop;
    store *st;
    registry *reg;
    catalog *cat;
    script_vm *vm;
    llm *l;
    config_prompt *prompts;
    size_t nprompts;
    int policy_budget_ms, evaluator_budget_ms;
    run *runs;
    runner_finished on_finish;
    void *finish_ud;
    bool draining;
    void (*drain_cb)(void *);
    void *drain_arg;
    uint64_t started, finished, results, cache_hits, llm_calls, errors;
    json_t *ended; /* "kind verdict" -> runs finished so */
    waiter *waiters; /* GET /v1/runs/{id}?wait= */
};

struct run {
    runner *r;
    run *next;
    char id[37];
    char *prompt, *actor, *kind;
    json_t *spec;
    char **cases;        /* each case as compact JSON, parsed when a job needs it */
    size_t ncases, cases_cap;
    int nv;
    int64_t versions[MAX_VERSIONS];
    json_t *templates[MAX_VERSIONS], *models[MAX_VERSIONS];
    char *model_json[MAX_VERSIONS]; /* sorted, for cache keys */
    int k, concurrency;
    bool use_cache;
    config_attachment *atts;
    size_t natts;
    char *policy;
    uint16_t *agg;      /* [case][version][pass, fail, error] sample counts */
    unsigned char *done; /* per job: its result is stored */
    /* jobs calling the model (or reading the cache): at most concurrency;
     * judged (their evaluators running): at most concurrency too; results
     * queued for the store: at most 4 x concurrency + 64 */
    size_t njobs, next_job, inflight, judging, writes, completed;
    int64_t calls, cached, in_tok, out_tok;
    double cost;
    bool stopping, finishing, store_failed, pumping;
    bool suspended;      /* this engine's lease lapsed: no job starts; set aside once idle */
    uint64_t lease_gen;  /* store_lease_generation when it started here: another one means a lapse */
    char *stop_reason;
    int64_t created_ms;
    int64_t progress_ms; /* when a result was last recorded (or the run started here): status finds stuck runs */
    /* early stopping (gate runs): candidates the accept policy's stop_early
     * showed cannot be improved; their jobs not started are skipped */
    bool early, stop_pending;
    bool stopped[MAX_VERSIONS];
    json_t *stop_entry[MAX_VERSIONS]; /* the verdict each stopped candidate gets */
    size_t skipped, last_check;
    int stop_vi;
    loaded_evaluator *stop_pol;
    /* the policy phase */
    int pol_vi;
    json_t *report, *verdicts;
    loaded_evaluator *pol;
    /* starting */
    runner_started started_cb;
    void *started_ud;
    json_t *dataset_cases, *failed_cases;
    json_t *names[MAX_VERSIONS]; /* the variables each version's template uses */
    reg_error start_e;   /* the cases' error, found in the pool */
    int start_rc;
    json_t *failed_spec;
    char *dataset;
    int64_t dataset_version;
    json_t *tags;
    char err[600];
    store_write w;
};

typedef struct {
    run *rn;
    size_t j, ci;
    int vi, sample;
    char key[65];
    json_t *c;          /* the case */
    json_t *msgs;       /* the rendered messages */
    char *messages;     /* the same as JSON text, for the cache key (only with the cache on) */
    char *result;       /* the model's normalised reply, JSON */
    json_t *res;        /* the same, parsed */
    bool cached;
    json_t *case_tree;  /* what the evaluators judge */
    size_t att;
    buf_t verdicts;     /* "[{...},{...}" so far: one object per evaluator, as JSON text */
    bool req_fail, req_error;
    bool judging;       /* past the call: its slot is free */
    char *error;        /* the call failed */
    uv_work_t work;
    store_write w;
} job;

static void run_pump(run *rn);
static void run_free(run *rn);
static char *policy_input(run *rn, int vi);
static void check_drained(runner *r);
static void check_stop(run *rn);

/* ---- set-up ---- */

runner *runner_new(uv_loop_t *loop, store *st, registry *reg, catalog *cat, script_vm *vm, llm *l, const config *cfg)
{
    runner *r = xcalloc(1, sizeof *r);
    r->ended = json_object();
    r->loop = loop;
    r->st = st;
    r->reg = reg;
    r->cat = cat;
    r->vm = vm;
    r->l = l;
    runner_configure(r, cfg);
    return r;
}

void runner_configure(runner *r, const config *cfg)
{
    config_prompts_free(r->prompts, r->nprompts);
    r->prompts = config_prompts_copy(cfg->prompts, cfg->nprompts);
    r->nprompts = cfg->nprompts;
    r->policy_budget_ms = cfg->scripts.policy_budget_ms;
    r->evaluator_budget_ms = cfg->scripts.evaluator_budget_ms;
}

void runner_on_finish(runner *r, runner_finished cb, void *ud)
{
    r->on_finish = cb;
    r->finish_ud = ud;
}

static const config_prompt *find_prompt(runner *r, const char *name)
{
    for (size_t i = 0; i < r->nprompts; i++)
        if (!strcmp(r->prompts[i].name, name))
            return &r->prompts[i];
    return NULL;
}

static run *find_run(runner *r, const char *id)
{
    for (run *rn = r->runs; rn; rn = rn->next)
        if (!strcmp(rn->id, id))
            return rn;
    return NULL;
}

static void sha256_hex(const char *a, size_t alen, const char *b, size_t blen, int sample, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char s[32];
    int sl = snprintf(s, sizeof s, "\n%d", sample);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, a, alen);
    EVP_DigestUpdate(c, "\n", 1);
    EVP_DigestUpdate(c, b, blen);
    EVP_DigestUpdate(c, s, (size_t)sl);
    EVP_DigestFinal_ex(c, md, &n);
    EVP_MD_CTX_free(c);
    for (unsigned i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

/* Fills the run's versions, templates, models and evaluators from the
 * registry and config. Returns 0 or an HTTP status. */
static int run_bind(run *rn, reg_error *e)
{
    runner *r = rn->r;
    const config_prompt *cp = find_prompt(r, rn->prompt);
    if (!cp || cp->nevaluators == 0) {
        reg_fail(e, 409, "no_evaluators", "prompt",
                 "prompt '%s' has no evaluators in the configuration, so its outputs cannot be judged; attach some "
                 "with prompt \"%s\" { evaluators = {...} }",
                 rn->prompt, rn->prompt);
        return e->status;
    }
    rn->natts = cp->nevaluators;
    rn->atts = xcalloc(rn->natts, sizeof *rn->atts);
    for (size_t i = 0; i < rn->natts; i++) {
        rn->atts[i] = cp->evaluators[i];
        rn->atts[i].name = xstrdup(cp->evaluators[i].name);
        rn->atts[i].evaluator = xstrdup(cp->evaluators[i].evaluator);
        rn->atts[i].options_json = xstrdup(cp->evaluators[i].options_json);
    }
    for (int i = 0; i < rn->nv; i++) {
        json_t *v = registry_version(r->reg, rn->prompt, rn->versions[i]);
        if (!v) {
            reg_fail(e, 404, "unknown_version", i ? "candidates" : "baseline", "prompt '%s' has no version %lld",
                     rn->prompt, (long long)rn->versions[i]);
            return e->status;
        }
        rn->templates[i] = json_incref(json_object_get(v, "messages"));
        rn->models[i] = json_incref(json_object_get(v, "model"));
        rn->model_json[i] = json_text(rn->models[i], JSON_COMPACT | JSON_SORT_KEYS);
    }
    return 0;
}

static run *run_new(runner *r, const char *id, const char *prompt, json_t *spec)
{
    run *rn = xcalloc(1, sizeof *rn);
    rn->r = r;
    snprintf(rn->id, sizeof rn->id, "%s", id);
    rn->prompt = xstrdup(prompt);
    rn->spec = json_incref(spec);
    const char *kind = json_string_value(json_object_get(spec, "kind"));
    rn->kind = xstrdup(kind ? kind : "eval");
    json_t *x = json_object_get(spec, "k");
    rn->k = x ? (int)json_integer_value(x) : 1;
    x = json_object_get(spec, "concurrency");
    rn->concurrency = x ? (int)json_integer_value(x) : 8;
    rn->use_cache = !json_is_false(json_object_get(spec, "cache"));
    rn->early = !strcmp(rn->kind, "gate");
    const char *pol = json_string_value(json_object_get(spec, "policy"));
    rn->policy = xstrdup(pol ? pol : "accept");
    rn->versions[rn->nv++] = json_integer_value(json_object_get(spec, "baseline"));
    size_t i;
    json_array_foreach(json_object_get(spec, "candidates"), i, x) rn->versions[rn->nv++] = json_integer_value(x);
    rn->created_ms = rn->progress_ms = now_ms();
    rn->lease_gen = store_lease_generation(r->st);
    return rn;
}

/* A case as a run keeps it: its compact JSON, a NUL, then the fragment
 * "id":...,"source":...[,"group":...][,"stratum":...],"tags":[...] (tags
 * last: case_tags finds them so) that the report and the policy's input
 * list it by, so that the end of a run reads no case again. */
static char *case_keep(const json_t *c)
{
    buf_t b;
    buf_init(&b);
    jtree_dump_buf(&b, c);
    buf_append(&b, "", 1);
    buf_puts(&b, "\"id\":");
    jtree_dump_buf(&b, json_object_get(c, "id"));
    buf_puts(&b, ",\"source\":");
    jtree_dump_buf(&b, json_object_get(c, "source"));
    static const char *const opt[] = {"group", "stratum", NULL};
    for (const char *const *k = opt; *k; k++)
        if (json_is_string(json_object_get(c, *k))) {
            buf_printf(&b, ",\"%s\":", *k);
            jtree_dump_buf(&b, json_object_get(c, *k));
        }
    buf_puts(&b, ",\"tags\":");
    jtree_dump_buf(&b, json_object_get(c, "tags"));
    char *out = xmalloc(b.len + 1); /* exact size: a run may keep 200,000 */
    memcpy(out, b.data, b.len + 1);
    buf_free(&b);
    return out;
}

/* Case ci, parsed; the caller decrefs. */
static json_t *case_at(run *rn, size_t ci)
{
    char err[120];
    return jtree_parse(rn->cases[ci], strlen(rn->cases[ci]), err, sizeof err);
}

static const char *case_meta(run *rn, size_t ci)
{
    return rn->cases[ci] + strlen(rn->cases[ci]) + 1;
}

/* The case's tags, parsed from its fragment (tags come last); NULL when it
 * has none. */
static json_t *case_tags(run *rn, size_t ci)
{
    const char *m = case_meta(rn, ci), *t = NULL;
    for (const char *p = m; (p = strstr(p, ",\"tags\":")); p++)
        t = p + 8; /* the last one: quotes inside strings are escaped */
    if (!t || t[0] != '[' || t[1] == ']')
        return NULL;
    return json_loads(t, 0, NULL);
}

/* Sizes the job table once the cases are known. */
static void run_size(run *rn)
{
    rn->njobs = rn->ncases * (size_t)rn->nv * (size_t)rn->k;
    rn->agg = xcalloc(rn->ncases * (size_t)rn->nv * 3, sizeof *rn->agg);
    rn->done = xcalloc(rn->njobs ? rn->njobs : 1, 1);
}

static void run_link(run *rn)
{
    rn->next = rn->r->runs;
    rn->r->runs = rn;
}

/* ---- waiting for a run ---- */

static void waiter_closed(uv_handle_t *h)
{
    free(h->data);
}

static void waiter_end(waiter *w)
{
    for (waiter **p = &w->r->waiters; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, waiter_closed);
    w->cb(w->ud);
}

/* Wakes the waiters on run id, or every waiter when id is NULL. */
static void wake(runner *r, const char *id)
{
    waiter *w = r->waiters, *next;
    for (; w; w = next) {
        next = w->next;
        if (!id || !strcmp(w->id, id))
            waiter_end(w);
    }
}

static void on_wait_timeout(uv_timer_t *t)
{
    waiter_end(t->data);
}

bool runner_wait(runner *r, const char *id, uint64_t ms, runner_woken cb, void *ud)
{
    if (r->draining || !find_run(r, id))
        return false;
    waiter *w = xcalloc(1, sizeof *w);
    w->r = r;
    snprintf(w->id, sizeof w->id, "%s", id);
    w->cb = cb;
    w->ud = ud;
    uv_timer_init(r->loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, on_wait_timeout, ms, 0);
    w->next = r->waiters;
    r->waiters = w;
    return true;
}

static void run_unlink(run *rn)
{
    for (run **p = &rn->r->runs; *p; p = &(*p)->next)
        if (*p == rn) {
            *p = rn->next;
            break;
        }
    wake(rn->r, rn->id);
}

static void run_free(run *rn)
{
    for (int i = 0; i < rn->nv; i++) {
        json_decref(rn->templates[i]);
        json_decref(rn->models[i]);
        free(rn->model_json[i]);
    }
    for (size_t i = 0; i < rn->natts; i++) {
        free(rn->atts[i].name);
        free(rn->atts[i].evaluator);
        free(rn->atts[i].options_json);
    }
    free(rn->atts);
    free(rn->agg);
    free(rn->done);
    free(rn->prompt);
    free(rn->actor);
    free(rn->kind);
    free(rn->policy);
    free(rn->stop_reason);
    free(rn->dataset);
    json_decref(rn->spec);
    for (size_t i = 0; i < rn->ncases; i++)
        free(rn->cases[i]);
    free(rn->cases);
    json_decref(rn->report);
    json_decref(rn->verdicts);
    for (int v = 0; v < MAX_VERSIONS; v++)
        json_decref(rn->stop_entry[v]);
    json_decref(rn->dataset_cases);
    json_decref(rn->failed_cases);
    for (int v = 0; v < MAX_VERSIONS; v++)
        json_decref(rn->names[v]);
    json_decref(rn->failed_spec);
    json_decref(rn->tags);
    store_write_clear(&rn->w);
    free(rn);
}

/* ---- checking a spec ---- */

static bool json_time_value(json_t *v, int64_t *out)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = json_integer_value(v);
        return true;
    }
    return json_is_string(v) && time_parse(json_string_value(v), out);
}

static void join_problem(const char *problem, void *ud)
{
    buf_t *b = ud;
    buf_printf(b, "%s%s", b->len ? "; " : "", problem);
}

#define SPEC_FAIL(status, code, field, ...)                                                                          \
    do {                                                                                                             \
        reg_fail(e, status, code, field, __VA_ARGS__);                                                               \
        return status;                                                                                               \
    } while (0)

static int check_spec(runner *r, json_t *spec, reg_error *e)
{
    static const char *const known[] = {"prompt", "baseline", "candidates", "dataset", "dataset_version", "tags",
                                        "failed", "cases", "k", "concurrency", "budget", "cache", "policy",
                                        "policy_options", "kind", "candidate_facts", NULL};
    if (!json_is_object(spec))
        SPEC_FAIL(400, "invalid_json", "", "the body must be a JSON object describing the run");
    const char *key;
    json_t *v;
    json_object_foreach(spec, key, v) {
        bool ok = false;
        for (const char *const *k = known; *k && !ok; k++)
            ok = !strcmp(*k, key);
        if (!ok)
            SPEC_FAIL(400, "invalid_field", key,
                      "unknown field '%s' (known: prompt, baseline, candidates, dataset, dataset_version, tags, "
                      "failed, cases, k, concurrency, budget, cache, policy, policy_options, kind, candidate_facts)",
                      key);
    }
    const char *prompt = json_string_value(json_object_get(spec, "prompt"));
    if (!prompt)
        SPEC_FAIL(400, "invalid_field", "prompt", "'prompt' must be the name of a registered prompt");
    json_t *p = registry_prompt(r->reg, prompt);
    if (!p)
        SPEC_FAIL(404, "unknown_prompt", "prompt", "no prompt named '%s' in the registry", prompt);
    size_t nver = json_array_size(json_object_get(p, "versions"));
    json_t *b = json_object_get(spec, "baseline");
    if (!json_is_integer(b) || json_integer_value(b) < 1 || (size_t)json_integer_value(b) > nver)
        SPEC_FAIL(json_is_integer(b) ? 404 : 400, json_is_integer(b) ? "unknown_version" : "invalid_field", "baseline",
                  "'baseline' must be a version of '%s' (1 to %zu)", prompt, nver);
    json_t *c = json_object_get(spec, "candidates");
    if (!json_is_array(c) || json_array_size(c) == 0 || json_array_size(c) > MAX_VERSIONS - 1)
        SPEC_FAIL(400, "invalid_field", "candidates", "'candidates' must be a list of 1 to %d versions",
                  MAX_VERSIONS - 1);
    size_t i;
    json_array_foreach(c, i, v) {
        char f[64];
        snprintf(f, sizeof f, "candidates[%zu]", i);
        if (!json_is_integer(v))
            SPEC_FAIL(400, "invalid_field", f, "'%s' must be a version number", f);
        if (json_integer_value(v) < 1 || (size_t)json_integer_value(v) > nver)
            SPEC_FAIL(404, "unknown_version", f, "prompt '%s' has no version %lld (it has %zu)", prompt,
                      (long long)json_integer_value(v), nver);
        if (json_equal(v, b))
            SPEC_FAIL(400, "invalid_field", f, "version %lld is the baseline; a candidate must differ",
                      (long long)json_integer_value(v));
        for (size_t j = 0; j < i; j++)
            if (json_equal(v, json_array_get(c, j)))
                SPEC_FAIL(400, "invalid_field", f, "version %lld is listed twice", (long long)json_integer_value(v));
    }
    json_t *ds = json_object_get(spec, "dataset"), *failed = json_object_get(spec, "failed");
    json_t *inline_cases = json_object_get(spec, "cases");
    if (!ds && !failed && !inline_cases)
        SPEC_FAIL(400, "invalid_field", "dataset", "a run needs cases: give 'dataset', 'failed', 'cases' or several");
    if (inline_cases) {
        if (!json_is_array(inline_cases) || json_array_size(inline_cases) > 10000)
            SPEC_FAIL(400, "invalid_field", "cases", "'cases' must be a list of at most 10000 cases");
        json_array_foreach(inline_cases, i, v) {
            char f[64];
            snprintf(f, sizeof f, "cases[%zu]", i);
            if (!json_is_object(v) || !json_is_string(json_object_get(v, "id")) ||
                !json_is_object(json_object_get(v, "variables")))
                SPEC_FAIL(400, "invalid_field", f, "'%s' must be an object with 'id' (a string) and 'variables' (an "
                          "object)", f);
            json_t *t = json_object_get(v, "tags");
            size_t j;
            json_t *x;
            if (t && !json_is_array(t))
                SPEC_FAIL(400, "invalid_field", f, "'%s.tags' must be a list of strings", f);
            json_array_foreach(t, j, x) if (!json_is_string(x))
                SPEC_FAIL(400, "invalid_field", f, "'%s.tags' must be a list of strings", f);
            const char *src = json_string_value(json_object_get(v, "source"));
            if (json_object_get(v, "source") &&
                (!src || (strcmp(src, "failed") && strcmp(src, "replay") && strcmp(src, "inline"))))
                SPEC_FAIL(400, "invalid_field", f, "'%s.source' must be \"failed\", \"replay\" or \"inline\"", f);
            static const char *const names[] = {"group", "stratum", "trace_id", NULL};
            for (const char *const *n = names; *n; n++)
                if (json_object_get(v, *n) && !json_is_string(json_object_get(v, *n)))
                    SPEC_FAIL(400, "invalid_field", f, "'%s.%s' must be a string", f, *n);
            if (json_object_get(v, "metadata") && !json_is_object(json_object_get(v, "metadata")))
                SPEC_FAIL(400, "invalid_field", f, "'%s.metadata' must be an object", f);
        }
    }
    if (ds) {
        if (!json_is_string(ds))
            SPEC_FAIL(400, "invalid_field", "dataset", "'dataset' must be a dataset name");
        json_t *d = registry_dataset(r->reg, json_string_value(ds));
        if (!d)
            SPEC_FAIL(404, "unknown_dataset", "dataset", "no dataset named '%s'", json_string_value(ds));
        json_t *dv = json_object_get(spec, "dataset_version");
        if (dv && (!json_is_integer(dv) || json_integer_value(dv) < 1 ||
                   json_integer_value(dv) > json_integer_value(json_object_get(d, "version"))))
            SPEC_FAIL(404, "unknown_version", "dataset_version", "dataset '%s' has versions 1 to %lld",
                      json_string_value(ds), (long long)json_integer_value(json_object_get(d, "version")));
    } else if (json_object_get(spec, "dataset_version")) {
        SPEC_FAIL(400, "invalid_field", "dataset_version", "'dataset_version' needs 'dataset'");
    }
    if (failed) {
        if (!json_is_object(failed))
            SPEC_FAIL(400, "invalid_field", "failed", "'failed' must be an object {since, until, limit}");
        json_object_foreach(failed, key, v) {
            char f[64];
            snprintf(f, sizeof f, "failed.%s", key);
            int64_t t;
            if (!strcmp(key, "limit")) {
                if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 10000)
                    SPEC_FAIL(400, "invalid_field", f, "'%s' must be an integer from 1 to 10000", f);
            } else if (!strcmp(key, "since") || !strcmp(key, "until")) {
                if (!json_time_value(v, &t))
                    SPEC_FAIL(400, "invalid_field", f, "'%s' must be an RFC 3339 time or milliseconds", f);
            } else {
                SPEC_FAIL(400, "invalid_field", f, "unknown field '%s' (known: since, until, limit)", f);
            }
        }
    }
    json_t *tags = json_object_get(spec, "tags");
    if (tags) {
        if (!json_is_array(tags))
            SPEC_FAIL(400, "invalid_field", "tags", "'tags' must be a list of tags (cases with any of them run)");
        json_array_foreach(tags, i, v) if (!json_is_string(v))
            SPEC_FAIL(400, "invalid_field", "tags", "'tags' must be a list of strings");
    }
    v = json_object_get(spec, "k");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 20))
        SPEC_FAIL(400, "invalid_field", "k", "'k' (samples per case and version) must be an integer from 1 to 20");
    v = json_object_get(spec, "concurrency");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 512))
        SPEC_FAIL(400, "invalid_field", "concurrency", "'concurrency' must be an integer from 1 to 512");
    v = json_object_get(spec, "cache");
    if (v && !json_is_boolean(v))
        SPEC_FAIL(400, "invalid_field", "cache", "'cache' must be true or false");
    v = json_object_get(spec, "kind");
    if (v && (!json_is_string(v) || (strcmp(json_string_value(v), "eval") && strcmp(json_string_value(v), "gate"))))
        SPEC_FAIL(400, "invalid_field", "kind", "'kind' must be \"eval\" or \"gate\"");
    v = json_object_get(spec, "policy_options");
    if (v && !json_is_object(v))
        SPEC_FAIL(400, "invalid_field", "policy_options", "'policy_options' must be an object the policy reads");
    json_t *facts = json_object_get(spec, "candidate_facts");
    if (facts) {
        json_t *x;
        if (!json_is_object(facts))
            SPEC_FAIL(400, "invalid_field", "candidate_facts",
                      "'candidate_facts' must be an object: candidate version -> what the policy is told about it");
        json_object_foreach(facts, key, x) {
            bool listed = false;
            json_array_foreach(c, i, v) listed |= json_integer_value(v) == strtoll(key, NULL, 10);
            if (!listed || !json_is_object(x))
                SPEC_FAIL(400, "invalid_field", "candidate_facts",
                          "'candidate_facts.%s' must be an object, for a version listed in 'candidates'", key);
        }
    }
    v = json_object_get(spec, "budget");
    if (v) {
        if (!json_is_object(v))
            SPEC_FAIL(400, "invalid_field", "budget", "'budget' must be an object {calls, tokens, cost}");
        json_t *x;
        json_object_foreach(v, key, x) {
            char f[64];
            snprintf(f, sizeof f, "budget.%s", key);
            if (strcmp(key, "calls") && strcmp(key, "tokens") && strcmp(key, "cost"))
                SPEC_FAIL(400, "invalid_field", f, "unknown field '%s' (known: calls, tokens, cost)", f);
            if (!json_is_number(x) || json_number_value(x) <= 0)
                SPEC_FAIL(400, "invalid_field", f, "'%s' must be a positive number", f);
        }
    }
    const char *pol = json_string_value(json_object_get(spec, "policy"));
    if (json_object_get(spec, "policy") && (!pol || !registry_name_ok(pol)))
        SPEC_FAIL(400, "invalid_field", "policy", "'policy' must name a file policies/NAME.lua");
    char pname[200];
    snprintf(pname, sizeof pname, "policies/%s", pol ? pol : "accept");
    const loaded_evaluator *ple = catalog_peek(r->cat, pname);
    if (!ple)
        SPEC_FAIL(409, "no_policy", "policy", "no policy %s.lua is loaded (see /v1/status scripts.errors)", pname);
    char why[900];
    if (catalog_check_contract(r->cat, ple, "accept", why, sizeof why) != 0)
        SPEC_FAIL(422, "invalid_policy", "policy", "%s", why);
    buf_t problems;
    buf_init(&problems);
    int bad = confcheck_policy_options(r->cat, ple, json_object_get(spec, "policy_options"), join_problem, &problems);
    if (bad) {
        snprintf(why, sizeof why, "%s", problems.data);
        buf_free(&problems);
        SPEC_FAIL(422, "invalid_field", "policy_options", "policy_options (%s): %s", ple->ev.path, why);
    }
    buf_free(&problems);
    return 0;
}

/* ---- starting ---- */

static void on_run_stored(store_write *w);

static void fail_start_e(run *rn, const reg_error *e)
{
    rn->started_cb(NULL, NULL, e, rn->started_ud);
    run_free(rn);
}

static void fail_start(run *rn, int status, const char *code, const char *field, const char *msg)
{
    reg_error e;
    reg_fail(&e, status, code, field, "%s", msg);
    fail_start_e(rn, &e);
}

static void build_cases(run *rn);

static void load_cases_work(uv_work_t *w)
{
    run *rn = w->data;
    runner *r = rn->r;
    rn->err[0] = '\0';
    if (rn->dataset &&
        store_dataset_cases(r->st, rn->dataset, rn->dataset_version, STORE_CASE_TEXTS, &rn->dataset_cases, rn->err,
                            sizeof rn->err))
        return;
    if (rn->failed_spec) {
        int64_t since = 0, until = INT64_MAX;
        json_t *x = json_object_get(rn->failed_spec, "since");
        if (x)
            json_time_value(x, &since);
        x = json_object_get(rn->failed_spec, "until");
        if (x)
            json_time_value(x, &until);
        x = json_object_get(rn->failed_spec, "limit");
        int limit = x ? (int)json_integer_value(x) : 200;
        if (store_failed_trace_cases(r->st, rn->prompt, 0, since, until, limit, &rn->failed_cases, rn->err,
                                     sizeof rn->err))
            return;
    }
    build_cases(rn);
}

static bool has_tag(json_t *c, json_t *tags)
{
    if (!tags)
        return true;
    size_t i, j;
    json_t *t, *u;
    json_array_foreach(json_object_get(c, "tags"), i, t) json_array_foreach(tags, j, u) if (json_equal(t, u)) return true;
    return false;
}

/* Takes c, a case with its source set: checks that it has every variable the
 * versions' templates use (names[v]), then keeps it as compact text, so a run
 * of any size holds one small string per case, not a tree. */
static int add_case(run *rn, json_t *c, json_t *const *names, reg_error *e)
{
    json_t *vars = json_object_get(c, "variables");
    for (int v = 0; v < rn->nv; v++) {
        size_t n;
        json_t *name;
        json_array_foreach(names[v], n, name) if (!json_object_get(vars, json_string_value(name))) {
            const char *id = json_string_value(json_object_get(c, "id")), *var = json_string_value(name);
            char field[300];
            snprintf(field, sizeof field, "cases[%s].variables.%s", id, var);
            reg_fail(e, 400, "missing_variable", field,
                     "version %lld of '%s' uses {{%s}}, but case '%s' (%s) has no variable '%s'",
                     (long long)rn->versions[v], rn->prompt, var, id,
                     json_string_value(json_object_get(c, "source")), var);
            json_decref(c);
            return e->status;
        }
    }
    if (rn->ncases >= MAX_CASES) {
        json_decref(c);
        reg_fail(e, 400, "too_many_cases", "dataset", "a run takes at most 200000 cases");
        return e->status;
    }
    if (rn->ncases == rn->cases_cap) {
        rn->cases_cap = rn->cases_cap ? 2 * rn->cases_cap : 64;
        rn->cases = xrealloc(rn->cases, rn->cases_cap * sizeof *rn->cases);
    }
    rn->cases[rn->ncases++] = case_keep(c);
    json_decref(c);
    return 0;
}

/* A gate run's cases, the most informative first, so that early stopping
 * sees what can reject a candidate before it has paid for the rest. The
 * cases go in buckets — held-out failures, critical cases, the golden set,
 * the replayed traces of each stratum, rarest first — and are dealt
 * round-robin from them: a candidate that breaks some share of any bucket
 * shows it within a few rounds, wherever that bucket would sit in a plain
 * order (measured on spec/adversarial: held-out failures first, then the
 * rest, stopped the breakers 5-8x later for no gain on the others). Within
 * a bucket the order is kept. */
typedef struct {
    size_t bucket, pos, idx;
    char *text;
} case_rank;

static int rank_cmp(const void *a, const void *b)
{
    const case_rank *x = a, *y = b;
    if (x->pos != y->pos)
        return x->pos < y->pos ? -1 : 1;
    if (x->bucket != y->bucket)
        return x->bucket < y->bucket ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static void order_cases(run *rn)
{
    size_t n = rn->ncases;
    case_rank *rk = xcalloc(n ? n : 1, sizeof *rk);
    json_t *strata = json_object(); /* stratum -> count */
    json_t **parsed = xcalloc(n ? n : 1, sizeof *parsed);
    for (size_t i = 0; i < n; i++) {
        parsed[i] = json_loads(rn->cases[i], 0, NULL);
        const char *st = json_string_value(json_object_get(parsed[i], "stratum"));
        const char *src = json_string_value(json_object_get(parsed[i], "source"));
        if (src && !strcmp(src, "replay")) {
            json_t *c = json_object_get(strata, st ? st : "");
            json_object_set_new(strata, st ? st : "", json_integer(c ? json_integer_value(c) + 1 : 1));
        }
    }
    /* the strata's buckets, rarest first (ties by name) */
    size_t ns = json_object_size(strata), si = 0;
    const char **names = xcalloc(ns ? ns : 1, sizeof *names);
    const char *key;
    json_t *v;
    json_object_foreach(strata, key, v) names[si++] = key;
    for (size_t a = 0; a < ns; a++)
        for (size_t b = a + 1; b < ns; b++) {
            json_int_t ca = json_integer_value(json_object_get(strata, names[a]));
            json_int_t cb = json_integer_value(json_object_get(strata, names[b]));
            if (cb < ca || (cb == ca && strcmp(names[b], names[a]) < 0)) {
                const char *t = names[a];
                names[a] = names[b];
                names[b] = t;
            }
        }
    size_t *fill = xcalloc(3 + ns, sizeof *fill);
    for (size_t i = 0; i < n; i++) {
        json_t *c = parsed[i];
        const char *src = json_string_value(json_object_get(c, "source"));
        bool critical = false;
        size_t j;
        json_t *t;
        json_array_foreach(json_object_get(c, "tags"), j, t) critical |= json_is_string(t) && !strcmp(json_string_value(t), "critical");
        size_t bucket = 2;
        if (src && !strcmp(src, "failed"))
            bucket = 0;
        else if (critical)
            bucket = 1;
        else if (src && !strcmp(src, "replay")) {
            const char *st = json_string_value(json_object_get(c, "stratum"));
            for (size_t k = 0; k < ns; k++)
                if (!strcmp(names[k], st ? st : ""))
                    bucket = 3 + k;
        }
        rk[i].bucket = bucket;
        rk[i].pos = fill[bucket]++;
        rk[i].idx = i;
        rk[i].text = rn->cases[i];
    }
    qsort(rk, n, sizeof *rk, rank_cmp);
    for (size_t i = 0; i < n; i++)
        rn->cases[i] = rk[i].text;
    for (size_t i = 0; i < n; i++)
        json_decref(parsed[i]);
    free(fill);
    free(names);
    free(rk);
    free(parsed);
    json_decref(strata);
}

/* In the pool: parses the cases read, checks them and keeps them as text
 * (rn->start_rc and start_e on a user's error), and builds the write that
 * stores the run with its cases. The run is not linked yet: only this thread
 * touches it. */
static void build_cases(run *rn)
{
    json_t *const *names = rn->names;
    reg_error *e = &rn->start_e;
    int rc = 0;
    size_t i;
    json_t *c;
    json_array_foreach(rn->dataset_cases, i, c) {
        json_t *o = json_loads(json_string_value(c), 0, NULL);
        if (!o || !has_tag(o, rn->tags)) {
            json_decref(o);
            continue;
        }
        json_object_set_new(o, "source", json_string("dataset"));
        if ((rc = add_case(rn, o, names, e)))
            break;
    }
    json_array_foreach(rn->failed_cases, i, c) {
        if (rc)
            break;
        char id[200];
        snprintf(id, sizeof id, "trace:%s", json_string_value(json_object_get(c, "trace_id")));
        json_t *o = json_pack("{s:s, s:s, s:O, s:[s], s:O, s:O}", "id", id, "source", "failed", "variables",
                              json_object_get(c, "variables"), "tags", "failed", "trace_id",
                              json_object_get(c, "trace_id"), "reasons", json_object_get(c, "reasons"));
        rc = add_case(rn, o, names, e);
    }
    json_array_foreach(json_object_get(rn->spec, "cases"), i, c) {
        if (rc)
            break;
        json_t *o = json_deep_copy(c);
        if (!json_object_get(o, "tags"))
            json_object_set_new(o, "tags", json_array());
        if (!json_object_get(o, "source"))
            json_object_set_new(o, "source", json_string(json_object_get(c, "trace_id") ? "failed" : "inline"));
        rc = add_case(rn, o, names, e);
    }
    json_decref(rn->dataset_cases);
    json_decref(rn->failed_cases);
    rn->dataset_cases = rn->failed_cases = NULL;
    rn->start_rc = rc;
    if (rc || rn->ncases == 0)
        return;
    if (rn->early)
        order_cases(rn);
    /* record what the run used: the dataset version and case count */
    if (rn->dataset)
        json_object_set_new(rn->spec, "dataset_version", json_integer(rn->dataset_version));
    run_size(rn);
    char *spec = json_text(rn->spec, JSON_COMPACT);
    store_put_run(&rn->w, rn->id, rn->kind, rn->prompt, spec, "running", rn->created_ms);
    free(spec);
    for (i = 0; i < rn->ncases; i++)
        store_put_run_case(&rn->w, rn->id, (int64_t)i, rn->cases[i]);
}

static void load_cases_after(uv_work_t *w, int status)
{
    (void)status;
    run *rn = w->data;
    free(w);
    if (rn->err[0]) {
        fail_start(rn, 500, "store_error", "", rn->err);
        return;
    }
    if (rn->start_rc) {
        fail_start_e(rn, &rn->start_e);
        return;
    }
    if (rn->ncases == 0) {
        fail_start(rn, 400, "no_cases", rn->dataset ? "dataset" : "failed",
                   "the run has no cases: the dataset (with the tags given) is empty and no failed trace with "
                   "input.variables is in the window");
        return;
    }
    rn->w.done = on_run_stored;
    rn->w.data = rn;
    if (store_submit(rn->r->st, &rn->w) != 0) {
        store_write_clear(&rn->w);
        fail_start(rn, 503, "overloaded", "", "the store's write queue is full; retry later");
    }
}

static json_t *run_view(run *rn, const char *state);

static void on_run_stored(store_write *w)
{
    run *rn = w->data;
    int st = w->status;
    store_write_clear(w);
    if (st != 0) {
        fail_start(rn, 500, "store_error", "", "the run could not be stored");
        return;
    }
    runner *r = rn->r;
    json_t *budget = json_object_get(rn->spec, "budget");
    llm_run_budget(r->l, rn->id, json_number_value(json_object_get(budget, "calls")),
                   json_number_value(json_object_get(budget, "tokens")),
                   json_number_value(json_object_get(budget, "cost")), 0, 0, 0);
    run_link(rn);
    r->started++;
    log_info("runs", "run %s: %s versions %lld vs %d candidate(s), %zu cases, k=%d", rn->id, rn->prompt,
             (long long)rn->versions[0], rn->nv - 1, rn->ncases, rn->k);
    json_t *view = run_view(rn, "running");
    rn->started_cb(rn->id, view, NULL, rn->started_ud);
    json_decref(view);
    rn->started_cb = NULL;
    run_pump(rn);
}

int runner_start(runner *r, json_t *spec, const char *actor, runner_started cb, void *ud, reg_error *e)
{
    if (r->draining) {
        reg_fail(e, 503, "stopping", "", "the engine is stopping");
        return 503;
    }
    if (check_spec(r, spec, e))
        return e->status;
    char id[37];
    id_uuid7(id);
    json_t *copy = json_deep_copy(spec);
    run *rn = run_new(r, id, json_string_value(json_object_get(spec, "prompt")), copy);
    json_decref(copy);
    rn->actor = xstrdup(actor ? actor : "api");
    if (run_bind(rn, e)) {
        run_free(rn);
        return e->status;
    }
    const char *ds = json_string_value(json_object_get(spec, "dataset"));
    if (ds) {
        rn->dataset = xstrdup(ds);
        json_t *dv = json_object_get(spec, "dataset_version");
        rn->dataset_version = dv ? json_integer_value(dv)
                                 : json_integer_value(json_object_get(registry_dataset(r->reg, ds), "version"));
    }
    rn->failed_spec = json_incref(json_object_get(spec, "failed"));
    rn->tags = json_incref(json_object_get(spec, "tags"));
    rn->started_cb = cb;
    rn->started_ud = ud;
    for (int v = 0; v < rn->nv; v++)
        rn->names[v] = template_variables(rn->templates[v]);
    uv_work_t *w = xcalloc(1, sizeof *w);
    w->data = rn;
    uv_queue_work(r->loop, w, load_cases_work, load_cases_after);
    return 0;
}

/* ---- resuming ---- */

int runner_resume(runner *r, char *err, size_t errlen)
{
    json_t *ids;
    if (store_unfinished_runs(r->st, &ids, err, errlen)) {
        json_decref(ids);
        return -1;
    }
    json_t *snap = NULL;
    int rc = runner_resume_read(r->st, ids, &snap, err, errlen);
    json_decref(ids);
    if (rc == 0)
        rc = runner_resume_apply(r, snap);
    json_decref(snap);
    return rc;
}

int runner_resume_read(store *st, const json_t *ids, json_t **snap, char *err, size_t errlen)
{
    *snap = json_array();
    size_t i;
    json_t *idv;
    json_array_foreach(ids, i, idv) {
        const char *id = json_string_value(idv);
        json_t *row = NULL, *cases = NULL, *keys = NULL;
        if (store_get_run(st, id, &row, err, errlen) != 0 ||
            store_run_cases(st, id, STORE_CASE_TEXTS, &cases, err, errlen) ||
            store_run_result_keys(st, id, &keys, err, errlen)) {
            json_decref(row);
            json_decref(cases);
            json_decref(keys);
            return -1;
        }
        int64_t calls = 0, tokens = 0;
        double cost = 0;
        store_llm_totals(st, 0, id, &calls, &tokens, &cost, err, errlen);
        json_array_append_new(*snap, json_pack("{s:s, s:o, s:o, s:o, s:I, s:I, s:f}", "id", id, "row", row, "cases",
                                               cases, "keys", keys, "calls", (json_int_t)calls, "tokens",
                                               (json_int_t)tokens, "cost", cost));
    }
    return 0;
}

int runner_resume_apply(runner *r, const json_t *snap)
{
    size_t i;
    json_t *one;
    int n = 0;
    json_array_foreach(snap, i, one) {
        const char *id = json_string_value(json_object_get(one, "id"));
        bool running = false;
        for (run *x = r->runs; x; x = x->next)
            running |= !strcmp(x->id, id);
        if (running) /* already here (taken by this engine before it led) */
            continue;
        json_t *row = json_object_get(one, "row"), *cases = json_object_get(one, "cases"),
               *keys = json_object_get(one, "keys");
        json_t *spec = json_object_get(row, "spec");
        run *rn = run_new(r, id, json_string_value(json_object_get(row, "prompt")), spec);
        rn->actor = xstrdup("resume");
        rn->created_ms = json_integer_value(json_object_get(row, "created_ms"));
        rn->progress_ms = now_ms(); /* resumed: the time the engine was down is not the run's doing */
        rn->ncases = rn->cases_cap = json_array_size(cases);
        rn->cases = xcalloc(rn->ncases ? rn->ncases : 1, sizeof *rn->cases);
        for (size_t ci = 0; ci < rn->ncases; ci++) {
            json_t *c = json_loads(json_string_value(json_array_get(cases, ci)), 0, NULL);
            if (!c) /* the store only holds what a run kept: never, but not a crash */
                c = json_object();
            rn->cases[ci] = case_keep(c);
            json_decref(c);
        }
        reg_error e;
        run_size(rn);
        bool bound = run_bind(rn, &e) == 0;
        size_t j;
        json_t *k;
        json_array_foreach(keys, j, k) {
            size_t ci = (size_t)json_integer_value(json_array_get(k, 0));
            int64_t ver = json_integer_value(json_array_get(k, 1));
            int s = (int)json_integer_value(json_array_get(k, 2));
            int vi = -1;
            for (int x = 0; x < rn->nv; x++)
                if (rn->versions[x] == ver)
                    vi = x;
            if (ci >= rn->ncases || vi < 0 || s >= rn->k)
                continue;
            size_t job_i = (ci * (size_t)rn->nv + (size_t)vi) * (size_t)rn->k + (size_t)s;
            if (rn->done[job_i])
                continue;
            rn->done[job_i] = 1;
            rn->completed++;
            const char *st = json_string_value(json_array_get(k, 3));
            int slot = !strcmp(st, "pass") ? 0 : !strcmp(st, "fail") ? 1 : 2;
            rn->agg[(ci * (size_t)rn->nv + (size_t)vi) * 3 + (size_t)slot]++;
            rn->cached += json_is_true(json_array_get(k, 4));
        }
        int64_t calls = json_integer_value(json_object_get(one, "calls")),
                tokens = json_integer_value(json_object_get(one, "tokens"));
        double cost = json_number_value(json_object_get(one, "cost"));
        json_t *budget = json_object_get(rn->spec, "budget");
        llm_run_budget(r->l, id, json_number_value(json_object_get(budget, "calls")),
                       json_number_value(json_object_get(budget, "tokens")),
                       json_number_value(json_object_get(budget, "cost")), (double)calls, (double)tokens, cost);
        rn->calls = calls;
        rn->cost = cost;
        run_link(rn);
        n++;
        log_info("runs", "run %s: resumed, %zu of %zu results already stored", id, rn->completed, rn->njobs);
        if (!bound) {
            rn->stopping = true;
            rn->stop_reason = xstrdup(e.message);
        }
    }
    for (run *rn = r->runs; rn; rn = rn->next)
        run_pump(rn);
    return n;
}

/* ---- jobs ---- */

static void job_free(job *jb)
{
    free(jb->messages);
    free(jb->result);
    json_decref(jb->case_tree);
    free(jb->error);
    json_decref(jb->c);
    json_decref(jb->msgs);
    json_decref(jb->res);
    buf_free(&jb->verdicts);
    store_write_clear(&jb->w);
    free(jb);
}

static void job_end(job *jb)
{
    run *rn = jb->rn;
    rn->inflight--;
    job_free(jb);
    run_pump(rn);
}

static void run_stop(run *rn, const char *why)
{
    if (rn->stopping)
        return;
    rn->stopping = true;
    rn->stop_reason = xstrdup(why);
    log_warn("runs", "run %s: stopping: %s", rn->id, why);
}

/* ---- early stopping: only ever a rejection ---- */

static void stop_next(run *rn);

/* The accept policy's stop_early(report) answered for candidate stop_vi:
 * {stop, verdict, reasons}. A verdict better than regressed or
 * inconclusive is not a stop's to give: it is read as inconclusive. */
static void on_stop(const char *result, const char *error, void *ud)
{
    run *rn = ud;
    catalog_release(rn->stop_pol);
    rn->stop_pol = NULL;
    json_t *res = result ? json_loads(result, JSON_DECODE_ANY, NULL) : NULL;
    int vi = rn->stop_vi;
    if (!res && error) {
        /* a policy without stop_early, or one that fails: no early stopping in this run */
        if (!strstr(error, "stop_early"))
            log_warn("runs", "run %s: the accept policy's stop_early failed: %s; no early stopping in this run", rn->id,
                     error);
        rn->early = false;
    } else if (json_is_true(json_object_get(res, "stop"))) {
        const char *v = json_string_value(json_object_get(res, "verdict"));
        json_t *reasons = json_object_get(res, "reasons");
        rn->stopped[vi] = true;
        rn->stop_entry[vi] = json_pack("{s:I, s:s, s:O, s:b}", "version", (json_int_t)rn->versions[vi], "verdict",
                                       v && !strcmp(v, "regressed") ? "regressed" : "inconclusive", "reasons",
                                       json_is_array(reasons) ? reasons : json_array(), "stopped_early", 1);
        if (!json_is_array(reasons))
            json_decref(json_object_get(rn->stop_entry[vi], "reasons"));
        log_info("runs", "run %s: v%lld stopped early", rn->id, (long long)rn->versions[vi]);
    }
    json_decref(res);
    rn->stop_vi++;
    stop_next(rn);
}

static void stop_next(run *rn)
{
    while (rn->early && rn->stop_vi < rn->nv && rn->stopped[rn->stop_vi])
        rn->stop_vi++;
    if (!rn->early || rn->stop_vi >= rn->nv || rn->r->draining) {
        rn->stop_pending = false;
        run_pump(rn);
        check_drained(rn->r);
        return;
    }
    char name[200];
    snprintf(name, sizeof name, "policies/%s", rn->policy);
    rn->stop_pol = catalog_get(rn->r->cat, name);
    if (!rn->stop_pol) {
        rn->early = false;
        stop_next(rn);
        return;
    }
    char *in = policy_input(rn, rn->stop_vi);
    policy_call(rn->r->vm, rn->stop_pol->ev.ref, rn->policy, "stop_early", rn->r->policy_budget_ms, in, on_stop, rn);
    free(in);
}

/* After a result: once about a case (or 1/50 of the run) more is done, asks
 * whether a candidate still running can no longer be improved. */
static void check_stop(run *rn)
{
    if (!rn->early || rn->stop_pending || rn->stopping || rn->finishing || rn->r->draining ||
        rn->next_job >= rn->njobs)
        return;
    size_t per_case = (size_t)rn->k * (size_t)rn->nv;
    size_t every = rn->njobs / 50 > per_case ? rn->njobs / 50 : per_case;
    if (rn->completed - rn->last_check < every)
        return;
    rn->last_check = rn->completed;
    rn->stop_pending = true;
    rn->stop_vi = 1;
    stop_next(rn);
}

static void on_result_written(store_write *w)
{
    job *jb = w->data;
    run *rn = jb->rn;
    rn->writes--;
    if (w->status != 0) {
        rn->store_failed = true;
        run_stop(rn, "a result could not be stored");
    } else {
        rn->done[jb->j] = 1;
        rn->completed++;
        rn->progress_ms = now_ms();
    }
    job_free(jb);
    check_stop(rn);
    run_pump(rn);
}

static void job_record(job *jb)
{
    run *rn = jb->rn;
    runner *r = rn->r;
    const char *status = jb->error || jb->req_error ? "error" : jb->req_fail ? "fail" : "pass";
    int slot = status[0] == 'p' ? 0 : status[0] == 'f' ? 1 : 2;
    rn->agg[(jb->ci * (size_t)rn->nv + (size_t)jb->vi) * 3 + (size_t)slot]++;
    r->results++;
    if (slot == 2)
        r->errors++;
    json_t *res = jb->res;
    json_t *usage = json_object_get(res, "usage");
    const char *text = json_string_value(json_object_get(res, "text"));
    char *output = NULL;
    if (res && !text && json_array_size(json_object_get(res, "tool_calls")))
        output = json_text(json_object_get(res, "tool_calls"), JSON_COMPACT);
    if (jb->verdicts.len)
        buf_puts(&jb->verdicts, "]");
    store_run_result rr = {
        .run_id = rn->id,
        .case_idx = (int64_t)jb->ci,
        .version = rn->versions[jb->vi],
        .sample = jb->sample,
        .status = status,
        .output = output ? output : text ? text : NULL,
        .error = jb->error,
        .verdicts = jb->verdicts.len ? jb->verdicts.data : NULL,
        .input_tokens = json_integer_value(json_object_get(usage, "input_tokens")),
        .output_tokens = json_integer_value(json_object_get(usage, "output_tokens")),
        .cost = jb->cached ? 0 : json_number_value(json_object_get(res, "cost")),
        .latency_ms = json_number_value(json_object_get(res, "latency_ms")),
        .cached = jb->cached,
    };
    if (!jb->cached && res) {
        rn->in_tok += rr.input_tokens;
        rn->out_tok += rr.output_tokens;
    }
    store_put_run_result(&jb->w, &rr);
    if (res && !jb->cached && rn->use_cache)
        store_put_cache(&jb->w, jb->key, jb->result, now_ms());
    free(output);
    jb->w.done = on_result_written;
    jb->w.data = jb;
    if (jb->judging)
        rn->judging--;
    else
        rn->inflight--;
    if (store_submit(r->st, &jb->w) != 0) {
        run_stop(rn, "the store's write queue is full");
        job_free(jb);
        run_pump(rn);
        return;
    }
    rn->writes++;
    run_pump(rn); /* the slot is free now: the write needs none */
}

static void next_eval(job *jb);

static void gen_str(yajl_gen g, const char *k)
{
    yajl_gen_string(g, (const unsigned char *)k, strlen(k));
}

/* One evaluator's verdict, appended to the job's list as JSON text. A
 * jansson object per verdict, dumped at the end, cost 6 % of a run's loop
 * (callgrind, two evaluators). */
static void verdict_text(buf_t *b, const char *name, bool required, const char *status, const eval_result *res)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    yajl_gen_map_open(g);
    gen_str(g, "evaluator");
    gen_str(g, name);
    gen_str(g, "required");
    yajl_gen_bool(g, required);
    gen_str(g, "status");
    gen_str(g, status);
    gen_str(g, "pass");
    yajl_gen_bool(g, res->pass);
    gen_str(g, "score");
    char t[40];
    size_t n = jtree_real_text(res->score, t);
    if (n)
        yajl_gen_number(g, t, n);
    else
        yajl_gen_null(g);
    gen_str(g, "reason");
    gen_str(g, res->reason); /* valid UTF-8: evaluator.c cleans it */
    yajl_gen_map_close(g);
    const unsigned char *out;
    size_t len;
    yajl_gen_get_buf(g, &out, &len);
    if (b->len > 1)
        buf_puts(b, ",");
    buf_append(b, out, len);
    yajl_gen_free(g);
}

static void on_eval_done(const eval_result *res, void *ud)
{
    job *jb = ud;
    run *rn = jb->rn;
    const config_attachment *a = &rn->atts[jb->att];
    const char *st = res->status == SCRIPT_OK ? "ok" : res->status == SCRIPT_KILLED ? "killed"
                                                     : res->status == SCRIPT_NOMEM ? "out_of_memory" : "error";
    verdict_text(&jb->verdicts, a->name, a->required, st, res);
    if (a->required) {
        if (res->status != SCRIPT_OK)
            jb->req_error = true;
        else if (!res->pass)
            jb->req_fail = true;
    }
    jb->att++;
    next_eval(jb);
}

typedef struct {
    job *jb;
    loaded_evaluator *le;
} eval_hold;

static void on_eval_held(const eval_result *res, void *ud)
{
    eval_hold *h = ud;
    job *jb = h->jb;
    catalog_release(h->le);
    free(h);
    on_eval_done(res, jb);
}

static void next_eval(job *jb)
{
    run *rn = jb->rn;
    if (jb->att >= rn->natts) {
        job_record(jb);
        return;
    }
    const config_attachment *a = &rn->atts[jb->att];
    loaded_evaluator *le = catalog_get(rn->r->cat, a->evaluator);
    if (!le) {
        char why[300];
        snprintf(why, sizeof why, "evaluator %s is not loaded", a->evaluator);
        eval_result res = {SCRIPT_ERROR, false, 0, why, 0};
        on_eval_done(&res, jb);
        return;
    }
    eval_hold *h = xcalloc(1, sizeof *h);
    h->jb = jb;
    h->le = le;
    evaluator_run_tree(rn->r->vm, &le->ev, rn->r->evaluator_budget_ms, jb->case_tree, a->options_json, on_eval_held,
                       h);
}

/* What an evaluator judges in a run: the same shape as online evaluation
 * (docs/evaluators.md#the-case): input = {variables, messages}, output,
 * expected, and trace = the call as a trace (the run's own call: its latency,
 * usage and tool calls; the source trace's metadata for cases taken from
 * traces), plus the run's id, source, tags, group, stratum, version, sample. */
static json_t *run_case_tree(run *rn, json_t *c, json_t *res, json_t *msgs, int vi, int sample)
{
    json_t *output = json_object_get(res, "text");
    if (!output || json_is_null(output))
        output = json_string("");
    else
        json_incref(output);
    json_t *input = json_pack("{s:O, s:O}", "variables", json_object_get(c, "variables"), "messages", msgs);
    json_t *trace = json_pack("{s:O, s:O, s:[]}", "input", input, "output", output, "feedback");
    if (json_is_string(json_object_get(c, "trace_id")))
        json_object_set(trace, "id", json_object_get(c, "trace_id"));
    static const char *const from_call[] = {"latency_ms", "usage", "model", "finish_reason", NULL};
    for (const char *const *k = from_call; *k; k++)
        if (json_object_get(res, *k))
            json_object_set(trace, *k, json_object_get(res, *k));
    json_object_set(trace, "tool_calls",
                    json_is_array(json_object_get(res, "tool_calls")) ? json_object_get(res, "tool_calls")
                                                                       : json_array());
    if (!json_is_array(json_object_get(res, "tool_calls")))
        json_decref(json_object_get(trace, "tool_calls"));
    json_object_set(trace, "metadata",
                    json_is_object(json_object_get(c, "metadata")) ? json_object_get(c, "metadata") : json_object());
    if (!json_is_object(json_object_get(c, "metadata")))
        json_decref(json_object_get(trace, "metadata"));
    json_t *cs = json_pack("{s:O*, s:o, s:o, s:o, s:O*, s:s, s:I, s:I}", "id", json_object_get(c, "id"), "input", input,
                           "output", output, "trace", trace, "tags", json_object_get(c, "tags"), "source",
                           json_string_value(json_object_get(c, "source")), "version", (json_int_t)rn->versions[vi],
                           "sample", (json_int_t)sample);
    static const char *const from_case[] = {"expected", "group", "stratum", NULL};
    for (const char *const *k = from_case; *k; k++)
        if (json_object_get(c, *k))
            json_object_set(cs, *k, json_object_get(c, *k));
    return cs;
}

/* The model's reply is in jb->res: judge it. The model-call slot is
 * freed first, so the next call goes out before this job's evaluators run. */
static void job_judge(job *jb)
{
    run *rn = jb->rn;
    rn->inflight--;
    rn->judging++;
    jb->judging = true;
    run_pump(rn);
    jb->case_tree = run_case_tree(rn, jb->c, jb->res, jb->msgs, jb->vi, jb->sample);
    /* each evaluator gets it as Lua tables, with no text between */
    buf_puts(&jb->verdicts, "[");
    next_eval(jb);
}

static void on_llm_done(llm_call *call, json_t *result, const char *err_kind, const char *err, void *ud)
{
    (void)call;
    job *jb = ud;
    run *rn = jb->rn;
    rn->r->llm_calls++;
    if (result) {
        rn->calls++;
        jb->res = json_incref(result);
        rn->cost += json_number_value(json_object_get(jb->res, "cost"));
        if (rn->use_cache)
            jb->result = jtree_dump(result);
        job_judge(jb);
        return;
    }
    if (!strcmp(err_kind, "lease")) {
        /* nothing was sent: the job stays undone and the run waits for this engine's lease */
        rn->suspended = true;
        job_end(jb);
        return;
    }
    if (!strcmp(err_kind, "budget") || !strcmp(err_kind, "cancelled")) {
        /* not a result: the job stays undone and the run ends incomplete */
        run_stop(rn, err);
        job_end(jb);
        return;
    }
    rn->calls++;
    char msg[700];
    snprintf(msg, sizeof msg, "%s: %s", err_kind, err);
    jb->error = xstrdup(msg);
    job_record(jb);
}

/* Whether this engine's lease has held since the run started here (docs/scale-out.md, "Leases"). */
static bool lease_holds(run *rn)
{
    return store_lease_fresh(rn->r->st) && store_lease_generation(rn->r->st) == rn->lease_gen;
}

static void job_call(job *jb)
{
    run *rn = jb->rn;
    if (!lease_holds(rn)) { /* the job stays undone: whoever owns the run then does it */
        rn->suspended = true;
        job_end(jb);
        return;
    }
    json_t *req = json_copy(rn->models[jb->vi]); /* shallow: only "messages" is added */
    json_object_set(req, "messages", jb->msgs);
    llm_caller who = {.kind = "run", .name = rn->prompt, .run_id = rn->id};
    llm_chat_json(rn->r->l, req, &who, on_llm_done, jb);
    json_decref(req);
}

static void cache_work(uv_work_t *w)
{
    job *jb = w->data;
    char err[256];
    char *key = jb->key;
    store_cache_get(jb->rn->r->st, &key, 1, &jb->result, err, sizeof err);
}

static void cache_after(uv_work_t *w, int status)
{
    (void)status;
    job *jb = w->data;
    char perr[120];
    if (jb->result)
        jb->res = jtree_parse(jb->result, strlen(jb->result), perr, sizeof perr);
    if (jb->result && !json_is_object(jb->res)) { /* (a macro: its argument is read twice) */
        json_decref(jb->res);
        jb->res = NULL;
        free(jb->result); /* an unreadable cache entry: call the model again */
        jb->result = NULL;
    }
    if (jb->res) {
        jb->cached = true;
        jb->rn->cached++;
        jb->rn->r->cache_hits++;
        job_judge(jb);
    } else if (jb->rn->stopping) {
        job_end(jb);
    } else {
        job_call(jb);
    }
}

static void job_start(run *rn, size_t j)
{
    job *jb = xcalloc(1, sizeof *jb);
    jb->rn = rn;
    jb->j = j;
    jb->sample = (int)(j % (size_t)rn->k);
    jb->vi = (int)((j / (size_t)rn->k) % (size_t)rn->nv);
    jb->ci = j / ((size_t)rn->k * (size_t)rn->nv);
    rn->inflight++;
    jb->c = case_at(rn, jb->ci);
    json_t *msgs = NULL;
    reg_error e;
    if (template_render(rn->templates[jb->vi], json_object_get(jb->c, "variables"), &msgs, &e)) {
        jb->error = xstrdup(e.message);
        job_record(jb);
        return;
    }
    jb->msgs = msgs;
    if (rn->use_cache) {
        jb->messages = jtree_dump(msgs); /* byte for byte json_dumps: cache keys stay */
        const char *mj = rn->model_json[jb->vi];
        sha256_hex(jb->messages, strlen(jb->messages), mj, strlen(mj), jb->sample, jb->key);
        jb->work.data = jb;
        uv_queue_work(rn->r->loop, &jb->work, cache_work, cache_after);
    } else {
        job_call(jb);
    }
}

/* ---- finishing ---- */

static void wilson(double passed, double n, double *lo, double *hi)
{
    if (n <= 0) {
        *lo = 0;
        *hi = 1;
        return;
    }
    const double z = 1.959964;
    double p = passed / n, d = 1 + z * z / n;
    double centre = (p + z * z / (2 * n)) / d;
    double half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d;
    *lo = centre - half < 0 ? 0 : centre - half;
    *hi = centre + half > 1 ? 1 : centre + half;
}

static const uint16_t *agg_of(run *rn, size_t ci, int vi)
{
    return &rn->agg[(ci * (size_t)rn->nv + (size_t)vi) * 3];
}

/* A case passes for a version when most of its samples pass and none erred. */
static bool case_passes(run *rn, size_t ci, int vi)
{
    const uint16_t *a = agg_of(rn, ci, vi);
    return a[2] == 0 && 2 * (int)a[0] > rn->k;
}

static json_t *outcome(run *rn, size_t ci, int vi)
{
    const uint16_t *a = agg_of(rn, ci, vi);
    return json_pack("{s:i, s:i, s:i, s:i}", "passed", a[0], "failed", a[1], "errors", a[2], "samples",
                     a[0] + a[1] + a[2]);
}

static void add_tag_stats(json_t *by_tag, const char *tag, bool pass, const uint16_t *a)
{
    json_t *t = json_object_get(by_tag, tag);
    if (!t) {
        t = json_pack("{s:i, s:i, s:i, s:i, s:i}", "cases", 0, "cases_passed", 0, "samples", 0, "passed", 0, "errors",
                      0);
        json_object_set_new(by_tag, tag, t);
    }
    json_object_set_new(t, "cases", json_integer(json_integer_value(json_object_get(t, "cases")) + 1));
    json_object_set_new(t, "cases_passed", json_integer(json_integer_value(json_object_get(t, "cases_passed")) + pass));
    json_object_set_new(t, "samples",
                        json_integer(json_integer_value(json_object_get(t, "samples")) + a[0] + a[1] + a[2]));
    json_object_set_new(t, "passed", json_integer(json_integer_value(json_object_get(t, "passed")) + a[0]));
    json_object_set_new(t, "errors", json_integer(json_integer_value(json_object_get(t, "errors")) + a[2]));
}

static void finish_rates(json_t *o)
{
    double cases = (double)json_integer_value(json_object_get(o, "cases"));
    double cp = (double)json_integer_value(json_object_get(o, "cases_passed"));
    double samples = (double)json_integer_value(json_object_get(o, "samples"));
    double passed = (double)json_integer_value(json_object_get(o, "passed"));
    double lo, hi;
    wilson(cp, cases, &lo, &hi);
    json_object_set_new(o, "pass_rate", json_real(cases > 0 ? cp / cases : 0));
    json_object_set_new(o, "ci95", json_pack("[f, f]", lo, hi));
    json_object_set_new(o, "sample_pass_rate", json_real(samples > 0 ? passed / samples : 0));
}

/* The report of the numbers (verdicts come after). */
static json_t *build_report(run *rn, bool complete)
{
    /* per version: cases, cases passed, samples, passed, errors; and by tag */
    int64_t tot[MAX_VERSIONS][5] = {{0}};
    json_t *by_tag[MAX_VERSIONS];
    for (int vi = 0; vi < rn->nv; vi++)
        by_tag[vi] = json_object();
    for (size_t ci = 0; ci < rn->ncases; ci++) {
        json_t *tags = case_tags(rn, ci);
        for (int vi = 0; vi < rn->nv; vi++) {
            const uint16_t *a = agg_of(rn, ci, vi);
            bool pass = case_passes(rn, ci, vi);
            tot[vi][0]++;
            tot[vi][1] += pass;
            tot[vi][2] += a[0] + a[1] + a[2];
            tot[vi][3] += a[0];
            tot[vi][4] += a[2];
            size_t i;
            json_t *t;
            json_array_foreach(tags, i, t) add_tag_stats(by_tag[vi], json_string_value(t), pass, a);
        }
        json_decref(tags);
    }
    json_t *versions = json_array();
    for (int vi = 0; vi < rn->nv; vi++) {
        json_t *o = json_pack("{s:I, s:s, s:I, s:I, s:I, s:I, s:I, s:o}", "version", (json_int_t)rn->versions[vi],
                              "role", vi ? "candidate" : "baseline", "cases", (json_int_t)tot[vi][0], "cases_passed",
                              (json_int_t)tot[vi][1], "samples", (json_int_t)tot[vi][2], "passed",
                              (json_int_t)tot[vi][3], "errors", (json_int_t)tot[vi][4], "by_tag", by_tag[vi]);
        finish_rates(o);
        const char *tag;
        json_t *t;
        json_object_foreach(by_tag[vi], tag, t) finish_rates(t);
        json_array_append_new(versions, o);
    }
    json_t *changed = json_array();
    size_t nchanged = 0;
    for (size_t ci = 0; ci < rn->ncases; ci++) {
        bool base = case_passes(rn, ci, 0), differs = false;
        for (int vi = 1; vi < rn->nv; vi++)
            differs |= case_passes(rn, ci, vi) != base || agg_of(rn, ci, vi)[2] > 0;
        differs |= agg_of(rn, ci, 0)[2] > 0;
        if (!differs)
            continue;
        nchanged++;
        if (json_array_size(changed) >= MAX_CHANGED)
            continue;
        json_t *c = case_at(rn, ci);
        json_t *res = json_object();
        for (int vi = 0; vi < rn->nv; vi++) {
            char k[24];
            snprintf(k, sizeof k, "%lld", (long long)rn->versions[vi]);
            json_object_set_new(res, k, outcome(rn, ci, vi));
        }
        json_array_append_new(changed, json_pack("{s:I, s:O, s:O, s:O, s:o}", "case", (json_int_t)ci, "id",
                                                 json_object_get(c, "id"), "source", json_object_get(c, "source"),
                                                 "tags", json_object_get(c, "tags"), "results", res));
        json_decref(c);
    }
    json_t *cand = json_array();
    for (int vi = 1; vi < rn->nv; vi++)
        json_array_append_new(cand, json_integer(rn->versions[vi]));
    json_t *ds = rn->dataset || json_object_get(rn->spec, "dataset")
                     ? json_pack("{s:O, s:O}", "name", json_object_get(rn->spec, "dataset"), "version",
                                 json_object_get(rn->spec, "dataset_version"))
                     : json_null();
    return json_pack("{s:s, s:s, s:I, s:o, s:i, s:b, s:I, s:I, s:o, s:o, s:I, s:o, s:{s:I, s:I, s:I, s:I, s:f}}", "run",
                     rn->id, "prompt", rn->prompt, "baseline", (json_int_t)rn->versions[0], "candidates", cand, "k",
                     rn->k, "complete", complete, "cases", (json_int_t)rn->ncases, "jobs", (json_int_t)rn->njobs,
                     "dataset", ds, "versions", versions, "changed_cases", (json_int_t)nchanged, "changed", changed,
                     "usage", "calls", (json_int_t)rn->calls, "cached", (json_int_t)rn->cached, "input_tokens",
                     (json_int_t)rn->in_tok, "output_tokens", (json_int_t)rn->out_tok, "cost", rn->cost);
}

/* The policy's input for candidate vi: every case with both outcomes. Written
 * case by case, so the run never holds a tree of every case. */
static void buf_outcome(buf_t *b, run *rn, size_t ci, int vi)
{
    const uint16_t *a = agg_of(rn, ci, vi);
    buf_printf(b, "{\"passed\":%d,\"failed\":%d,\"errors\":%d,\"samples\":%d}", a[0], a[1], a[2],
               a[0] + a[1] + a[2]);
}

/* The policy's input: the run, and per case its id, source, tags and both
 * versions' outcomes (written as text: a run can have 200,000 cases). */
static char *policy_input(run *rn, int vi)
{
    json_t *opts = json_object_get(rn->spec, "policy_options");
    char key[24];
    snprintf(key, sizeof key, "%lld", (long long)rn->versions[vi]);
    json_t *facts = json_object_get(json_object_get(rn->spec, "candidate_facts"), key);
    json_t *in = json_pack("{s:s, s:s, s:s, s:I, s:I, s:i, s:b, s:O, s:O}", "run", rn->id, "kind", rn->kind, "prompt",
                           rn->prompt, "baseline", (json_int_t)rn->versions[0], "candidate",
                           (json_int_t)rn->versions[vi], "k", rn->k, "complete",
                           json_is_true(json_object_get(rn->report, "complete")), "options",
                           opts ? opts : json_object(), "facts", facts ? facts : json_object());
    if (!opts)
        json_decref(json_object_get(in, "options"));
    if (!facts)
        json_decref(json_object_get(in, "facts"));
    buf_t b;
    buf_init(&b);
    jtree_dump_buf(&b, in);
    json_decref(in);
    b.len--; /* its closing brace */
    buf_puts(&b, ",\"cases\":[");
    for (size_t ci = 0; ci < rn->ncases; ci++) {
        buf_puts(&b, ci ? ",{" : "{");
        buf_puts(&b, case_meta(rn, ci));
        buf_puts(&b, ",\"baseline\":");
        buf_outcome(&b, rn, ci, 0);
        buf_puts(&b, ",\"candidate\":");
        buf_outcome(&b, rn, ci, vi);
        buf_puts(&b, "}");
    }
    buf_puts(&b, "]}");
    return buf_steal(&b);
}

/* Bytes a candidate changes: per message, what is left of both texts
 * once their common start and end are taken off. */
static size_t diff_bytes(json_t *a, json_t *b)
{
    size_t n = 0, na = json_array_size(a), nb = json_array_size(b);
    for (size_t i = 0; i < na || i < nb; i++) {
        const char *x = json_string_value(json_object_get(json_array_get(a, i), "content"));
        const char *y = json_string_value(json_object_get(json_array_get(b, i), "content"));
        size_t lx = x ? strlen(x) : 0, ly = y ? strlen(y) : 0, pre = 0, suf = 0;
        while (pre < lx && pre < ly && x[pre] == y[pre])
            pre++;
        while (suf < lx - pre && suf < ly - pre && x[lx - 1 - suf] == y[ly - 1 - suf])
            suf++;
        n += (lx - pre - suf) + (ly - pre - suf);
    }
    return n;
}

static double stat_of(json_t *v, const char *k)
{
    json_t *x = json_object_get(json_object_get(v, "stats"), k);
    return json_is_number(x) ? json_number_value(x) : 0;
}

/* Orders two improved candidates by the evidence, never by the order the
 * optimizer listed them: not held before held, then the gain on the cases
 * to fix, then the golden margin, then the smaller change, then the lower
 * version. Returns < 0 when a comes first; why says what decided. */
static int rank(run *rn, json_t *a, json_t *b, char *why, size_t whylen)
{
    bool ha = json_is_string(json_object_get(a, "hold")), hb = json_is_string(json_object_get(b, "hold"));
    if (ha != hb) {
        snprintf(why, whylen, "it is not held for approval");
        return ha ? 1 : -1;
    }
    double ga = stat_of(a, "gain"), gb = stat_of(b, "gain");
    if (ga != gb) {
        snprintf(why, whylen, "gain on the cases to fix %+.3g against %+.3g", ga, gb);
        return ga > gb ? -1 : 1;
    }
    double ma = stat_of(a, "margin"), mb = stat_of(b, "margin");
    if (ma != mb) {
        snprintf(why, whylen, "golden margin %+.3g against %+.3g (equal gain)", ma, mb);
        return ma > mb ? -1 : 1;
    }
    int ia = (int)json_integer_value(json_object_get(a, "index")), ib = (int)json_integer_value(json_object_get(b, "index"));
    size_t da = diff_bytes(rn->templates[0], rn->templates[ia]), db = diff_bytes(rn->templates[0], rn->templates[ib]);
    if (da != db) {
        snprintf(why, whylen, "a smaller change (%zu bytes against %zu; equal gain and margin)", da, db);
        return da < db ? -1 : 1;
    }
    snprintf(why, whylen, "the lower version (equal gain, margin and change size)");
    return json_integer_value(json_object_get(a, "version")) < json_integer_value(json_object_get(b, "version")) ? -1
                                                                                                                 : 1;
}

/* The winner: the best improved candidate by rank(), with the reason it
 * beat the runner-up. */
static void choose_winner(run *rn)
{
    json_t *best = NULL, *second = NULL;
    size_t i;
    json_t *v;
    char why[300] = "";
    json_array_foreach(rn->verdicts, i, v) {
        if (strcmp(json_string_value(json_object_get(v, "verdict")), "improved"))
            continue;
        json_object_set_new(v, "index", json_integer((json_int_t)i + 1));
        if (!best || rank(rn, v, best, why, sizeof why) < 0) {
            second = best;
            best = v;
        } else if (!second || rank(rn, v, second, why, sizeof why) < 0) {
            second = v;
        }
    }
    json_object_set_new(rn->report, "winner", best ? json_incref(json_object_get(best, "version")) : json_null());
    if (best && json_is_string(json_object_get(best, "hold")))
        json_object_set(rn->report, "hold", json_object_get(best, "hold"));
    if (best && second) {
        rank(rn, best, second, why, sizeof why);
        json_object_set_new(rn->report, "winner_reason",
                            json_sprintf("v%lld over the runner-up v%lld: %s",
                                         (long long)json_integer_value(json_object_get(best, "version")),
                                         (long long)json_integer_value(json_object_get(second, "version")), why));
    } else if (best) {
        json_object_set_new(rn->report, "winner_reason",
                            json_sprintf("v%lld is the only improved candidate",
                                         (long long)json_integer_value(json_object_get(best, "version"))));
    }
    json_array_foreach(rn->verdicts, i, v) json_object_del(v, "index");
}

static void on_run_finished(store_write *w);

static void run_store_final(run *rn, const char *state, const char *verdict, const char *error)
{
    json_object_set_new(rn->report, "verdicts", json_incref(rn->verdicts));
    json_object_set_new(rn->report, "verdict", json_string(verdict));
    choose_winner(rn);
    char *report = json_dumps(rn->report, JSON_COMPACT);
    store_write_clear(&rn->w);
    store_finish_run(&rn->w, rn->id, state, verdict, report, error, now_ms());
    free(report);
    rn->w.done = on_run_finished;
    rn->w.data = rn;
    json_object_set_new(rn->report, "state", json_string(state));
    if (store_submit(rn->r->st, &rn->w) != 0) {
        /* stays 'running' in the store: the next start finishes it */
        log_error("runs", "run %s: its end could not be stored (write queue full)", rn->id);
        store_write_clear(&rn->w);
        run_unlink(rn);
        run_free(rn);
    }
}

/* The policy's verdict in the gate's words; "accept" and "reject", the
 * words of earlier policies, mean "improved" and "regressed". NULL when it
 * is none of them. */
static const char *verdict_name(const char *v)
{
    static const char *const names[] = {"improved", "no_regression", "regressed", "inconclusive", NULL};
    if (!v)
        return NULL;
    if (!strcmp(v, "accept"))
        return "improved";
    if (!strcmp(v, "reject"))
        return "regressed";
    for (const char *const *n = names; *n; n++)
        if (!strcmp(v, *n))
            return *n;
    return NULL;
}

static void policy_next(run *rn);

static void on_policy(const char *result, const char *error, void *ud)
{
    run *rn = ud;
    catalog_release(rn->pol);
    rn->pol = NULL;
    int64_t version = rn->versions[rn->pol_vi];
    json_t *res = result ? json_loads(result, JSON_DECODE_ANY, NULL) : NULL;
    const char *verdict = verdict_name(json_string_value(json_object_get(res, "verdict")));
    json_t *reasons = json_object_get(res, "reasons");
    json_t *entry;
    if (!verdict) {
        char why[900];
        snprintf(why, sizeof why, "%s", error ? error : "the policy must return {verdict = \"improved\"|"
                                                        "\"no_regression\"|\"regressed\"|\"inconclusive\", "
                                                        "reasons = {...}}");
        entry = json_pack("{s:I, s:s, s:[s]}", "version", (json_int_t)version, "verdict", "inconclusive", "reasons",
                          why);
    } else {
        entry = json_pack("{s:I, s:s, s:O}", "version", (json_int_t)version, "verdict", verdict, "reasons",
                          json_is_array(reasons) ? reasons : json_array());
        if (!json_is_array(reasons))
            json_decref(json_object_get(entry, "reasons"));
        if (json_object_get(res, "stats"))
            json_object_set(entry, "stats", json_object_get(res, "stats"));
        if (json_is_string(json_object_get(res, "hold")))
            json_object_set(entry, "hold", json_object_get(res, "hold"));
        /* incomplete data is never shown better or harmless, whatever the policy says */
        int64_t errors = json_integer_value(json_object_get(json_array_get(json_object_get(rn->report, "versions"), 0),
                                                            "errors")) +
                         json_integer_value(json_object_get(
                             json_array_get(json_object_get(rn->report, "versions"), (size_t)rn->pol_vi), "errors"));
        if ((!strcmp(verdict, "improved") || !strcmp(verdict, "no_regression")) && errors > 0) {
            json_object_set_new(entry, "verdict", json_string("inconclusive"));
            json_array_append_new(json_object_get(entry, "reasons"),
                                  json_sprintf("the engine overrode '%s': %lld samples errored", verdict,
                                               (long long)errors));
        }
    }
    json_decref(res);
    json_array_append_new(rn->verdicts, entry);
    rn->pol_vi++;
    policy_next(rn);
}

static void policy_next(run *rn)
{
    if (rn->pol_vi >= rn->nv) {
        /* the run's verdict: what its best candidate showed */
        bool improved = false, no_regression = false, all_regressed = true;
        size_t i;
        json_t *v;
        json_array_foreach(rn->verdicts, i, v) {
            const char *s = json_string_value(json_object_get(v, "verdict"));
            improved |= !strcmp(s, "improved");
            no_regression |= !strcmp(s, "no_regression");
            all_regressed &= !strcmp(s, "regressed");
        }
        run_store_final(rn, "finished",
                        improved        ? "improved"
                        : no_regression ? "no_regression"
                        : all_regressed ? "regressed"
                                        : "inconclusive",
                        NULL);
        return;
    }
    if (rn->stop_entry[rn->pol_vi]) {
        json_array_append(rn->verdicts, rn->stop_entry[rn->pol_vi]);
        rn->pol_vi++;
        policy_next(rn);
        return;
    }
    char name[200];
    snprintf(name, sizeof name, "policies/%s", rn->policy);
    rn->pol = catalog_get(rn->r->cat, name);
    if (!rn->pol) {
        char why[300];
        snprintf(why, sizeof why, "policy %s.lua is not loaded", name);
        on_policy(NULL, why, rn);
        return;
    }
    char *in = policy_input(rn, rn->pol_vi);
    policy_call(rn->r->vm, rn->pol->ev.ref, rn->policy, "decide", rn->r->policy_budget_ms, in, on_policy, rn);
    free(in);
}

static void run_finish(run *rn)
{
    rn->finishing = true;
    bool complete = rn->completed + rn->skipped == rn->njobs && !rn->stopping;
    rn->report = build_report(rn, complete);
    rn->verdicts = json_array();
    if (!complete) {
        char why[700];
        snprintf(why, sizeof why, "the run is incomplete (%zu of %zu results): %s", rn->completed, rn->njobs,
                 rn->stop_reason ? rn->stop_reason : "stopped");
        for (int vi = 1; vi < rn->nv; vi++)
            json_array_append_new(rn->verdicts, json_pack("{s:I, s:s, s:[s]}", "version", (json_int_t)rn->versions[vi],
                                                          "verdict", "inconclusive", "reasons", why));
        run_store_final(rn, "incomplete", "inconclusive", rn->stop_reason);
        return;
    }
    rn->pol_vi = 1;
    policy_next(rn);
}

static void check_drained(runner *r)
{
    if (!r->draining || !r->drain_cb)
        return;
    for (run *rn = r->runs; rn; rn = rn->next)
        if (rn->inflight || rn->judging || rn->writes || rn->finishing || rn->stop_pending)
            return;
    void (*cb)(void *) = r->drain_cb;
    r->drain_cb = NULL;
    cb(r->drain_arg);
}

static void on_run_finished(store_write *w)
{
    run *rn = w->data;
    runner *r = rn->r;
    int st = w->status;
    store_write_clear(w);
    run_unlink(rn);
    llm_run_forget(r->l, rn->id);
    if (st == 0) {
        r->finished++;
        const char *verdict = json_string_value(json_object_get(rn->report, "verdict"));
        char key[96];
        snprintf(key, sizeof key, "%s %s", rn->kind ? rn->kind : "eval",
                 verdict ? verdict : json_string_value(json_object_get(rn->report, "state")));
        json_t *n = json_object_get(r->ended, key);
        json_object_set_new(r->ended, key, json_integer(n ? json_integer_value(n) + 1 : 1));
        log_info("runs", "run %s: %s, verdict %s", rn->id, json_string_value(json_object_get(rn->report, "state")),
                 json_string_value(json_object_get(rn->report, "verdict")));
        if (r->on_finish) {
            json_t *view = run_view(rn, json_string_value(json_object_get(rn->report, "state")));
            r->on_finish(rn->id, view, r->finish_ud);
            json_decref(view);
        }
    } else {
        log_error("runs", "run %s: its end could not be stored; it resumes at the next start", rn->id);
    }
    run_free(rn);
    check_drained(r);
}

static bool all_stopped(const run *rn)
{
    for (int vi = 1; vi < rn->nv; vi++)
        if (!rn->stopped[vi])
            return false;
    return rn->nv > 1;
}

static void run_pump(run *rn)
{
    runner *r = rn->r;
    if (rn->finishing || rn->pumping) /* a job that ends inside job_start: the loop below goes on */
        return;
    rn->pumping = true;
    if (!rn->suspended && !rn->stopping && !lease_holds(rn)) {
        rn->suspended = true;
        log_warn("runs", "run %s: this engine's lease on the store lapsed: no more jobs start here; the run is set "
                 "aside once its jobs in flight end, and resumed if it is still this engine's when the lease is back",
                 rn->id);
    }
    size_t max_writes = 4 * (size_t)rn->concurrency + 64;
    while (!rn->stopping && !rn->suspended && !r->draining && rn->inflight < (size_t)rn->concurrency &&
           rn->judging < (size_t)rn->concurrency && rn->writes < max_writes && rn->next_job < rn->njobs) {
        size_t j = rn->next_job++;
        int vi = (int)((j / (size_t)rn->k) % (size_t)rn->nv);
        if (rn->done[j])
            continue;
        if ((vi > 0 && rn->stopped[vi]) || (vi == 0 && all_stopped(rn))) {
            rn->skipped++; /* stopped early (every candidate, for the baseline): never run */
            continue;
        }
        job_start(rn, j);
    }
    rn->pumping = false;
    if (rn->inflight || rn->judging || rn->writes || rn->stop_pending)
        return;
    if (r->draining) {
        check_drained(r);
        return;
    }
    if (rn->suspended) /* runner_set_aside takes it */
        return;
    if (rn->stopping || rn->next_job >= rn->njobs)
        run_finish(rn);
}

json_t *runner_set_aside(runner *r)
{
    json_t *ids = json_array();
    for (run **p = &r->runs; *p;) {
        run *rn = *p;
        if (!rn->suspended || rn->inflight || rn->judging || rn->writes || rn->stop_pending || rn->finishing ||
            rn->pumping) {
            p = &rn->next;
            continue;
        }
        json_array_append_new(ids, json_string(rn->id));
        log_warn("runs", "run %s: set aside with %zu of %zu results stored (this engine's lease lapsed)", rn->id,
                 rn->completed, rn->njobs);
        run_unlink(rn); /* unlinks *p */
        llm_run_forget(r->l, rn->id);
        run_free(rn);
    }
    return ids;
}

/* ---- views ---- */

static json_t *progress(run *rn)
{
    char last[32];
    rfc3339_format(rn->progress_ms, last);
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:f, s:b, s:s?, s:s, s:I}", "jobs", (json_int_t)rn->njobs, "done",
                     (json_int_t)rn->completed, "running", (json_int_t)(rn->inflight + rn->judging), "calls",
                     (json_int_t)rn->calls, "cached", (json_int_t)rn->cached, "cost", rn->cost, "stopping",
                     rn->stopping, "stop_reason", rn->stop_reason, "last_progress_at", last, "idle_s",
                     (json_int_t)((now_ms() - rn->progress_ms) / 1000));
}

static json_t *run_view(run *rn, const char *state)
{
    char when[32];
    rfc3339_format(rn->created_ms, when);
    json_t *v = json_pack("{s:s, s:s, s:s, s:s, s:O, s:s, s:I, s:o}", "id", rn->id, "kind", rn->kind, "prompt",
                          rn->prompt, "state", state, "spec", rn->spec, "created_at", when, "cases",
                          (json_int_t)rn->ncases, "progress", progress(rn));
    if (rn->report) {
        json_object_set(v, "report", rn->report);
        json_object_set(v, "verdict", json_object_get(rn->report, "verdict"));
    }
    return v;
}

json_t *runner_progress(runner *r, const char *id)
{
    run *rn = find_run(r, id);
    return rn ? progress(rn) : NULL;
}

int runner_cancel(runner *r, const char *id, reg_error *e)
{
    run *rn = find_run(r, id);
    if (!rn) {
        reg_fail(e, 409, "not_running", "id", "run %s is not running", id);
        return 409;
    }
    run_stop(rn, "cancelled");
    run_pump(rn);
    return 0;
}

int runner_active(const runner *r)
{
    int n = 0;
    for (const run *rn = r->runs; rn; rn = rn->next)
        n++;
    return n;
}

void runner_metrics(runner *r, buf_t *b)
{
    metrics_one(b, "ratchet_runs_started_total", "counter",
                "Regression runs started (gates and evals).", (double)r->started);
    metrics_family(b, "ratchet_runs_finished_total", "counter",
                   "Regression runs ended, by kind and verdict (accept, reject, inconclusive) or end state.");
    const char *key;
    json_t *n;
    json_object_foreach(r->ended, key, n) {
        char kind[96];
        snprintf(kind, sizeof kind, "%s", key);
        char *sp = strchr(kind, ' ');
        if (sp)
            *sp++ = '\0';
        metrics_sample(b, "ratchet_runs_finished_total", (double)json_integer_value(n), "kind", kind, "verdict",
                       sp ? sp : "", NULL);
    }
    metrics_one(b, "ratchet_runs_active", "gauge", "Regression runs under way.", runner_active(r));
    metrics_one(b, "ratchet_run_results_total", "counter",
                "Case samples whose result a run recorded.", (double)r->results);
    metrics_one(b, "ratchet_run_cache_hits_total", "counter",
                "Case samples answered from the result cache.", (double)r->cache_hits);
}

json_t *runner_status_json(runner *r)
{
    json_t *active = json_array();
    for (run *rn = r->runs; rn; rn = rn->next) {
        json_t *p = progress(rn);
        json_object_set_new(p, "id", json_string(rn->id));
        json_object_set_new(p, "prompt", json_string(rn->prompt));
        json_array_append_new(active, p);
    }
    return json_pack("{s:o, s:I, s:I, s:I, s:I, s:I, s:I}", "active", active, "started", (json_int_t)r->started,
                     "finished", (json_int_t)r->finished, "results", (json_int_t)r->results, "cache_hits",
                     (json_int_t)r->cache_hits, "llm_calls", (json_int_t)r->llm_calls, "errors",
                     (json_int_t)r->errors);
}

void runner_drain(runner *r, void (*cb)(void *), void *arg)
{
    r->draining = true;
    r->drain_cb = cb;
    r->drain_arg = arg;
    wake(r, NULL); /* their answers are in-flight requests the HTTP drain waits for */
    check_drained(r);
}

void runner_free(runner *r)
{
    if (!r)
        return;
    while (r->runs) {
        run *rn = r->runs;
        r->runs = rn->next;
        if (rn->pol)
            catalog_release(rn->pol);
        run_free(rn);
    }
    config_prompts_free(r->prompts, r->nprompts);
    json_decref(r->ended);
    free(r);
}
