/* api.c — routes requests, checks bearer tokens, runs ingest through the
 * store's group commit and answers reads from the thread pool. */
#include "api/api.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "api/api_private.h"
#include "api/ingest.h"
#include "base/jtree.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/jtree.h"

#ifndef RATCHET_VERSION
#define RATCHET_VERSION "0.0.0-dev"
#endif
#define RATCHET_VERSION_STRING RATCHET_VERSION

/* Bodies up to this size are parsed on the loop thread (a few µs); larger ones
 * in the thread pool so a multi-megabyte batch never stalls other clients. */
#define INLINE_PARSE_MAX (64 * 1024)


/* ---- authentication ---- */

static bool token_matches(const char *given, size_t len, const char *secret)
{
    return secret && secret_equal(given, len, secret, strlen(secret));
}

/* Returns true when the request may go on; otherwise has answered it. The
 * admin token opens everything; the ingest token only ingest; the metrics
 * token only GET /metrics. A scope with no token of its own (and no admin
 * token) is open to loopback clients only. */
bool api_authorize(api *a, http_request *req, enum scope need)
{
    const char *ingest = a->cfg->ingest_token, *admin = a->cfg->admin_token, *metrics = a->cfg->metrics_token;
    const char *secret = need == SCOPE_INGEST ? ingest : need == SCOPE_METRICS && metrics ? metrics : admin;
    const char *auth = http_header_get(req, "authorization");
    const char *given = NULL;
    size_t glen = 0;
    if (auth) {
        if (strncasecmp(auth, "Bearer ", 7) != 0) {
            http_respond_field_error(req, 401, "unauthorized", "authorization",
                                     "the Authorization header must be 'Bearer <token>'");
            return false;
        }
        given = auth + 7;
        glen = strlen(given);
    }
    if (given) {
        if (token_matches(given, glen, admin) || (need == SCOPE_INGEST && token_matches(given, glen, ingest)) ||
            (need == SCOPE_METRICS && token_matches(given, glen, metrics)))
            return true;
        if (need != SCOPE_INGEST && token_matches(given, glen, ingest)) {
            http_respond_error(req, 403, "forbidden", "this token may only ingest; reads need the admin token");
            return false;
        }
        if (need != SCOPE_METRICS && token_matches(given, glen, metrics)) {
            http_respond_error(req, 403, "forbidden", "this token may only read GET /metrics");
            return false;
        }
        if (secret || admin) {
            http_respond_error(req, 401, "unauthorized", "the bearer token is not valid");
            return false;
        }
    }
    const char *what = need == SCOPE_INGEST ? "ingest_token" : need == SCOPE_METRICS ? "metrics_token or admin_token"
                                                                                       : "admin_token";
    if (!secret) {
        if (req->loopback)
            return true;
        http_respond_error(req, 403, "forbidden", "no %s is configured, so only loopback clients are accepted", what);
        return false;
    }
    http_respond_error(req, 401, "unauthorized", "this endpoint needs 'Authorization: Bearer <%s>'",
                       need == SCOPE_INGEST ? "ingest or admin token" : need == SCOPE_METRICS ? "metrics or admin token"
                                                                                              : "admin token");
    return false;
}

/* ---- ingest ---- */

typedef struct {
    uv_work_t work;
    api *a;
    http_request *req;
    ingest_kind kind;
    bool ndjson;
    int status;           /* from ingest_parse: 0 or an HTTP error */
    const char *err_code;
    char err[512];
    ingest_batch batch;
} ingest_job;

static void ingest_job_free(ingest_job *job)
{
    ingest_batch_free(&job->batch);
    free(job);
}

static void respond_results(ingest_job *job)
{
    ingest_batch *b = &job->batch;
    uint64_t *items = job->a->ingest_n[job->kind].items;
    for (size_t i = 0; i < b->nitems; i++) {
        int wi = b->items[i].write_index;
        if (wi < 0) {
            items[2]++;
            continue;
        }
        unsigned char r = b->kind == INGEST_TRACES ? b->write.trace_results[wi] : b->write.feedback_results[wi];
        items[r == STORE_ACCEPTED ? 0 : r == STORE_DUPLICATE ? 1 : r == STORE_NOT_FOUND ? 3 : 4]++;
    }
    int status;
    char *text = ingest_results_json(&job->batch, &status, job->req->id);
    http_respond(job->req, status, "application/json", status == 503 ? "Retry-After: 1\r\n" : NULL, text,
                 strlen(text));
    free(text);
    ingest_job_free(job);
}

