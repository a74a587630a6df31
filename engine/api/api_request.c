/* api_request.c — what every area of the API shares, below them all: bearer
 * tokens checked by scope, query parameters and bodies, JSON answers, reads
 * in the thread pool. It calls no other file of api/. */
#include "api/api_request.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/jtree.h"
#include "base/log.h"

/* ---- scopes and tokens ---- */

/* One row per scope: what its 401 and 403 answers say. */
static const struct scope_rule {
    const char *name;
    const char *setting;      /* what to configure to open it beyond loopback */
    const char *needs;        /* the token a 401 asks for */
    const char *only;         /* the 403 when this scope's own token is shown elsewhere; NULL: admin opens all */
    bool admin_guards;        /* with no token of its own, the admin token (when set) guards it */
} rules[] = {
    [API_SCOPE_NONE] = {"none", NULL, NULL, NULL, false},
    [API_SCOPE_INGEST] = {"ingest", "ingest_token", "ingest or admin token",
                          "this token may only ingest; reads need the admin token", false},
    [API_SCOPE_ADMIN] = {"admin", "admin_token", "admin token", NULL, true},
    [API_SCOPE_METRICS] = {"metrics", "metrics_token or admin_token", "metrics or admin token",
                           "this token may only read GET /metrics", true},
    /* gateway keys are checked by api_gateway.c (Bearer or x-api-key, errors
     * in the caller's protocol): the dispatcher lets this scope through */
    [API_SCOPE_GATEWAY] = {"gateway", "gateway.keys", "gateway key", NULL, false},
    /* every GET of the API and the console: the read-only token of people who watch */
    [API_SCOPE_VIEWER] = {"viewer", "viewer_token or admin_token", "viewer or admin token",
                          "this token is read-only (viewer): actions need the admin token", true},
};

#define NSCOPES (sizeof rules / sizeof rules[0])

const char *api_scope_name(enum api_scope s)
{
    return (size_t)s < NSCOPES ? rules[s].name : "?";
}

static const char *own_token(const config *cfg, enum api_scope s)
{
    switch (s) {
    case API_SCOPE_INGEST: return cfg->ingest_token;
    case API_SCOPE_ADMIN: return cfg->admin_token;
    case API_SCOPE_METRICS: return cfg->metrics_token;
    case API_SCOPE_VIEWER: return cfg->viewer_token;
    default: return NULL;
    }
}

static bool token_matches(const char *given, size_t len, const char *secret)
{
    return secret && secret_equal(given, len, secret, strlen(secret));
}

bool api_authorize(api *a, http_request *req, enum api_scope need)
{
    if (need == API_SCOPE_NONE || need == API_SCOPE_GATEWAY)
        return true;
    const struct scope_rule *rule = &rules[need];
    const char *admin = a->cfg->admin_token, *own = own_token(a->cfg, need);
    const char *secret = own ? own : rule->admin_guards ? admin : NULL;
    const char *auth = http_header_get(req, "authorization");
    if (auth) {
        if (strncasecmp(auth, "Bearer ", 7) != 0) {
            http_respond_field_error(req, 401, "unauthorized", "authorization",
                                     "the Authorization header must be 'Bearer <token>'");
            return false;
        }
        const char *given = auth + 7;
        size_t glen = strlen(given);
        if (token_matches(given, glen, admin) || token_matches(given, glen, own))
            return true;
        for (size_t s = 0; s < NSCOPES; s++)
            if (s != need && rules[s].only && token_matches(given, glen, own_token(a->cfg, (enum api_scope)s))) {
                http_respond_error(req, 403, "forbidden", "%s", rules[s].only);
                return false;
            }
        if (secret || admin) {
            http_respond_error(req, 401, "unauthorized", "the bearer token is not valid");
            return false;
        }
    }
    if (!secret) {
        if (req->loopback)
            return true;
        http_respond_error(req, 403, "forbidden", "no %s is configured, so only loopback clients are accepted",
                           rule->setting);
        return false;
    }
    http_respond_error(req, 401, "unauthorized", "this endpoint needs 'Authorization: Bearer <%s>'", rule->needs);
    return false;
}

bool api_token_opens(const api *a, const http_request *req, enum api_scope need)
{
    const char *admin = a->cfg->admin_token, *own = own_token(a->cfg, need);
    const char *secret = own ? own : rules[need].admin_guards ? admin : NULL;
    const char *auth = http_header_get(req, "authorization");
    if (auth && !strncasecmp(auth, "Bearer ", 7)) {
        const char *given = auth + 7;
        size_t glen = strlen(given);
        if (token_matches(given, glen, admin) || token_matches(given, glen, own))
            return true;
        /* another scope's own token: refused here as api_authorize refuses it,
         * even from loopback (a viewer token never opens the admin scope) */
        for (size_t s = 0; s < NSCOPES; s++)
            if (s != (size_t)need && rules[s].only && token_matches(given, glen, own_token(a->cfg, (enum api_scope)s)))
                return false;
        if (secret || admin)
            return false;
    }
    return !secret && req->loopback;
}

/* ---- query parameters ---- */

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

/* ---- headers and bodies ---- */

/* Bodies come as they are: a Content-Encoding other than identity (gzip,
 * deflate, br, ...) is answered 415 naming what is supported (RFC 7694's
 * Accept-Encoding), never parsed as if it were JSON. */
bool api_body_encoding_ok(http_request *req)
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

