/* llm_fake.c — `ratchet fake-llm`: a real HTTP server on loopback, built on
 * the engine's own server code, that speaks OpenAI's Chat Completions and
 * Anthropic's Messages. Its model is a Lua function; faults are queued on
 * demand through POST /_fake/faults and served one per LLM request, in order:
 * an HTTP status (429 with Retry-After, 500, 529, ...), a delay, a stall, a
 * truncated body, invalid JSON, a connection reset. For specs, the demo and
 * benchmarks; never part of `serve`. */
#include "fake/llm_fake.h"

#include <getopt.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli/cli.h"
#include "net/http.h"
#include "base/log.h"
#include "script/luajson.h"
#include "base/util.h"
#include "base/jtree.h"

const char fake_llm_usage[] =
    "usage: ratchet fake-llm [--listen ADDR] [--address-file FILE] [--model FILE.lua]\n"
    "                        [--latency-ms N] [--api-key-env NAME]\n"
    "\n"
    "A fake LLM server for specs, demos and benchmarks, on loopback. It answers\n"
    "  POST .../chat/completions   (OpenAI-compatible, Azure deployments too)\n"
    "  POST .../messages           (Anthropic)\n"
    "with the reply of its model: a Lua file returning function(request, api)\n"
    "that returns a string, or a table {text=, tool_calls={{name=, arguments=}},\n"
    "input_tokens=, output_tokens=, finish_reason=}. Without --model it echoes\n"
    "the last message.\n"
    "\n"
    "  POST /_fake/faults  queue faults (a JSON object or array), served one per\n"
    "                      LLM request in order; each may carry \"times\": N:\n"
    "                      {\"status\":429,\"retry_after\":2} {\"status\":429,\"retry_after_ms\":150}\n"
    "                      {\"status\":500} {\"status\":529} {\"delay_ms\":300} {\"stall\":true}\n"
    "                      {\"truncate\":true} {\"invalid_json\":true} {\"reset\":true}\n"
    "                      {\"stall_after\":N} (a stream: N events, then nothing)\n"
    "                      A request with \"stream\": true is answered with server-sent events.\n"
    "  GET  /_fake/stats   requests seen, their arrival times (ms), faults left,\n"
    "                      key checks, the last request\n"
    "  POST /_fake/reset   clears faults and stats\n"
    "\n"
    "  -l, --listen ADDR        default 127.0.0.1:0 (an ephemeral port)\n"
    "  -a, --address-file FILE  write the bound address there once listening\n"
    "  -m, --model FILE         the model script\n"
    "      --latency-ms N       answer every LLM request after N ms (default 0)\n"
    "      --api-key-env NAME   require the key held in $NAME (Authorization: Bearer,\n"
    "                           api-key or x-api-key); a wrong one gets 401\n"
    "\n"
    "Exit status: 0 after SIGTERM or SIGINT, 3 on a usage error or a model that does not load.\n";

typedef struct {
    int status;
    int64_t retry_after_s, retry_after_ms;
    int delay_ms;
    bool stall, truncate, invalid_json, reset;
    int stall_after;    /* a stream: this many events, then nothing (-1: off) */
    int times;
    char *message;
} fault;

typedef struct pending pending;

typedef struct {
    uv_loop_t *loop;
    http_server *srv;
    lua_State *L;
    int model_ref;
    int latency_ms;
    char *api_key;
    fault *faults;
    size_t nfaults, cap_faults;
    uint64_t requests, auth_ok, auth_missing, auth_wrong, seq;
    uint64_t streams, streams_aborted; /* streamed answers; those the client closed before their end */
    json_t *arrivals; /* ms since start, the last 1000 */
    json_t *last;
    uint64_t start_ns;
    pending *pend;
    uv_signal_t sigterm, sigint;
    bool stopping;
} fake;

struct pending { /* a reply waiting on a delay, or a stalled request */
    uv_timer_t timer;
    fake *f;
    http_request *req;
    int status;
    char *headers, *body;
    pending *prev, *next;
};

/* ---- faults ---- */