static void on_ingest_committed(store_write *w)
{
    ingest_job *job = w->data;
    if (job->a->online && w->status == 0)
        for (size_t i = 0; i < w->ntraces; i++)
            if (w->trace_results[i] == STORE_ACCEPTED) {
                online_enqueue(job->a->online, w->traces[i].id, w->traces[i].prompt);
                if (job->a->loop_sm)
                    loop_note_traces(job->a->loop_sm, w->traces[i].prompt, 1);
            }
    if (job->a->online && w->status == 0)
        for (size_t i = 0; i < w->nfeedback; i++)
            if (w->feedback_results[i] == STORE_ACCEPTED && w->feedback[i].trace_prompt)
                online_feedback(job->a->online, w->feedback[i].trace_prompt, w->feedback[i].trace_version,
                                w->feedback[i].negative);
    respond_results(job);
}

static void ingest_submit(ingest_job *job)
{
    if (job->status) {
        job->a->ingest_n[job->kind].refused++;
        http_respond_error(job->req, job->status, job->err_code, "%s", job->err);
        ingest_job_free(job);
        return;
    }
    if (job->batch.write.ntraces == 0 && job->batch.write.nfeedback == 0) {
        respond_results(job); /* every item was rejected: nothing to store */
        return;
    }
    job->batch.write.done = on_ingest_committed;
    job->batch.write.data = job;
    if (store_submit(job->a->store, &job->batch.write) != 0) {
        job->a->ingest_n[job->kind].refused++;
        http_respond_error(job->req, 503, "overloaded",
                           "the store's write queue is full or shutting down; nothing was stored, retry later");
        ingest_job_free(job);
    }
}

static void ingest_parse_job(ingest_job *job)
{
    http_request *req = job->req;
    job->status = ingest_parse(job->kind, req->body.data, req->body.len, job->ndjson,
                               (size_t)job->a->cfg->limits.max_batch_items, now_ms(), &job->batch, &job->err_code,
                               job->err, sizeof job->err);
}

static void ingest_work(uv_work_t *w)
{
    ingest_parse_job(w->data);
}

static void ingest_after_work(uv_work_t *w, int status)
{
    (void)status;
    ingest_submit(w->data);
}

/* 0: JSON (or no Content-Type: detected from the body), 1: NDJSON, -1: other. */
static int body_format(const char *ct)
{
    static const char *const ndjson[] = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                                         "application/x-jsonl", "application/jsonlines", NULL};
    if (!ct)
        return 0;
    size_t n = strcspn(ct, "; \t");
    if (n == 16 && strncasecmp(ct, "application/json", n) == 0)
        return 0;
    for (const char *const *t = ndjson; *t; t++)
        if (strlen(*t) == n && strncasecmp(ct, *t, n) == 0)
            return 1;
    return -1;
}

/* Bodies come as they are: a Content-Encoding other than identity (gzip,
 * deflate, br, ...) is answered 415 naming what is supported (RFC 7694's
 * Accept-Encoding), never parsed as if it were JSON. Returns false once it
 * has answered. */
static bool body_encoding_ok(http_request *req)
{
    const char *ce = http_header_get(req, "content-encoding");
    if (!ce)
        return true;
    while (*ce == ' ' || *ce == '\t')
        ce++;
    size_t n = strcspn(ce, " \t");
    if (n == 0 || (n == 8 && !strncasecmp(ce, "identity", 8) && ce[n + strspn(ce + n, " \t")] == '\0'))
        return true;
    char named[48]; /* what the client sent, as plain ASCII */
    size_t k = 0;
    for (; ce[k] && k < sizeof named - 1; k++)
        named[k] = isalnum((unsigned char)ce[k]) || strchr("-_., ", ce[k]) ? ce[k] : '?';
    named[k] = '\0';
    http_respond_field_error(req, 415, "unsupported_encoding", "content-encoding",
                             "Content-Encoding '%s' is not supported: send the body uncompressed "
                             "(supported encodings: identity)", named);
    return false;
}

