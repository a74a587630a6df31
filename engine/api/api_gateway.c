/* api_gateway.c — gateway mode (docs/gateway.md): POST /v1/chat/completions
 * (OpenAI Chat Completions), POST /v1/messages (Anthropic Messages) and
 * GET /v1/models, on when the config has a `gateway` table.
 *
 * A request names a managed prompt (model "ratchet:NAME") or any other model
 * (pass-through). A managed prompt's version is picked as GET
 * /v1/prompts/{name} picks it (the canary sticky by the caller id), its
 * messages rendered with the request's variables and put before the
 * caller's, and the call sent to the version's provider and model. The
 * answer goes back as the provider sent it (streamed chunk by chunk when
 * the caller asked for a stream), with the trace id in X-Ratchet-Trace-Id
 * and in the body; the trace is queued to the store after the answer, never
 * before it. The caller going away cancels the upstream call.
 *
 * Between the two protocols: a managed prompt whose provider speaks the
 * other protocol is called through llm.c's mapped chat (its retries), and
 * the answer written in the caller's protocol (a stream then comes in one
 * piece at the end). */
#include "api/api_gateway.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_capture.h"
#include "api/api_request.h"
#include "base/jtree.h"
#include "base/log.h"

#define PREFIX "ratchet:"
/* streamed bytes kept to assemble a streamed answer's trace */
#define SSE_KEEP_MAX (4u << 20)
/* remembered (caller, prompt, variables) for the retry window */
#define RETRY_MAP_MAX 100000

enum proto { P_OPENAI, P_ANTHROPIC };

typedef struct {
    double level;
    uint64_t at_ns;
} bucket;

typedef struct gw_call gw_call;

struct gateway {
    bucket *req_b, *tok_b; /* one per gateway key, plus one (the last) for keyless loopback callers */
    size_t nb;
    json_t *recent;        /* retry window: "caller\nprompt\nvars" -> [trace id, ms] */
    gw_call *calls;        /* in flight, for the shutdown */
};

struct gw_call {
    api *a;
    http_request *req;
    enum proto proto;
    bool managed, stream, started, in_chunk, gone, mapped, caller_key, proxied;
    char up_request_id[128]; /* the provider's request id */
    /* a stream translated between the protocols, event by event */
    struct {
        buf_t line;          /* a partial line of the provider's stream */
        bool begun, block_open, text_open, ended, usage;
        int block;           /* the caller's current content block (Anthropic), -1 none */
        int tools;           /* tool calls so far */
        json_t *tool_of;     /* the provider's block index -> our tool index (Anthropic -> OpenAI) */
        char finish[24];
        json_int_t in_tok, out_tok;
    } tr;
    httpc_req *up;
    llm_call *lc;
    size_t key;            /* bucket index */
    char trace_id[37];
    char *provider, *model, *prompt, *caller, *retry_of, *chosen_by;
    int64_t version;
    json_t *vars;          /* or NULL */
    json_t *sent;          /* the request body sent upstream (for the trace's input) */
    buf_t sse;             /* a streamed answer, kept for the trace */
    bool sse_cut;
    uint64_t start_ns;
    size_t body_len;       /* the caller's request body, for the capture queue's bound */
    gw_call *prev, *next;
};

/* ---- answers in the caller's protocol ---- */

static const char *error_type(enum proto p, int status)
{
    switch (status) {
    case 400: case 413: case 422: return p == P_ANTHROPIC && status == 413 ? "request_too_large" : "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return p == P_ANTHROPIC ? "not_found_error" : "not_found";
    case 429: return p == P_ANTHROPIC ? "rate_limit_error" : "rate_limit_exceeded";
    case 529: return "overloaded_error";
    default: return p == P_ANTHROPIC ? "api_error" : "server_error";
    }
}

/* {"error":{message,type,param,code}} (OpenAI) or {"type":"error","error":{type,message}}
 * (Anthropic); param names the field at fault. */
static void gw_error(http_request *req, enum proto p, int status, const char *param, const char *extra,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void gw_error(http_request *req, enum proto p, int status, const char *param, const char *extra,
                     const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *j = p == P_ANTHROPIC
                    ? json_pack("{s:s, s:{s:s, s:s}, s:s}", "type", "error", "error", "type", error_type(p, status),
                                "message", msg, "request_id", req->id)
                    : json_pack("{s:{s:s, s:s, s:s?, s:s}}", "error", "message", msg, "type", error_type(p, status),
                                "param", param, "code", error_type(p, status));
    char *t = json_text(j, JSON_COMPACT);
    http_respond(req, status, "application/json", extra, t, strlen(t));
    free(t);
    json_decref(j);
}

/* ---- state ---- */

static struct gateway *state(api *a)
{
    if (!a->gateway) {
        a->gateway = xcalloc(1, sizeof *a->gateway);
        a->gateway->recent = json_object();
    }
    struct gateway *g = a->gateway;
    size_t n = 1;
    for (char **k = a->cfg->gateway.keys; k && *k; k++)
        n++;
    if (g->nb != n) { /* the keys changed with a reload: fresh buckets */
        free(g->req_b);
        free(g->tok_b);
        g->req_b = xcalloc(n, sizeof *g->req_b);
        g->tok_b = xcalloc(n, sizeof *g->tok_b);
        for (size_t i = 0; i < n; i++) {
            g->req_b[i] = (bucket){a->cfg->gateway.requests_per_minute, mono_ns()};
            g->tok_b[i] = (bucket){a->cfg->gateway.tokens_per_minute, mono_ns()};
        }
        g->nb = n;
    }
    return g;
}

static void refill(bucket *b, double per_minute)
{
    uint64_t now = mono_ns();
    b->level += per_minute * (double)(now - b->at_ns) / 60e9;
    if (b->level > per_minute)
        b->level = per_minute;
    b->at_ns = now;
}

/* ms until the bucket holds need (0: now) */
static int64_t bucket_wait(bucket *b, double per_minute, double need)
{
    if (per_minute <= 0)
        return 0;
    refill(b, per_minute);
    if (b->level >= need)
        return 0;
    return (int64_t)ceil((need - b->level) * 60000.0 / per_minute);
}

/* ---- checks ---- */

/* The gateway key: Authorization: Bearer KEY or x-api-key: KEY. Sets the
 * bucket index; false having answered. */
static bool authorize(api *a, http_request *req, enum proto p, size_t *key)
{
    char **keys = a->cfg->gateway.keys;
    const char *given = http_header_get(req, "x-api-key");
    const char *auth = http_header_get(req, "authorization");
    if (!given && auth && strncasecmp(auth, "Bearer ", 7) == 0)
        given = auth + 7;
    if (!keys || !keys[0]) {
        if (req->loopback) {
            *key = 0;
            return true;
        }
        gw_error(req, p, 403, NULL, NULL, "no gateway.keys are configured, so only loopback clients may call the gateway");
        return false;
    }
    if (given)
        for (size_t i = 0; keys[i]; i++)
            if (secret_equal(given, strlen(given), keys[i], strlen(keys[i]))) {
                *key = i;
                return true;
            }
    const char *tokens[] = {a->cfg->ingest_token, a->cfg->admin_token, a->cfg->metrics_token};
    for (size_t i = 0; given && i < 3; i++)
        if (tokens[i] && secret_equal(given, strlen(given), tokens[i], strlen(tokens[i]))) {
            gw_error(req, p, 403, NULL, NULL, "this is one of the engine's API tokens; the gateway takes a gateway key "
                                              "(gateway.keys), kept apart from them");
            return false;
        }
    gw_error(req, p, 401, NULL, NULL,
             given ? "the gateway key is not valid"
                   : "send a gateway key (one of gateway.keys) as the SDK's API key: 'Authorization: Bearer KEY' or "
                     "'x-api-key: KEY'");
    return false;
}

/* This engine's share of a limit set for all the engines on a shared store: limit / live
 * engines (their heartbeats, as the store last read them; no round trip per request), as a
 * rate, so the engines' shares sum to the limit exactly and a burst never exceeds it
 * (docs/gateway.md, "Several engines"). 0 stays 0: no limit. */
static double share(api *a, int limit)
{
    if (limit <= 0)
        return 0;
    return (double)limit / (double)store_live_engines(a->store);
}

/* Request and token rate per key; false having answered 429 with Retry-After. */
static bool within_limits(api *a, http_request *req, enum proto p, size_t key)
{
    struct gateway *g = state(a);
    const config_gateway *gc = &a->cfg->gateway;
    if (key >= g->nb)
        key = g->nb - 1;
    double rpm = share(a, gc->requests_per_minute), tpm = share(a, gc->tokens_per_minute);
    int64_t wait = bucket_wait(&g->req_b[key], rpm, 1);
    const char *what = "requests_per_minute";
    if (!wait && tpm > 0 && (wait = bucket_wait(&g->tok_b[key], tpm, 1)))
        what = "tokens_per_minute";
    if (wait) {
        char hdr[64];
        snprintf(hdr, sizeof hdr, "Retry-After: %lld\r\n", (long long)((wait + 999) / 1000));
        gw_error(req, p, 429, NULL, hdr, "this gateway key is over its gateway.%s limit; retry after %lld ms", what,
                 (long long)wait);
        return false;
    }
    if (rpm > 0)
        g->req_b[key].level -= 1;
    return true;
}

static void spend_tokens(api *a, size_t key, double tokens)
{
    struct gateway *g = a->gateway;
    double tpm = share(a, a->cfg->gateway.tokens_per_minute);
    if (!g || key >= g->nb || tpm <= 0 || tokens <= 0)
        return;
    refill(&g->tok_b[key], tpm);
    g->tok_b[key].level -= tokens; /* may go below 0: the next calls wait it off */
}

/* ---- the call's life ---- */

static void call_free(gw_call *c)
{
    struct gateway *g = c->a->gateway;
    if (c->prev)
        c->prev->next = c->next;
    else if (g)
        g->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->provider);
    free(c->model);
    free(c->prompt);
    free(c->caller);
    free(c->retry_of);
    json_decref(c->vars);
    json_decref(c->sent);
    buf_free(&c->sse);
    buf_free(&c->tr.line);
    json_decref(c->tr.tool_of);
    free(c);
}