static int fault_parse(json_t *o, fault *ft, char *err, size_t errlen)
{
    memset(ft, 0, sizeof *ft);
    ft->times = 1;
    ft->retry_after_s = ft->retry_after_ms = -1;
    ft->stall_after = -1;
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (!strcmp(k, "status") && json_is_integer(v) && json_integer_value(v) >= 100 &&
            json_integer_value(v) <= 599)
            ft->status = (int)json_integer_value(v);
        else if (!strcmp(k, "retry_after") && json_is_integer(v) && json_integer_value(v) >= 0)
            ft->retry_after_s = json_integer_value(v);
        else if (!strcmp(k, "retry_after_ms") && json_is_integer(v) && json_integer_value(v) >= 0)
            ft->retry_after_ms = json_integer_value(v);
        else if (!strcmp(k, "delay_ms") && json_is_integer(v) && json_integer_value(v) >= 0)
            ft->delay_ms = (int)json_integer_value(v);
        else if (!strcmp(k, "times") && json_is_integer(v) && json_integer_value(v) >= 1)
            ft->times = (int)json_integer_value(v);
        else if (!strcmp(k, "stall") && json_is_boolean(v))
            ft->stall = json_is_true(v);
        else if (!strcmp(k, "truncate") && json_is_boolean(v))
            ft->truncate = json_is_true(v);
        else if (!strcmp(k, "invalid_json") && json_is_boolean(v))
            ft->invalid_json = json_is_true(v);
        else if (!strcmp(k, "stall_after") && json_is_integer(v) && json_integer_value(v) >= 0 &&
                 json_integer_value(v) < 1000)
            ft->stall_after = (int)json_integer_value(v);
        else if (!strcmp(k, "reset") && json_is_boolean(v))
            ft->reset = json_is_true(v);
        else if (!strcmp(k, "message") && json_is_string(v))
            ft->message = xstrdup(json_string_value(v));
        else {
            snprintf(err, errlen, "fault field '%s': unknown or of the wrong type", k);
            free(ft->message);
            return -1;
        }
    }
    return 0;
}

/* Takes the next fault (a copy; the caller frees message) or returns false. */
static bool fault_next(fake *f, fault *out)
{
    if (!f->nfaults)
        return false;
    *out = f->faults[0];
    if (--f->faults[0].times > 0) {
        out->message = out->message ? xstrdup(out->message) : NULL;
        return true;
    }
    memmove(f->faults, f->faults + 1, (f->nfaults - 1) * sizeof *f->faults);
    f->nfaults--;
    return true;
}

static void faults_clear(fake *f)
{
    for (size_t i = 0; i < f->nfaults; i++)
        free(f->faults[i].message);
    f->nfaults = 0;
}

/* ---- replies ---- */

static void pending_unlink(pending *p)
{
    fake *f = p->f;
    if (p->prev)
        p->prev->next = p->next;
    else
        f->pend = p->next;
    if (p->next)
        p->next->prev = p->prev;
}

static void on_pending_closed(uv_handle_t *h)
{
    pending *p = h->data;
    free(p->headers);
    free(p->body);
    free(p);
}

static void on_delay(uv_timer_t *t)
{
    pending *p = t->data;
    pending_unlink(p);
    http_respond(p->req, p->status, "application/json", p->headers, p->body, strlen(p->body));
    uv_close((uv_handle_t *)&p->timer, on_pending_closed);
}

/* Answers now, or after delay_ms; delay_ms < 0: never (a stall, dropped at shutdown). */
static void reply(fake *f, http_request *req, int status, const char *headers, const char *body, int delay_ms)
{
    if (delay_ms == 0) {
        http_respond(req, status, "application/json", headers, body, strlen(body));
        return;
    }
    pending *p = xcalloc(1, sizeof *p);
    p->f = f;
    p->req = req;
    p->status = status;
    p->headers = headers ? xstrdup(headers) : NULL;
    p->body = xstrdup(body);
    uv_timer_init(f->loop, &p->timer);
    p->timer.data = p;
    p->next = f->pend;
    if (f->pend)
        f->pend->prev = p;
    f->pend = p;
    if (delay_ms > 0)
        uv_timer_start(&p->timer, on_delay, (uint64_t)delay_ms, 0);
}

static void error_reply(fake *f, http_request *req, bool anthropic, int status, const char *msg, const char *headers,
                        int delay_ms)
{
    const char *type = status == 401 ? "authentication_error" : status == 429 ? "rate_limit_error"
                       : status == 529 ? "overloaded_error" : status >= 500 ? "api_error" : "invalid_request_error";
    json_t *j = anthropic ? json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", type, "message", msg)
                          : json_pack("{s:{s:s, s:s, s:n}}", "error", "message", msg, "type", type, "code");
    char *text = json_text(j, JSON_COMPACT);
    /* an error it answers ends the connection, as it did before the server
     * kept connections after a 400: a fault queued next (a reset) then meets
     * a fresh connection, not one curl would retry on quietly */
    req->close_after = true;
    reply(f, req, status, headers, text, delay_ms);
    free(text);
    json_decref(j);
}

/* ---- the model ---- */

static const char echo_model[] =
    "return function(req, api)\n"
    "  local last = req.messages and req.messages[#req.messages]\n"
    "  local c = last and last.content\n"
    "  if type(c) == 'table' then\n"
    "    local parts = {}\n"
    "    for _, b in ipairs(c) do if type(b) == 'table' and type(b.text) == 'string' then parts[#parts + 1] = b.text end end\n"
    "    c = table.concat(parts)\n"
    "  end\n"
    "  return 'echo: ' .. (type(c) == 'string' and c or '')\n"
    "end\n";