static void handle_ingest(api *a, http_request *req, ingest_kind kind)
{
    if (!api_authorize(a, req, SCOPE_INGEST))
        return;
    a->ingest_n[kind].requests++;
    a->ingest_n[kind].bytes += req->body.len;
    if (!body_encoding_ok(req)) {
        a->ingest_n[kind].refused++;
        return;
    }
    int format = body_format(http_header_get(req, "content-type"));
    if (format < 0) {
        a->ingest_n[kind].refused++;
        http_respond_field_error(req, 415, "unsupported_media_type", "content-type",
                                 "send application/json (one object or an array) or application/x-ndjson");
        return;
    }
    bool ndjson = format == 1;
    if (req->body.len == 0) {
        a->ingest_n[kind].refused++;
        http_respond_error(req, 400, "empty_body", "the request has no body");
        return;
    }
    ingest_job *job = xcalloc(1, sizeof *job);
    job->a = a;
    job->req = req;
    job->kind = kind;
    job->ndjson = ndjson;
    job->work.data = job;
    if (req->body.len <= INLINE_PARSE_MAX) {
        ingest_parse_job(job);
        ingest_submit(job);
    } else {
        uv_queue_work(a->loop, &job->work, ingest_work, ingest_after_work);
    }
}

/* ---- reads ---- */

typedef struct {
    uv_work_t work;
    api *a;
    http_request *req;
    char *id;
    store_trace_query q;
    char *prompt;
    int rc;
    char err[256];
    buf_t out;
} read_job;

static void read_one_work(uv_work_t *w)
{
    read_job *j = w->data;
    j->rc = store_get_trace_json(j->a->store, j->id, &j->out, j->err, sizeof j->err);
}

static void read_list_work(uv_work_t *w)
{
    read_job *j = w->data;
    j->rc = store_list_traces_json(j->a->store, &j->q, &j->out, j->err, sizeof j->err);
}

static void read_llm_calls_work(uv_work_t *w)
{
    read_job *j = w->data; /* prompt holds the caller kind */
    j->rc = store_list_llm_calls_json(j->a->store, j->q.since_ms, j->prompt, j->q.limit, &j->out, j->err,
                                      sizeof j->err);
}

static void read_after(uv_work_t *w, int status)
{
    (void)status;
    read_job *j = w->data;
    if (j->rc == 0)
        http_respond(j->req, 200, "application/json", NULL, j->out.data, j->out.len);
    else if (j->rc == 1)
        http_respond_error(j->req, 404, "not_found", "no trace has id '%s'", j->id);
    else {
        log_error("api", "read failed (id=%s): %s", j->req->id, j->err);
        http_respond_error(j->req, 500, "store_error", "the store could not answer: %s", j->err);
    }
    buf_free(&j->out);
    free(j->id);
    free(j->prompt);
    free(j);
}

static read_job *read_job_new(api *a, http_request *req)
{
    read_job *j = xcalloc(1, sizeof *j);
    j->a = a;
    j->req = req;
    j->work.data = j;
    buf_init(&j->out);
    return j;
}

bool api_time_param(http_request *req, const char *name, int64_t *out)
{
    char v[64];
    int r = http_query_get(req, name, v, sizeof v);
    if (r == 0 || (r > 0 && time_parse(v, out)))
        return true;
    http_respond_field_error(req, 400, "invalid_parameter", name,
                             "'%s' must be an RFC 3339 date-time or integer milliseconds since the epoch", name);
    return false;
}

bool api_int_param(http_request *req, const char *name, long long min, long long max, long long *out)
{
    char v[32];
    int r = http_query_get(req, name, v, sizeof v);
    if (r == 0)
        return true;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (r < 0 || errno || *end || end == v || n < min || n > max) {
        http_respond_field_error(req, 400, "invalid_parameter", name, "'%s' must be an integer from %lld to %lld",
                                 name, min, max);
        return false;
    }
    *out = n;
    return true;
}