/* What came back, for the trace. An OpenAI answer with n > 1 has its
 * choices past the first in more[] (index 1 at more[0]). */
#define MAX_CHOICES 128
typedef struct outcome {
    json_t *output;      /* text (string), or NULL */
    json_t *tool_calls;  /* [{id, name, arguments}] or NULL */
    json_int_t in_tok, out_tok;
    bool has_usage;
    char model[256];
    char finish[32];     /* the choice's finish_reason, or "" */
    struct outcome *more;
    size_t nmore;
} outcome;

static void outcome_free(outcome *o)
{
    json_decref(o->output);
    json_decref(o->tool_calls);
    for (size_t i = 0; i < o->nmore; i++)
        outcome_free(&o->more[i]);
    free(o->more);
}

/* The outcome of choice idx (0: o itself); NULL past MAX_CHOICES. */
static outcome *choice_at(outcome *o, json_int_t idx)
{
    if (idx <= 0)
        return idx == 0 ? o : NULL;
    if (idx >= MAX_CHOICES)
        return NULL;
    if ((size_t)idx > o->nmore) {
        o->more = xrealloc(o->more, (size_t)idx * sizeof *o->more);
        memset(o->more + o->nmore, 0, ((size_t)idx - o->nmore) * sizeof *o->more);
        o->nmore = (size_t)idx;
    }
    return &o->more[idx - 1];
}

static void set_finish(outcome *o, json_t *choice)
{
    const char *f = json_string_value(json_object_get(choice, "finish_reason"));
    if (f)
        snprintf(o->finish, sizeof o->finish, "%s", f);
}

static void add_text(outcome *o, const char *t)
{
    if (!t)
        return;
    if (!o->output) {
        o->output = json_string(t);
        return;
    }
    size_t n = json_string_length(o->output), m = strlen(t);
    char *s = xmalloc(n + m + 1);
    memcpy(s, json_string_value(o->output), n);
    memcpy(s + n, t, m + 1);
    json_string_setn(o->output, s, n + m);
    free(s);
}

static json_t *tool_at(outcome *o, size_t i)
{
    if (!o->tool_calls)
        o->tool_calls = json_array();
    while (json_array_size(o->tool_calls) <= i && i < 256)
        json_array_append_new(o->tool_calls, json_pack("{s:s}", "name", ""));
    return json_array_get(o->tool_calls, i);
}

static void append_field(json_t *obj, const char *k, const char *more)
{
    if (!more)
        return;
    const char *had = json_string_value(json_object_get(obj, k));
    size_t n = had ? strlen(had) : 0;
    char *s = xmalloc(n + strlen(more) + 1);
    memcpy(s, had ? had : "", n);
    strcpy(s + n, more);
    json_object_set_new(obj, k, json_string(s));
    free(s);
}

/* A whole answer of either protocol. */
static void read_answer(json_t *r, outcome *o)
{
    const char *m = json_string_value(json_object_get(r, "model"));
    if (m)
        snprintf(o->model, sizeof o->model, "%s", m);
    json_t *u = json_object_get(r, "usage");
    if (json_is_object(u)) {
        json_t *in = json_object_get(u, "prompt_tokens"), *out = json_object_get(u, "completion_tokens");
        if (!in)
            in = json_object_get(u, "input_tokens"), out = json_object_get(u, "output_tokens");
        o->in_tok = json_integer_value(in);
        o->out_tok = json_integer_value(out);
        o->has_usage = json_is_integer(in) || json_is_integer(out);
    }
    json_t *choices = json_object_get(r, "choices");
    if (json_is_array(choices)) { /* OpenAI: every choice (n > 1), each by its index */
        size_t k;
        json_t *ch;
        json_array_foreach(choices, k, ch) {
            json_t *ix = json_object_get(ch, "index");
            outcome *x = choice_at(o, json_is_integer(ix) ? json_integer_value(ix) : (json_int_t)k);
            if (!x || x->output || x->tool_calls)
                continue; /* past the cap, or an index seen already */
            json_t *msg = json_object_get(ch, "message");
            add_text(x, json_string_value(json_object_get(msg, "content")));
            set_finish(x, ch);
            size_t i;
            json_t *tc;
            json_array_foreach(json_object_get(msg, "tool_calls"), i, tc) {
                json_t *t = tool_at(x, i), *fn = json_object_get(tc, "function");
                json_object_set(t, "id", json_object_get(tc, "id"));
                json_object_set(t, "name", json_object_get(fn, "name"));
                json_object_set(t, "arguments", json_object_get(fn, "arguments"));
            }
        }
        return;
    }
    size_t i, n = 0;
    json_t *b;
    json_array_foreach(json_object_get(r, "content"), i, b) { /* Anthropic: the blocks */
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && !strcmp(type, "text"))
            add_text(o, json_string_value(json_object_get(b, "text")));
        else if (type && !strcmp(type, "tool_use")) {
            json_t *t = tool_at(o, n++);
            json_object_set(t, "id", json_object_get(b, "id"));
            json_object_set(t, "name", json_object_get(b, "name"));
            json_object_set(t, "arguments", json_object_get(b, "input"));
        }
    }
}

/* One event of a stream of either protocol. */
static void read_event(json_t *e, outcome *o, json_t *blocks)
{
    const char *type = json_string_value(json_object_get(e, "type"));
    if (!type) { /* OpenAI chunk */
        const char *m = json_string_value(json_object_get(e, "model"));
        if (m)
            snprintf(o->model, sizeof o->model, "%s", m);
        json_t *u = json_object_get(e, "usage");
        if (json_is_object(u)) {
            o->in_tok = json_integer_value(json_object_get(u, "prompt_tokens"));
            o->out_tok = json_integer_value(json_object_get(u, "completion_tokens"));
            o->has_usage = true;
        }
        size_t k;
        json_t *ch;
        json_array_foreach(json_object_get(e, "choices"), k, ch) { /* each choice by its index (n > 1) */
            outcome *x = choice_at(o, json_integer_value(json_object_get(ch, "index")));
            if (!x)
                continue;
            json_t *d = json_object_get(ch, "delta");
            add_text(x, json_string_value(json_object_get(d, "content")));
            set_finish(x, ch);
            size_t i;
            json_t *tc;
            json_array_foreach(json_object_get(d, "tool_calls"), i, tc) {
                json_t *t = tool_at(x, (size_t)json_integer_value(json_object_get(tc, "index")));
                json_t *fn = json_object_get(tc, "function");
                if (json_object_get(tc, "id"))
                    json_object_set(t, "id", json_object_get(tc, "id"));
                append_field(t, "name", json_string_value(json_object_get(fn, "name")));
                append_field(t, "arguments", json_string_value(json_object_get(fn, "arguments")));
            }
        }
        return;
    }
    if (!strcmp(type, "message_start")) {
        json_t *msg = json_object_get(e, "message");
        const char *m = json_string_value(json_object_get(msg, "model"));
        if (m)
            snprintf(o->model, sizeof o->model, "%s", m);
        o->in_tok = json_integer_value(json_object_get(json_object_get(msg, "usage"), "input_tokens"));
        o->has_usage = true;
    } else if (!strcmp(type, "message_delta")) {
        o->out_tok = json_integer_value(json_object_get(json_object_get(e, "usage"), "output_tokens"));
        o->has_usage = true;
    } else if (!strcmp(type, "content_block_start")) {
        json_t *b = json_object_get(e, "content_block");
        const char *bt = json_string_value(json_object_get(b, "type"));
        json_int_t idx = json_integer_value(json_object_get(e, "index"));
        char k[24];
        snprintf(k, sizeof k, "%lld", (long long)idx);
        if (bt && !strcmp(bt, "tool_use")) {
            json_t *t = tool_at(o, json_object_size(blocks));
            json_object_set(t, "id", json_object_get(b, "id"));
            json_object_set(t, "name", json_object_get(b, "name"));
            json_object_set(blocks, k, t);
        } else if (bt && !strcmp(bt, "text")) {
            add_text(o, json_string_value(json_object_get(b, "text")));
        }
    } else if (!strcmp(type, "content_block_delta")) {
        json_t *d = json_object_get(e, "delta");
        const char *dt = json_string_value(json_object_get(d, "type"));
        char k[24];
        snprintf(k, sizeof k, "%lld", (long long)json_integer_value(json_object_get(e, "index")));
        if (dt && !strcmp(dt, "text_delta"))
            add_text(o, json_string_value(json_object_get(d, "text")));
        else if (dt && !strcmp(dt, "input_json_delta") && json_object_get(blocks, k))
            append_field(json_object_get(blocks, k), "arguments",
                         json_string_value(json_object_get(d, "partial_json")));
    }
}

