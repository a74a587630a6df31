/* llm.c — LLM calls: request mapping per provider, the attempt loop, limits,
 * the breaker, budgets and the ledger. Everything runs on the loop thread;
 * the only I/O is httpc's (non-blocking) and the store's writer thread. */
#include "llm/llm.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/jtree.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/util.h"

/* ---- provider settings ---- */

static void conf_free_fields(llm_provider_conf *p)
{
    free(p->name);
    free(p->base_url);
    free(p->api_key);
    free(p->query);
    for (int i = 0; i < p->nheaders; i++)
        free(p->headers[i]);
    free(p->headers);
    free(p->anthropic_version);
    free(p->default_model);
    for (size_t i = 0; i < p->nprices; i++)
        free(p->prices[i].model);
    free(p->prices);
    memset(p, 0, sizeof *p);
}

void llm_provider_conf_free(llm_provider_conf *p)
{
    conf_free_fields(p);
}

static bool header_ok(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n' || (unsigned char)*s < 32)
            return false;
    return true;
}

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

static int int_field(json_t *o, const char *k, int def, int min, int max, int *out, char *err, size_t errlen,
                     const char *name)
{
    json_t *v = json_object_get(o, k);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "provider '%s': '%s' must be an integer from %d to %d", name, k, min, max);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int num_field(json_t *o, const char *k, double *out, char *err, size_t errlen, const char *name)
{
    json_t *v = json_object_get(o, k);
    if (!v) {
        *out = 0;
        return 0;
    }
    if (!json_is_number(v) || json_number_value(v) < 0) {
        snprintf(err, errlen, "provider '%s': '%s' must be a number >= 0", name, k);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

int llm_provider_parse(const char *name, const char *json, llm_provider_conf *out, char *err, size_t errlen)
{
    static const char *const known[] = {
        "kind", "base_url", "api_key", "auth", "query", "headers", "anthropic_version", "default_model",
        "timeout_ms", "connect_timeout_ms", "idle_timeout_ms", "max_retries", "backoff_base_ms", "backoff_max_ms",
        "retry_after_max_ms", "concurrency", "requests_per_minute", "tokens_per_minute", "circuit_failures",
        "circuit_cooldown_ms", "max_response_bytes", "models", NULL,
    };
    llm_provider_conf p = {0};
    json_t *o = json_loads(json, 0, NULL);
    if (!json_is_object(o))
        FAIL("provider '%s' must be a table of settings", name);
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool ok = false;
        for (const char *const *kn = known; *kn && !ok; kn++)
            ok = !strcmp(*kn, k);
        if (!ok)
            FAIL("provider '%s': unknown key '%s'", name, k);
    }
    p.name = xstrdup(name);
    const char *kind = json_string_value(json_object_get(o, "kind"));
    if (!kind || (strcmp(kind, "openai") && strcmp(kind, "anthropic")))
        FAIL("provider '%s': 'kind' must be \"openai\" (any OpenAI-compatible server) or \"anthropic\"", name);
    p.kind = !strcmp(kind, "openai") ? LLM_OPENAI : LLM_ANTHROPIC;
    const char *base = json_string_value(json_object_get(o, "base_url"));
    if (!base && json_object_get(o, "base_url"))
        FAIL("provider '%s': 'base_url' must be a string", name);
    if (!base)
        base = p.kind == LLM_OPENAI ? "https://api.openai.com/v1" : "https://api.anthropic.com/v1";
    if ((strncmp(base, "https://", 8) && strncmp(base, "http://", 7)) || strchr(base, '?') || !header_ok(base))
        FAIL("provider '%s': 'base_url' must be an http:// or https:// URL without a query (got '%s')", name, base);
    size_t bl = strlen(base);
    p.base_url = xstrndup(base, bl && base[bl - 1] == '/' ? bl - 1 : bl);
    json_t *key = json_object_get(o, "api_key");
    if (key && (!json_is_string(key) || !json_string_length(key) || !header_ok(json_string_value(key))))
        FAIL("provider '%s': 'api_key' must be a non-empty string on one line (use env() or credential())", name);
    p.api_key = key ? xstrdup(json_string_value(key)) : NULL;
    const char *auth = json_string_value(json_object_get(o, "auth"));
    if (json_object_get(o, "auth") && !auth)
        FAIL("provider '%s': 'auth' must be a string", name);
    if (!auth)
        p.auth = !p.api_key ? AUTH_NONE : p.kind == LLM_OPENAI ? AUTH_BEARER : AUTH_X_API_KEY;
    else if (!strcmp(auth, "bearer"))
        p.auth = AUTH_BEARER;
    else if (!strcmp(auth, "api-key"))
        p.auth = AUTH_API_KEY;
    else if (!strcmp(auth, "x-api-key"))
        p.auth = AUTH_X_API_KEY;
    else if (!strcmp(auth, "none"))
        p.auth = AUTH_NONE;
    else
        FAIL("provider '%s': 'auth' must be \"bearer\", \"api-key\" (Azure), \"x-api-key\" or \"none\"", name);
    if (p.auth != AUTH_NONE && !p.api_key)
        FAIL("provider '%s': 'auth' is \"%s\" but no api_key is set", name, auth);
    json_t *q = json_object_get(o, "query");
    if (q) {
        if (!json_is_object(q))
            FAIL("provider '%s': 'query' must be a table of parameters, like { [\"api-version\"] = \"2024-10-21\" }",
                 name);
        buf_t b;
        buf_init(&b);
        json_object_foreach(q, k, v) {
            const char *s = json_string_value(v);
            bool safe = s != NULL;
            for (const char *c = s; safe && *c; c++)
                safe = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                       strchr("-._~", *c);
            for (const char *c = k; safe && *c; c++)
                safe = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                       strchr("-._~", *c);
            if (!safe) {
                buf_free(&b);
                FAIL("provider '%s': query.%s must be a string of letters, digits and - . _ ~", name, k);
            }
            buf_printf(&b, "%s%s=%s", b.len ? "&" : "", k, s);
        }
        p.query = b.len ? buf_steal(&b) : NULL;
        buf_free(&b);
    }
    json_t *hs = json_object_get(o, "headers");
    if (hs) {
        if (!json_is_object(hs))
            FAIL("provider '%s': 'headers' must be a table of header = value", name);
        p.headers = xcalloc(json_object_size(hs) + 1, sizeof *p.headers);
        json_object_foreach(hs, k, v) {
            if (!json_is_string(v) || !header_ok(json_string_value(v)) || !header_ok(k) || strchr(k, ':') || !*k)
                FAIL("provider '%s': headers.%s must be a one-line string", name, k);
            size_t n = strlen(k) + json_string_length(v) + 3;
            p.headers[p.nheaders] = xmalloc(n);
            snprintf(p.headers[p.nheaders++], n, "%s: %s", k, json_string_value(v));
        }
    }
    const char *av = json_string_value(json_object_get(o, "anthropic_version"));
    if (json_object_get(o, "anthropic_version") && (!av || !header_ok(av)))
        FAIL("provider '%s': 'anthropic_version' must be a string", name);
    p.anthropic_version = xstrdup(av ? av : "2023-06-01");
    const char *dm = json_string_value(json_object_get(o, "default_model"));
    if (json_object_get(o, "default_model") && (!dm || !*dm))
        FAIL("provider '%s': 'default_model' must be a model name", name);
    p.default_model = dm ? xstrdup(dm) : NULL;
    if (int_field(o, "timeout_ms", 120000, 100, 3600000, &p.timeout_ms, err, errlen, name) ||
        int_field(o, "connect_timeout_ms", 10000, 100, 600000, &p.connect_timeout_ms, err, errlen, name) ||
        int_field(o, "idle_timeout_ms", 60000, 0, 3600000, &p.idle_timeout_ms, err, errlen, name) ||
        int_field(o, "max_retries", 4, 0, 20, &p.max_retries, err, errlen, name) ||
        int_field(o, "backoff_base_ms", 500, 1, 600000, &p.backoff_base_ms, err, errlen, name) ||
        int_field(o, "backoff_max_ms", 20000, 1, 3600000, &p.backoff_max_ms, err, errlen, name) ||
        int_field(o, "retry_after_max_ms", 60000, 0, 3600000, &p.retry_after_max_ms, err, errlen, name) ||
        int_field(o, "concurrency", 16, 1, 100000, &p.concurrency, err, errlen, name) ||
        int_field(o, "circuit_failures", 5, 1, 100000, &p.circuit_failures, err, errlen, name) ||
        int_field(o, "circuit_cooldown_ms", 30000, 1, 3600000, &p.circuit_cooldown_ms, err, errlen, name) ||
        int_field(o, "max_response_bytes", 8 << 20, 1024, 1 << 30, &p.max_response_bytes, err, errlen, name) ||
        num_field(o, "requests_per_minute", &p.requests_per_minute, err, errlen, name) ||
        num_field(o, "tokens_per_minute", &p.tokens_per_minute, err, errlen, name))
        goto fail;
    json_t *models = json_object_get(o, "models");
    if (models) {
        if (!json_is_object(models))
            FAIL("provider '%s': 'models' must be a table: [\"model\"] = { input_per_mtok = ..., output_per_mtok = ... }",
                 name);
        p.prices = xcalloc(json_object_size(models) + 1, sizeof *p.prices);
        json_object_foreach(models, k, v) {
            json_t *in = json_object_get(v, "input_per_mtok"), *outp = json_object_get(v, "output_per_mtok");
            if (!json_is_object(v) || json_object_size(v) != 2 || !json_is_number(in) || !json_is_number(outp) ||
                json_number_value(in) < 0 || json_number_value(outp) < 0)
                FAIL("provider '%s': models[\"%s\"] must be { input_per_mtok = N, output_per_mtok = N } (prices "
                     "per million tokens)", name, k);
            p.prices[p.nprices++] = (llm_price){xstrdup(k), json_number_value(in), json_number_value(outp)};
        }
    }
    json_decref(o);
    if (out)
        *out = p;
    else
        conf_free_fields(&p);
    return 0;
fail:
    json_decref(o);
    conf_free_fields(&p);
    return -1;
}

/* ---- runtime ---- */

enum circuit { CIRCUIT_CLOSED, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN };

/* Counters per model a provider was asked for, for /metrics. */
#define MAX_MODEL_STATS 64
typedef struct model_stats {
    char *model;
    uint64_t calls, retries, input_tokens, output_tokens;
    double cost;
    json_t *errors; /* kind -> count */
    metrics_hist seconds;
    struct model_stats *next;
} model_stats;

typedef struct prov prov;
struct prov {
    llm_provider_conf c;
    llm *l;
    llm_call *qhead, *qtail; /* waiting for a slot or a bucket */
    int in_flight;
    double rpm_level, tpm_level;
    uint64_t refill_ns;
    enum circuit circuit;
    int consecutive_failures;
    uint64_t opened_ns;
    bool probing;
    uv_timer_t *timer; /* wakes the queue when a bucket refills */
    bool retired;      /* removed by a reload: freed when its last call ends */
    int calls_live;
    /* counters */
    uint64_t calls, ok, retries, input_tokens, output_tokens, attempts;
    double cost;
    json_t *errors; /* kind -> count */
    model_stats *models;
    int nmodels;
    prov *next;
};

struct llm {
    uv_loop_t *loop;
    httpc *h;
    store *st;
    prov *provs;
    llm_budgets b;
    int64_t day_start_ms;
    double day_calls, day_tokens, day_cost;       /* spent today */
    double res_calls, res_tokens, res_cost;       /* reserved by calls in flight */
    json_t *runs;                                 /* run id -> [calls, tokens, cost, reserved calls, tokens, cost] */
    llm_call *calls;                              /* every call not yet disposed of */
    uint64_t ledger_failures;
    store_write *ledger;                          /* rows gathered for one write (ledger_row) */
    size_t ledger_cap;
    uv_timer_t *ledger_timer;
    uint64_t day_refused;                         /* calls a daily budget refused today */
    char last_refused[300];                       /* the last such refusal, for status */
};

/* CALL_CLAIMING: waiting for the store's answer to a claim on the budgets shared with the other
 * engines on the database (docs/scale-out.md), before it queues */
enum call_state { CALL_CLAIMING, CALL_QUEUED, CALL_SENDING, CALL_BACKOFF, CALL_FINISHING };
typedef struct budget_claim budget_claim;

struct llm_call {
    llm *l;
    prov *p;
    enum call_state state;
    uint64_t lease_gen; /* store_lease_generation when the call was asked for */
    char id[37];
    char *caller_kind, *caller, *run_id;
    char *model;
    char *body;          /* the provider's request body */
    size_t body_len;
    int timeout_ms;
    double est_tokens, est_cost;
    bool reserved;
    budget_claim *claim; /* in flight (CALL_CLAIMING) */
    bool claimed;        /* the shared budgets hold est_*: settled by the difference at the end */
    int attempts;
    uint64_t start_ns;
    int64_t start_ms; /* the start (UTC midnight) of the day its shared claim was made on */
    httpc_req *req;
    uv_timer_t *timer;   /* backoff, and the deferred answer of a refused call */
    llm_done done;
    void *ud;
    /* the outcome, kept for the deferred finish */
    json_t *result; /* the normalised reply */
    char *err_kind, *err;
    int64_t in_tok, out_tok;
    double cost;
    char request_id[128];
    llm_call *qnext, *qprev;
    llm_call *anext, *aprev; /* l->calls */
};

static int64_t day_start(int64_t ms)
{
    return ms - ms % 86400000;
}

llm *llm_new(uv_loop_t *loop, httpc *h, store *st)
{
    llm *l = xcalloc(1, sizeof *l);
    l->loop = loop;
    l->h = h;
    l->st = st;
    l->day_start_ms = day_start(now_ms());
    l->runs = json_object();
    return l;
}

int llm_load_totals(llm *l, char *err, size_t errlen)
{
    if (!l->st)
        return 0;
    int64_t calls, tokens;
    double cost;
    if (store_llm_totals(l->st, l->day_start_ms, NULL, &calls, &tokens, &cost, err, errlen) != 0)
        return -1;
    l->day_calls = (double)calls;
    l->day_tokens = (double)tokens;
    l->day_cost = cost;
    return 0;
}

static void on_handle_free(uv_handle_t *h)
{
    free(h);
}

static void prov_free(prov *p)
{
    if (p->timer)
        uv_close((uv_handle_t *)p->timer, on_handle_free);
    json_decref(p->errors);
    while (p->models) {
        model_stats *m = p->models;
        p->models = m->next;
        free(m->model);
        json_decref(m->errors);
        free(m);
    }
    conf_free_fields(&p->c);
    free(p);
}

/* The counters of a model; past MAX_MODEL_STATS models, "other" gathers the
 * rest so a caller naming endless models cannot grow the metrics. */
static model_stats *model_of(prov *p, const char *model)
{
    model_stats **pp = &p->models;
    for (; *pp; pp = &(*pp)->next)
        if (!strcmp((*pp)->model, model))
            return *pp;
    if (p->nmodels >= MAX_MODEL_STATS)
        return model_of(p, "other");
    p->nmodels++;
    *pp = xcalloc(1, sizeof **pp);
    (*pp)->model = xstrdup(model);
    (*pp)->errors = json_object();
    return *pp;
}

static void count_error(json_t *errors, const char *kind)
{
    json_t *n = json_object_get(errors, kind);
    json_object_set_new(errors, kind, json_integer(n ? json_integer_value(n) + 1 : 1));
}

static prov *find_prov(llm *l, const char *name)
{
    for (prov *p = l->provs; p; p = p->next)
        if (!p->retired && !strcmp(p->c.name, name))
            return p;
    return NULL;
}

static void bucket_reset(prov *p)
{
    p->rpm_level = p->c.requests_per_minute;
    p->tpm_level = p->c.tokens_per_minute;
    p->refill_ns = mono_ns();
}

void llm_configure(llm *l, char *const *names, char *const *jsons, size_t n, const llm_budgets *b)
{
    l->b = *b;
    /* retire the providers that went away; update the ones that stay */
    prov **pp = &l->provs;
    while (*pp) {
        prov *p = *pp;
        bool keep = false;
        for (size_t i = 0; i < n && !keep; i++)
            keep = !p->retired && !strcmp(p->c.name, names[i]);
        if (!keep && !p->retired) {
            p->retired = true;
            if (!p->calls_live) {
                *pp = p->next;
                prov_free(p);
                continue;
            }
        }
        pp = &p->next;
    }
    for (size_t i = 0; i < n; i++) {
        llm_provider_conf c;
        char err[300];
        if (llm_provider_parse(names[i], jsons[i], &c, err, sizeof err) != 0) {
            log_error("llm", "%s", err); /* checked when the config was read: cannot happen */
            continue;
        }
        prov *p = find_prov(l, names[i]);
        if (p) {
            bool limits_changed = c.requests_per_minute != p->c.requests_per_minute ||
                                  c.tokens_per_minute != p->c.tokens_per_minute;
            conf_free_fields(&p->c);
            p->c = c;
            if (limits_changed)
                bucket_reset(p);
        } else {
            p = xcalloc(1, sizeof *p);
            p->c = c;
            p->l = l;
            p->errors = json_object();
            p->timer = xmalloc(sizeof *p->timer);
            uv_timer_init(l->loop, p->timer);
            p->timer->data = p;
            bucket_reset(p);
            p->next = l->provs;
            l->provs = p;
        }
    }
}

/* ---- budgets ---- */

static void roll_day(llm *l)
{
    int64_t today = day_start(now_ms());
    if (today != l->day_start_ms) {
        l->day_start_ms = today;
        l->day_calls = l->day_tokens = l->day_cost = 0;
        l->day_refused = 0;
        l->last_refused[0] = '\0';
    }
}

static json_t *run_entry(llm *l, const char *run_id)
{
    json_t *e = json_object_get(l->runs, run_id);
    if (!e) {
        /* spent calls, tokens, cost; reserved calls, tokens, cost; own limits (0: the configured ones) */
        e = json_pack("[f,f,f,f,f,f,f,f,f]", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        json_object_set_new(l->runs, run_id, e);
    }
    return e;
}

static double rv(json_t *e, size_t i)
{
    return json_real_value(json_array_get(e, i));
}

void llm_run_budget(llm *l, const char *run_id, double calls, double tokens, double cost, double spent_calls,
                    double spent_tokens, double spent_cost)
{
    json_t *e = run_entry(l, run_id);
    json_real_set(json_array_get(e, 0), spent_calls);
    json_real_set(json_array_get(e, 1), spent_tokens);
    json_real_set(json_array_get(e, 2), spent_cost);
    json_real_set(json_array_get(e, 6), calls);
    json_real_set(json_array_get(e, 7), tokens);
    json_real_set(json_array_get(e, 8), cost);
}

void llm_run_spent(llm *l, const char *run_id, double *calls, double *tokens, double *cost)
{
    json_t *e = json_object_get(l->runs, run_id);
    *calls = e ? rv(e, 0) : 0;
    *tokens = e ? rv(e, 1) : 0;
    *cost = e ? rv(e, 2) : 0;
}

void llm_run_forget(llm *l, const char *run_id)
{
    json_object_del(l->runs, run_id);
}

static void radd(json_t *e, size_t i, double d)
{
    json_real_set(json_array_get(e, i), rv(e, i) + d);
}

/* Checks the call against every budget with what is spent and reserved;
 * reserves on success. Returns NULL, or a message (static buffer). */
static const char *budget_reserve(llm_call *c)
{
    static char msg[300];
    llm *l = c->l;
    const llm_budgets *b = &l->b;
    roll_day(l);
    typedef struct {
        double limit, spent, need;
        const char *what;
    } check;
    check checks[6] = {
        {b->daily_calls, l->day_calls + l->res_calls, 1, "daily call budget"},
        {b->daily_tokens, l->day_tokens + l->res_tokens, c->est_tokens, "daily token budget"},
        {b->daily_cost, l->day_cost + l->res_cost, c->est_cost, "daily cost budget"},
    };
    json_t *run = NULL;
    if (c->run_id) {
        run = run_entry(l, c->run_id);
        double lc = rv(run, 6) > 0 ? rv(run, 6) : b->run_calls, lt = rv(run, 7) > 0 ? rv(run, 7) : b->run_tokens,
               lx = rv(run, 8) > 0 ? rv(run, 8) : b->run_cost;
        checks[3] = (check){lc, rv(run, 0) + rv(run, 3), 1, "run's call budget"};
        checks[4] = (check){lt, rv(run, 1) + rv(run, 4), c->est_tokens, "run's token budget"};
        checks[5] = (check){lx, rv(run, 2) + rv(run, 5), c->est_cost, "run's cost budget"};
    }
    for (int i = 0; i < 6; i++) {
        if (checks[i].limit <= 0)
            continue;
        if (checks[i].spent + checks[i].need > checks[i].limit) {
            char limit[32], spent[32], need[32]; /* never rounded: 0.30000000000000004 is not 0.3 */
            num_text(checks[i].limit, limit);
            num_text(checks[i].spent, spent);
            num_text(checks[i].need, need);
            snprintf(msg, sizeof msg, "the %s (%s) would be exceeded: %s spent or reserved, this call may use up to %s",
                     checks[i].what, limit, spent, need);
            if (i < 3) { /* a daily budget: refused until the day ends, which status reports */
                l->day_refused++;
                snprintf(l->last_refused, sizeof l->last_refused, "%s", msg);
            }
            return msg;
        }
    }
    l->res_calls += 1;
    l->res_tokens += c->est_tokens;
    l->res_cost += c->est_cost;
    if (run) {
        radd(run, 3, 1);
        radd(run, 4, c->est_tokens);
        radd(run, 5, c->est_cost);
    }
    c->reserved = true;
    return NULL;
}

/* ---- budgets shared by several engines (PostgreSQL) ---- */

struct budget_claim {
    store_write w;
    store_budget_claim b;
    store *st;
    llm_call *c; /* NULL once the call is gone */
};

static bool shared_budgets(const llm *l)
{
    return l->st && store_shared(l->st) &&
           (l->b.daily_calls > 0 || l->b.daily_tokens > 0 || l->b.daily_cost > 0);
}

static void on_claim_settled(store_write *w)
{
    budget_claim *bc = w->data;
    if (w->status)
        log_warn("llm", "the shared budget of %s could not be settled (store status %d)", bc->b.day, w->status);
    store_write_clear(w);
    free(bc);
}

/* Adds the amounts to the day's shared row without a limit (a settlement, a refund). */
static void claim_adjust(store *st, const char *day, double calls, double tokens, double cost)
{
    budget_claim *bc = xcalloc(1, sizeof *bc);
    bc->st = st;
    snprintf(bc->b.day, sizeof bc->b.day, "%s", day);
    bc->b.calls = calls;
    bc->b.tokens = tokens;
    bc->b.cost = cost;
    bc->w.claim = &bc->b;
    bc->w.done = on_claim_settled;
    bc->w.data = bc;
    if (store_submit(st, &bc->w) != 0) {
        log_warn("llm", "the shared budget of %s could not be settled: the store's queue is full", day);
        free(bc);
    }
}

static void claim_detach(budget_claim *bc)
{
    bc->c = NULL;
}

static void call_enqueue(llm_call *c);
static void finish(llm_call *c, json_t *result, const char *kind, const char *msg);

static void on_claimed(store_write *w)
{
    budget_claim *bc = w->data;
    llm_call *c = bc->c;
    bool granted = w->status == 0 && bc->b.granted;
    store_write_clear(w);
    if (!c) { /* the caller went away meanwhile: give back what was claimed */
        if (granted)
            claim_adjust(bc->st, bc->b.day, -bc->b.calls, -bc->b.tokens, -bc->b.cost);
        free(bc);
        return;
    }
    c->claim = NULL;
    if (!granted) {
        char msg[300];
        int status = w->status; /* w is bc's: read before bc is freed */
        if (status)
            snprintf(msg, sizeof msg, "the daily budgets shared by the engines on this database could not be "
                                      "checked (the store is down); nothing was sent");
        else
            snprintf(msg, sizeof msg, "a daily budget shared by every engine on this database would be exceeded by "
                                      "this call (up to %.0f tokens, $%.6f)", bc->b.tokens, bc->b.cost);
        free(bc);
        if (!status) {
            c->l->day_refused++;
            snprintf(c->l->last_refused, sizeof c->l->last_refused, "%s", msg);
        }
        c->state = CALL_QUEUED; /* not in the provider's queue: finish unlinks nothing */
        finish(c, NULL, "budget", msg);
        return;
    }
    free(bc);
    c->claimed = true;
    call_enqueue(c);
}

/* Asks the store for the call's estimate on the shared daily budgets; the call queues when granted. */
static void claim_start(llm_call *c)
{
    llm *l = c->l;
    budget_claim *bc = xcalloc(1, sizeof *bc);
    bc->st = l->st;
    bc->c = c;
    char when[32];
    rfc3339_format(l->day_start_ms, when);
    snprintf(bc->b.day, sizeof bc->b.day, "%.10s", when);
    bc->b.calls = 1;
    bc->b.tokens = c->est_tokens;
    bc->b.cost = c->est_cost;
    bc->b.max_calls = l->b.daily_calls;
    bc->b.max_tokens = l->b.daily_tokens;
    bc->b.max_cost = l->b.daily_cost;
    bc->w.claim = &bc->b;
    bc->w.done = on_claimed;
    bc->w.data = bc;
    c->claim = bc;
    c->state = CALL_CLAIMING;
    if (store_submit(l->st, &bc->w) != 0) {
        c->claim = NULL;
        free(bc);
        c->state = CALL_QUEUED;
        finish(c, NULL, "budget", "the daily budgets shared by the engines cannot be checked: the store's queue is full");
    }
}

static void budget_settle(llm_call *c)
{
    llm *l = c->l;
    roll_day(l);
    if (c->claimed) { /* the shared row holds the estimate: replace it by what the call used */
        c->claimed = false;
        char when[32];
        rfc3339_format(day_start(c->start_ms), when);
        char day[16];
        snprintf(day, sizeof day, "%.10s", when);
        double tok = c->attempts ? (double)(c->in_tok + c->out_tok) : 0;
        claim_adjust(l->st, day, (c->attempts ? 1 : 0) - 1, tok - c->est_tokens,
                     (c->attempts ? c->cost : 0) - c->est_cost);
    }
    json_t *run = c->run_id ? run_entry(l, c->run_id) : NULL;
    if (c->reserved) {
        l->res_calls -= 1;
        l->res_tokens -= c->est_tokens;
        l->res_cost -= c->est_cost;
        if (run) {
            radd(run, 3, -1);
            radd(run, 4, -c->est_tokens);
            radd(run, 5, -c->est_cost);
        }
        c->reserved = false;
    }
    if (c->attempts) {
        double tok = (double)(c->in_tok + c->out_tok);
        l->day_calls += 1;
        l->day_tokens += tok;
        l->day_cost += c->cost;
        if (run) {
            radd(run, 0, 1);
            radd(run, 1, tok);
            radd(run, 2, c->cost);
        }
    }
}

static const llm_price *price_of(const prov *p, const char *model)
{
    for (size_t i = 0; i < p->c.nprices; i++)
        if (!strcmp(p->c.prices[i].model, model))
            return &p->c.prices[i];
    return NULL;
}

/* ---- finishing ---- */

/* The gateway's ledger rows are gathered for at most LEDGER_WAIT_MS or
 * LEDGER_BATCH rows and written as one store write: a commit costs the writer some 400 µs of
 * CPU whatever its size, so one commit per call made a single gateway
 * caller pay it on every call (bench/RESULTS.md, gateway second pass). */
#define LEDGER_BATCH 256
#define LEDGER_WAIT_MS 20

static void ledger_failed(llm *l, size_t n, const char *what, int code)
{
    if (l->ledger_failures / 1000 != (l->ledger_failures + n) / 1000 || !l->ledger_failures) {
        if (code)
            log_error("llm", "cannot write the LLM ledger (store status %d); calls go on", code);
        else
            log_error("llm", "%s", what);
    }
    l->ledger_failures += n;
}

static void ledger_done(store_write *w)
{
    if (w->status)
        ledger_failed(w->data, w->nllm_calls, NULL, w->status);
    store_write_clear(w);
    free(w);
}

void llm_ledger_flush(llm *l)
{
    store_write *w = l->ledger;
    if (!w)
        return;
    l->ledger = NULL;
    l->ledger_cap = 0;
    if (l->ledger_timer)
        uv_timer_stop(l->ledger_timer);
    w->done = ledger_done;
    w->data = l;
    if (store_submit(l->st, w) != 0) {
        ledger_failed(l, w->nllm_calls, "the store's queue is full: LLM calls are missing from the ledger", 0);
        store_write_clear(w);
        free(w);
    }
}

static void on_ledger_timer(uv_timer_t *t)
{
    llm_ledger_flush(t->data);
}

/* A zeroed row of the next ledger write; ledger_added queues it. */
static store_llm_call *ledger_row(llm *l)
{
    if (!l->ledger)
        l->ledger = xcalloc(1, sizeof *l->ledger);
    store_write *w = l->ledger;
    if (w->nllm_calls == l->ledger_cap) {
        l->ledger_cap = l->ledger_cap ? 2 * l->ledger_cap : 16;
        w->llm_calls = xrealloc(w->llm_calls, l->ledger_cap * sizeof *w->llm_calls);
    }
    store_llm_call *r = &w->llm_calls[w->nllm_calls++];
    memset(r, 0, sizeof *r);
    return r;
}

/* batch: a gateway call's row waits for its batch; any other call's row is
 * written now, with what waits, so that what the call led to (an
 * evaluation's verdict, a run's result) is never committed before it. */
static void ledger_added(llm *l, bool batch)
{
    if (!batch || l->ledger->nllm_calls >= LEDGER_BATCH) {
        llm_ledger_flush(l);
        return;
    }
    if (l->ledger->nllm_calls > 1)
        return; /* the timer runs */
    if (!l->ledger_timer) {
        l->ledger_timer = xmalloc(sizeof *l->ledger_timer);
        uv_timer_init(l->loop, l->ledger_timer);
        l->ledger_timer->data = l;
    }
    uv_timer_start(l->ledger_timer, on_ledger_timer, LEDGER_WAIT_MS, 0);
}

static void ledger_write(llm_call *c, double latency_ms)
{
    llm *l = c->l;
    if (!l->st || !c->attempts)
        return; /* nothing was sent: nothing spent */
    store_llm_call *r = ledger_row(l);
    r->id = xstrdup(c->id);
    r->ts_ms = now_ms();
    r->caller_kind = xstrdup(c->caller_kind);
    r->caller = xstrdup(c->caller);
    r->run_id = c->run_id ? xstrdup(c->run_id) : NULL;
    r->provider = xstrdup(c->p->c.name);
    r->model = xstrdup(c->model);
    r->input_tokens = c->in_tok;
    r->output_tokens = c->out_tok;
    r->cost = c->cost;
    r->attempts = c->attempts;
    r->status = xstrdup(c->err_kind ? c->err_kind : "ok");
    r->error = c->err ? xstrdup(c->err) : NULL;
    r->latency_ms = latency_ms;
    r->request_id = c->request_id[0] ? xstrdup(c->request_id) : NULL;
    ledger_added(l, c->caller_kind && !strcmp(c->caller_kind, "other") && c->caller && !strcmp(c->caller, "gateway"));
}

static void call_free_cb(uv_handle_t *h)
{
    llm_call *c = h->data;
    free(h);
    free(c->caller_kind);
    free(c->caller);
    free(c->run_id);
    free(c->model);
    free(c->body);
    json_decref(c->result);
    free(c->err_kind);
    free(c->err);
    free(c);
}

static void prov_release(prov *p);

static void call_dispose(llm_call *c)
{
    llm *l = c->l;
    if (c->claim) /* its answer comes to no call: the claim is given back then */
        claim_detach(c->claim);
    if (c->aprev)
        c->aprev->anext = c->anext;
    else
        l->calls = c->anext;
    if (c->anext)
        c->anext->aprev = c->aprev;
    prov *p = c->p;
    if (p)
        p->calls_live--;
    uv_close((uv_handle_t *)c->timer, call_free_cb);
    if (p)
        prov_release(p);
}

static void queue_unlink(llm_call *c)
{
    prov *p = c->p;
    if (c->qprev)
        c->qprev->qnext = c->qnext;
    else
        p->qhead = c->qnext;
    if (c->qnext)
        c->qnext->qprev = c->qprev;
    else
        p->qtail = c->qprev;
    c->qnext = c->qprev = NULL;
}

static void pump(prov *p);

static void on_finish_timer(uv_timer_t *t)
{
    llm_call *c = t->data;
    c->done(c, c->result, c->err_kind, c->err, c->ud);
    call_dispose(c);
}

/* Records the call's outcome; its callback is still to run. */
static void record(llm_call *c, json_t *result, const char *kind, const char *msg)
{
    c->state = CALL_FINISHING;
    c->result = result;
    c->err_kind = kind ? xstrdup(kind) : NULL;
    c->err = msg ? xstrdup(msg) : NULL;
    double latency = (double)(mono_ns() - c->start_ns) / 1e6;
    if (c->p) {
        prov *p = c->p;
        model_stats *m = model_of(p, c->model ? c->model : "");
        p->calls++;
        m->calls++;
        if (!kind) {
            p->ok++;
        } else {
            count_error(p->errors, kind);
            count_error(m->errors, kind);
        }
        p->input_tokens += (uint64_t)c->in_tok;
        p->output_tokens += (uint64_t)c->out_tok;
        p->cost += c->cost;
        m->input_tokens += (uint64_t)c->in_tok;
        m->output_tokens += (uint64_t)c->out_tok;
        m->cost += c->cost;
        metrics_observe(&m->seconds, latency / 1000.0);
        budget_settle(c);
        ledger_write(c, latency);
        if (kind && c->attempts)
            log_warn("llm", "call %s (%s %s) to %s/%s failed after %d attempt%s: %s: %s", c->id, c->caller_kind,
                     c->caller, p->c.name, c->model, c->attempts, c->attempts == 1 ? "" : "s", kind, msg);
    }
}

/* Ends the call: the outcome is recorded now, the callback runs from a timer
 * (never inside llm_chat or llm_cancel). */
static void finish(llm_call *c, json_t *result, const char *kind, const char *msg)
{
    record(c, result, kind, msg);
    uv_timer_start(c->timer, on_finish_timer, 0, 0);
}

/* ---- request mapping ---- */

static const char *const chat_fields[] = {
    "provider", "model", "messages", "system", "temperature", "max_tokens", "stop", "seed", "response_format",
    "tools", "tool_choice", "timeout_ms", "top_p", NULL,
};

static json_t *map_tools_openai(json_t *tools)
{
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *fn = json_pack("{s:O}", "name", json_object_get(t, "name"));
        if (json_object_get(t, "description"))
            json_object_set(fn, "description", json_object_get(t, "description"));
        json_object_set(fn, "parameters",
                        json_object_get(t, "parameters") ? json_object_get(t, "parameters") : json_pack("{s:s}", "type", "object"));
        json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function", fn));
    }
    return out;
}

static json_t *map_tools_anthropic(json_t *tools)
{
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *o = json_pack("{s:O}", "name", json_object_get(t, "name"));
        if (json_object_get(t, "description"))
            json_object_set(o, "description", json_object_get(t, "description"));
        json_t *schema = json_object_get(t, "parameters");
        json_object_set_new(o, "input_schema", schema ? json_incref(schema) : json_pack("{s:s}", "type", "object"));
        json_array_append_new(out, o);
    }
    return out;
}