static int model_load(fake *f, const char *path, char *err, size_t errlen)
{
    lua_State *L = f->L;
    int rc = path ? luaL_loadfilex(L, path, "t") : luaL_loadbufferx(L, echo_model, strlen(echo_model), "=echo", "t");
    if (rc == LUA_OK)
        rc = lua_pcall(L, 0, 1, 0);
    if (rc != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        return -1;
    }
    if (!lua_isfunction(L, -1)) {
        snprintf(err, errlen, "%s: the model script must return a function(request, api)", path);
        return -1;
    }
    f->model_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

typedef struct {
    char *text;         /* NULL: none */
    json_t *tool_calls; /* [{name, arguments (object)}] */
    const char *finish; /* "length", or NULL for the natural one */
    json_int_t in_tokens, out_tokens;
} model_reply;

/* Runs the model on the request body. Returns 0, or -1 with err. */
static int model_run(fake *f, const char *body, size_t len, bool anthropic, model_reply *out, char *err,
                     size_t errlen)
{
    lua_State *L = f->L;
    memset(out, 0, sizeof *out);
    out->in_tokens = (json_int_t)(len / 4 + 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, f->model_ref);
    if (luajson_decode(L, body, len, 0, err, errlen) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    lua_pushstring(L, anthropic ? "anthropic" : "openai");
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        snprintf(err, errlen, "the model script failed: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        out->text = xstrdup(lua_tostring(L, -1));
    } else if (lua_istable(L, -1)) {
        if (lua_getfield(L, -1, "text") == LUA_TSTRING)
            out->text = xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        if (lua_getfield(L, -1, "tool_calls") == LUA_TTABLE) {
            char e2[200];
            if (luajson_encode(L, -1, 0, e2, sizeof e2) == 0) {
                out->tool_calls = json_loads(lua_tostring(L, -1), JSON_DECODE_ANY, NULL);
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
        if (lua_getfield(L, -1, "input_tokens") == LUA_TNUMBER)
            out->in_tokens = (json_int_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, -1, "output_tokens") == LUA_TNUMBER)
            out->out_tokens = (json_int_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, -1, "finish_reason") == LUA_TSTRING && !strcmp(lua_tostring(L, -1), "length"))
            out->finish = "length"; /* the only reason a model script can choose */
        lua_pop(L, 1);
    } else {
        snprintf(err, errlen, "the model script returned %s, not a string or a table", luaL_typename(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    lua_pop(L, 1);
    if (!out->out_tokens)
        out->out_tokens = (json_int_t)((out->text ? strlen(out->text) : 0) / 4 + 1);
    if (out->tool_calls && (!json_is_array(out->tool_calls) || !json_array_size(out->tool_calls))) {
        json_decref(out->tool_calls);
        out->tool_calls = NULL;
    }
    return 0;
}

/* An OpenAI request's n (1 to 8; the fake answers that many choices). */
static int choices_n(const json_t *in)
{
    json_int_t n = json_integer_value(json_object_get(in, "n"));
    return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}

/* Choice i > 0 of an n > 1 answer: the reply's text marked " (choice i)". */
static char *choice_text(const model_reply *m, int i)
{
    char *t = xmalloc(strlen(m->text ? m->text : "") + 24);
    sprintf(t, "%s (choice %d)", m->text ? m->text : "", i);
    return t;
}

static char *openai_body(fake *f, const char *model, const model_reply *m, int n)
{
    json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content", m->text ? json_string(m->text) : json_null());
    if (m->tool_calls) {
        json_t *calls = json_array();
        size_t i;
        json_t *tc;
        json_array_foreach(m->tool_calls, i, tc) {
            json_t *args = json_object_get(tc, "arguments");
            char *atext = args ? json_text(args, JSON_COMPACT | JSON_ENCODE_ANY) : xstrdup("{}");
            char id[40];
            snprintf(id, sizeof id, "call_%llu_%zu", (unsigned long long)f->seq, i);
            json_array_append_new(calls, json_pack("{s:s, s:s, s:{s:s?, s:s}}", "id", id, "type", "function",
                                                   "function", "name",
                                                   json_string_value(json_object_get(tc, "name")), "arguments",
                                                   atext));
            free(atext);
        }
        json_object_set_new(msg, "tool_calls", calls);
    }
    char id[40];
    snprintf(id, sizeof id, "chatcmpl-fake-%llu", (unsigned long long)f->seq);
    const char *finish = m->finish ? m->finish : m->tool_calls ? "tool_calls" : "stop";
    json_t *j = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:s}], s:{s:I, s:I, s:I}}", "id", id, "object",
                          "chat.completion", "created", (json_int_t)(now_ms() / 1000), "model", model, "choices",
                          "index", 0, "message", msg, "finish_reason", finish, "usage", "prompt_tokens",
                          m->in_tokens, "completion_tokens", m->out_tokens, "total_tokens",
                          m->in_tokens + m->out_tokens);
    json_t *choices = json_object_get(j, "choices");
    for (int i = 1; i < n; i++) {
        char *t = choice_text(m, i);
        json_array_append_new(choices, json_pack("{s:i, s:{s:s, s:s}, s:s}", "index", i, "message", "role",
                                                 "assistant", "content", t, "finish_reason", "stop"));
        free(t);
    }
    char *text = json_text(j, JSON_COMPACT);
    json_decref(j);
    return text;
}

static char *anthropic_body(fake *f, const char *model, const model_reply *m)
{
    json_t *content = json_array();
    if (m->text)
        json_array_append_new(content, json_pack("{s:s, s:s}", "type", "text", "text", m->text));
    if (m->tool_calls) {
        size_t i;
        json_t *tc;
        json_array_foreach(m->tool_calls, i, tc) {
            char id[40];
            snprintf(id, sizeof id, "toolu_%llu_%zu", (unsigned long long)f->seq, i);
            json_t *args = json_object_get(tc, "arguments");
            json_array_append_new(content, json_pack("{s:s, s:s, s:s?, s:O}", "type", "tool_use", "id", id, "name",
                                                     json_string_value(json_object_get(tc, "name")), "input",
                                                     args ? args : json_object()));
        }
    }
    char id[40];
    snprintf(id, sizeof id, "msg_fake_%llu", (unsigned long long)f->seq);
    const char *stop = m->finish ? "max_tokens" : m->tool_calls ? "tool_use" : "end_turn";
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:n, s:{s:I, s:I}}", "id", id, "type", "message", "role",
                          "assistant", "model", model, "content", content, "stop_reason", stop, "stop_sequence",
                          "usage", "input_tokens", m->in_tokens, "output_tokens", m->out_tokens);
    char *text = json_text(j, JSON_COMPACT);
    json_decref(j);
    return text;
}