void api_respond_json(http_request *req, int status, json_t *v)
{
    if (!v) { /* a json_pack that failed: never answer "null" as if it were the answer */
        log_error("api", "could not build the answer to request %s", req->id);
        http_respond_error(req, 500, "internal", "the answer could not be built");
        return;
    }
    char *t = jtree_dump_text(v, false); /* 0.8, not 0.80000000000000004 */
    http_respond(req, status, "application/json", NULL, t, strlen(t));
    free(t);
}

bool api_known_params(http_request *req, const char *const *known)
{
    const char *p = req->query;
    while (p && *p) {
        size_t n = strcspn(p, "=&");
        bool ok = false;
        for (const char *const *k = known; *k; k++)
            if (strlen(*k) == n && strncmp(*k, p, n) == 0)
                ok = true;
        if (!ok) {
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)(n < 60 ? n : 60), p);
            http_respond_field_error(req, 400, "invalid_parameter", name, "unknown query parameter '%s'", name);
            return false;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return true;
}

static void handle_list_traces(api *a, http_request *req)
{
    if (!api_authorize(a, req, SCOPE_ADMIN))
        return;
    static const char *const known[] = {"prompt", "version", "since", "until", "limit", "cursor", "failed", NULL};
    if (!api_known_params(req, known))
        return;
    store_trace_query q = {.since_ms = 0, .until_ms = INT64_MAX, .limit = 100, .failed = -1};
    char failed[8];
    int fr = http_query_get(req, "failed", failed, sizeof failed);
    if (fr != 0) {
        if (fr > 0 && strcmp(failed, "true") == 0)
            q.failed = 1;
        else if (fr > 0 && strcmp(failed, "false") == 0)
            q.failed = 0;
        else {
            http_respond_field_error(req, 400, "invalid_parameter", "failed", "'failed' must be true or false");
            return;
        }
    }
    long long version = 0, limit = 100;
    if (!api_int_param(req, "version", 1, 2147483647, &version) ||
        !api_int_param(req, "limit", 1, 1000, &limit) || !api_time_param(req, "since", &q.since_ms) ||
        !api_time_param(req, "until", &q.until_ms))
        return;
    q.version = version;
    q.limit = (int)limit;
    char prompt[256], cursor[80];
    int pr = http_query_get(req, "prompt", prompt, sizeof prompt);
    if (pr < 0 || (pr > 0 && !prompt[0])) {
        http_respond_field_error(req, 400, "invalid_parameter", "prompt", "'prompt' must be a prompt name");
        return;
    }
    int cr = http_query_get(req, "cursor", cursor, sizeof cursor);
    if (cr != 0) {
        unsigned long long ts, seq;
        int used = 0;
        if (cr < 0 || sscanf(cursor, "%llx.%llx%n", &ts, &seq, &used) != 2 || cursor[used] != '\0') {
            http_respond_field_error(req, 400, "invalid_parameter", "cursor",
                                     "'cursor' must be a next_cursor value from an earlier page");
            return;
        }
        q.has_cursor = true;
        q.cursor_ts = (int64_t)ts;
        q.cursor_seq = (int64_t)seq;
    }
    read_job *j = read_job_new(a, req);
    if (pr > 0)
        j->prompt = xstrdup(prompt);
    q.prompt = j->prompt;
    j->q = q;
    uv_queue_work(a->loop, &j->work, read_list_work, read_after);
}

/* POST /v1/llm/chat: one LLM call, as ratchet.llm.chat makes it (for ops
 * checking a provider, and for specs). Recorded in the ledger as caller
 * kind "other", name "api". */
static void on_api_chat_done(llm_call *c, json_t *result, const char *kind, const char *err, void *ud)
{
    (void)c;
    http_request *req = ud;
    if (result) {
        api_respond_json(req, 200, result);
        return;
    }
    if (!strcmp(kind, "bad_request")) {
        char field[64] = "";
        size_t n = strcspn(err, ": ");
        if (err[n] == ':' && n < sizeof field)
            snprintf(field, sizeof field, "%.*s", (int)n, err);
        if (field[0])
            http_respond_field_error(req, 400, "invalid_request", field, "%s", err);
        else
            http_respond_error(req, 400, "invalid_request", "%s", err);
    } else if (!strcmp(kind, "budget")) {
        http_respond_error(req, 429, "budget_exceeded", "%s", err);
    } else if (!strcmp(kind, "circuit_open")) {
        http_respond_error(req, 503, "circuit_open", "%s", err);
    } else {
        http_respond_error(req, 502, kind, "%s", err);
    }
}

