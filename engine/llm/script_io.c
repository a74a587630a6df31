/* script_io.c — what ratchet.llm.chat and ratchet.http.request do in the
 * engine: LLM calls go to llm.c with the script as the caller; HTTP requests
 * go to net/http_client.c, only to URLs under a prefix the config's http.allow lists. */
#include "llm/script_io.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "base/jtree.h"

struct scriptio {
    uv_loop_t *loop;
    llm *l;
    httpc *h;
    char **allow;
    int timeout_ms;
    int max_response;
    script_io hooks;
};

typedef struct {
    scriptio *io;
    enum script_io_op op;
    llm_call *call;
    httpc_req *req;
    uv_timer_t *timer; /* delivers an error found before anything was sent */
    char *err_kind, *err;
    script_io_done done;
    void *ud;
} pending;

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void pending_free(pending *p)
{
    if (p->timer)
        uv_close((uv_handle_t *)p->timer, on_timer_closed);
    free(p->err_kind);
    free(p->err);
    free(p);
}

static void on_llm_done(llm_call *c, json_t *result, const char *err_kind, const char *err, void *ud)
{
    (void)c;
    pending *p = ud;
    char *text = result ? json_text(result, JSON_COMPACT) : NULL;
    p->done(p->ud, text, err_kind, err);
    free(text);
    pending_free(p);
}

static void on_deferred(uv_timer_t *t)
{
    pending *p = t->data;
    p->done(p->ud, NULL, p->err_kind, p->err);
    pending_free(p);
}

static pending *fail_later(pending *p, const char *kind, const char *msg)
{
    p->err_kind = xstrdup(kind);
    p->err = xstrdup(msg);
    p->timer = xmalloc(sizeof *p->timer);
    uv_timer_init(p->io->loop, p->timer);
    p->timer->data = p;
    uv_timer_start(p->timer, on_deferred, 0, 0);
    return p;
}

static bool allowed(const scriptio *io, const char *url)
{
    const char *rest = !strncmp(url, "https://", 8) ? url + 8 : !strncmp(url, "http://", 7) ? url + 7 : NULL;
    if (!rest)
        return false;
    size_t auth_len = strcspn(rest, "/?#");
    if (memchr(rest, '@', auth_len) || strpbrk(url, " \r\n\t\\"))
        return false; /* userinfo could hide the real host from a prefix check */
    for (char **a = io->allow; a && *a; a++)
        if (!strncmp(url, *a, strlen(*a)))
            return true;
    return false;
}

static void on_http_done(httpc_req *r, const httpc_response *resp, void *ud)
{
    (void)r;
    pending *p = ud;
    p->req = NULL;
    if (resp->error) {
        p->done(p->ud, NULL, httpc_error_name(resp->error), resp->message);
        pending_free(p);
        return;
    }
    json_t *body = json_stringn(resp->body, resp->body_len);
    if (!body) {
        p->done(p->ud, NULL, "bad_response", "the response body is not UTF-8 text");
        pending_free(p);
        return;
    }
    json_t *o = json_pack("{s:i, s:o, s:{s:s, s:s}, s:f}", "status", resp->status, "body", body, "headers",
                          "content-type", resp->content_type, "request-id", resp->request_id, "latency_ms",
                          resp->elapsed_ms);
    char *text = json_text(o, JSON_COMPACT);
    json_decref(o);
    p->done(p->ud, text, NULL, NULL);
    free(text);
    pending_free(p);
}

/* The shape of ratchet.http.request's table: fields, types, ranges and
 * headers (0, or -1 with a message naming the field). A script that fails
 * it has a bug: the call raises (docs/lua-api.md). */