/* OpenAI-style messages (roles system/user/assistant/tool, tool_calls on
 * assistant messages) into Anthropic's: system lifted out, tool results as
 * user tool_result blocks, tool calls as tool_use blocks. */
static json_t *map_messages_anthropic(json_t *msgs, buf_t *system)
{
    json_t *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        if (!strcmp(role, "system")) {
            if (json_is_string(content))
                buf_printf(system, "%s%s", system->len ? "\n\n" : "", json_string_value(content));
            continue;
        }
        if (!strcmp(role, "tool")) {
            json_t *block = json_pack("{s:s, s:O?, s:O}", "type", "tool_result", "tool_use_id",
                                      json_object_get(m, "tool_call_id"), "content",
                                      content ? content : json_string(""));
            json_array_append_new(out, json_pack("{s:s, s:[o]}", "role", "user", "content", block));
            continue;
        }
        json_t *calls = json_object_get(m, "tool_calls");
        if (!strcmp(role, "assistant") && json_is_array(calls) && json_array_size(calls)) {
            json_t *blocks = json_array();
            if (json_is_string(content) && json_string_length(content))
                json_array_append_new(blocks, json_pack("{s:s, s:O}", "type", "text", "text", content));
            size_t k;
            json_t *tc;
            json_array_foreach(calls, k, tc) {
                json_t *args = json_object_get(tc, "arguments");
                json_t *input = json_is_string(args) ? json_loads(json_string_value(args), 0, NULL) : json_incref(args);
                json_array_append_new(blocks, json_pack("{s:s, s:O?, s:O?, s:o}", "type", "tool_use", "id",
                                                        json_object_get(tc, "id"), "name", json_object_get(tc, "name"),
                                                        "input", input ? input : json_object()));
            }
            json_array_append_new(out, json_pack("{s:s, s:o}", "role", "assistant", "content", blocks));
            continue;
        }
        json_array_append_new(out, json_pack("{s:s, s:O}", "role", role, "content", content));
    }
    return out;
}