static void handle_llm_chat(api *a, http_request *req)
{
    if (!api_authorize(a, req, SCOPE_ADMIN))
        return;
    if (!a->llm) {
        http_respond_error(req, 503, "unavailable", "LLM calls are not available");
        return;
    }
    const char *ct = http_header_get(req, "content-type");
    if (!ct || strncmp(ct, "application/json", 16) != 0) {
        http_respond_field_error(req, 415, "unsupported_media_type", "content-type", "send application/json");
        return;
    }
    buf_append(&req->body, "", 1); /* NUL-terminate for the parser */
    req->body.len--;
    llm_caller who = {.kind = "other", .name = "api"};
    llm_chat(a->llm, req->body.data ? req->body.data : "", &who, on_api_chat_done, req);
}

/* GET /v1/llm/calls?since=&caller_kind=&limit= : the ledger, newest first */
static void handle_llm_calls(api *a, http_request *req)
{
    if (!api_authorize(a, req, SCOPE_ADMIN))
        return;
    static const char *const known[] = {"since", "caller_kind", "limit", NULL};
    if (!api_known_params(req, known))
        return;
    store_trace_query q = {.since_ms = 0, .limit = 100};
    long long limit = 100;
    if (!api_int_param(req, "limit", 1, 1000, &limit) || !api_time_param(req, "since", &q.since_ms))
        return;
    q.limit = (int)limit;
    char kind[32];
    int kr = http_query_get(req, "caller_kind", kind, sizeof kind);
    if (kr < 0 || (kr > 0 && strcmp(kind, "evaluator") && strcmp(kind, "run") && strcmp(kind, "template") &&
                   strcmp(kind, "policy") && strcmp(kind, "other"))) {
        http_respond_field_error(req, 400, "invalid_parameter", "caller_kind",
                                 "'caller_kind' must be evaluator, run, template, policy or other");
        return;
    }
    read_job *j = read_job_new(a, req);
    if (kr > 0)
        j->prompt = xstrdup(kind);
    j->q = q;
    uv_queue_work(a->loop, &j->work, read_llm_calls_work, read_after);
}

static void handle_get_trace(api *a, http_request *req, const char *id)
{
    if (!api_authorize(a, req, SCOPE_ADMIN))
        return;
    if (!*id || strlen(id) > 128) {
        http_respond_field_error(req, 400, "invalid_parameter", "id", "a trace id is 1 to 128 characters");
        return;
    }
    read_job *j = read_job_new(a, req);
    j->id = xstrdup(id);
    uv_queue_work(a->loop, &j->work, read_one_work, read_after);
}

/* ---- status and re-evaluation ---- */

static void handle_status(api *a, http_request *req)
{
    if (!api_authorize(a, req, SCOPE_ADMIN))
        return;
    char started[32];
    rfc3339_format(a->started_ms, started);
    json_t *scripts = a->catalog ? catalog_status_json(a->catalog) : json_object();
    if (a->reload) {
        char last[32] = "";
        if (a->reload->last_ms)
            rfc3339_format(a->reload->last_ms, last);
        json_object_set_new(scripts, "config_error",
                            a->reload->config_error ? json_string(a->reload->config_error) : json_null());
        json_object_set_new(scripts, "reloads", json_integer((json_int_t)a->reload->reloads));
        json_object_set_new(scripts, "failed_reloads", json_integer((json_int_t)a->reload->failures));
        json_object_set_new(scripts, "last_reload", last[0] ? json_string(last) : json_null());
    }
    json_t *root = json_pack("{s:s, s:s, s:I, s:b, s:b, s:o, s:o, s:o, s:o}", "version", RATCHET_VERSION_STRING,
                             "started_at", started, "uptime_s", (json_int_t)((now_ms() - a->started_ms) / 1000),
                             "store_healthy", store_healthy(a->store), "draining", a->draining, "evaluation",
                             a->online ? online_status_json(a->online) : json_object(), "scripts", scripts, "llm",
                             a->llm ? llm_status_json(a->llm) : json_object(), "runs",
                             a->runner ? runner_status_json(a->runner) : json_object());
    json_object_set_new(root, "loop", a->loop_sm ? loop_status_json(a->loop_sm) : json_object());
    api_respond_json(req, 200, root);
    json_decref(root);
}