/* The data: lines of an SSE body. */
static void read_stream(const char *s, size_t len, outcome *o)
{
    json_t *blocks = json_object();
    const char *end = s + len;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *le = nl ? nl : end;
        if (le - s > 5 && !memcmp(s, "data:", 5)) {
            const char *d = s + 5;
            while (d < le && *d == ' ')
                d++;
            size_t n = (size_t)(le - d);
            if (n && d[n - 1] == '\r')
                n--;
            if (!(n == 6 && !memcmp(d, "[DONE]", 6))) {
                json_t *e = json_loadb(d, n, 0, NULL);
                if (json_is_object(e))
                    read_event(e, o, blocks);
                json_decref(e);
            }
        }
        s = nl ? nl + 1 : end;
    }
    json_decref(blocks);
}

/* The ledger's error kind of a forwarded call's outcome (llm.md#retries). */
static const char *status_kind(int status)
{
    if (status >= 200 && status < 300)
        return NULL;
    switch (status) {
    case 429: return "rate_limited";
    case 401: case 403: return "auth";
    case 408: case 504: return "timeout";
    case 499: return "cancelled";
    case 502: return "transport";
    case 503: case 529: return "overloaded";
    default: return status >= 500 ? "server_error" : "rejected";
    }
}

/* A choice's tool calls as the trace has them: [{id?, name, arguments?}]. */
static json_t *trace_tool_calls(json_t *tool_calls)
{
    json_t *calls = json_array(), *tc;
    size_t i;
    json_array_foreach(tool_calls, i, tc) {
        json_t *args = json_object_get(tc, "arguments");
        json_t *x = json_pack("{s:s}", "name", json_string_value(json_object_get(tc, "name")) ?: "");
        if (json_is_string(json_object_get(tc, "id")))
            json_object_set(x, "id", json_object_get(tc, "id"));
        if (json_is_object(args) || json_is_string(args))
            json_object_set(x, "arguments", args);
        json_array_append_new(calls, x);
    }
    return calls;
}

/* Every choice of an n > 1 answer, for metadata.gateway.choices: the trace's
 * output and tool_calls are the first's (what evaluators score). */
static json_t *trace_choices(const outcome *o)
{
    json_t *all = json_array();
    for (size_t k = 0; k <= o->nmore; k++) {
        const outcome *x = k ? &o->more[k - 1] : o;
        json_t *c = json_pack("{s:I, s:o}", "index", (json_int_t)k, "output",
                              x->output ? json_incref(x->output) : json_string(""));
        if (x->finish[0])
            json_object_set_new(c, "finish_reason", json_string(x->finish));
        if (x->tool_calls)
            json_object_set_new(c, "tool_calls", trace_tool_calls(x->tool_calls));
        json_array_append_new(all, c);
    }
    return all;
}

/* What a call leaves for its trace, handed to the capture thread
 * (api_capture.h): everything here is the item's own, moved out of the
 * call; the answer's bytes are read and the trace built on that thread. */
enum answer_kind { ANSWER_NONE, ANSWER_JSON, ANSWER_ERROR_JSON, ANSWER_SSE };

typedef struct {
    api_capture_item item;  /* first */
    api *a;
    enum proto proto;
    bool managed, stream, sse_cut, proxied;
    int status;
    size_t key;
    int64_t version;
    double latency_ms;
    char trace_id[37];
    char up_request_id[128];
    char *provider, *model, *prompt, *caller, *retry_of, *error;
    const char *chosen_by;  /* a static string */
    json_t *vars, *sent;
    enum answer_kind kind;
    buf_t answer;           /* the provider's answer (kind), or empty */
    outcome o;              /* read from it by build, or given */
} gw_capture;

static json_t *build_trace(api_capture_item *it);
static void capture_done(api *a, api_capture_item *it);

/* The trace, queued after the answer; o (its contents taken, or NULL) is an
 * answer read already, else the answer's bytes of kind are copied for the
 * capture thread to read. The call's request tree and strings move to the
 * item. */
static void capture_answer(gw_call *c, int status, const char *error, outcome *o, enum answer_kind kind,
                           const char *answer, size_t len)
{
    gw_capture *k = xcalloc(1, sizeof *k);
    k->item.build = build_trace;
    k->item.done = capture_done;
    k->a = c->a;
    k->proto = c->proto;
    k->managed = c->managed;
    k->stream = c->stream;
    k->sse_cut = c->sse_cut;
    k->proxied = c->proxied;
    k->status = status;
    k->key = c->key;
    k->version = c->version;
    k->latency_ms = (double)(mono_ns() - c->start_ns) / 1e6;
    memcpy(k->trace_id, c->trace_id, sizeof k->trace_id);
    memcpy(k->up_request_id, c->up_request_id, sizeof k->up_request_id);
    k->provider = c->provider, c->provider = NULL;
    k->model = c->model, c->model = NULL;
    k->prompt = c->prompt, c->prompt = NULL;
    k->caller = c->caller, c->caller = NULL;
    k->retry_of = c->retry_of, c->retry_of = NULL;
    k->chosen_by = c->chosen_by;
    k->vars = c->vars, c->vars = NULL;
    k->sent = c->sent, c->sent = NULL;
    k->error = error ? xstrdup(error) : NULL;
    buf_init(&k->answer);
    if (o) {
        k->o = *o;
        memset(o, 0, sizeof *o);
    } else if (kind == ANSWER_SSE && answer == c->sse.data) {
        k->kind = kind;
        k->answer = c->sse; /* the stream kept for the trace moves over */
        buf_init(&c->sse);
    } else if (kind != ANSWER_NONE) {
        k->kind = kind;
        buf_append(&k->answer, answer ? answer : "", len);
    }
    k->item.bytes = sizeof *k + k->answer.cap + c->body_len; /* (the request tree, about its text's size) */
    api_capture_trace(c->a, &k->item);
}

static void capture(gw_call *c, int status, const char *error, outcome *o)
{
    capture_answer(c, status, error, o, ANSWER_NONE, NULL, 0);
}

/* The provider's answer read for the trace (on the capture thread). */
static void read_kept_answer(gw_capture *k)
{
    const char *body = k->answer.data ? k->answer.data : "";
    size_t len = k->answer.len;
    char err[600] = "";
    if (k->kind == ANSWER_SSE) {
        read_stream(body, len, &k->o);
    } else if (k->kind == ANSWER_JSON) {
        json_t *j = json_loadb(body, len, 0, NULL);
        if (json_is_object(j))
            read_answer(j, &k->o);
        else
            snprintf(err, sizeof err, "provider '%s' answered %d with a body that is not JSON", k->provider,
                     k->status);
        json_decref(j);
    } else if (k->kind == ANSWER_ERROR_JSON) {
        json_t *j = json_loadb(body, len, 0, NULL);
        const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        snprintf(err, sizeof err, "HTTP %d from provider '%s': %.400s", k->status, k->provider,
                 m ? m : "(no message)");
        json_decref(j);
    }
    if (err[0] && !k->error)
        k->error = xstrdup(err);
}

/* The trace as POST /v1/traces takes it (on the capture thread). */
static json_t *build_trace(api_capture_item *it)
{
    gw_capture *k = (gw_capture *)it;
    read_kept_answer(k);
    outcome *o = &k->o;
    const char *error = k->error;
    json_t *t = json_object();
    json_object_set_new(t, "id", json_string(k->trace_id));
    json_t *pr = json_pack("{s:s}", "name", k->prompt);
    if (k->version)
        json_object_set_new(pr, "version", json_integer(k->version));
    json_object_set_new(t, "prompt", pr);
    json_t *input = json_object();
    if (k->vars && json_object_size(k->vars))
        json_object_set(input, "variables", k->vars);
    json_t *msgs = json_array(), *m;
    size_t i;
    json_t *sys = json_object_get(k->sent, "system");
    if (sys && (json_is_string(sys) || json_is_array(sys)))
        json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "system", "content", sys));
    json_array_foreach(json_object_get(k->sent, "messages"), i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        if (!role || !(json_is_string(content) || json_is_array(content) || json_is_null(content) || !content))
            continue;
        json_t *copy = json_pack("{s:s, s:O}", "role", role, "content", content ? content : json_null());
        json_array_append_new(msgs, copy);
    }
    if (json_array_size(msgs))
        json_object_set(input, "messages", msgs);
    json_decref(msgs);
    if (json_object_size(input))
        json_object_set(t, "input", input);
    json_decref(input);
    if (error) {
        json_object_set_new(t, "error", json_string(error));
    } else {
        json_object_set_new(t, "output", o->output ? json_incref(o->output) : json_string(""));
        if (o->tool_calls)
            json_object_set_new(t, "tool_calls", trace_tool_calls(o->tool_calls));
    }
    const char *model = o->model[0] ? o->model : k->model;
    if (model && strlen(model) <= 256)
        json_object_set_new(t, "model", json_string(model));
    json_object_set_new(t, "latency_ms", json_real(k->latency_ms));
    if (o->has_usage && o->in_tok >= 0 && o->out_tok >= 0)
        json_object_set_new(t, "usage", json_pack("{s:I, s:I}", "input_tokens", o->in_tok, "output_tokens",
                                                  o->out_tok));
    json_t *meta = json_pack("{s:s, s:s, s:s, s:b, s:i}", "protocol", k->proto == P_OPENAI ? "openai" : "anthropic",
                             "mode", k->managed ? "managed" : "pass-through", "provider", k->provider ? k->provider : "",
                             "stream", k->stream, "status", k->status);
    if (k->chosen_by)
        json_object_set_new(meta, "chosen_by", json_string(k->chosen_by));
    if (k->caller)
        json_object_set_new(meta, "caller", json_string(k->caller));
    if (k->sse_cut) /* the stream passed SSE_KEEP_MAX: the caller got it all, the trace its start */
        json_object_set_new(meta, "output_cut", json_true());
    if (!error && o->nmore)
        json_object_set_new(meta, "choices", trace_choices(o));
    json_object_set_new(t, "metadata", json_pack("{s:o}", "gateway", meta));
    if (k->retry_of)
        json_object_set_new(t, "retry_of", json_string(k->retry_of));
    return t;
}