static json_t *map_messages_openai(json_t *msgs, json_t *system)
{
    json_t *out = json_array();
    if (system)
        json_array_append_new(out, json_pack("{s:s, s:O}", "role", "system", "content", system));
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        json_t *calls = json_object_get(m, "tool_calls");
        if (!json_is_array(calls)) {
            json_array_append(out, m);
            continue;
        }
        json_t *copy = json_deep_copy(m);
        json_t *mapped = json_array();
        size_t k;
        json_t *tc;
        json_array_foreach(calls, k, tc) {
            json_t *args = json_object_get(tc, "arguments");
            char *atext = json_is_string(args) ? xstrdup(json_string_value(args))
                                               : json_text(args ? args : json_object(), JSON_COMPACT | JSON_ENCODE_ANY);
            json_array_append_new(mapped, json_pack("{s:O?, s:s, s:{s:O?, s:s}}", "id", json_object_get(tc, "id"),
                                                    "type", "function", "function", "name",
                                                    json_object_get(tc, "name"), "arguments", atext));
            free(atext);
        }
        json_object_set_new(copy, "tool_calls", mapped);
        json_array_append_new(out, copy);
    }
    return out;
}

#define BAD(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* Checks ratchet.llm.chat's request; every message names the field. */
static int check_request(json_t *r, char *err, size_t errlen)
{
    const char *k;
    json_t *v;
    json_object_foreach(r, k, v) {
        bool ok = false;
        for (const char *const *f = chat_fields; *f && !ok; f++)
            ok = !strcmp(*f, k);
        if (!ok)
            BAD("unknown field '%s' (known: provider, model, messages, system, temperature, max_tokens, stop, seed, "
                "response_format, tools, tool_choice, timeout_ms, top_p)", k);
    }
    json_t *msgs = json_object_get(r, "messages");
    if (!json_is_array(msgs) || !json_array_size(msgs))
        BAD("messages: must be a non-empty list of { role = ..., content = ... }");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!json_is_object(m))
            BAD("messages[%zu]: must be a table { role = ..., content = ... }", i + 1);
        if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") &&
                      strcmp(role, "tool")))
            BAD("messages[%zu].role: must be \"system\", \"user\", \"assistant\" or \"tool\"", i + 1);
        json_t *content = json_object_get(m, "content");
        if (!json_is_string(content) && !json_is_array(content) &&
            !(json_is_null(content) || (!content && json_object_get(m, "tool_calls"))))
            BAD("messages[%zu].content: must be a string or a list of content blocks", i + 1);
    }
    json_t *t = json_object_get(r, "temperature");
    if (t && (!json_is_number(t) || json_number_value(t) < 0 || json_number_value(t) > 2))
        BAD("temperature: must be a number from 0 to 2");
    t = json_object_get(r, "top_p");
    if (t && (!json_is_number(t) || json_number_value(t) < 0 || json_number_value(t) > 1))
        BAD("top_p: must be a number from 0 to 1");
    t = json_object_get(r, "max_tokens");
    if (t && (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > 1000000))
        BAD("max_tokens: must be an integer from 1 to 1000000");
    t = json_object_get(r, "seed");
    if (t && !json_is_integer(t))
        BAD("seed: must be an integer");
    t = json_object_get(r, "timeout_ms");
    if (t && (!json_is_integer(t) || json_integer_value(t) < 100 || json_integer_value(t) > 3600000))
        BAD("timeout_ms: must be an integer from 100 to 3600000");
    t = json_object_get(r, "system");
    if (t && !json_is_string(t))
        BAD("system: must be a string");
    t = json_object_get(r, "stop");
    if (t && !json_is_string(t)) {
        if (!json_is_array(t) || json_array_size(t) > 4)
            BAD("stop: must be a string or a list of up to 4 strings");
        json_array_foreach(t, i, m) if (!json_is_string(m)) BAD("stop[%zu]: must be a string", i + 1);
    }
    t = json_object_get(r, "response_format");
    if (t && !json_is_object(t))
        BAD("response_format: must be a table, like { type = \"json_object\" }");
    t = json_object_get(r, "tools");
    if (t) {
        if (!json_is_array(t))
            BAD("tools: must be a list of { name = ..., description = ..., parameters = <JSON Schema> }");
        json_array_foreach(t, i, m) {
            if (!json_is_object(m) || !json_is_string(json_object_get(m, "name")))
                BAD("tools[%zu].name: must be a string", i + 1);
            json_t *params = json_object_get(m, "parameters");
            if (params && !json_is_object(params))
                BAD("tools[%zu].parameters: must be a JSON Schema object", i + 1);
        }
    }
    t = json_object_get(r, "tool_choice");
    if (t && !json_is_string(t) && !json_is_object(t))
        BAD("tool_choice: must be \"auto\", \"none\", \"required\" or { name = ... }");
    return 0;
}