/* ---- requests ---- */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* "ok", "missing" or "wrong" against --api-key-env; "ok" when no key is set. */
static const char *check_key(fake *f, const http_request *req)
{
    if (!f->api_key)
        return "ok";
    const char *given = http_header_get(req, "x-api-key");
    if (!given)
        given = http_header_get(req, "api-key");
    const char *auth = http_header_get(req, "authorization");
    if (!given && auth && strncmp(auth, "Bearer ", 7) == 0)
        given = auth + 7;
    if (!given)
        return "missing";
    return secret_equal(given, strlen(given), f->api_key, strlen(f->api_key)) ? "ok" : "wrong";
}

static void record(fake *f, const http_request *req, const char *auth)
{
    f->requests++;
    f->seq++;
    if (json_array_size(f->arrivals) >= 1000)
        json_array_remove(f->arrivals, 0);
    json_array_append_new(f->arrivals, json_real((double)(mono_ns() - f->start_ns) / 1e6));
    json_t *headers = json_object();
    for (int i = 0; i < req->nheaders; i++) {
        const char *n = req->headers[i].name;
        bool secret = !strcmp(n, "authorization") || !strcmp(n, "api-key") || !strcmp(n, "x-api-key");
        json_object_set_new(headers, n, json_string(secret ? "(redacted)" : req->headers[i].value));
    }
    json_t *body = json_loadb(req->body.data ? req->body.data : "", req->body.len, 0, NULL);
    json_decref(f->last);
    f->last = json_pack("{s:s, s:s, s:o, s:o, s:s}", "method", req->method, "url", req->url, "headers", headers,
                        "body", body ? body : json_null(), "auth", auth);
}

/* ---- streamed answers (stream: true) ---- */

static void sse_event(json_t *events, const char *name, json_t *data)
{
    char *t = json_text(data, JSON_COMPACT);
    buf_t b;
    buf_init(&b);
    if (name)
        buf_printf(&b, "event: %s\n", name);
    buf_printf(&b, "data: %s\n\n", t);
    json_array_append_new(events, json_string(b.data));
    buf_free(&b);
    free(t);
    json_decref(data);
}

/* The answer as the events the provider would stream: the text in two
 * pieces, tool calls, the finish, usage (OpenAI: when include_usage asks). */