/* Back on the loop: a forwarded call's figures and ledger row (llm.c
 * records a translated one itself), the key's tokens; then the item goes. */
static void capture_done(api *a, api_capture_item *it)
{
    gw_capture *k = (gw_capture *)it;
    outcome *o = &k->o;
    if (k->proxied && a->llm)
        llm_note_proxied(a->llm, k->provider, o->model[0] ? o->model : k->model, o->in_tok, o->out_tok,
                         status_kind(k->status), k->error, k->latency_ms, k->up_request_id);
    spend_tokens(a, k->key, (double)(o->in_tok + o->out_tok));
    free(k->provider);
    free(k->model);
    free(k->prompt);
    free(k->caller);
    free(k->retry_of);
    free(k->error);
    json_decref(k->vars);
    json_decref(k->sent);
    buf_free(&k->answer);
    outcome_free(o);
    free(k);
}

/* The headers every answer carries: the trace id, and for a managed prompt
 * the version that answered. */
static void answer_headers(const gw_call *c, buf_t *h)
{
    buf_printf(h, "X-Ratchet-Trace-Id: %s\r\n", c->trace_id);
    if (c->managed)
        buf_printf(h, "X-Ratchet-Prompt-Version: %lld\r\n", (long long)c->version);
}

static void finish_stream(gw_call *c, int status, const char *error)
{
    http_stream_end(c->req);
    if (error)
        capture(c, status, error, NULL);
    else
        capture_answer(c, status, NULL, NULL, ANSWER_SSE, c->sse.data, c->sse.len);
    call_free(c);
}

/* ---- upstream (same protocol): the body forwarded, the answer handed back ---- */

static void on_client_gone(http_request *req, void *ud)
{
    (void)req;
    gw_call *c = ud;
    c->gone = true;
    c->a->gateway_n.client_gone++;
    if (c->in_chunk)
        return; /* on_chunk sees gone and stops the transfer */
    if (c->lc)
        llm_cancel(c->lc), c->lc = NULL;
    if (c->up)
        httpc_cancel(c->up), c->up = NULL;
    if (c->started) {
        finish_stream(c, 499, "the client closed the connection mid-stream; the upstream call was cancelled");
        return;
    }
    http_reset(c->req);
    capture(c, 499, "the client closed the connection before the answer; the upstream call was cancelled", NULL);
    call_free(c);
}

static void openai_to_anthropic(gw_call *c, json_t *e, bool done);

/* The caller's answer starts with the first chunk: status, headers. */
static void stream_begin(gw_call *c, int status, const char *ctype)
{
    if (c->started)
        return;
    buf_t hdr;
    buf_init(&hdr);
    answer_headers(c, &hdr);
    c->started = true;
    http_stream_start(c->req, status, ctype, hdr.data);
    buf_free(&hdr);
}

/* The stream as the caller got it, for the trace, up to SSE_KEEP_MAX. */
static void keep_sse(gw_call *c, const char *data, size_t len)
{
    if (c->sse.len + len <= SSE_KEEP_MAX)
        buf_append(&c->sse, data, len);
    else
        c->sse_cut = true;
}

static bool on_chunk(httpc_req *r, int status, const char *ctype, const char *data, size_t len, void *ud)
{
    (void)r;
    gw_call *c = ud;
    if (c->gone)
        return false;
    c->in_chunk = true;
    stream_begin(c, status, ctype && ctype[0] ? ctype : "text/event-stream");
    if (!c->gone)
        http_stream_write(c->req, data, len);
    keep_sse(c, data, len);
    c->in_chunk = false;
    return !c->gone;
}

static void on_upstream(httpc_req *r, const httpc_response *resp, void *ud)
{
    (void)r;
    gw_call *c = ud;
    c->up = NULL;
    api *a = c->a;
    if (resp->request_id)
        snprintf(c->up_request_id, sizeof c->up_request_id, "%s", resp->request_id);
    if (c->gone) { /* stopped from on_chunk: the client left */
        if (c->started)
            finish_stream(c, 499, "the client closed the connection mid-stream; the upstream call was cancelled");
        else {
            http_reset(c->req);
            capture(c, 499, "the client closed the connection; the upstream call was cancelled", NULL);
            call_free(c);
        }
        return;
    }
    if (c->started) { /* a stream: it ended, well or not */
        if (c->mapped && c->proto == P_ANTHROPIC && !resp->error && !c->gone)
            openai_to_anthropic(c, NULL, true); /* a provider that ended without [DONE] */
        char err[300] = "";
        if (resp->error)
            snprintf(err, sizeof err, "the upstream stream broke off: %s (%s)", httpc_error_name(resp->error),
                     resp->message ? resp->message : "");
        finish_stream(c, resp->status ? resp->status : 502, err[0] ? err : NULL);
        return;
    }
    if (resp->error) {
        a->gateway_n.upstream_errors++;
        bool timeout = resp->error == HTTPC_TIMEOUT;
        char msg[400];
        snprintf(msg, sizeof msg, "provider '%s' did not answer: %s (%s)", c->provider, httpc_error_name(resp->error),
                 resp->message ? resp->message : "");
        gw_error(c->req, c->proto, timeout ? 504 : 502, NULL, NULL, "%s", msg);
        capture(c, timeout ? 504 : 502, msg, NULL);
        call_free(c);
        return;
    }
    if (c->mapped && !(resp->status >= 200 && resp->status < 300)) {
        /* a translated call's error in the caller's protocol, with the provider's words */
        json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
        const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        char msg[500];
        snprintf(msg, sizeof msg, "HTTP %d from provider '%s': %.400s", resp->status, c->provider,
                 m ? m : "(no message)");
        json_decref(j);
        char hdr[96] = "";
        if (resp->retry_after_ms >= 0)
            snprintf(hdr, sizeof hdr, "Retry-After: %lld\r\n", (long long)((resp->retry_after_ms + 999) / 1000));
        int st = resp->status == 401 || resp->status == 403 ? 502 : resp->status;
        gw_error(c->req, c->proto, st, NULL, hdr[0] ? hdr : NULL, "%s", msg);
        capture(c, st, msg, NULL);
        call_free(c);
        return;
    }
    if ((resp->status == 401 || resp->status == 403) && !c->caller_key) {
        /* the configured key is wrong: the operator's fault, and the caller's key was never sent */
        a->gateway_n.upstream_errors++;
        char msg[300];
        snprintf(msg, sizeof msg, "provider '%s' refused the configured API key (HTTP %d); see its api_key in the "
                                  "config", c->provider, resp->status);
        gw_error(c->req, c->proto, 502, NULL, NULL, "%s", msg);
        capture(c, 502, msg, NULL);
        call_free(c);
        return;
    }
    /* the answer as the provider sent it, with the trace id added */
    buf_t hdr;
    buf_init(&hdr);
    answer_headers(c, &hdr);
    if (resp->retry_after_ms >= 0)
        buf_printf(&hdr, "Retry-After: %lld\r\nretry-after-ms: %lld\r\n",
                   (long long)((resp->retry_after_ms + 999) / 1000), (long long)resp->retry_after_ms);
    const char *body = resp->body;
    size_t len = resp->body_len;
    buf_t out;
    buf_init(&out);
    bool ok = resp->status >= 200 && resp->status < 300;
    if (ok && len > 1 && body[0] == '{') {
        buf_printf(&out, "{\"ratchet_trace_id\":\"%s\"%s", c->trace_id, body[1] == '}' ? "" : ",");
        buf_append(&out, body + 1, len - 1);
        body = out.data, len = out.len;
    }
    http_respond(c->req, resp->status, resp->content_type[0] ? resp->content_type : "application/json", hdr.data,
                 body, len);
    buf_free(&hdr);
    buf_free(&out);
    /* the answer is on its way: now the trace, read and built on the capture thread */
    capture_answer(c, resp->status, NULL, NULL, ok ? ANSWER_JSON : ANSWER_ERROR_JSON, resp->body, resp->body_len);
    call_free(c);
}

/* ---- a stream translated between the protocols, event by event ---- */

static void emit(gw_call *c, const char *event, json_t *data)
{
    char *t = json_text(data, JSON_COMPACT);
    buf_t b;
    buf_init(&b);
    if (event)
        buf_printf(&b, "event: %s\n", event);
    buf_printf(&b, "data: %s\n\n", t);
    http_stream_write(c->req, b.data, b.len);
    buf_free(&b);
    free(t);
    json_decref(data);
}

/* an OpenAI chunk for the caller: delta (stolen), finish or NULL */
static void emit_chunk(gw_call *c, json_t *delta, const char *finish)
{
    char id[64];
    snprintf(id, sizeof id, "chatcmpl-%s", c->trace_id);
    emit(c, NULL, json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:o}]}", "id", id, "object", "chat.completion.chunk",
                            "created", (json_int_t)(now_ms() / 1000), "model", c->model, "choices", "index", 0,
                            "delta", delta, "finish_reason", finish ? json_string(finish) : json_null()));
}