/* the actor goes into the audit log and every answer that shows it */
bool api_actor_ok(http_request *req)
{
    const char *actor = http_header_get(req, "x-ratchet-actor");
    if (actor && (!utf8_valid(actor, strlen(actor)) || strlen(actor) > 128)) {
        http_respond_field_error(req, 400, "invalid_header", "x-ratchet-actor",
                                 "X-Ratchet-Actor must be UTF-8 text of at most 128 bytes");
        return false;
    }
    return true;
}

const char *api_actor(http_request *req)
{
    const char *a = http_header_get(req, "x-ratchet-actor"); /* checked by api_actor_ok before any handler */
    return a && *a && strlen(a) <= 128 ? a : "api";
}

json_t *api_body_object(http_request *req)
{
    if (req->body.len == 0)
        return json_object();
    const char *ct = http_header_get(req, "content-type");
    if (ct && strncasecmp(ct, "application/json", 16) != 0) {
        http_respond_field_error(req, 415, "unsupported_media_type", "content-type", "send application/json");
        return NULL;
    }
    json_error_t je;
    json_t *b = json_loadb(req->body.data, req->body.len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(b)) {
        http_respond_error(req, 400, "invalid_json", "the body must be a JSON object: %s",
                           b ? "got another JSON value" : je.text);
        json_decref(b);
        return NULL;
    }
    return b;
}

bool api_known_fields(http_request *req, json_t *body, const char *const *known, const char *list)
{
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        bool ok = false;
        for (const char *const *f = known; *f && !ok; f++)
            ok = !strcmp(*f, k);
        if (!ok) {
            http_respond_field_error(req, 400, "invalid_field", k, "unknown field '%s' (known: %s)", k, list);
            return false;
        }
    }
    return true;
}

bool api_json_time(json_t *v, int64_t *out)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = json_integer_value(v);
        return true;
    }
    return json_is_string(v) && time_parse(json_string_value(v), out);
}

/* ---- answers ---- */

/* A 200 to a GET carries an ETag (a hash of the body): a client that polls
 * (the console) sends it back in If-None-Match and gets 304 and no body when
 * nothing changed. */
static void respond_tagged(http_request *req, int status, const char *ctype, const char *body, size_t len)
{
    if (status != 200 || strcmp(req->method, "GET") != 0) {
        http_respond(req, status, ctype, NULL, body, len);
        return;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_Digest(body, len, md, &mdlen, EVP_sha256(), NULL);
    char etag[24], hdr[48];
    char *p = etag;
    *p++ = '"';
    for (int i = 0; i < 8; i++)
        p += sprintf(p, "%02x", md[i]);
    *p++ = '"';
    *p = '\0';
    snprintf(hdr, sizeof hdr, "ETag: %s\r\n", etag);
    const char *inm = http_header_get(req, "if-none-match");
    if (inm && strstr(inm, etag)) {
        http_respond(req, 304, ctype, hdr, NULL, 0);
        return;
    }
    http_respond(req, status, ctype, hdr, body, len);
}

void api_respond_json(http_request *req, int status, json_t *v)
{
    if (!v) { /* a json_pack that failed: never answer "null" as if it were the answer */
        log_error("api", "could not build the answer to request %s", req->id);
        http_respond_error(req, 500, "internal", "the answer could not be built");
        return;
    }
    char *t = jtree_dump_text(v, false); /* 0.8, not 0.80000000000000004 */
    respond_tagged(req, status, "application/json", t, strlen(t));
    free(t);
}

void api_respond_reg_error(http_request *req, const reg_error *e)
{
    if (e->field[0])
        http_respond_field_error(req, e->status, e->code, e->field, "%s", e->message);
    else
        http_respond_error(req, e->status, e->code, "%s", e->message);
}

/* ---- reads in the thread pool ---- */

static void task_work(uv_work_t *w)
{
    api_task *t = w->data;
    t->work_fn(t);
}

bool api_task_failed(api_task *t, const char *code, const char *field)
{
    if (t->rc == 0)
        return false;
    if (t->rc == 1 && field)
        http_respond_field_error(t->req, 404, code, field, "%s", t->err);
    else if (t->rc == 1)
        http_respond_error(t->req, 404, code, "%s", t->err);
    else if (t->rc == 2)
        api_respond_reg_error(t->req, &t->e);
    else if (store_read_timed_out(t->err)) { /* a database that stalls: retry later, maybe on another engine */
        log_warn("api", "read timed out (id=%s): %s", t->req->id, t->err);
        http_respond_error(t->req, 503, "store_timeout", "the store could not answer: %s", t->err);
    } else {
        log_error("api", "read failed (id=%s): %s", t->req->id, t->err);
        http_respond_error(t->req, 500, "store_error", "the store could not answer: %s", t->err);
    }
    return true;
}

static void task_after(uv_work_t *w, int status)
{
    (void)status;
    api_task *t = w->data;
    if (t->after_fn)
        t->after_fn(t);
    else if (!api_task_failed(t, "not_found", NULL))
        respond_tagged(t->req, 200, t->content_type ? t->content_type : "application/json", t->out.data, t->out.len);
    buf_free(&t->out);
    json_decref(t->j1);
    json_decref(t->j2);
    free(t->name);
    free(t->id);
    free(t->text);
    free(t);
}

api_task *api_task_new(api *a, http_request *req, void (*work)(api_task *t))
{
    api_task *t = xcalloc(1, sizeof *t);
    t->a = a;
    t->req = req;
    t->work.data = t;
    t->work_fn = work;
    buf_init(&t->out);
    return t;
}

void api_task_queue(api_task *t)
{
    uv_queue_work(t->a->loop, &t->work, task_work, task_after);
}