/* A time from JSON: RFC 3339 text or integer milliseconds. */
static bool json_time(json_t *v, int64_t *out)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = json_integer_value(v);
        return true;
    }
    return json_is_string(v) && rfc3339_parse(json_string_value(v), out);
}

/* POST /v1/evaluations {"prompt":..., "since":..., "until":..., "only_unevaluated":false} */
static void handle_reevaluate(api *a, http_request *req)
{
    if (!api_authorize(a, req, SCOPE_ADMIN))
        return;
    if (!a->online) {
        http_respond_error(req, 503, "unavailable", "online evaluation is not running");
        return;
    }
    json_error_t jerr;
    json_t *body = json_loadb(req->body.data ? req->body.data : "", req->body.len, 0, &jerr);
    if (!body || !json_is_object(body)) {
        http_respond_error(req, 400, "invalid_json", "the body must be a JSON object: %s",
                           body ? "got another JSON value" : jerr.text);
        json_decref(body);
        return;
    }
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
        if (strcmp(key, "prompt") && strcmp(key, "since") && strcmp(key, "until") && strcmp(key, "only_unevaluated")) {
            http_respond_field_error(req, 400, "invalid_field", key, "unknown field '%s' (known: prompt, since, "
                                     "until, only_unevaluated)", key);
            json_decref(body);
            return;
        }
    }
    json_t *prompt = json_object_get(body, "prompt");
    int64_t since = 0, until = INT64_MAX;
    json_t *only = json_object_get(body, "only_unevaluated");
    if (!json_is_string(prompt) || json_string_length(prompt) == 0 || json_string_length(prompt) > 128) {
        http_respond_field_error(req, 400, "invalid_field", "prompt", "'prompt' must be a prompt name");
    } else if (json_object_get(body, "since") && !json_time(json_object_get(body, "since"), &since)) {
        http_respond_field_error(req, 400, "invalid_field", "since",
                                 "'since' must be an RFC 3339 date-time or integer milliseconds since the epoch");
    } else if (json_object_get(body, "until") && !json_time(json_object_get(body, "until"), &until)) {
        http_respond_field_error(req, 400, "invalid_field", "until",
                                 "'until' must be an RFC 3339 date-time or integer milliseconds since the epoch");
    } else if (until <= since) {
        http_respond_field_error(req, 400, "invalid_field", "until", "'until' must be later than 'since'");
    } else if (only && !json_is_boolean(only)) {
        http_respond_field_error(req, 400, "invalid_field", "only_unevaluated", "'only_unevaluated' must be true or false");
    } else if (!online_has_prompt(a->online, json_string_value(prompt))) {
        http_respond_field_error(req, 409, "no_evaluators", "prompt",
                                 "prompt '%s' has no evaluators in the configuration; nothing to evaluate",
                                 json_string_value(prompt));
    } else {
        int id = online_reevaluate(a->online, json_string_value(prompt), since, until, json_is_true(only));
        char out[512];
        int n = snprintf(out, sizeof out, "{\"job\":%d,\"state\":\"listing\",\"status\":\"/v1/status\"}", id);
        http_respond(req, 202, "application/json", NULL, out, (size_t)n);
    }
    json_decref(body);
}

/* ---- debugging ---- */

/* POST /v1/debug/sleep {"ms": N}: blocks the event loop for N ms, on
 * purpose, like Redis' DEBUG SLEEP, so operators and specs can see what the
 * watchdog does with a stuck loop. Off unless debug_endpoints = true. */