/* The provider's request body. */
static char *build_body(const prov *p, json_t *r, const char *model, int max_tokens)
{
    json_t *o = json_pack("{s:s}", "model", model);
    json_t *v;
    if (p->c.kind == LLM_OPENAI) {
        json_object_set_new(o, "messages", map_messages_openai(json_object_get(r, "messages"), json_object_get(r, "system")));
        if (json_object_get(r, "max_tokens"))
            json_object_set_new(o, "max_tokens", json_integer(max_tokens));
        if ((v = json_object_get(r, "stop")))
            json_object_set(o, "stop", v);
        if ((v = json_object_get(r, "seed")))
            json_object_set(o, "seed", v);
        if ((v = json_object_get(r, "response_format")))
            json_object_set(o, "response_format", v);
        if ((v = json_object_get(r, "tools")))
            json_object_set_new(o, "tools", map_tools_openai(v));
        if ((v = json_object_get(r, "tool_choice"))) {
            if (json_is_object(v))
                json_object_set_new(o, "tool_choice", json_pack("{s:s, s:{s:O}}", "type", "function", "function",
                                                                "name", json_object_get(v, "name")));
            else
                json_object_set(o, "tool_choice", v);
        }
    } else {
        buf_t system;
        buf_init(&system);
        if ((v = json_object_get(r, "system")))
            buf_puts(&system, json_string_value(v));
        json_object_set_new(o, "messages", map_messages_anthropic(json_object_get(r, "messages"), &system));
        if (system.len)
            json_object_set_new(o, "system", json_stringn(system.data, system.len));
        buf_free(&system);
        json_object_set_new(o, "max_tokens", json_integer(max_tokens));
        if ((v = json_object_get(r, "stop")))
            json_object_set_new(o, "stop_sequences", json_is_string(v) ? json_pack("[O]", v) : json_incref(v));
        if ((v = json_object_get(r, "tools")))
            json_object_set_new(o, "tools", map_tools_anthropic(v));
        if ((v = json_object_get(r, "tool_choice"))) {
            const char *s = json_string_value(v);
            json_t *tc = json_is_object(v) ? json_pack("{s:s, s:O}", "type", "tool", "name", json_object_get(v, "name"))
                         : s && !strcmp(s, "required") ? json_pack("{s:s}", "type", "any")
                         : s && !strcmp(s, "none") ? json_pack("{s:s}", "type", "none")
                                                   : json_pack("{s:s}", "type", "auto");
            json_object_set_new(o, "tool_choice", tc);
        }
        /* seed and response_format have no Anthropic equivalent: not sent */
    }
    if ((v = json_object_get(r, "temperature")))
        json_object_set(o, "temperature", v);
    if ((v = json_object_get(r, "top_p")))
        json_object_set(o, "top_p", v);
    char *text = jtree_dump(o);
    json_decref(o);
    return text;
}