static json_t *stream_events(fake *f, const char *model, const model_reply *m, bool anthropic, bool usage, int n)
{
    json_t *ev = json_array();
    const char *text = m->text ? m->text : "";
    size_t half = strlen(text) / 2;
    while (half && ((unsigned char)text[half] & 0xC0) == 0x80) /* not inside a UTF-8 sequence */
        half--;
    char *a = xstrndup(text, half);
    char id[40];
    if (!anthropic) {
        snprintf(id, sizeof id, "chatcmpl-fake-%llu", (unsigned long long)f->seq);
        json_int_t created = (json_int_t)(now_ms() / 1000);
#define CHUNK(delta, finish) json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:o}]}", "id", id, "object", \
        "chat.completion.chunk", "created", created, "model", model, "choices", "index", 0, "delta", delta, \
        "finish_reason", finish)
        sse_event(ev, NULL, CHUNK(json_pack("{s:s, s:s}", "role", "assistant", "content", ""), json_null()));
        if (*text) {
            sse_event(ev, NULL, CHUNK(json_pack("{s:s}", "content", a), json_null()));
            sse_event(ev, NULL, CHUNK(json_pack("{s:s}", "content", text + half), json_null()));
        }
        size_t i;
        json_t *tc;
        json_array_foreach(m->tool_calls, i, tc) {
            char cid[48];
            snprintf(cid, sizeof cid, "call_%llu_%zu", (unsigned long long)f->seq, i);
            json_t *args = json_object_get(tc, "arguments");
            char *at = args ? json_text(args, JSON_COMPACT | JSON_ENCODE_ANY) : xstrdup("{}");
            size_t ah = strlen(at) / 2;
            char *a1 = xstrndup(at, ah);
            sse_event(ev, NULL, CHUNK(json_pack("{s:[{s:I, s:s, s:s, s:{s:s?, s:s}}]}", "tool_calls", "index",
                                                (json_int_t)i, "id", cid, "type", "function", "function", "name",
                                                json_string_value(json_object_get(tc, "name")), "arguments", a1),
                                      json_null()));
            sse_event(ev, NULL, CHUNK(json_pack("{s:[{s:I, s:{s:s}}]}", "tool_calls", "index", (json_int_t)i,
                                                "function", "arguments", at + ah), json_null()));
            free(a1);
            free(at);
        }
        const char *finish = m->finish ? m->finish : m->tool_calls ? "tool_calls" : "stop";
        sse_event(ev, NULL, CHUNK(json_object(), json_string(finish)));
#undef CHUNK
        for (int k = 1; k < n; k++) { /* n > 1: each further choice, by its index */
            char *t = choice_text(m, k);
            sse_event(ev, NULL, json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:n}]}", "id", id, "object",
                                          "chat.completion.chunk", "created", created, "model", model, "choices",
                                          "index", k, "delta", "role", "assistant", "content", t, "finish_reason"));
            sse_event(ev, NULL, json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{}, s:s}]}", "id", id, "object",
                                          "chat.completion.chunk", "created", created, "model", model, "choices",
                                          "index", k, "delta", "finish_reason", "stop"));
            free(t);
        }
        if (usage)
            sse_event(ev, NULL, json_pack("{s:s, s:s, s:I, s:s, s:[], s:{s:I, s:I, s:I}}", "id", id, "object",
                                          "chat.completion.chunk", "created", created, "model", model, "choices",
                                          "usage", "prompt_tokens", m->in_tokens, "completion_tokens",
                                          m->out_tokens, "total_tokens", m->in_tokens + m->out_tokens));
        json_array_append_new(ev, json_string("data: [DONE]\n\n"));
        free(a);
        return ev;
    }
    snprintf(id, sizeof id, "msg_fake_%llu", (unsigned long long)f->seq);
    sse_event(ev, "message_start",
              json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:{s:I, s:i}}}", "type", "message_start",
                        "message", "id", id, "type", "message", "role", "assistant", "model", model, "content",
                        "stop_reason", "stop_sequence", "usage", "input_tokens", m->in_tokens, "output_tokens", 1));
    json_int_t idx = 0;
    if (*text) {
        sse_event(ev, "content_block_start", json_pack("{s:s, s:I, s:{s:s, s:s}}", "type", "content_block_start",
                                                       "index", idx, "content_block", "type", "text", "text", ""));
        sse_event(ev, "content_block_delta", json_pack("{s:s, s:I, s:{s:s, s:s}}", "type", "content_block_delta",
                                                       "index", idx, "delta", "type", "text_delta", "text", a));
        sse_event(ev, "content_block_delta", json_pack("{s:s, s:I, s:{s:s, s:s}}", "type", "content_block_delta",
                                                       "index", idx, "delta", "type", "text_delta", "text",
                                                       text + half));
        sse_event(ev, "content_block_stop", json_pack("{s:s, s:I}", "type", "content_block_stop", "index", idx));
        idx++;
    }
    size_t i;
    json_t *tc;
    json_array_foreach(m->tool_calls, i, tc) {
        char tid[48];
        snprintf(tid, sizeof tid, "toolu_%llu_%zu", (unsigned long long)f->seq, i);
        json_t *args = json_object_get(tc, "arguments");
        char *at = args ? json_text(args, JSON_COMPACT | JSON_ENCODE_ANY) : xstrdup("{}");
        sse_event(ev, "content_block_start",
                  json_pack("{s:s, s:I, s:{s:s, s:s, s:s?, s:{}}}", "type", "content_block_start", "index", idx,
                            "content_block", "type", "tool_use", "id", tid, "name",
                            json_string_value(json_object_get(tc, "name")), "input"));
        sse_event(ev, "content_block_delta", json_pack("{s:s, s:I, s:{s:s, s:s}}", "type", "content_block_delta",
                                                       "index", idx, "delta", "type", "input_json_delta",
                                                       "partial_json", at));
        sse_event(ev, "content_block_stop", json_pack("{s:s, s:I}", "type", "content_block_stop", "index", idx));
        free(at);
        idx++;
    }
    const char *stop = m->finish ? "max_tokens" : m->tool_calls ? "tool_use" : "end_turn";
    sse_event(ev, "message_delta", json_pack("{s:s, s:{s:s, s:n}, s:{s:I}}", "type", "message_delta", "delta",
                                             "stop_reason", stop, "stop_sequence", "usage", "output_tokens",
                                             m->out_tokens));
    sse_event(ev, "message_stop", json_pack("{s:s}", "type", "message_stop"));
    free(a);
    return ev;
}