static void handle_debug_sleep(api *a, http_request *req)
{
    if (!a->cfg->debug_endpoints) {
        http_respond_error(req, 404, "not_found", "debug endpoints are off; set debug_endpoints = true in the config "
                                                  "to use %s", req->path);
        return;
    }
    if (!api_authorize(a, req, SCOPE_ADMIN))
        return;
    json_error_t je;
    json_t *body = json_loadb(req->body.data ? req->body.data : "", req->body.len, 0, &je);
    json_t *ms = json_object_get(body, "ms");
    if (!json_is_object(body) || !json_is_integer(ms) || json_integer_value(ms) < 1 ||
        json_integer_value(ms) > 60000 || json_object_size(body) != 1) {
        json_decref(body);
        http_respond_field_error(req, 400, "invalid_field", "ms",
                                 "the body must be {\"ms\": N} with N from 1 to 60000 milliseconds");
        return;
    }
    long long n = json_integer_value(ms);
    json_decref(body);
    log_warn("debug", "blocking the event loop for %lld ms (POST /v1/debug/sleep)", n);
    struct timespec ts = {(time_t)(n / 1000), (long)(n % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    char out[64];
    int len = snprintf(out, sizeof out, "{\"slept_ms\":%lld}", n);
    http_respond(req, 200, "application/json", NULL, out, (size_t)len);
}

/* ---- metrics ---- */

static void ingest_metrics(api *a, buf_t *b)
{
    static const char *const ep[] = {"traces", "feedback"};
    static const char *const res[] = {"accepted", "duplicate", "invalid", "not_found", "failed"};
    metrics_family(b, "ratchet_ingest_requests_total", "counter", "Authorized requests to POST /v1/traces and /v1/feedback.");
    for (int k = 0; k < 2; k++)
        metrics_sample(b, "ratchet_ingest_requests_total", (double)a->ingest_n[k].requests, "endpoint", ep[k], NULL);
    metrics_family(b, "ratchet_ingest_refused_requests_total", "counter",
                   "Ingest requests refused whole (malformed body, too many items, wrong content type, store queue "
                   "full): nothing of them stored.");
    for (int k = 0; k < 2; k++)
        metrics_sample(b, "ratchet_ingest_refused_requests_total", (double)a->ingest_n[k].refused, "endpoint", ep[k],
                       NULL);
    metrics_family(b, "ratchet_ingest_received_bytes_total", "counter", "Bytes of ingest request bodies.");
    for (int k = 0; k < 2; k++)
        metrics_sample(b, "ratchet_ingest_received_bytes_total", (double)a->ingest_n[k].bytes, "endpoint", ep[k],
                       NULL);
    metrics_family(b, "ratchet_ingest_items_total", "counter",
                   "Traces and feedback items, by result: accepted (stored), duplicate (already stored), invalid "
                   "(rejected by validation), not_found (feedback on an unknown trace), failed (the commit failed).");
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < 5; r++)
            metrics_sample(b, "ratchet_ingest_items_total", (double)a->ingest_n[k].items[r], "endpoint", ep[k],
                           "result", res[r], NULL);
}

static void handle_metrics(api *a, http_request *req)
{
    if (!api_authorize(a, req, SCOPE_METRICS))
        return;
    buf_t b;
    buf_init(&b);
    buf_reserve(&b, 32768);
    metrics_family(&b, "ratchet_build_info", "gauge", "Always 1; the version is a label.");
    metrics_sample(&b, "ratchet_build_info", 1, "version", RATCHET_VERSION_STRING, NULL);
    metrics_one(&b, "ratchet_up_seconds", "gauge",
                "Seconds since the engine started.", (double)(now_ms() - a->started_ms) / 1000.0);
    metrics_process(&b, a->started_ms);
    if (a->lag)
        metrics_lag_write(a->lag, &b);
    if (a->http)
        http_server_metrics(a->http, &b);
    ingest_metrics(a, &b);
    store_metrics(a->store, &b);
    if (a->online)
        online_metrics(a->online, &b);
    if (a->catalog) {
        catalog_metrics(a->catalog, &b);
        script_vm_metrics(catalog_vm(a->catalog), &b);
    }
    if (a->reload) {
        metrics_one(&b, "ratchet_config_reloads_total", "counter",
                    "Reloads of the configuration and scripts (file changes, SIGHUP).", (double)a->reload->reloads);
        metrics_one(&b, "ratchet_config_reload_failures_total", "counter",
                    "Reloads that kept something old: a config error or a script that failed to load.",
                    (double)a->reload->failures);
    }
    if (a->llm)
        llm_metrics(a->llm, &b);
    if (a->registry)
        registry_metrics(a->registry, &b);
    if (a->registry && a->online)
        online_prompt_metrics(a->online, a->registry, &b);
    if (a->runner)
        runner_metrics(a->runner, &b);
    if (a->loop_sm)
        loop_metrics(a->loop_sm, &b);
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b.data, b.len);
    buf_free(&b);
}