/* Anthropic's events, as OpenAI chunks */
static void anthropic_to_openai(gw_call *c, json_t *e)
{
    const char *type = json_string_value(json_object_get(e, "type"));
    if (!type)
        return;
    if (!strcmp(type, "message_start")) {
        c->tr.in_tok = json_integer_value(json_object_get(json_object_get(json_object_get(e, "message"), "usage"),
                                                          "input_tokens"));
        emit_chunk(c, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL);
    } else if (!strcmp(type, "content_block_start")) {
        json_t *b = json_object_get(e, "content_block");
        if (!strcmp(json_string_value(json_object_get(b, "type")) ?: "", "tool_use")) {
            char k[24];
            snprintf(k, sizeof k, "%lld", (long long)json_integer_value(json_object_get(e, "index")));
            if (!c->tr.tool_of)
                c->tr.tool_of = json_object();
            json_object_set_new(c->tr.tool_of, k, json_integer(c->tr.tools));
            emit_chunk(c, json_pack("{s:[{s:i, s:O?, s:s, s:{s:O?, s:s}}]}", "tool_calls", "index", c->tr.tools++,
                                    "id", json_object_get(b, "id"), "type", "function", "function", "name",
                                    json_object_get(b, "name"), "arguments", ""), NULL);
        }
    } else if (!strcmp(type, "content_block_delta")) {
        json_t *d = json_object_get(e, "delta");
        const char *dt = json_string_value(json_object_get(d, "type")) ?: "";
        char k[24];
        snprintf(k, sizeof k, "%lld", (long long)json_integer_value(json_object_get(e, "index")));
        if (!strcmp(dt, "text_delta"))
            emit_chunk(c, json_pack("{s:O?}", "content", json_object_get(d, "text")), NULL);
        else if (!strcmp(dt, "input_json_delta") && json_object_get(c->tr.tool_of, k))
            emit_chunk(c, json_pack("{s:[{s:O, s:{s:O?}}]}", "tool_calls", "index", json_object_get(c->tr.tool_of, k),
                                    "function", "arguments", json_object_get(d, "partial_json")), NULL);
    } else if (!strcmp(type, "message_delta")) {
        const char *stop = json_string_value(json_object_get(json_object_get(e, "delta"), "stop_reason")) ?: "";
        snprintf(c->tr.finish, sizeof c->tr.finish, "%s",
                 !strcmp(stop, "max_tokens") ? "length" : !strcmp(stop, "tool_use") ? "tool_calls" : "stop");
        c->tr.out_tok = json_integer_value(json_object_get(json_object_get(e, "usage"), "output_tokens"));
    } else if (!strcmp(type, "message_stop") && !c->tr.ended) {
        c->tr.ended = true;
        emit_chunk(c, json_object(), c->tr.finish[0] ? c->tr.finish : "stop");
        if (json_is_true(json_object_get(json_object_get(c->sent, "stream_options"), "include_usage"))) {
            char id[64];
            snprintf(id, sizeof id, "chatcmpl-%s", c->trace_id);
            emit(c, NULL, json_pack("{s:s, s:s, s:I, s:s, s:[], s:{s:I, s:I, s:I}}", "id", id, "object",
                                    "chat.completion.chunk", "created", (json_int_t)(now_ms() / 1000), "model",
                                    c->model, "choices", "usage", "prompt_tokens", c->tr.in_tok, "completion_tokens",
                                    c->tr.out_tok, "total_tokens", c->tr.in_tok + c->tr.out_tok));
        }
        http_stream_write(c->req, "data: [DONE]\n\n", 14);
    }
}

static void close_block(gw_call *c)
{
    if (!c->tr.block_open)
        return;
    emit(c, "content_block_stop", json_pack("{s:s, s:i}", "type", "content_block_stop", "index", c->tr.block));
    c->tr.block_open = c->tr.text_open = false;
}

/* OpenAI's chunks, as Anthropic events */
static void openai_to_anthropic(gw_call *c, json_t *e, bool done)
{
    if (!c->tr.begun) {
        char id[64];
        snprintf(id, sizeof id, "msg_%s", c->trace_id);
        c->tr.begun = true;
        c->tr.block = -1;
        emit(c, "message_start", json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:{s:i, s:i}}}", "type",
                                           "message_start", "message", "id", id, "type", "message", "role",
                                           "assistant", "model", c->model, "content", "stop_reason",
                                           "stop_sequence", "usage", "input_tokens", 0, "output_tokens", 0));
    }
    if (done) {
        if (c->tr.ended)
            return;
        c->tr.ended = true;
        close_block(c);
        const char *f = c->tr.finish;
        emit(c, "message_delta", json_pack("{s:s, s:{s:s, s:n}, s:{s:I, s:I}}", "type", "message_delta", "delta",
                                           "stop_reason", !strcmp(f, "length") ? "max_tokens"
                                                          : !strcmp(f, "tool_calls") ? "tool_use" : "end_turn",
                                           "stop_sequence", "usage", "input_tokens", c->tr.in_tok,
                                           "output_tokens", c->tr.out_tok));
        emit(c, "message_stop", json_pack("{s:s}", "type", "message_stop"));
        return;
    }
    json_t *u = json_object_get(e, "usage");
    if (json_is_object(u)) {
        c->tr.in_tok = json_integer_value(json_object_get(u, "prompt_tokens"));
        c->tr.out_tok = json_integer_value(json_object_get(u, "completion_tokens"));
    }
    json_t *ch = json_array_get(json_object_get(e, "choices"), 0);
    if (!ch || json_integer_value(json_object_get(ch, "index")) != 0)
        return;
    json_t *d = json_object_get(ch, "delta");
    const char *text = json_string_value(json_object_get(d, "content"));
    if (text && *text) {
        if (!c->tr.text_open) {
            close_block(c);
            c->tr.block++;
            c->tr.block_open = c->tr.text_open = true;
            emit(c, "content_block_start", json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_start",
                                                     "index", c->tr.block, "content_block", "type", "text", "text",
                                                     ""));
        }
        emit(c, "content_block_delta", json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta", "index",
                                                 c->tr.block, "delta", "type", "text_delta", "text", text));
    }
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(d, "tool_calls"), i, tc) {
        json_t *fn = json_object_get(tc, "function");
        if (json_object_get(tc, "id")) { /* a new call: a new tool_use block */
            close_block(c);
            c->tr.block++;
            c->tr.block_open = true;
            emit(c, "content_block_start",
                 json_pack("{s:s, s:i, s:{s:s, s:O, s:O?, s:{}}}", "type", "content_block_start", "index",
                           c->tr.block, "content_block", "type", "tool_use", "id", json_object_get(tc, "id"), "name",
                           json_object_get(fn, "name"), "input"));
        }
        const char *args = json_string_value(json_object_get(fn, "arguments"));
        if (args && *args && c->tr.block_open && !c->tr.text_open)
            emit(c, "content_block_delta", json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta",
                                                     "index", c->tr.block, "delta", "type", "input_json_delta",
                                                     "partial_json", args));
    }
    const char *finish = json_string_value(json_object_get(ch, "finish_reason"));
    if (finish)
        snprintf(c->tr.finish, sizeof c->tr.finish, "%s", finish);
}

/* The provider's stream, line by line, written in the caller's protocol. */
static bool on_translated_chunk(httpc_req *r, int status, const char *ctype, const char *data, size_t len, void *ud)
{
    (void)r;
    (void)ctype;
    gw_call *c = ud;
    if (c->gone)
        return false;
    c->in_chunk = true;
    stream_begin(c, status, "text/event-stream");
    keep_sse(c, data, len);
    buf_append(&c->tr.line, data, len);
    size_t used = 0;
    while (!c->gone) {
        char *start = c->tr.line.data + used;
        char *nl = memchr(start, '\n', c->tr.line.len - used);
        if (!nl)
            break;
        size_t n = (size_t)(nl - start);
        used += n + 1;
        if (n && start[n - 1] == '\r')
            n--;
        if (n < 5 || memcmp(start, "data:", 5))
            continue;
        const char *d = start + 5;
        while (d < start + n && *d == ' ')
            d++;
        size_t dn = (size_t)(start + n - d);
        if (dn == 6 && !memcmp(d, "[DONE]", 6)) {
            if (c->proto == P_ANTHROPIC)
                openai_to_anthropic(c, NULL, true);
            continue;
        }
        json_t *e = json_loadb(d, dn, 0, NULL);
        if (json_is_object(e)) {
            if (c->proto == P_OPENAI)
                anthropic_to_openai(c, e);
            else
                openai_to_anthropic(c, e, false);
        }
        json_decref(e);
    }
    memmove(c->tr.line.data, c->tr.line.data + used, c->tr.line.len - used);
    c->tr.line.len -= used;
    c->in_chunk = false;
    return !c->gone;
}

/* ---- between the protocols: llm.c's mapped chat ---- */

static json_t *map_tools_in(enum proto from, json_t *tools)
{
    if (!json_is_array(tools))
        return NULL;
    json_t *out = json_array(), *t;
    size_t i;
    json_array_foreach(tools, i, t) {
        json_t *fn = from == P_OPENAI ? json_object_get(t, "function") : t;
        json_t *params = json_object_get(fn, from == P_OPENAI ? "parameters" : "input_schema");
        json_t *x = json_pack("{s:O?}", "name", json_object_get(fn, "name"));
        if (json_is_string(json_object_get(fn, "description")))
            json_object_set(x, "description", json_object_get(fn, "description"));
        if (json_is_object(params))
            json_object_set(x, "parameters", params);
        json_array_append_new(out, x);
    }
    return out;
}

static char *blocks_text(json_t *content)
{
    if (json_is_string(content))
        return xstrdup(json_string_value(content));
    buf_t b;
    buf_init(&b);
    size_t i;
    json_t *blk;
    json_array_foreach(content, i, blk)
        if (json_is_string(json_object_get(blk, "text")))
            buf_puts(&b, json_string_value(json_object_get(blk, "text")));
    buf_puts(&b, "");
    return buf_steal(&b);
}