/* ---- the response ---- */

static json_t *normalise(llm_call *c, const char *body, size_t len, const char *request_id, char *err, size_t errlen)
{
    char perr[120];
    json_t *r = jtree_parse(body, len, perr, sizeof perr);
    if (!json_is_object(r)) {
        json_decref(r);
        snprintf(err, errlen, "the provider answered 200 with a body that is not a JSON object");
        return NULL;
    }
    buf_t text;
    buf_init(&text);
    bool has_text = false;
    json_t *calls = json_array();
    const char *finish = "stop";
    json_int_t in = 0, out = 0;
    if (c->p->c.kind == LLM_OPENAI) {
        json_t *ch = json_array_get(json_object_get(r, "choices"), 0);
        json_t *msg = json_object_get(ch, "message");
        if (!json_is_object(msg)) {
            json_decref(r);
            json_decref(calls);
            snprintf(err, errlen, "the provider's answer has no choices[0].message");
            return NULL;
        }
        json_t *content = json_object_get(msg, "content");
        if (json_is_string(content)) {
            buf_append(&text, json_string_value(content), json_string_length(content));
            has_text = true;
        }
        size_t i;
        json_t *tc;
        json_array_foreach(json_object_get(msg, "tool_calls"), i, tc) {
            json_t *fn = json_object_get(tc, "function");
            const char *atext = json_string_value(json_object_get(fn, "arguments"));
            json_t *args = atext ? json_loads(atext, JSON_DECODE_ANY, NULL) : NULL;
            json_array_append_new(calls, json_pack("{s:O?, s:O?, s:o}", "id", json_object_get(tc, "id"), "name",
                                                   json_object_get(fn, "name"), "arguments",
                                                   args ? args : json_string(atext ? atext : "")));
        }
        const char *fr = json_string_value(json_object_get(ch, "finish_reason"));
        finish = fr ? (!strcmp(fr, "function_call") ? "tool_calls" : fr) : "stop";
        json_t *u = json_object_get(r, "usage");
        in = json_integer_value(json_object_get(u, "prompt_tokens"));
        out = json_integer_value(json_object_get(u, "completion_tokens"));
    } else {
        json_t *content = json_object_get(r, "content");
        if (!json_is_array(content)) {
            json_decref(r);
            json_decref(calls);
            snprintf(err, errlen, "the provider's answer has no content list");
            return NULL;
        }
        size_t i;
        json_t *b;
        json_array_foreach(content, i, b) {
            const char *type = json_string_value(json_object_get(b, "type"));
            if (type && !strcmp(type, "text")) {
                json_t *t = json_object_get(b, "text");
                buf_append(&text, json_string_value(t) ? json_string_value(t) : "", json_string_length(t));
                has_text = true;
            } else if (type && !strcmp(type, "tool_use")) {
                json_array_append_new(calls, json_pack("{s:O?, s:O?, s:O?}", "id", json_object_get(b, "id"), "name",
                                                       json_object_get(b, "name"), "arguments",
                                                       json_object_get(b, "input")));
            }
        }
        const char *sr = json_string_value(json_object_get(r, "stop_reason"));
        finish = !sr || !strcmp(sr, "end_turn") || !strcmp(sr, "stop_sequence") ? "stop"
                 : !strcmp(sr, "max_tokens") ? "length" : !strcmp(sr, "tool_use") ? "tool_calls" : sr;
        json_t *u = json_object_get(r, "usage");
        in = json_integer_value(json_object_get(u, "input_tokens"));
        out = json_integer_value(json_object_get(u, "output_tokens"));
    }
    c->in_tok = in;
    c->out_tok = out;
    const llm_price *pr = price_of(c->p, c->model);
    c->cost = pr ? ((double)in * pr->input_per_mtok + (double)out * pr->output_per_mtok) / 1e6 : 0;
    json_t *res = json_pack("{s:o, s:o, s:s, s:{s:I, s:I}, s:f, s:s, s:s, s:s, s:i, s:f}", "text",
                            has_text ? json_stringn(text.data ? text.data : "", text.len) : json_null(), "tool_calls",
                            calls, "finish_reason", finish, "usage", "input_tokens", in, "output_tokens", out,
                            "latency_ms", (double)(mono_ns() - c->start_ns) / 1e6, "request_id", request_id,
                            "provider", c->p->c.name, "model", c->model, "attempts", c->attempts, "cost", c->cost);
    buf_free(&text);
    json_decref(r);
    return res;
}

/* The provider's error message, at most 300 bytes, with the key cut out. */
static void provider_message(const prov *p, const char *body, size_t len, char *out, size_t outlen)
{
    json_t *r = json_loadb(body, len, 0, NULL);
    json_t *e = json_object_get(r, "error");
    const char *m = json_string_value(json_object_get(e, "message"));
    if (!m)
        m = json_string_value(e);
    if (m)
        snprintf(out, outlen, "%.300s", m);
    else
        snprintf(out, outlen, "%.*s", (int)(len < 200 ? len : 200), body ? body : "");
    json_decref(r);
    for (char *ch = out; *ch; ch++)
        if ((unsigned char)*ch < 32)
            *ch = ' ';
    if (p->c.api_key && *p->c.api_key) {
        char *hit;
        size_t kl = strlen(p->c.api_key);
        while ((hit = strstr(out, p->c.api_key))) {
            const char *red = "[redacted]";
            size_t rl = strlen(red);
            memmove(hit + rl, hit + kl, strlen(hit + kl) + 1);
            memcpy(hit, red, rl);
        }
    }
}

/* ---- the breaker and the buckets ---- */