static int http_check_request(json_t *r, char *err, size_t errlen)
{
    if (!json_is_object(r)) {
        snprintf(err, errlen, "the request must be a table");
        return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach(r, k, v) {
        if (strcmp(k, "method") && strcmp(k, "url") && strcmp(k, "headers") && strcmp(k, "body") &&
            strcmp(k, "timeout_ms")) {
            snprintf(err, errlen, "unknown field '%.60s' (known: method, url, headers, body, timeout_ms)", k);
            return -1;
        }
    }
    const char *method = json_string_value(json_object_get(r, "method"));
    json_t *hs = json_object_get(r, "headers"), *to = json_object_get(r, "timeout_ms");
    const char *bad = NULL;
    if (!json_is_string(json_object_get(r, "url")))
        bad = "url: must be a string";
    else if (json_object_get(r, "body") && !json_is_string(json_object_get(r, "body")))
        bad = "body: must be a string (encode tables with ratchet.json.encode)";
    else if (json_object_get(r, "method") && (!method || (strcmp(method, "GET") && strcmp(method, "POST") &&
                                                          strcmp(method, "PUT") && strcmp(method, "PATCH") &&
                                                          strcmp(method, "DELETE") && strcmp(method, "HEAD"))))
        bad = "method: must be GET, POST, PUT, PATCH, DELETE or HEAD";
    else if (hs && !json_is_object(hs))
        bad = "headers: must be a table of name = value";
    else if (to && (!json_is_integer(to) || json_integer_value(to) < 100 || json_integer_value(to) > 600000))
        bad = "timeout_ms: must be an integer from 100 to 600000";
    if (bad) {
        snprintf(err, errlen, "%s", bad);
        return -1;
    }
    if (json_object_size(hs) > 64) {
        snprintf(err, errlen, "headers: at most 64");
        return -1;
    }
    json_object_foreach(hs, k, v) {
        const char *val = json_string_value(v);
        if (!val || !*k || strpbrk(k, ":\r\n ") || strpbrk(val, "\r\n")) {
            snprintf(err, errlen, "headers.%.60s: must be a one-line string under a name without ':' or spaces", k);
            return -1;
        }
    }
    return 0;
}

static pending *http_start(pending *p, const char *request)
{
    scriptio *io = p->io;
    json_t *r = json_loads(request, 0, NULL);
    char msg[600];
    if (http_check_request(r, msg, sizeof msg) != 0) { /* scripts' calls were checked: a C caller's */
        json_decref(r);
        return fail_later(p, "bad_request", msg);
    }
    const char *url = json_string_value(json_object_get(r, "url"));
    const char *body = json_string_value(json_object_get(r, "body"));
    const char *method = json_string_value(json_object_get(r, "method"));
    json_t *hs = json_object_get(r, "headers"), *to = json_object_get(r, "timeout_ms");
    if (!allowed(io, url)) {
        snprintf(msg, sizeof msg, "url: '%.300s' is not under a prefix listed in the config's http.allow", url);
        json_decref(r);
        return fail_later(p, "not_allowed", msg);
    }
    char *lines[64];
    int n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(hs, k, v) {
        const char *val = json_string_value(v);
        size_t len = strlen(k) + strlen(val) + 3;
        lines[n] = xmalloc(len);
        snprintf(lines[n++], len, "%s: %s", k, val);
    }
    httpc_opts o = {.method = method ? method : body ? "POST" : "GET", .url = url,
                    .headers = (const char *const *)lines, .nheaders = n, .body = body,
                    .body_len = body ? strlen(body) : 0,
                    .timeout_ms = to ? (long)json_integer_value(to) : io->timeout_ms,
                    .max_response = (size_t)io->max_response};
    p->req = httpc_start(io->h, &o, on_http_done, p);
    for (int i = 0; i < n; i++)
        free(lines[i]);
    json_decref(r);
    if (!p->req)
        return fail_later(p, "transport", "the HTTP client refused the request");
    return p;
}

/* A programming error in the request (the script raises), before anything starts. */
static int io_check(void *ctx, enum script_io_op op, const char *request, char *err, size_t errlen)
{
    (void)ctx;
    json_t *r = json_loads(request, 0, NULL);
    int rc = op == SCRIPT_IO_HTTP ? http_check_request(r, err, errlen) : llm_check_request(r, err, errlen);
    json_decref(r);
    return rc;
}

static void *io_start(void *ctx, enum script_io_op op, const char *request, const char *caller_kind,
                      const char *caller_name, script_io_done done, void *done_ud)
{
    scriptio *io = ctx;
    pending *p = xcalloc(1, sizeof *p);
    p->io = io;
    p->op = op;
    p->done = done;
    p->ud = done_ud;
    if (op == SCRIPT_IO_HTTP)
        return http_start(p, request);
    llm_caller who = {.kind = caller_kind, .name = caller_name};
    p->call = llm_chat(io->l, request, &who, on_llm_done, p);
    return p;
}

static void io_cancel(void *ctx, enum script_io_op op, void *handle)
{
    (void)ctx;
    (void)op;
    pending *p = handle;
    if (p->call)
        llm_cancel(p->call);
    if (p->req)
        httpc_cancel(p->req);
    pending_free(p);
}

scriptio *scriptio_new(uv_loop_t *loop, llm *l, httpc *h)
{
    scriptio *io = xcalloc(1, sizeof *io);
    io->loop = loop;
    io->l = l;
    io->h = h;
    io->timeout_ms = 10000;
    io->max_response = 1 << 20;
    io->hooks = (script_io){.check = io_check, .start = io_start, .cancel = io_cancel, .ctx = io};
    return io;
}

void scriptio_configure(scriptio *io, char *const *allow, int timeout_ms, int max_response_bytes)
{
    for (char **a = io->allow; a && *a; a++)
        free(*a);
    free(io->allow);
    size_t n = 0;
    while (allow && allow[n])
        n++;
    io->allow = xcalloc(n + 1, sizeof *io->allow);
    for (size_t i = 0; i < n; i++)
        io->allow[i] = xstrdup(allow[i]);
    io->timeout_ms = timeout_ms;
    io->max_response = max_response_bytes;
}

const script_io *scriptio_hooks(scriptio *io)
{
    return &io->hooks;
}

void scriptio_free(scriptio *io)
{
    if (!io)
        return;
    for (char **a = io->allow; a && *a; a++)
        free(*a);
    free(io->allow);
    free(io);
}