/* The caller's messages in llm.c's shape (OpenAI's, text content). */
static json_t *map_messages_in(enum proto from, json_t *msgs)
{
    json_t *out = json_array(), *m;
    size_t i;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        if (!role)
            continue;
        if (from == P_OPENAI) {
            json_t *x = json_pack("{s:s}", "role", role);
            char *text = content && !json_is_null(content) ? blocks_text(content) : NULL;
            json_object_set_new(x, "content", text ? json_string(text) : json_null());
            free(text);
            if (json_object_get(m, "tool_calls")) {
                json_t *calls = json_array(), *tc;
                size_t k;
                json_array_foreach(json_object_get(m, "tool_calls"), k, tc) {
                    json_t *fn = json_object_get(tc, "function");
                    json_t *args = jtree_parse(json_string_value(json_object_get(fn, "arguments")) ?: "{}",
                                               strlen(json_string_value(json_object_get(fn, "arguments")) ?: "{}"),
                                               NULL, 0);
                    json_array_append_new(calls, json_pack("{s:O?, s:O?, s:o}", "id", json_object_get(tc, "id"), "name",
                                                           json_object_get(fn, "name"), "arguments",
                                                           args ? args : json_object()));
                }
                json_object_set_new(x, "tool_calls", calls);
            }
            if (json_object_get(m, "tool_call_id"))
                json_object_set(x, "tool_call_id", json_object_get(m, "tool_call_id"));
            json_array_append_new(out, x);
            continue;
        }
        /* Anthropic blocks: text, tool_use (assistant), tool_result (user) */
        if (json_is_string(content)) {
            json_array_append_new(out, json_pack("{s:s, s:O}", "role", role, "content", content));
            continue;
        }
        buf_t text;
        buf_init(&text);
        json_t *calls = NULL, *blk;
        size_t k;
        json_array_foreach(content, k, blk) {
            const char *bt = json_string_value(json_object_get(blk, "type"));
            if (!bt)
                continue;
            if (!strcmp(bt, "text"))
                buf_puts(&text, json_string_value(json_object_get(blk, "text")) ?: "");
            else if (!strcmp(bt, "tool_use")) {
                if (!calls)
                    calls = json_array();
                json_array_append_new(calls, json_pack("{s:O?, s:O?, s:O?}", "id", json_object_get(blk, "id"), "name",
                                                       json_object_get(blk, "name"), "arguments",
                                                       json_object_get(blk, "input")));
            } else if (!strcmp(bt, "tool_result")) {
                char *rt = blocks_text(json_object_get(blk, "content"));
                json_array_append_new(out, json_pack("{s:s, s:O?, s:s}", "role", "tool", "tool_call_id",
                                                     json_object_get(blk, "tool_use_id"), "content", rt));
                free(rt);
            }
        }
        if (text.len || calls) {
            buf_puts(&text, "");
            json_t *x = json_pack("{s:s, s:s}", "role", role, "content", text.data);
            if (calls)
                json_object_set_new(x, "tool_calls", calls);
            json_array_append_new(out, x);
        }
        buf_free(&text);
    }
    return out;
}

/* The normalised result of llm.c in the caller's protocol. */
static json_t *answer_in(enum proto p, gw_call *c, json_t *res)
{
    const char *text = json_string_value(json_object_get(res, "text"));
    const char *finish = json_string_value(json_object_get(res, "finish_reason")) ?: "stop";
    json_t *usage = json_object_get(res, "usage");
    json_int_t in = json_integer_value(json_object_get(usage, "input_tokens"));
    json_int_t out = json_integer_value(json_object_get(usage, "output_tokens"));
    const char *model = json_string_value(json_object_get(res, "model")) ?: c->model;
    json_t *calls = json_object_get(res, "tool_calls"), *tc;
    size_t i;
    if (p == P_OPENAI) {
        json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content", text ? json_string(text) : json_null());
        if (json_array_size(calls)) {
            json_t *tcs = json_array();
            json_array_foreach(calls, i, tc) {
                json_t *args = json_object_get(tc, "arguments");
                char *at = json_is_string(args) ? xstrdup(json_string_value(args)) : json_text(args, JSON_COMPACT);
                json_array_append_new(tcs, json_pack("{s:O?, s:s, s:{s:O?, s:s}}", "id", json_object_get(tc, "id"),
                                                     "type", "function", "function", "name",
                                                     json_object_get(tc, "name"), "arguments", at));
                free(at);
            }
            json_object_set_new(msg, "tool_calls", tcs);
        }
        char id[64];
        snprintf(id, sizeof id, "chatcmpl-%s", c->trace_id);
        return json_pack("{s:s, s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:s, s:n}], s:{s:I, s:I, s:I}}", "ratchet_trace_id",
                         c->trace_id, "id", id, "object", "chat.completion", "created", (json_int_t)(now_ms() / 1000),
                         "model", model, "choices", "index", 0, "message", msg, "finish_reason", finish, "logprobs",
                         "usage", "prompt_tokens", in, "completion_tokens", out, "total_tokens", in + out);
    }
    json_t *content = json_array();
    if (text && *text)
        json_array_append_new(content, json_pack("{s:s, s:s}", "type", "text", "text", text));
    json_array_foreach(calls, i, tc) {
        json_t *args = json_object_get(tc, "arguments");
        json_array_append_new(content, json_pack("{s:s, s:O?, s:O?, s:O}", "type", "tool_use", "id",
                                                 json_object_get(tc, "id"), "name", json_object_get(tc, "name"),
                                                 "input", json_is_object(args) ? args : json_object()));
    }
    const char *stop = !strcmp(finish, "length") ? "max_tokens" : !strcmp(finish, "tool_calls") ? "tool_use"
                                                                                                : "end_turn";
    char id[64];
    snprintf(id, sizeof id, "msg_%s", c->trace_id);
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:n, s:{s:I, s:I}}", "ratchet_trace_id", c->trace_id, "id",
                     id, "type", "message", "role", "assistant", "model", model, "content", content, "stop_reason",
                     stop, "stop_sequence", "usage", "input_tokens", in, "output_tokens", out);
}

static int kind_status(const char *kind)
{
    static const struct { const char *k; int s; } map[] = {
        {"rate_limited", 429}, {"timeout", 504}, {"overloaded", 529}, {"server_error", 502}, {"connect", 502},
        {"transport", 502}, {"auth", 502}, {"rejected", 400}, {"bad_request", 400}, {"budget", 429},
        {"circuit_open", 503}, {"invalid_response", 502}, {"too_large", 502}, {"tls", 502}, {"cancelled", 503},
    };
    for (size_t i = 0; kind && i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(map[i].k, kind))
            return map[i].s;
    return 502;
}

static void on_mapped(llm_call *lc, json_t *res, const char *kind, const char *err, void *ud)
{
    (void)lc;
    gw_call *c = ud;
    c->lc = NULL;
    /* from here the answer is written at once: a client gone meanwhile is
     * seen by the writes (which then send nothing), not by the hook, which
     * would free c under us */
    http_on_abort(c->req, NULL, NULL);
    if (!res) {
        int st = kind_status(kind);
        gw_error(c->req, c->proto, st, NULL, st == 429 || st == 503 ? "Retry-After: 1\r\n" : NULL, "%s", err);
        capture(c, st, err, NULL);
        call_free(c);
        return;
    }
    json_t *ans = answer_in(c->proto, c, res);
    buf_t hb;
    buf_init(&hb);
    answer_headers(c, &hb);
    const char *hdr = hb.data;
    char *t = json_text(ans, JSON_COMPACT);
    http_respond(c->req, 200, "application/json", hdr, t, strlen(t));
    free(t);
    buf_free(&hb);
    outcome o = {0};
    read_answer(ans, &o);
    json_decref(ans);
    capture(c, 200, NULL, &o);
    outcome_free(&o);
    call_free(c);
}

/* ---- requests ---- */

/* "caller id": X-Ratchet-Caller, else the protocol's own field. */
static const char *caller_of(http_request *req, enum proto p, json_t *body)
{
    const char *h = http_header_get(req, "x-ratchet-caller");
    if (h && *h)
        return h;
    if (p == P_OPENAI) {
        const char *s = json_string_value(json_object_get(body, "safety_identifier"));
        if (!s || !*s)
            s = json_string_value(json_object_get(body, "user"));
        return s && *s ? s : NULL;
    }
    const char *u = json_string_value(json_object_get(json_object_get(body, "metadata"), "user_id"));
    return u && *u ? u : NULL;
}

static bool id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 128)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-_.:", *p))
            return false;
    return true;
}

/* The managed prompt's rendered messages put before the caller's, the
 * version's model and settings as defaults. */