static bool circuit_allows(prov *p)
{
    if (p->circuit == CIRCUIT_OPEN) {
        if (mono_ns() - p->opened_ns < (uint64_t)p->c.circuit_cooldown_ms * 1000000u)
            return false;
        p->circuit = CIRCUIT_HALF_OPEN;
        p->probing = false;
        log_info("llm", "provider %s: circuit half-open, letting one call through", p->c.name);
    }
    if (p->circuit == CIRCUIT_HALF_OPEN)
        return !p->probing;
    return true;
}

static void circuit_result(prov *p, bool healthy)
{
    if (healthy) {
        if (p->circuit != CIRCUIT_CLOSED)
            log_info("llm", "provider %s: circuit closed", p->c.name);
        p->circuit = CIRCUIT_CLOSED;
        p->consecutive_failures = 0;
        p->probing = false;
        return;
    }
    p->consecutive_failures++;
    if (p->circuit == CIRCUIT_HALF_OPEN || p->consecutive_failures >= p->c.circuit_failures) {
        if (p->circuit != CIRCUIT_OPEN)
            log_warn("llm", "provider %s: circuit open for %d ms after %d failures in a row", p->c.name,
                     p->c.circuit_cooldown_ms, p->consecutive_failures);
        p->circuit = CIRCUIT_OPEN;
        p->opened_ns = mono_ns();
        p->probing = false;
    }
}

static void refill(prov *p)
{
    uint64_t now = mono_ns();
    double mins = (double)(now - p->refill_ns) / 60e9;
    p->refill_ns = now;
    if (p->c.requests_per_minute > 0)
        p->rpm_level = fmin(p->c.requests_per_minute, p->rpm_level + mins * p->c.requests_per_minute);
    if (p->c.tokens_per_minute > 0)
        p->tpm_level = fmin(p->c.tokens_per_minute, p->tpm_level + mins * p->c.tokens_per_minute);
}

/* ms until the head call may go, 0 if now. */
static uint64_t bucket_wait_ms(prov *p, double tokens)
{
    refill(p);
    double wait = 0;
    if (p->c.requests_per_minute > 0 && p->rpm_level < 1)
        wait = (1 - p->rpm_level) / p->c.requests_per_minute * 60000;
    if (p->c.tokens_per_minute > 0) {
        double need = fmin(tokens, p->c.tokens_per_minute); /* a call bigger than the bucket waits for a full one */
        if (p->tpm_level < need)
            wait = fmax(wait, (need - p->tpm_level) / p->c.tokens_per_minute * 60000);
    }
    return wait > 0 ? (uint64_t)ceil(wait) : 0;
}

/* ---- attempts ---- */

static void send_attempt(llm_call *c);

static void on_prov_timer(uv_timer_t *t)
{
    pump(t->data);
}

static void pump(prov *p)
{
    while (p->qhead && p->in_flight < p->c.concurrency) {
        llm_call *c = p->qhead;
        if (!circuit_allows(p)) {
            queue_unlink(c);
            finish(c, NULL, "circuit_open",
                   "the provider failed too often in a row; calls are refused until its cooldown ends");
            continue;
        }
        uint64_t wait = bucket_wait_ms(p, c->est_tokens);
        if (wait) {
            uv_timer_start(p->timer, on_prov_timer, wait, 0);
            return;
        }
        if (p->c.requests_per_minute > 0)
            p->rpm_level -= 1;
        if (p->c.tokens_per_minute > 0)
            p->tpm_level -= fmin(c->est_tokens, p->c.tokens_per_minute);
        queue_unlink(c);
        if (p->circuit == CIRCUIT_HALF_OPEN)
            p->probing = true;
        send_attempt(c);
    }
}

static void on_backoff(uv_timer_t *t)
{
    llm_call *c = t->data;
    prov *p = c->p;
    c->state = CALL_QUEUED;
    c->qnext = p->qhead; /* a retry goes first: it has waited already */
    c->qprev = NULL;
    if (p->qhead)
        p->qhead->qprev = c;
    else
        p->qtail = c;
    p->qhead = c;
    pump(p);
}

static bool retryable_status(int s)
{
    return s == 408 || s == 409 || s == 429 || s >= 500;
}

static const char *status_kind(int s)
{
    if (s == 401 || s == 403)
        return "auth";
    if (s == 408)
        return "timeout";
    if (s == 429)
        return "rate_limited";
    if (s == 529 || s == 503)
        return "overloaded";
    if (s >= 500)
        return "server_error";
    if (s == 409)
        return "conflict";
    return "rejected"; /* the provider refused the request: not retried */
}

static void on_response(httpc_req *hr, const httpc_response *resp, void *ud)
{
    (void)hr;
    llm_call *c = ud;
    prov *p = c->p;
    c->req = NULL;
    p->in_flight--;
    if (resp->request_id[0])
        snprintf(c->request_id, sizeof c->request_id, "%s", resp->request_id);
    char msg[512];
    const char *kind = NULL;
    bool retry = false;
    if (resp->error) {
        kind = httpc_error_name(resp->error);
        snprintf(msg, sizeof msg, "%s", resp->message);
        retry = resp->error != HTTPC_TOO_LARGE && resp->error != HTTPC_TLS;
    } else if (resp->status >= 200 && resp->status < 300) {
        char err[200];
        json_t *result = normalise(c, resp->body, resp->body_len, resp->request_id, err, sizeof err);
        circuit_result(p, true);
        if (result)
            record(c, result, NULL, NULL);
        else
            record(c, NULL, "invalid_response", err);
        pump(p);
        on_finish_timer(c->timer);
        return;
    } else {
        kind = status_kind(resp->status);
        char pm[400];
        provider_message(p, resp->body, resp->body_len, pm, sizeof pm);
        if (!strcmp(kind, "auth"))
            snprintf(msg, sizeof msg, "provider '%s' refused the API key (HTTP %d): %s", p->c.name, resp->status, pm);
        else
            snprintf(msg, sizeof msg, "HTTP %d from provider '%s': %s", resp->status, p->c.name, pm);
        retry = retryable_status(resp->status);
    }
    /* health: transport failures and 5xx count against the breaker; 429 and 4xx do not */
    bool unhealthy = resp->error || resp->status >= 500;
    if (unhealthy)
        circuit_result(p, false);
    else if (p->circuit == CIRCUIT_HALF_OPEN)
        p->probing = false;
    uint64_t elapsed_ms = (mono_ns() - c->start_ns) / 1000000u;
    bool time_left = elapsed_ms + 50 < (uint64_t)c->timeout_ms;
    if (retry && c->attempts <= p->c.max_retries && p->circuit != CIRCUIT_OPEN && time_left) {
        uint64_t cap = (uint64_t)p->c.backoff_max_ms;
        uint64_t exp = (uint64_t)p->c.backoff_base_ms << (c->attempts - 1 < 20 ? c->attempts - 1 : 20);
        uint64_t ceiling = exp < cap ? exp : cap;
        uint32_t rnd;
        random_bytes(&rnd, sizeof rnd);
        uint64_t delay = ceiling ? (uint64_t)rnd % (ceiling + 1) : 0; /* full jitter */
        if (resp->retry_after_ms >= 0)
            delay = (uint64_t)resp->retry_after_ms < (uint64_t)p->c.retry_after_max_ms ? (uint64_t)resp->retry_after_ms
                                                                                        : (uint64_t)p->c.retry_after_max_ms;
        if (elapsed_ms + delay + 50 >= (uint64_t)c->timeout_ms)
            delay = (uint64_t)c->timeout_ms - elapsed_ms - 50; /* the last chance fits in the deadline */
        p->retries++;
        model_of(p, c->model ? c->model : "")->retries++;
        log_debug("llm", "call %s to %s: attempt %d failed (%s: %s); retrying in %llu ms", c->id, p->c.name,
                  c->attempts, kind, msg, (unsigned long long)delay);
        c->state = CALL_BACKOFF;
        uv_timer_start(c->timer, on_backoff, delay, 0);
    } else {
        if (retry && p->circuit == CIRCUIT_OPEN && c->attempts <= p->c.max_retries)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), " (no retry: the circuit opened)");
        else if (retry && !time_left && c->attempts <= p->c.max_retries)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), " (no retry: the call's %d ms are spent)",
                     c->timeout_ms);
        record(c, NULL, kind, msg);
        pump(p);
        on_finish_timer(c->timer); /* from httpc's collection, not inside curl: the caller may start its next call */
        return;
    }
    pump(p);
}

/* The URL and headers of a call to p: the key (the provider's, or key when
 * given) in auth, which the caller wipes after use. Returns the header count. */
static int prov_request(const prov *p, const char *key, char *url, size_t urllen, const char **hdrs, int maxh,
                        char *auth, size_t authlen, char *ver, size_t verlen)
{
    snprintf(url, urllen, "%s%s%s%s", p->c.base_url, p->c.kind == LLM_OPENAI ? "/chat/completions" : "/messages",
             p->c.query ? "?" : "", p->c.query ? p->c.query : "");
    int nh = 0;
    auth[0] = ver[0] = 0;
    hdrs[nh++] = "Content-Type: application/json";
    enum llm_auth how = p->c.auth;
    if (key && how == AUTH_NONE)
        how = p->c.kind == LLM_ANTHROPIC ? AUTH_X_API_KEY : AUTH_BEARER;
    if (!key)
        key = p->c.api_key;
    if (how == AUTH_BEARER)
        snprintf(auth, authlen, "Authorization: Bearer %s", key);
    else if (how == AUTH_API_KEY)
        snprintf(auth, authlen, "api-key: %s", key);
    else if (how == AUTH_X_API_KEY)
        snprintf(auth, authlen, "x-api-key: %s", key);
    if (auth[0])
        hdrs[nh++] = auth;
    if (p->c.kind == LLM_ANTHROPIC) {
        snprintf(ver, verlen, "anthropic-version: %s", p->c.anthropic_version);
        hdrs[nh++] = ver;
    }
    for (int i = 0; i < p->c.nheaders && nh < maxh; i++)
        hdrs[nh++] = p->c.headers[i];
    return nh;
}

