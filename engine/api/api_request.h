/* api_request.h — what every area of the API shares, below them all:
 * bearer-token checks by scope, query parameters, request bodies, JSON
 * answers, and reads run in the thread pool. Nothing here calls an area. */
#ifndef RATCHET_API_REQUEST_H
#define RATCHET_API_REQUEST_H

#include <jansson.h>

#include "api/api.h"

#define API_MAX_PARAMS 4
/* Longer paths are answered 414: no route takes one. */
#define API_MAX_PATH 1024

struct api_call {
    api *a;
    http_request *req;
    const api_route *route;
    const char *param[API_MAX_PARAMS]; /* the pattern's {name} segments, in order */
    char buf[API_MAX_PATH];            /* holds them */
};

/* ---- checks: each returns true when the request may go on; otherwise it
 * has answered ---- */

/* The token the scope needs (none: always true). The admin token opens
 * everything; the ingest token only ingest (and resolving a prompt); the
 * metrics token only GET /metrics. A scope with no token of its own is open
 * to loopback clients only. */
bool api_authorize(api *a, http_request *req, enum api_scope need);
/* Whether the request's token (or its loopback address, where no token is
 * configured) opens the scope; answers nothing. */
bool api_token_opens(const api *a, const http_request *req, enum api_scope need);
/* An integer query parameter from min to max; *out is left when absent. */
bool api_int_param(http_request *req, const char *name, long long min, long long max, long long *out);
/* A time query parameter: RFC 3339 or integer milliseconds. */
bool api_time_param(http_request *req, const char *name, int64_t *out);
/* Every query parameter is one of known (NULL-terminated). */
bool api_known_params(http_request *req, const char *const *known);
/* Every field of body is one of known; list names them for the message. */
bool api_known_fields(http_request *req, json_t *body, const char *const *known, const char *list);
/* No Content-Encoding but identity: bodies are never decompressed (415). */
bool api_body_encoding_ok(http_request *req);
/* X-Ratchet-Actor, when sent, is UTF-8 text of at most 128 bytes (400). */
bool api_actor_ok(http_request *req);

/* The body as a JSON object (an empty body is {}), or NULL having answered
 * 415 (not JSON) or 400. */
json_t *api_body_object(http_request *req);
/* A time in a JSON body: RFC 3339 text, or integer milliseconds. */
bool api_json_time(json_t *v, int64_t *out);
/* Who made a change: X-Ratchet-Actor (the CLI sends user@host), else "api". */
const char *api_actor(http_request *req);

/* ---- answers ---- */

/* v as compact JSON (a NULL v, a json_pack that failed, is a 500). */
void api_respond_json(http_request *req, int status, json_t *v);
/* A registry, runner or loop error: its status, code, field and message. */
void api_respond_reg_error(http_request *req, const reg_error *e);

/* ---- reads in the thread pool ---- */

/* work runs in the pool (the store's read connections), then on the loop
 * thread after (when set) or the answer: out as content_type (default JSON),
 * or the failure api_task_failed words. The task is freed after. */
typedef struct api_task api_task;
struct api_task {
    uv_work_t work;
    api *a;
    http_request *req;
    char *name, *id, *text; /* freed with the task */
    int64_t n1, n2;
    int limit;
    store_trace_query q;
    int rc;             /* 0 done, 1 not found (err says what), 2 the user's error in e, -1 a store error in err */
    char err[600];
    reg_error e;
    bool parse_cases;   /* a dataset import: the body's cases are parsed in the pool */
    buf_t out;
    json_t *j1, *j2;
    const char *content_type;
    void (*work_fn)(api_task *t);
    void (*after_fn)(api_task *t);
};

api_task *api_task_new(api *a, http_request *req, void (*work)(api_task *t));
void api_task_queue(api_task *t);
/* Answers a task that failed (not found: 404 with code and field, when
 * given; the user's error; a store error: 500) and returns true; false when
 * it did not fail. */
bool api_task_failed(api_task *t, const char *code, const char *field);

#endif