static void apply_prompt(enum proto p, json_t *body, json_t *rendered, json_t *model, const char *model_name)
{
    json_object_set_new(body, "model", json_string(model_name));
    static const char *const params[] = {"temperature", "max_tokens", "top_p", "seed", "stop", NULL};
    for (const char *const *k = params; *k; k++) {
        json_t *v = json_object_get(model, *k);
        if (!v || json_object_get(body, *k))
            continue;
        if (p == P_ANTHROPIC && !strcmp(*k, "seed"))
            continue;
        if (p == P_ANTHROPIC && !strcmp(*k, "stop")) {
            if (!json_object_get(body, "stop_sequences"))
                json_object_set_new(body, "stop_sequences", json_is_string(v) ? json_pack("[O]", v) : json_incref(v));
            continue;
        }
        json_object_set(body, *k, v);
    }
    if (p == P_ANTHROPIC && !json_object_get(body, "max_tokens"))
        json_object_set_new(body, "max_tokens", json_integer(1024));
    json_t *mine = json_array(), *m;
    size_t i;
    buf_t sys;
    buf_init(&sys);
    json_array_foreach(rendered, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        if (p == P_ANTHROPIC && role && (!strcmp(role, "system") || !strcmp(role, "developer"))) {
            char *t = blocks_text(json_object_get(m, "content"));
            buf_printf(&sys, "%s%s", sys.len ? "\n\n" : "", t);
            free(t);
            continue;
        }
        json_array_append(mine, m);
    }
    json_t *theirs = json_object_get(body, "messages");
    json_array_extend(mine, theirs);
    json_object_set_new(body, "messages", mine);
    if (sys.len) {
        json_t *had = json_object_get(body, "system");
        if (json_is_string(had)) {
            buf_printf(&sys, "\n\n%s", json_string_value(had));
            json_object_set_new(body, "system", json_string(sys.data));
        } else if (json_is_array(had)) {
            json_t *blocks = json_pack("[{s:s, s:s}]", "type", "text", "text", sys.data);
            json_array_extend(blocks, had);
            json_object_set_new(body, "system", blocks);
        } else {
            json_object_set_new(body, "system", json_string(sys.data));
        }
    }
    buf_free(&sys);
}

/* The retry window: the same caller, prompt and variables within it names
 * the last trace as the one retried. */
static void retry_window(api *a, gw_call *c)
{
    int win = a->cfg->gateway.retry_window_ms;
    if (win <= 0 || !c->managed || !c->caller)
        return;
    struct gateway *g = state(a);
    char *vars = c->vars ? json_text(c->vars, JSON_COMPACT | JSON_SORT_KEYS) : xstrdup("{}");
    buf_t k;
    buf_init(&k);
    buf_printf(&k, "%s\n%s\n%s", c->caller, c->prompt, vars);
    free(vars);
    int64_t now = now_ms();
    json_t *prev = json_object_get(g->recent, k.data);
    if (prev && !c->retry_of && now - json_integer_value(json_array_get(prev, 1)) <= win)
        c->retry_of = xstrdup(json_string_value(json_array_get(prev, 0)));
    if (json_object_size(g->recent) >= RETRY_MAP_MAX) { /* forget what is past the window */
        const char *key;
        json_t *v, *tmp;
        json_object_foreach_safe(g->recent, tmp, key, v)
            if (now - json_integer_value(json_array_get(v, 1)) > win)
                json_object_del(g->recent, key);
        if (json_object_size(g->recent) >= RETRY_MAP_MAX)
            json_object_clear(g->recent);
    }
    json_object_set_new(g->recent, k.data, json_pack("[s, I]", c->trace_id, (json_int_t)now));
    buf_free(&k);
}

static void gateway_request(const api_call *ac, enum proto p)
{
    api *a = ac->a;
    http_request *req = ac->req;
    const config_gateway *gc = &a->cfg->gateway;
    if (!gc->enabled) {
        gw_error(req, p, 404, NULL, NULL,
                 "gateway mode is off: add a gateway = { ... } table to the config (docs/gateway.md)");
        return;
    }
    size_t key;
    a->gateway_n.refused++; /* taken back below once the call goes out */
    if (!authorize(a, req, p, &key))
        return;
    if (req->body.len > (size_t)gc->max_body_bytes) {
        gw_error(req, p, 413, NULL, NULL, "the request body is over gateway.max_body_bytes (%d bytes)",
                 gc->max_body_bytes);
        return;
    }
    if (!within_limits(a, req, p, key))
        return;
    char perr[300];
    json_t *body = req->body.len ? jtree_parse(req->body.data, req->body.len, perr, sizeof perr) : NULL;
    if (!json_is_object(body)) {
        gw_error(req, p, 400, NULL, NULL, "the body must be a JSON object: %s",
                 body ? "it is another JSON value" : req->body.len ? perr : "the body is empty");
        json_decref(body);
        return;
    }
    const char *model = json_string_value(json_object_get(body, "model"));
    const char *named = http_header_get(req, "x-ratchet-prompt");
    if (!named && (!model || !*model)) {
        gw_error(req, p, 400, "model", NULL, "'model' is required: a provider's model, or ratchet:PROMPT for a "
                                             "managed prompt");
        json_decref(body);
        return;
    }
    json_t *msgs = json_object_get(body, "messages");
    bool managed_model = named || !strncmp(model, PREFIX, strlen(PREFIX));
    if (!msgs && managed_model) {
        json_object_set_new(body, "messages", json_array()); /* a managed prompt's own messages may be all */
    } else if (!json_is_array(msgs)) {
        gw_error(req, p, 400, "messages", NULL, "'messages' must be an array (it may be left out for a managed prompt)");
        json_decref(body);
        return;
    }
    json_t *stream = json_object_get(body, "stream");
    if (stream && !json_is_boolean(stream)) {
        gw_error(req, p, 400, "stream", NULL, "'stream' must be true or false");
        json_decref(body);
        return;
    }
    const char *ukey = http_header_get(req, "x-ratchet-upstream-key");
    if (ukey && !gc->caller_keys) {
        gw_error(req, p, 403, NULL, NULL, "X-Ratchet-Upstream-Key was sent but gateway.caller_keys is not true in "
                                          "the config: the provider's own key is used, never the caller's");
        json_decref(body);
        return;
    }
    const char *retry = http_header_get(req, "x-ratchet-retry-of");
    if (retry && !id_ok(retry)) {
        gw_error(req, p, 400, "x-ratchet-retry-of", NULL,
                 "X-Ratchet-Retry-Of must be a trace id (1-128 of A-Z a-z 0-9 - _ . :)");
        json_decref(body);
        return;
    }
    gw_call *c = xcalloc(1, sizeof *c);
    c->a = a;
    c->req = req;
    c->proto = p;
    c->key = key;
    c->start_ns = req->start_ns;
    c->body_len = req->body.len;
    c->stream = json_is_true(stream);
    id_uuid7(c->trace_id);
    c->retry_of = retry ? xstrdup(retry) : NULL;
    const char *caller = caller_of(req, p, body);
    c->caller = caller ? xstrndup(caller, strnlen(caller, 256)) : NULL;

    /* the variables: a body field or a header, never sent upstream */
    json_t *vars = json_object_get(body, "ratchet_variables");
    const char *vh = http_header_get(req, "x-ratchet-variables");
    if (vars && !json_is_object(vars)) {
        gw_error(req, p, 400, "ratchet_variables", NULL, "'ratchet_variables' must be an object of the template's "
                                                          "variables");
        goto refuse;
    }
    if (!vars && vh) {
        json_t *hv = jtree_parse(vh, strlen(vh), perr, sizeof perr);
        if (!json_is_object(hv)) {
            json_decref(hv);
            gw_error(req, p, 400, "x-ratchet-variables", NULL, "X-Ratchet-Variables must be a JSON object");
            goto refuse;
        }
        c->vars = hv;
    } else if (vars) {
        c->vars = json_incref(vars);
    }
    json_object_del(body, "ratchet_variables");

    char name[160] = "";
    if (named)
        snprintf(name, sizeof name, "%s", named);
    else if (!strncmp(model, PREFIX, strlen(PREFIX)))
        snprintf(name, sizeof name, "%s", model + strlen(PREFIX));
    c->managed = name[0] != 0;
    const char *default_model = NULL;
    if (c->managed) {
        if (!a->registry) {
            gw_error(req, p, 503, NULL, NULL, "the registry is not available");
            goto refuse;
        }
        reg_error e = {0};
        const char *why = NULL;
        json_t *v = registry_pick(a->registry, name, c->caller, &c->version, &why, &e);
        if (!v) {
            gw_error(req, p, e.status == 404 ? 404 : 400, "model", NULL, "%s", e.message);
            goto refuse;
        }
        c->chosen_by = (char *)why; /* a static string */
        json_t *rendered = NULL;
        json_t *messages = json_object_get(v, "messages");
        if (template_render(messages, c->vars ? c->vars : NULL, &rendered, &e)) {
            gw_error(req, p, 400, "ratchet_variables", NULL, "%s (send the variables in ratchet_variables or the "
                                                              "X-Ratchet-Variables header)", e.message);
            goto refuse;
        }
        if (!rendered)
            rendered = json_incref(messages);
        json_t *vm = json_object_get(v, "model");
        c->provider = xstrdup(json_string_value(json_object_get(vm, "provider")) ?: "");
        int kind = a->llm ? llm_provider_kind(a->llm, c->provider, &default_model) : -1;
        if (kind < 0) {
            json_decref(rendered);
            gw_error(req, p, 502, NULL, NULL, "prompt '%s' version %lld names provider '%s', which the config lacks",
                     name, (long long)c->version, c->provider);
            goto refuse;
        }
        const char *mname = json_string_value(json_object_get(vm, "model"));
        if (!mname)
            mname = default_model;
        if (!mname) {
            json_decref(rendered);
            gw_error(req, p, 502, NULL, NULL, "prompt '%s' version %lld names no model and provider '%s' has no "
                                              "default_model", name, (long long)c->version, c->provider);
            goto refuse;
        }
        c->model = xstrdup(mname);
        c->prompt = xstrdup(name);
        c->mapped = (kind == LLM_OPENAI) != (p == P_OPENAI);
        apply_prompt(p, body, rendered, vm, mname);
        json_decref(rendered);
    } else {
        /* pass-through: X-Ratchet-Provider, else the first allowed provider of the caller's protocol */
        const char *want = http_header_get(req, "x-ratchet-provider");
        char **allowed = gc->providers;
        for (size_t i = 0; allowed && allowed[i] && !c->provider; i++) {
            int kind = a->llm ? llm_provider_kind(a->llm, allowed[i], NULL) : -1;
            if (want ? !strcmp(want, allowed[i]) : kind == (p == P_OPENAI ? LLM_OPENAI : LLM_ANTHROPIC))
                c->provider = xstrdup(allowed[i]);
        }
        if (!c->provider) {
            if (want)
                gw_error(req, p, 400, "x-ratchet-provider", NULL,
                         "provider '%.100s' is not in gateway.providers, which pass-through may use", want);
            else
                gw_error(req, p, 404, "model", NULL,
                         "model '%.200s' is not a managed prompt (ratchet:NAME), and gateway.providers lists no %s "
                         "provider for pass-through", model, p == P_OPENAI ? "OpenAI-compatible" : "Anthropic");
            goto refuse;
        }
        if ((llm_provider_kind(a->llm, c->provider, NULL) == LLM_OPENAI) != (p == P_OPENAI)) {
            gw_error(req, p, 400, "x-ratchet-provider", NULL, "provider '%s' speaks the other protocol; pass-through "
                                                              "sends the request unchanged", c->provider);
            goto refuse;
        }
        c->model = xstrdup(model);
        /* "passthrough/MODEL" until the user links it to a prompt */
        char pn[129];
        int n = snprintf(pn, sizeof pn, "passthrough/%s", model);
        for (int i = 12; i < n && i < 128; i++)
            if (!isalnum((unsigned char)pn[i]) && !strchr("-_.:/", pn[i]))
                pn[i] = '_';
        c->prompt = xstrdup(pn);
    }
    retry_window(a, c);
    a->gateway_n.refused--;
    a->gateway_n.requests[p][c->managed]++;
    struct gateway *g = state(a);
    c->next = g->calls;
    if (g->calls)
        g->calls->prev = c;
    g->calls = c;
    c->sent = body;
    http_on_abort(req, on_client_gone, c);
    char err[300];
    if (c->mapped) {
        json_t *r = json_pack("{s:s, s:s, s:O}", "provider", c->provider, "model", c->model, "messages",
                              json_object_get(body, "messages"));
        json_t *sys = json_object_get(body, "system");
        if (sys) {
            char *st = blocks_text(sys);
            json_object_set_new(r, "system", json_string(st));
            free(st);
        }
        json_object_set_new(r, "messages", map_messages_in(p, json_object_get(body, "messages")));
        static const char *const same[] = {"temperature", "max_tokens", "top_p", "seed", "response_format", NULL};
        for (const char *const *k = same; *k; k++)
            if (json_object_get(body, *k))
                json_object_set(r, *k, json_object_get(body, *k));
        json_t *stop = json_object_get(body, p == P_OPENAI ? "stop" : "stop_sequences");
        if (stop)
            json_object_set(r, "stop", stop);
        json_t *tools = map_tools_in(p, json_object_get(body, "tools"));
        if (tools)
            json_object_set_new(r, "tools", tools);
        json_object_set_new(r, "timeout_ms", json_integer(gc->timeout_ms));
        if (llm_check_request(r, err, sizeof err) != 0) {
            json_decref(r);
            gw_error(req, p, 400, NULL, NULL, "this request cannot be translated for provider '%s': %s", c->provider,
                     err);
            capture(c, 400, err, NULL);
            call_free(c);
            return;
        }
        if (c->stream) { /* the provider's own stream, translated event by event */
            char *pbody = llm_provider_body(a->llm, r, true);
            json_decref(r);
            const char *spent = llm_daily_budget_spent(a->llm);
            if (!pbody || spent) {
                free(pbody);
                gw_error(req, p, spent ? 429 : 502, NULL, NULL, spent ? "the daily LLM budget %s is spent"
                                                                      : "%s: the provider or its model is missing",
                         spent ? spent : c->provider);
                capture(c, spent ? 429 : 502, "refused before sending", NULL);
                call_free(c);
                return;
            }
            llm_proxy_opts o = {.provider = c->provider, .body = pbody, .body_len = strlen(pbody),
                                .timeout_ms = gc->timeout_ms, .idle_timeout_ms = gc->idle_timeout_ms,
                                .on_chunk = on_translated_chunk, .done = on_upstream, .ud = c};
            c->up = llm_proxy(a->llm, &o, err, sizeof err);
            c->proxied = c->up != NULL;
            free(pbody);
            if (!c->up) {
                gw_error(req, p, 502, NULL, NULL, "%s", err);
                capture(c, 502, err, NULL);
                call_free(c);
            }
            return;
        }
        llm_caller who = {.kind = "other", .name = "gateway", .run_id = NULL};
        c->lc = llm_chat_json(a->llm, r, &who, on_mapped, c);
        json_decref(r);
        return;
    }
    const char *spent = llm_daily_budget_spent(a->llm);
    if (spent) {
        int64_t left = 86400000 - now_ms() % 86400000;
        char hdr[64];
        snprintf(hdr, sizeof hdr, "Retry-After: %lld\r\n", (long long)((left + 999) / 1000));
        a->gateway_n.refused++;
        gw_error(req, p, 429, NULL, hdr, "the daily LLM budget %s is spent; it resets at midnight UTC", spent);
        capture(c, 429, "refused: a daily LLM budget is spent", NULL);
        call_free(c);
        return;
    }
    char *text = json_text(body, JSON_COMPACT);
    /* the caller's Anthropic beta features go along (a header line: no CR or LF in it, the parser saw to that) */
    const char *beta = p == P_ANTHROPIC ? http_header_get(req, "anthropic-beta") : NULL;
    char beta_line[600] = "";
    if (beta && strlen(beta) < 500)
        snprintf(beta_line, sizeof beta_line, "anthropic-beta: %s", beta);
    llm_proxy_opts o = {.provider = c->provider, .body = text, .body_len = strlen(text), .caller_key = ukey,
                        .extra_header = beta_line[0] ? beta_line : NULL,
                        .timeout_ms = gc->timeout_ms, .idle_timeout_ms = gc->idle_timeout_ms,
                        .on_chunk = c->stream ? on_chunk : NULL, .done = on_upstream, .ud = c};
    c->caller_key = ukey != NULL;
    c->up = llm_proxy(a->llm, &o, err, sizeof err);
    c->proxied = c->up != NULL;
    free(text);
    if (!c->up) {
        gw_error(req, p, 502, NULL, NULL, "%s", err);
        capture(c, 502, err, NULL);
        call_free(c);
    }
    return;
refuse:
    json_decref(body);
    free(c->provider);
    free(c->model);
    free(c->prompt);
    free(c->caller);
    free(c->retry_of);
    json_decref(c->vars);
    free(c);
}