static void send_attempt(llm_call *c)
{
    prov *p = c->p;
    /* work this engine owns (runs, evaluations, the loop: every caller but "other", the
     * gateway's and the API's own calls) starts no call, first or retry, while its lease on a
     * shared store is not fresh: another engine may have claimed that work (docs/scale-out.md) */
    if (strcmp(c->caller_kind, "other") && c->l->st &&
        (!store_lease_fresh(c->l->st) || store_lease_generation(c->l->st) != c->lease_gen)) {
        /* (a call asked for before a lapse and still waiting after it: its work may be another's) */
        finish(c, NULL, "lease", "this engine's lease on the shared store lapsed (no heartbeat committed for 10 s): "
                                 "nothing was sent; the work it owns waits until it re-claims it");
        return;
    }
    c->attempts++;
    p->attempts++;
    c->state = CALL_SENDING;
    char url[2048];
    const char *hdrs[80];
    char auth[4200] = "", ver[200] = "";
    int nh = prov_request(p, NULL, url, sizeof url, hdrs, 80, auth, sizeof auth, ver, sizeof ver);
    uint64_t elapsed = (mono_ns() - c->start_ns) / 1000000u;
    long left = c->timeout_ms - (long)elapsed;
    httpc_opts o = {.method = "POST", .url = url, .headers = hdrs, .nheaders = nh, .body = c->body,
                    .body_len = c->body_len, .connect_timeout_ms = p->c.connect_timeout_ms,
                    .timeout_ms = left > 100 ? left : 100, .idle_timeout_ms = p->c.idle_timeout_ms,
                    .max_response = (size_t)p->c.max_response_bytes};
    p->in_flight++;
    c->req = httpc_start(c->l->h, &o, on_response, c);
    memset(auth, 0, sizeof auth);
    if (!c->req) {
        p->in_flight--;
        finish(c, NULL, "transport", "the HTTP client refused the request");
    }
}

/* ---- proxied calls (the gateway) ---- */

char *llm_provider_body(llm *l, json_t *r, bool stream)
{
    prov *p = find_prov(l, json_string_value(json_object_get(r, "provider")));
    const char *model = json_string_value(json_object_get(r, "model"));
    if (!p || !(model = model ? model : p->c.default_model))
        return NULL;
    json_t *mt = json_object_get(r, "max_tokens");
    char *text = build_body(p, r, model, mt ? (int)json_integer_value(mt) : 1024);
    if (!stream)
        return text;
    json_t *o = json_loads(text, 0, NULL);
    free(text);
    json_object_set_new(o, "stream", json_true());
    if (p->c.kind == LLM_OPENAI) /* the usage comes in the last chunk only when asked */
        json_object_set_new(o, "stream_options", json_pack("{s:b}", "include_usage", 1));
    text = jtree_dump(o);
    json_decref(o);
    return text;
}

int llm_provider_kind(llm *l, const char *name, const char **default_model)
{
    prov *p = find_prov(l, name);
    if (!p)
        return -1;
    if (default_model)
        *default_model = p->c.default_model;
    return (int)p->c.kind;
}

httpc_req *llm_proxy(llm *l, const llm_proxy_opts *o, char *err, size_t errlen)
{
    prov *p = find_prov(l, o->provider);
    if (!p) {
        snprintf(err, errlen, "no provider named '%s' is configured", o->provider);
        return NULL;
    }
    char url[2048];
    const char *hdrs[80];
    char auth[4200] = "", ver[200] = "";
    int nh = prov_request(p, o->caller_key, url, sizeof url, hdrs, 79, auth, sizeof auth, ver, sizeof ver);
    if (o->extra_header)
        hdrs[nh++] = o->extra_header;
    httpc_opts ho = {.method = "POST", .url = url, .headers = hdrs, .nheaders = nh, .body = o->body,
                     .body_len = o->body_len, .connect_timeout_ms = p->c.connect_timeout_ms,
                     .timeout_ms = o->timeout_ms, .idle_timeout_ms = o->idle_timeout_ms,
                     .max_response = (size_t)p->c.max_response_bytes, .on_chunk = o->on_chunk};
    httpc_req *r = httpc_start(l->h, &ho, o->done, o->ud); /* counted by llm_note_proxied */
    memset(auth, 0, sizeof auth);
    if (!r)
        snprintf(err, errlen, "the HTTP client refused the request");
    return r;
}

void llm_note_proxied(llm *l, const char *provider, const char *model, int64_t in_tok, int64_t out_tok,
                      const char *kind, const char *error, double latency_ms, const char *request_id)
{
    prov *p = find_prov(l, provider);
    if (!p)
        return;
    roll_day(l);
    if (in_tok < 0)
        in_tok = 0;
    if (out_tok < 0)
        out_tok = 0;
    const llm_price *price = price_of(p, model ? model : "");
    double cost = price ? ((double)in_tok * price->input_per_mtok + (double)out_tok * price->output_per_mtok) / 1e6 : 0;
    model_stats *m = model_of(p, model ? model : "");
    p->calls++;
    p->attempts++;
    m->calls++;
    if (!kind) {
        p->ok++;
    } else {
        count_error(p->errors, kind);
        count_error(m->errors, kind);
    }
    p->input_tokens += (uint64_t)in_tok;
    p->output_tokens += (uint64_t)out_tok;
    p->cost += cost;
    m->input_tokens += (uint64_t)in_tok;
    m->output_tokens += (uint64_t)out_tok;
    m->cost += cost;
    metrics_observe(&m->seconds, latency_ms / 1000.0);
    l->day_calls += 1;
    l->day_tokens += (double)(in_tok + out_tok);
    l->day_cost += cost;
    if (!l->st)
        return;
    store_llm_call *r = ledger_row(l);
    char id[37];
    id_uuid7(id);
    r->id = xstrdup(id);
    r->ts_ms = now_ms();
    r->caller_kind = xstrdup("other");
    r->caller = xstrdup("gateway");
    r->provider = xstrdup(provider);
    r->model = xstrdup(model ? model : "");
    r->input_tokens = in_tok;
    r->output_tokens = out_tok;
    r->cost = cost;
    r->attempts = 1;
    r->status = xstrdup(kind ? kind : "ok");
    r->error = error ? xstrdup(error) : NULL;
    r->latency_ms = latency_ms;
    r->request_id = request_id && *request_id ? xstrdup(request_id) : NULL;
    ledger_added(l, true);
}

const char *llm_daily_budget_spent(llm *l)
{
    roll_day(l);
    if (l->b.daily_calls > 0 && l->day_calls + l->res_calls >= l->b.daily_calls)
        return "llm.daily_calls";
    if (l->b.daily_tokens > 0 && l->day_tokens + l->res_tokens >= l->b.daily_tokens)
        return "llm.daily_tokens";
    if (l->b.daily_cost > 0 && l->day_cost + l->res_cost >= l->b.daily_cost)
        return "llm.daily_cost";
    return NULL;
}

/* ---- calls ---- */

static void prov_release(prov *p)
{
    if (p->retired && !p->calls_live) {
        llm *l = p->l;
        for (prov **pp = &l->provs; *pp; pp = &(*pp)->next)
            if (*pp == p) {
                *pp = p->next;
                break;
            }
        prov_free(p);
    }
}

int llm_check_request(json_t *r, char *err, size_t errlen)
{
    if (!json_is_object(r))
        BAD("the request must be a table");
    if (check_request(r, err, errlen) != 0)
        return -1;
    json_t *pv = json_object_get(r, "provider"), *mv = json_object_get(r, "model");
    if (pv && (!json_is_string(pv) || !*json_string_value(pv)))
        BAD("provider: must be a provider's name");
    if (mv && (!json_is_string(mv) || !*json_string_value(mv)))
        BAD("model: must be a model name");
    return 0;
}

llm_call *llm_chat_json(llm *l, json_t *r, const llm_caller *who, llm_done done, void *ud)
{
    llm_call *c = xcalloc(1, sizeof *c);
    c->l = l;
    c->done = done;
    c->ud = ud;
    c->start_ns = mono_ns();
    id_uuid7(c->id);
    c->lease_gen = l->st ? store_lease_generation(l->st) : 0;
    c->caller_kind = xstrdup(who && who->kind ? who->kind : "other");
    c->caller = xstrdup(who && who->name ? who->name : "");
    c->run_id = who && who->run_id ? xstrdup(who->run_id) : NULL;
    c->timer = xmalloc(sizeof *c->timer);
    uv_timer_init(l->loop, c->timer);
    c->timer->data = c;
    c->anext = l->calls;
    if (l->calls)
        l->calls->aprev = c;
    l->calls = c;
    char err[400];
    if (llm_check_request(r, err, sizeof err) != 0) {
        finish(c, NULL, "bad_request", err);
        return c;
    }
    const char *pname = json_string_value(json_object_get(r, "provider"));
    prov *p = NULL;
    if (pname) {
        p = find_prov(l, pname);
    } else {
        int n = 0;
        for (prov *q = l->provs; q; q = q->next)
            if (!q->retired)
                n++, p = q;
        if (n != 1)
            p = NULL;
    }
    if (!p) {
        buf_t names;
        buf_init(&names);
        for (prov *q = l->provs; q; q = q->next)
            if (!q->retired)
                buf_printf(&names, "%s%s", names.len ? ", " : "", q->c.name);
        if (pname)
            snprintf(err, sizeof err, "provider: no provider '%.100s' in the config (configured: %s)", pname,
                     names.len ? names.data : "none");
        else
            snprintf(err, sizeof err, "provider: name one (configured: %s)", names.len ? names.data : "none");
        buf_free(&names);
        finish(c, NULL, "bad_request", err);
        return c;
    }
    c->p = p;
    p->calls_live++;
    const char *model = json_string_value(json_object_get(r, "model"));
    if (!model)
        model = p->c.default_model;
    if (!model) {
        snprintf(err, sizeof err, "model: provider '%s' has no default_model; name the model", p->c.name);
        finish(c, NULL, "bad_request", err);
        return c;
    }
    c->model = xstrdup(model);
    json_t *mt = json_object_get(r, "max_tokens");
    int max_tokens = mt ? (int)json_integer_value(mt) : 1024;
    json_t *to = json_object_get(r, "timeout_ms");
    c->timeout_ms = to ? (int)json_integer_value(to) : p->c.timeout_ms;
    c->body = build_body(p, r, model, max_tokens);
    c->body_len = strlen(c->body);
    /* what the call may cost at most: its input (about 3 bytes a token, to
     * err on the high side) and every output token it may ask for */
    double in_est = (double)c->body_len / 3.0 + 1;
    c->est_tokens = in_est + max_tokens;
    const llm_price *pr = price_of(p, c->model);
    if (!pr && l->b.daily_cost > 0) {
        snprintf(err, sizeof err, "model '%.100s' has no price in provider '%s''s models table, and a cost budget is set",
                 c->model, p->c.name);
        finish(c, NULL, "budget", err);
        return c;
    }
    c->est_cost = pr ? (in_est * pr->input_per_mtok + max_tokens * pr->output_per_mtok) / 1e6 : 0;
    const char *why = budget_reserve(c);
    if (why) {
        finish(c, NULL, "budget", why);
        return c;
    }
    c->start_ms = l->day_start_ms;
    if (shared_budgets(l)) {
        claim_start(c);
        return c;
    }
    call_enqueue(c);
    return c;
}

