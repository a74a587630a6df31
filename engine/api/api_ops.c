/* api_ops.c — the operators' endpoints: /healthz, /readyz, GET /v1/version,
 * GET /v1/status, GET /metrics (every subsystem writes its families; the
 * ingest counters are written here), POST /v1/evaluations, POST /v1/llm/chat,
 * GET /v1/llm/calls and POST /v1/debug/sleep. */
#include "api/api_ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api_otlp.h"
#include "api/api_request.h"
#include "base/log.h"
#include "base/metrics.h"

/* The Makefile rebuilds this file when `git describe` or the commit moves. */
#ifndef RATCHET_VERSION
#define RATCHET_VERSION "0.0.0-dev"
#endif

/* ---- health and version ---- */

/* GET /healthz: the event loop runs. */
void api_healthz(const api_call *c)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    http_respond(c->req, 200, "application/json", NULL, ok, sizeof ok - 1);
}

/* GET /readyz: the store is up (its last commit succeeded; on PostgreSQL its connection too)
 * and the engine is not draining. */
void api_readyz(const api_call *c)
{
    if (!c->a->draining && store_healthy(c->a->store)) {
        static const char ok[] = "{\"status\":\"ready\"}";
        http_respond(c->req, 200, "application/json", NULL, ok, sizeof ok - 1);
        return;
    }
    if (c->a->draining) {
        http_respond_error(c->req, 503, "not_ready", "the engine is shutting down");
        return;
    }
    json_t *st = json_object();
    store_status(c->a->store, st);
    const char *why = json_string_value(json_object_get(st, "error"));
    http_respond_error(c->req, 503, "not_ready", "the store is down%s%s", why ? ": " : " (its last commit failed)",
                       why ? why : "");
    json_decref(st);
}

/* GET /v1/version: {engine, api, commit} (commit when built from a git checkout). */
void api_version(const api_call *c)
{
    json_t *v = json_pack("{s:s, s:s}", "engine", RATCHET_VERSION, "api", API_VERSION);
#ifdef RATCHET_COMMIT
    json_object_set_new(v, "commit", json_string(RATCHET_COMMIT));
#endif
    api_respond_json(c->req, 200, v);
    json_decref(v);
}

/* ---- status ---- */