/* POST /v1/chat/completions */
void api_gateway_chat(const api_call *c)
{
    gateway_request(c, P_OPENAI);
}

/* POST /v1/messages */
void api_gateway_messages(const api_call *c)
{
    gateway_request(c, P_ANTHROPIC);
}

/* GET /v1/models: the managed prompts as ratchet:NAME, in a list both SDKs read. */
void api_gateway_models(const api_call *ac)
{
    api *a = ac->a;
    http_request *req = ac->req;
    enum proto p = http_header_get(req, "anthropic-version") ? P_ANTHROPIC : P_OPENAI;
    if (!a->cfg->gateway.enabled) {
        gw_error(req, p, 404, NULL, NULL,
                 "gateway mode is off: add a gateway = { ... } table to the config (docs/gateway.md)");
        return;
    }
    size_t key;
    if (!authorize(a, req, p, &key))
        return;
    json_t *data = json_array();
    const char *name;
    json_t *pr;
    json_object_foreach(a->registry ? registry_prompts(a->registry) : NULL, name, pr) {
        char id[200];
        snprintf(id, sizeof id, PREFIX "%s", name);
        int64_t created = json_integer_value(json_object_get(pr, "created_ms"));
        char ts[32];
        rfc3339_format(created, ts);
        json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:s}", "id", id, "object", "model",
                                              "created", (json_int_t)(created / 1000), "owned_by", "ratchet", "type",
                                              "model", "display_name", name, "created_at", ts));
    }
    json_t *first = json_array_get(data, 0), *last = json_array_get(data, json_array_size(data) - 1);
    json_t *ans = json_pack("{s:s, s:O, s:b, s:O?, s:O?}", "object", "list", "data", data, "has_more", 0, "first_id",
                            json_object_get(first, "id"), "last_id", json_object_get(last, "id"));
    api_respond_json(req, 200, ans);
    json_decref(ans);
    json_decref(data);
}

void api_gateway_stop(api *a)
{
    struct gateway *g = a->gateway;
    while (g && g->calls) {
        gw_call *c = g->calls;
        if (c->lc)
            llm_cancel(c->lc), c->lc = NULL;
        if (c->up)
            httpc_cancel(c->up), c->up = NULL;
        if (c->started) {
            finish_stream(c, 503, "the engine stopped mid-stream");
            continue;
        }
        gw_error(c->req, c->proto, 503, NULL, "Retry-After: 1\r\n", "the engine is stopping; retry");
        capture(c, 503, "the engine stopped before the answer", NULL);
        call_free(c);
    }
    api_capture_flush(a);
}

void api_gateway_free(api *a)
{
    api_capture_close(a);
    struct gateway *g = a->gateway;
    if (!g)
        return;
    free(g->req_b);
    free(g->tok_b);
    json_decref(g->recent);
    free(g);
    a->gateway = NULL;
}