/* Into the provider's queue, unless its breaker is open. */
static void call_enqueue(llm_call *c)
{
    prov *p = c->p;
    if (!circuit_allows(p)) {
        finish(c, NULL, "circuit_open", "the provider failed too often in a row; calls are refused until its cooldown ends");
        return;
    }
    c->state = CALL_QUEUED;
    c->qprev = p->qtail;
    if (p->qtail)
        p->qtail->qnext = c;
    else
        p->qhead = c;
    p->qtail = c;
    pump(p);
}

llm_call *llm_chat(llm *l, const char *request, const llm_caller *who, llm_done done, void *ud)
{
    json_t *r = json_loads(request, 0, NULL);
    llm_call *c = llm_chat_json(l, r, who, done, ud);
    json_decref(r);
    return c;
}

/* Stops whatever the call is waiting on (not the finish timer). */
static void call_stop_io(llm_call *c)
{
    switch (c->state) {
    case CALL_CLAIMING:
        break; /* the claim's answer finds the call gone (call_dispose) */
    case CALL_QUEUED:
        if (c->p)
            queue_unlink(c);
        break;
    case CALL_SENDING:
        httpc_cancel(c->req);
        c->req = NULL;
        c->p->in_flight--;
        break;
    case CALL_BACKOFF:
        uv_timer_stop(c->timer);
        break;
    case CALL_FINISHING:
        break;
    }
}

void llm_cancel(llm_call *c)
{
    call_stop_io(c);
    if (c->state == CALL_FINISHING) {
        uv_timer_stop(c->timer);
    } else if (c->p) {
        c->err_kind = xstrdup("cancelled");
        c->err = xstrdup("the caller went away");
        budget_settle(c);
        ledger_write(c, (double)(mono_ns() - c->start_ns) / 1e6);
    }
    prov *p = c->p;
    call_dispose(c);
    if (p && !p->retired)
        pump(p);
}

void llm_abort_all(llm *l, const char *why)
{
    for (llm_call *c = l->calls; c; c = c->anext)
        if (c->state != CALL_FINISHING) {
            call_stop_io(c);
            finish(c, NULL, "cancelled", why);
        }
}

void llm_metrics(llm *l, buf_t *b)
{
    roll_day(l);
    static const metrics_counter counters[] = {
        {"ratchet_llm_calls_total", "LLM calls ended (after their retries), by provider and model.",
         offsetof(model_stats, calls)},
        {"ratchet_llm_retries_total", "Attempts repeated after a retryable failure.", offsetof(model_stats, retries)},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        metrics_family(b, counters[i].name, "counter", counters[i].help);
        for (prov *p = l->provs; p; p = p->next)
            for (model_stats *m = p->models; m; m = m->next)
                if (!p->retired)
                    metrics_sample(b, counters[i].name, metrics_field(m, counters[i].off),
                                   "provider", p->c.name, "model", m->model, NULL);
    }
    metrics_family(b, "ratchet_llm_errors_total", "counter",
                   "LLM calls that failed, by kind (timeout, rate_limited, server_error, circuit_open, budget, ...).");
    for (prov *p = l->provs; p; p = p->next)
        for (model_stats *m = p->models; m && !p->retired; m = m->next) {
            const char *kind;
            json_t *n;
            json_object_foreach(m->errors, kind, n)
                metrics_sample(b, "ratchet_llm_errors_total", (double)json_integer_value(n), "provider", p->c.name,
                               "model", m->model, "kind", kind, NULL);
        }
    metrics_family(b, "ratchet_llm_tokens_total", "counter", "Tokens the provider reported, by direction.");
    for (prov *p = l->provs; p; p = p->next)
        for (model_stats *m = p->models; m && !p->retired; m = m->next) {
            metrics_sample(b, "ratchet_llm_tokens_total", (double)m->input_tokens, "provider", p->c.name, "model",
                           m->model, "direction", "input", NULL);
            metrics_sample(b, "ratchet_llm_tokens_total", (double)m->output_tokens, "provider", p->c.name, "model",
                           m->model, "direction", "output", NULL);
        }
    metrics_family(b, "ratchet_llm_cost_dollars_total", "counter", "Cost from the provider's price table, in dollars.");
    for (prov *p = l->provs; p; p = p->next)
        for (model_stats *m = p->models; m && !p->retired; m = m->next)
            metrics_sample(b, "ratchet_llm_cost_dollars_total", m->cost, "provider", p->c.name, "model", m->model,
                           NULL);
    metrics_family(b, "ratchet_llm_request_duration_seconds", "histogram",
                   "Time from an LLM call's start to its end, queueing and retries included.");
    for (prov *p = l->provs; p; p = p->next)
        for (model_stats *m = p->models; m && !p->retired; m = m->next)
            metrics_histogram(b, "ratchet_llm_request_duration_seconds", &m->seconds, "provider", p->c.name, "model",
                              m->model, NULL);
    metrics_family(b, "ratchet_llm_circuit_state", "gauge",
                   "1 for the state a provider's circuit breaker is in (closed, half_open, open), else 0.");
    static const char *const states[] = {"closed", "open", "half_open"};
    for (prov *p = l->provs; p; p = p->next)
        for (int st = 0; st < 3 && !p->retired; st++)
            metrics_sample(b, "ratchet_llm_circuit_state", p->circuit == (enum circuit)st, "provider", p->c.name,
                           "state", states[st], NULL);
    metrics_family(b, "ratchet_llm_in_flight", "gauge", "LLM calls being sent now, by provider.");
    for (prov *p = l->provs; p; p = p->next)
        if (!p->retired)
            metrics_sample(b, "ratchet_llm_in_flight", p->in_flight, "provider", p->c.name, NULL);
    metrics_family(b, "ratchet_llm_spent_today", "gauge",
                   "What LLM calls used since 00:00 UTC, against the daily budget: calls, tokens, cost (dollars).");
    metrics_sample(b, "ratchet_llm_spent_today", l->day_calls, "resource", "calls", NULL);
    metrics_sample(b, "ratchet_llm_spent_today", l->day_tokens, "resource", "tokens", NULL);
    metrics_sample(b, "ratchet_llm_spent_today", l->day_cost, "resource", "cost", NULL);
    metrics_family(b, "ratchet_llm_budget_daily", "gauge", "The daily budgets (0: none).");
    metrics_sample(b, "ratchet_llm_budget_daily", l->b.daily_calls, "resource", "calls", NULL);
    metrics_sample(b, "ratchet_llm_budget_daily", l->b.daily_tokens, "resource", "tokens", NULL);
    metrics_sample(b, "ratchet_llm_budget_daily", l->b.daily_cost, "resource", "cost", NULL);
    metrics_one(b, "ratchet_llm_ledger_failures_total", "counter",
                "LLM calls the ledger failed to record.", (double)l->ledger_failures);
}

json_t *llm_status_json(llm *l)
{
    roll_day(l);
    json_t *provs = json_array();
    for (prov *p = l->provs; p; p = p->next) {
        if (p->retired)
            continue;
        const char *circ = p->circuit == CIRCUIT_OPEN ? "open" : p->circuit == CIRCUIT_HALF_OPEN ? "half_open" : "closed";
        json_array_append_new(provs, json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:O}",
                                               "name", p->c.name, "kind", p->c.kind == LLM_OPENAI ? "openai" : "anthropic",
                                               "circuit", circ, "in_flight", p->in_flight, "concurrency",
                                               p->c.concurrency, "calls", (json_int_t)p->calls, "ok",
                                               (json_int_t)p->ok, "attempts", (json_int_t)p->attempts, "retries",
                                               (json_int_t)p->retries, "input_tokens", (json_int_t)p->input_tokens,
                                               "output_tokens", (json_int_t)p->output_tokens, "cost", p->cost,
                                               "errors", p->errors));
    }
    return json_pack("{s:o, s:{s:f, s:f, s:f, s:I, s:s?}, s:{s:f, s:f, s:f, s:f, s:f, s:f}, s:I}", "providers", provs,
                     "today", "calls", l->day_calls, "tokens", l->day_tokens, "cost", l->day_cost, "refused",
                     (json_int_t)l->day_refused, "last_refusal", l->last_refused[0] ? l->last_refused : NULL,
                     "budgets", "daily_calls", l->b.daily_calls, "daily_tokens", l->b.daily_tokens, "daily_cost",
                     l->b.daily_cost, "run_calls", l->b.run_calls, "run_tokens", l->b.run_tokens, "run_cost",
                     l->b.run_cost, "ledger_failures", (json_int_t)l->ledger_failures);
}

void llm_free(llm *l)
{
    if (!l)
        return;
    while (l->calls) { /* none, when llm_abort_all ran and the loop turned */
        llm_call *c = l->calls;
        call_stop_io(c);
        c->state = CALL_FINISHING;
        uv_timer_stop(c->timer);
        call_dispose(c);
    }
    while (l->provs) {
        prov *p = l->provs;
        l->provs = p->next;
        prov_free(p);
    }
    if (l->st && l->ledger) {
        /* the rows of the calls just stopped: their write's answer names l (ledger_done
         * counts a failure in it), so it is awaited before l goes */
        llm_ledger_flush(l);
        store_flush(l->st);
    }
    if (l->ledger_timer)
        uv_close((uv_handle_t *)l->ledger_timer, on_handle_free);
    json_decref(l->runs);
    free(l);
}