typedef struct {
    fake *f;
    http_request *req;
} held_stream;

static void on_stream_aborted(http_request *req, void *ud)
{
    held_stream *h = ud;
    h->f->streams_aborted++;
    http_stream_end(req);
    free(h);
}

/* Sends the events; with stall_after >= 0, that many, then holds the
 * stream open until the client goes. */
static void stream_reply(fake *f, http_request *req, json_t *events, int stall_after, const char *headers)
{
    f->streams++;
    http_stream_start(req, 200, "text/event-stream", headers);
    size_t n = json_array_size(events);
    if (stall_after >= 0 && (size_t)stall_after < n)
        n = (size_t)stall_after;
    for (size_t i = 0; i < n; i++) {
        const char *e = json_string_value(json_array_get(events, i));
        http_stream_write(req, e, strlen(e));
    }
    if (stall_after >= 0) {
        held_stream *h = xcalloc(1, sizeof *h);
        h->f = f;
        h->req = req;
        http_on_abort(req, on_stream_aborted, h);
        return;
    }
    http_stream_end(req);
}

static void llm_request(fake *f, http_request *req, bool anthropic)
{
    const char *auth = check_key(f, req);
    record(f, req, auth);
    if (!strcmp(auth, "ok"))
        f->auth_ok++;
    else if (!strcmp(auth, "missing"))
        f->auth_missing++;
    else
        f->auth_wrong++;
    fault ft = {0};
    bool faulted = fault_next(f, &ft);
    if (faulted && ft.reset) {
        free(ft.message);
        http_reset(req);
        return;
    }
    if (faulted && ft.stall) {
        free(ft.message);
        reply(f, req, 200, NULL, "", -1);
        return;
    }
    int delay = faulted && ft.delay_ms ? ft.delay_ms : f->latency_ms;
    if (faulted && ft.status && ft.status != 200) {
        char headers[128] = "";
        if (ft.retry_after_s >= 0)
            snprintf(headers, sizeof headers, "Retry-After: %lld\r\n", (long long)ft.retry_after_s);
        else if (ft.retry_after_ms >= 0)
            snprintf(headers, sizeof headers, "retry-after-ms: %lld\r\n", (long long)ft.retry_after_ms);
        error_reply(f, req, anthropic, ft.status, ft.message ? ft.message : "an injected fault",
                    headers[0] ? headers : NULL, delay);
        free(ft.message);
        return;
    }
    free(ft.message);
    if (strcmp(auth, "ok") != 0) {
        error_reply(f, req, anthropic, 401,
                    !strcmp(auth, "missing") ? "no API key was sent" : "the API key is not valid", NULL, 0);
        return;
    }
    if (faulted && ft.invalid_json) {
        reply(f, req, 200, NULL, "{\"choices\": [ this is not JSON", delay);
        return;
    }
    json_t *in = json_loadb(req->body.data ? req->body.data : "", req->body.len, 0, NULL);
    const char *model = in ? json_string_value(json_object_get(in, "model")) : NULL;
    if (!in || !json_is_object(in) || !json_is_array(json_object_get(in, "messages"))) {
        json_decref(in);
        error_reply(f, req, anthropic, 400, "the body must be a JSON object with a messages array", NULL, 0);
        return;
    }
    if (anthropic && !json_is_integer(json_object_get(in, "max_tokens"))) {
        json_decref(in);
        error_reply(f, req, true, 400, "max_tokens: Field required", NULL, 0);
        return;
    }
    model_reply m;
    char err[300];
    if (model_run(f, req->body.data, req->body.len, anthropic, &m, err, sizeof err) != 0) {
        json_decref(in);
        error_reply(f, req, anthropic, 500, err, NULL, 0);
        return;
    }
    if (json_is_true(json_object_get(in, "stream"))) {
        bool usage = json_is_true(json_object_get(json_object_get(in, "stream_options"), "include_usage"));
        json_t *events = stream_events(f, model ? model : "fake", &m, anthropic, usage, anthropic ? 1 : choices_n(in));
        snprintf(req->id, sizeof req->id, "fake-%llu", (unsigned long long)(f->seq % 100000000000ull));
        stream_reply(f, req, events, faulted ? ft.stall_after : -1, NULL);
        json_decref(events);
        json_decref(in);
        free(m.text);
        json_decref(m.tool_calls);
        return;
    }
    char *body = anthropic ? anthropic_body(f, model ? model : "fake", &m)
                           : openai_body(f, model ? model : "fake", &m, choices_n(in));
    json_decref(in);
    free(m.text);
    json_decref(m.tool_calls);
    /* the provider's request id: X-Request-Id (every answer carries it) for
     * OpenAI, request-id for Anthropic */
    snprintf(req->id, sizeof req->id, "fake-%llu", (unsigned long long)(f->seq % 100000000000ull));
    char hdr[80] = "";
    if (anthropic)
        snprintf(hdr, sizeof hdr, "request-id: %s\r\n", req->id);
    if (faulted && ft.truncate) {
        size_t len = strlen(body);
        buf_t raw;
        buf_init(&raw);
        buf_printf(&raw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                         "X-Request-Id: %s\r\n%sConnection: close\r\n\r\n", len, req->id, hdr);
        buf_append(&raw, body, len / 2);
        http_respond_raw(req, raw.data, raw.len);
        buf_free(&raw);
    } else {
        reply(f, req, 200, hdr[0] ? hdr : NULL, body, delay);
    }
    free(body);
}