/* GET /v1/status */
void api_status(const api_call *c)
{
    api *a = c->a;
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
    json_t *root = json_pack("{s:s, s:s, s:I, s:b, s:b, s:o, s:o, s:o, s:o}", "version", RATCHET_VERSION,
                             "started_at", started, "uptime_s", (json_int_t)((now_ms() - a->started_ms) / 1000),
                             "store_healthy", store_healthy(a->store), "draining", a->draining, "evaluation",
                             a->online ? online_status_json(a->online) : json_object(), "scripts", scripts, "llm",
                             a->llm ? llm_status_json(a->llm) : json_object(), "runs",
                             a->runner ? runner_status_json(a->runner) : json_object());
    json_object_set_new(root, "loop", a->loop_sm ? loop_status_json(a->loop_sm) : json_object());
    json_t *store_st = json_object();
    store_status(a->store, store_st);
    json_object_set_new(root, "store", store_st);
    char otlp_addr[96] = "";
    if (a->otlp_http)
        http_server_address(a->otlp_http, otlp_addr, sizeof otlp_addr);
    json_object_set_new(root, "otlp", json_pack("{s:o}", "listen", otlp_addr[0] ? json_string(otlp_addr) : json_null()));
    const config_gateway *gw = &a->cfg->gateway;
    json_t *calls = json_object();
    static const char *const proto[] = {"openai", "anthropic"}, *const mode[] = {"pass_through", "managed"};
    for (int p = 0; p < 2; p++)
        for (int m = 0; m < 2; m++) {
            char k[40];
            snprintf(k, sizeof k, "%s_%s", proto[p], mode[m]);
            json_object_set_new(calls, k, json_integer((json_int_t)a->gateway_n.requests[p][m]));
        }
    json_object_set_new(root, "gateway",
                        json_pack("{s:b, s:o, s:I, s:I, s:I, s:{s:I, s:I, s:I}}", "enabled", gw->enabled, "calls",
                                  calls, "refused", (json_int_t)a->gateway_n.refused, "upstream_errors",
                                  (json_int_t)a->gateway_n.upstream_errors, "client_gone",
                                  (json_int_t)a->gateway_n.client_gone, "traces", "captured",
                                  (json_int_t)a->gateway_n.captured, "dropped",
                                  (json_int_t)a->gateway_n.capture_dropped, "failed",
                                  (json_int_t)a->gateway_n.capture_failed));
    /* the engines the gateway's rate limits are shared among (docs/gateway.md, "Limits") */
    json_object_set_new(json_object_get(root, "gateway"), "rate_share_engines",
                        json_integer(store_live_engines(a->store)));
    api_respond_json(c->req, 200, root);
    json_decref(root);
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

static void gateway_metrics(api *a, buf_t *b)
{
    static const char *const proto[] = {"openai", "anthropic"}, *const mode[] = {"pass-through", "managed"};
    metrics_family(b, "ratchet_gateway_requests_total", "counter",
                   "Gateway calls sent upstream, by the caller's protocol and mode (managed prompt or pass-through).");
    for (int p = 0; p < 2; p++)
        for (int m = 0; m < 2; m++)
            metrics_sample(b, "ratchet_gateway_requests_total", (double)a->gateway_n.requests[p][m], "protocol",
                           proto[p], "mode", mode[m], NULL);
    metrics_one(b, "ratchet_gateway_refused_total", "counter",
                "Gateway requests the gateway answered itself: keys, limits, malformed or unknown requests.",
                (double)a->gateway_n.refused);
    metrics_one(b, "ratchet_gateway_upstream_errors_total", "counter",
                "Gateway calls the provider never answered (connect, timeout, transport): 502 or 504.",
                (double)a->gateway_n.upstream_errors);
    metrics_one(b, "ratchet_gateway_client_gone_total", "counter",
                "Gateway calls whose caller went away first; their upstream call was cancelled.",
                (double)a->gateway_n.client_gone);
    metrics_one(b, "ratchet_gateway_traces_captured_total", "counter",
                "Traces the gateway captured that the store committed.", (double)a->gateway_n.captured);
    metrics_one(b, "ratchet_gateway_traces_dropped_total", "counter",
                "Traces the gateway could not queue (the store's write queue was full); their answers went out.",
                (double)a->gateway_n.capture_dropped);
    metrics_one(b, "ratchet_gateway_traces_failed_total", "counter",
                "Captured traces that failed ingest's checks or whose commit failed.",
                (double)a->gateway_n.capture_failed);
}

/* GET /metrics */
void api_metrics(const api_call *c)
{
    api *a = c->a;
    buf_t b;
    buf_init(&b);
    buf_reserve(&b, 32768);
    metrics_family(&b, "ratchet_build_info", "gauge", "Always 1; the version is a label.");
    metrics_sample(&b, "ratchet_build_info", 1, "version", RATCHET_VERSION, NULL);
    metrics_one(&b, "ratchet_up_seconds", "gauge",
                "Seconds since the engine started.", (double)(now_ms() - a->started_ms) / 1000.0);
    metrics_process(&b, a->started_ms);
    if (a->lag)
        metrics_lag_write(a->lag, &b);
    if (a->http)
        http_server_metrics(a->http, &b);
    ingest_metrics(a, &b);
    api_otlp_metrics(a, &b);
    gateway_metrics(a, &b);
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
    http_respond(c->req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b.data, b.len);
    buf_free(&b);
}

/* ---- re-evaluation ---- */

/* POST /v1/evaluations {"prompt":..., "since":..., "until":..., "only_unevaluated":false} */
void api_reevaluate(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    json_error_t jerr;
    json_t *body = json_loadb(req->body.data ? req->body.data : "", req->body.len, 0, &jerr);
    if (!body || !json_is_object(body)) {
        http_respond_error(req, 400, "invalid_json", "the body must be a JSON object: %s",
                           body ? "got another JSON value" : jerr.text);
        json_decref(body);
        return;
    }
    static const char *const known[] = {"prompt", "since", "until", "only_unevaluated", NULL};
    if (!api_known_fields(req, body, known, "prompt, since, until, only_unevaluated")) {
        json_decref(body);
        return;
    }
    json_t *prompt = json_object_get(body, "prompt");
    int64_t since = 0, until = INT64_MAX;
    json_t *only = json_object_get(body, "only_unevaluated");
    if (!json_is_string(prompt) || json_string_length(prompt) == 0 || json_string_length(prompt) > 128) {
        http_respond_field_error(req, 400, "invalid_field", "prompt", "'prompt' must be a prompt name");
    } else if (json_object_get(body, "since") && !api_json_time(json_object_get(body, "since"), &since)) {
        http_respond_field_error(req, 400, "invalid_field", "since",
                                 "'since' must be an RFC 3339 date-time or integer milliseconds since the epoch");
    } else if (json_object_get(body, "until") && !api_json_time(json_object_get(body, "until"), &until)) {
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

/* ---- LLM calls ---- */

/* POST /v1/llm/chat: one LLM call, as ratchet.llm.chat makes it (for ops
 * checking a provider, and for specs). Recorded in the ledger as caller
 * kind "other", name "api". */
static void on_api_chat_done(llm_call *call, json_t *result, const char *kind, const char *err, void *ud)
{
    (void)call;
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

void api_llm_chat(const api_call *c)
{
    http_request *req = c->req;
    const char *ct = http_header_get(req, "content-type");
    if (!ct || strncmp(ct, "application/json", 16) != 0) {
        http_respond_field_error(req, 415, "unsupported_media_type", "content-type", "send application/json");
        return;
    }
    buf_append(&req->body, "", 1); /* NUL-terminate for the parser */
    req->body.len--;
    llm_caller who = {.kind = "other", .name = "api"};
    llm_chat(c->a->llm, req->body.data ? req->body.data : "", &who, on_api_chat_done, req);
}

static void llm_calls_work(api_task *t)
{
    t->rc = store_list_llm_calls_json(t->a->store, t->q.since_ms, t->name, t->q.limit, &t->out, t->err,
                                      sizeof t->err);
}

/* GET /v1/llm/calls?since=&caller_kind=&limit= : the ledger, newest first */
void api_llm_calls(const api_call *c)
{
    http_request *req = c->req;
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
    if (c->a->llm)
        llm_ledger_flush(c->a->llm); /* the gathered rows go to the writer ahead of this read */
    api_task *t = api_task_new(c->a, req, llm_calls_work);
    if (kr > 0)
        t->name = xstrdup(kind); /* the caller kind */
    t->q = q;
    api_task_queue(t);
}

/* ---- debugging ---- */

/* POST /v1/debug/sleep {"ms": N}: blocks the event loop for N ms, on
 * purpose, like Redis' DEBUG SLEEP, so operators and specs can see what the
 * watchdog does with a stuck loop. Its route is there only with
 * debug_endpoints = true. */
void api_debug_sleep(const api_call *c)
{
    http_request *req = c->req;
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