/* ---- routing ---- */

static void method_not_allowed(http_request *req, const char *allow)
{
    char hdr[64];
    snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
    char body[256];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"%s is not allowed here; use %s\","
                     "\"request_id\":\"%s\"}}",
                     req->method, allow, req->id);
    http_respond(req, 405, "application/json", hdr, body, (size_t)n);
}

static bool is(const http_request *req, const char *method)
{
    return strcmp(req->method, method) == 0;
}

void api_handle(http_request *req, void *ctx)
{
    api *a = ctx;
    const char *path = req->path;
    bool ingest = is(req, "POST") && (!strcmp(path, "/v1/traces") || !strcmp(path, "/v1/feedback"));
    if (req->body.len && !ingest && !body_encoding_ok(req)) /* ingest checks it after the token, counting it */
        return;
    if (strcmp(path, "/healthz") == 0) {
        static const char ok[] = "{\"status\":\"ok\"}";
        http_respond(req, 200, "application/json", NULL, ok, sizeof ok - 1);
    } else if (strcmp(path, "/readyz") == 0) {
        if (!a->draining && store_healthy(a->store)) {
            static const char ok[] = "{\"status\":\"ready\"}";
            http_respond(req, 200, "application/json", NULL, ok, sizeof ok - 1);
        } else {
            http_respond_error(req, 503, "not_ready", a->draining ? "the engine is shutting down"
                                                                    : "the store's last commit failed");
        }
    } else if (strcmp(path, "/v1/traces") == 0) {
        if (is(req, "POST"))
            handle_ingest(a, req, INGEST_TRACES);
        else if (is(req, "GET"))
            handle_list_traces(a, req);
        else
            method_not_allowed(req, "GET, POST");
    } else if (strncmp(path, "/v1/traces/", 11) == 0) {
        if (is(req, "GET"))
            handle_get_trace(a, req, path + 11);
        else
            method_not_allowed(req, "GET");
    } else if (strcmp(path, "/v1/debug/sleep") == 0) {
        if (is(req, "POST"))
            handle_debug_sleep(a, req);
        else
            method_not_allowed(req, "POST");
    } else if (strcmp(path, "/metrics") == 0) {
        if (is(req, "GET"))
            handle_metrics(a, req);
        else
            method_not_allowed(req, "GET");
    } else if (strcmp(path, "/v1/status") == 0) {
        if (is(req, "GET"))
            handle_status(a, req);
        else
            method_not_allowed(req, "GET");
    } else if (strcmp(path, "/v1/evaluations") == 0) {
        if (is(req, "POST"))
            handle_reevaluate(a, req);
        else
            method_not_allowed(req, "POST");
    } else if (strcmp(path, "/v1/llm/chat") == 0) {
        if (is(req, "POST"))
            handle_llm_chat(a, req);
        else
            method_not_allowed(req, "POST");
    } else if (strcmp(path, "/v1/llm/calls") == 0) {
        if (is(req, "GET"))
            handle_llm_calls(a, req);
        else
            method_not_allowed(req, "GET");
    } else if (strcmp(path, "/v1/feedback") == 0) {
        if (is(req, "POST"))
            handle_ingest(a, req, INGEST_FEEDBACK);
        else
            method_not_allowed(req, "POST");
    } else if (!api_registry_route(a, req)) {
        http_respond_error(req, 404, "not_found", "no endpoint at %s", path);
    }
}