static void control_faults(fake *f, http_request *req)
{
    json_error_t je;
    json_t *j = json_loadb(req->body.data ? req->body.data : "", req->body.len, 0, &je);
    if (!j || (!json_is_object(j) && !json_is_array(j))) {
        json_decref(j);
        http_respond_error(req, 400, "bad_json", "the body must be a fault object or an array of them");
        return;
    }
    json_t *list = json_is_array(j) ? j : NULL;
    size_t n = list ? json_array_size(list) : 1;
    fault *parsed = xcalloc(n ? n : 1, sizeof *parsed);
    for (size_t i = 0; i < n; i++) {
        json_t *o = list ? json_array_get(list, i) : j;
        char err[200];
        if (!json_is_object(o) || fault_parse(o, &parsed[i], err, sizeof err) != 0) {
            for (size_t k = 0; k < i; k++)
                free(parsed[k].message);
            free(parsed);
            json_decref(j);
            http_respond_error(req, 400, "bad_fault", "faults[%zu]: %s", i,
                               json_is_object(o) ? err : "must be an object");
            return;
        }
    }
    if (f->nfaults + n > f->cap_faults) {
        f->cap_faults = (f->nfaults + n) * 2;
        f->faults = xrealloc(f->faults, f->cap_faults * sizeof *f->faults);
    }
    memcpy(f->faults + f->nfaults, parsed, n * sizeof *parsed);
    f->nfaults += n;
    free(parsed);
    json_decref(j);
    char out[64];
    snprintf(out, sizeof out, "{\"queued\":%zu}", f->nfaults);
    http_respond(req, 200, "application/json", NULL, out, strlen(out));
}

static void handler(http_request *req, void *ctx)
{
    fake *f = ctx;
    bool post = strcmp(req->method, "POST") == 0;
    if (post && ends_with(req->path, "/chat/completions")) {
        llm_request(f, req, false);
    } else if (post && ends_with(req->path, "/messages")) {
        llm_request(f, req, true);
    } else if (post && !strcmp(req->path, "/_fake/faults")) {
        control_faults(f, req);
    } else if (post && !strcmp(req->path, "/_fake/reset")) {
        faults_clear(f);
        f->requests = f->auth_ok = f->auth_missing = f->auth_wrong = f->streams = f->streams_aborted = 0;
        json_array_clear(f->arrivals);
        json_decref(f->last);
        f->last = NULL;
        http_respond(req, 200, "application/json", NULL, "{}", 2);
    } else if (!strcmp(req->method, "GET") && !strcmp(req->path, "/_fake/stats")) {
        size_t left = 0;
        for (size_t i = 0; i < f->nfaults; i++)
            left += (size_t)f->faults[i].times;
        json_t *j = json_pack("{s:I, s:O, s:I, s:{s:I, s:I, s:I}, s:O?, s:I, s:I}", "requests",
                              (json_int_t)f->requests, "arrivals_ms", f->arrivals, "faults_left", (json_int_t)left,
                              "auth", "ok", (json_int_t)f->auth_ok, "missing", (json_int_t)f->auth_missing, "wrong",
                              (json_int_t)f->auth_wrong, "last_request", f->last, "streams",
                              (json_int_t)f->streams, "streams_aborted", (json_int_t)f->streams_aborted);
        char *text = json_text(j, JSON_COMPACT);
        http_respond(req, 200, "application/json", NULL, text, strlen(text));
        free(text);
        json_decref(j);
    } else {
        http_respond_error(req, 404, "not_found", "no route %s %s (see `ratchet fake-llm --help`)", req->method,
                           req->path);
    }
}

/* ---- the command ---- */

static void on_drained(http_server *srv)
{
    (void)srv;
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)signum;
    fake *f = s->data;
    if (f->stopping)
        return;
    f->stopping = true;
    while (f->pend) { /* stalled and delayed requests: drop their connections */
        pending *p = f->pend;
        pending_unlink(p);
        uv_timer_stop(&p->timer);
        http_reset(p->req);
        uv_close((uv_handle_t *)&p->timer, on_pending_closed);
    }
    http_server_drain(f->srv, on_drained);
    http_server_close_all(f->srv);
    uv_close((uv_handle_t *)&f->sigterm, NULL);
    uv_close((uv_handle_t *)&f->sigint, NULL);
}

int fake_llm_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'}, {"address-file", required_argument, NULL, 'a'},
        {"model", required_argument, NULL, 'm'},  {"latency-ms", required_argument, NULL, 'L'},
        {"api-key-env", required_argument, NULL, 'k'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *listen = "127.0.0.1:0", *address_file = NULL, *model = NULL, *key_env = NULL;
    int latency = 0, ch;
    optind = 1;
    while ((ch = cli_getopt("fake-llm", argc, argv, "l:a:m:h", opts)) != -1) {
        switch (ch) {
        case 'l': listen = optarg; break;
        case 'a': address_file = optarg; break;
        case 'm': model = optarg; break;
        case 'k': key_env = optarg; break;
        case 'L': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 0 || v > 3600000) {
                fprintf(stderr, "ratchet fake-llm: --latency-ms must be 0 to 3600000, not '%s'\n", optarg);
                return EXIT_ERROR;
            }
            latency = (int)v;
            break;
        }
        case 'h': fputs(fake_llm_usage, stdout); return 0;
        default: fputs(fake_llm_usage, stderr); return EXIT_ERROR;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ratchet fake-llm: unexpected argument '%s'\n\n%s", argv[optind], fake_llm_usage);
        return EXIT_ERROR;
    }
    char host[256];
    int port;
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host || sscanf(colon + 1, "%d", &port) != 1 || port < 0 ||
        port > 65535) {
        fprintf(stderr, "ratchet fake-llm: --listen must be HOST:PORT, not '%s'\n", listen);
        return EXIT_ERROR;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = 0;
    fake f = {.latency_ms = latency, .start_ns = mono_ns(), .arrivals = json_array(), .model_ref = LUA_NOREF};
    if (key_env) {
        const char *k = getenv(key_env);
        if (!k || !*k) {
            fprintf(stderr, "ratchet fake-llm: --api-key-env %s: the variable is not set\n", key_env);
            json_decref(f.arrivals);
            return EXIT_ERROR;
        }
        f.api_key = xstrdup(k);
    }
    signal(SIGPIPE, SIG_IGN);
    f.L = luaL_newstate();
    luaL_openlibs(f.L);
    char err[512];
    int rc = 0;
    if (model_load(&f, model, err, sizeof err) != 0) {
        fprintf(stderr, "ratchet fake-llm: %s\n", err);
        rc = EXIT_ERROR;
        goto out;
    }
    f.loop = xmalloc(sizeof *f.loop);
    uv_loop_init(f.loop);
    http_limits lim = {.max_connections = 100000, .max_header_bytes = 65536, .max_body_bytes = 64u << 20,
                       .header_timeout_ms = 60000, .body_timeout_ms = 60000, .idle_timeout_ms = 600000,
                       .access_log = false};
    if (http_server_start(&f.srv, f.loop, host, port, &lim, handler, &f, err, sizeof err) != 0) {
        fprintf(stderr, "ratchet fake-llm: %s\n", err);
        rc = EXIT_ERROR;
    } else {
        char addr[128];
        http_server_address(f.srv, addr, sizeof addr);
        if (address_file && write_address_file(address_file, addr) != 0)
            fprintf(stderr, "ratchet fake-llm: cannot write %s\n", address_file);
        log_info("fake-llm", "listening on %s%s", addr, f.api_key ? " (an API key is required)" : "");
        uv_signal_init(f.loop, &f.sigterm);
        uv_signal_init(f.loop, &f.sigint);
        f.sigterm.data = f.sigint.data = &f;
        uv_signal_start(&f.sigterm, on_signal, SIGTERM);
        uv_signal_start(&f.sigint, on_signal, SIGINT);
        uv_run(f.loop, UV_RUN_DEFAULT);
        http_server_free(f.srv);
    }
    uv_loop_close(f.loop);
    free(f.loop);
out:
    faults_clear(&f);
    free(f.faults);
    free(f.api_key);
    json_decref(f.arrivals);
    json_decref(f.last);
    lua_close(f.L);
    return rc;
}
