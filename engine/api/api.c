/* api.c — the API's one route table and its dispatcher: a request is matched
 * to its row (404 no such path, 405 with Allow), its scope's token checked,
 * what the route needs checked, then its area's handler called. An area of
 * the API is one file of handlers and its rows here. */
#include "api/api.h"

#include <stdio.h>
#include <string.h>

#include "api/api_console.h"
#include "api/api_gateway.h"
#include "api/api_ingest.h"
#include "api/api_ops.h"
#include "api/api_registry.h"
#include "api/api_request.h"
#include "api/api_runs.h"

#define NONE API_SCOPE_NONE
#define INGEST API_SCOPE_INGEST
#define ADMIN API_SCOPE_ADMIN
#define METRICS API_SCOPE_METRICS
#define VIEWER API_SCOPE_VIEWER
#define GATEWAY API_SCOPE_GATEWAY
#define REGISTRY API_NEEDS_REGISTRY
#define RUNNER API_NEEDS_RUNNER
#define LOOP API_NEEDS_LOOP
#define API_MD "docs/api.md"
#define GATE_MD "docs/gate.md"
#define LOOP_MD "docs/loop.md"
#define CONSOLE_MD "docs/console.md"
#define GATEWAY_MD "docs/gateway.md"

/* Every endpoint, once. `ratchet routes` prints this table and
 * spec/engine/routes_spec.lua checks the docs' endpoint tables against it. */
const api_route api_routes[] = {
    /* traces (api_ingest.c) */
    {"POST", "/v1/traces", INGEST, API_OWN_ENCODING, API_MD, api_ingest_traces, NULL},
    {"POST", "/v1/feedback", INGEST, API_OWN_ENCODING, API_MD, api_ingest_feedback, NULL},
    {"GET", "/v1/traces", VIEWER, 0, API_MD, api_list_traces, NULL},
    {"GET", "/v1/traces/{id}", VIEWER, 0, API_MD, api_get_trace, NULL},

    /* the prompt registry (api_registry.c) */
    {"GET", "/v1/prompts", VIEWER, REGISTRY, GATE_MD, api_list_prompts, NULL},
    {"POST", "/v1/prompts", ADMIN, REGISTRY, GATE_MD, api_create_prompt, NULL},
    {"GET", "/v1/prompts/{name}", INGEST, REGISTRY, GATE_MD, api_resolve_prompt, NULL},
    {"GET", "/v1/prompts/{name}/versions", VIEWER, REGISTRY, GATE_MD, api_list_versions, NULL},
    {"POST", "/v1/prompts/{name}/versions", ADMIN, REGISTRY, GATE_MD, api_add_version, NULL},
    {"GET", "/v1/prompts/{name}/versions/{version}", VIEWER, REGISTRY, GATE_MD, api_show_version, NULL},
    {"GET", "/v1/prompts/{name}/diff", VIEWER, REGISTRY, GATE_MD, api_diff_versions, NULL},
    {"POST", "/v1/prompts/{name}/promote", ADMIN, REGISTRY, GATE_MD, api_prompt_action, "promote"},
    {"POST", "/v1/prompts/{name}/canary", ADMIN, REGISTRY, GATE_MD, api_prompt_action, "canary"},
    {"POST", "/v1/prompts/{name}/rollback", ADMIN, REGISTRY, GATE_MD, api_prompt_action, "rollback"},
    {"POST", "/v1/prompts/{name}/pin", ADMIN, REGISTRY, GATE_MD, api_prompt_action, "pin"},
    {"POST", "/v1/prompts/{name}/unpin", ADMIN, REGISTRY, GATE_MD, api_prompt_action, "unpin"},
    {"PUT", "/v1/prompts/{name}/labels/{label}", ADMIN, REGISTRY, GATE_MD, api_set_label, NULL},
    {"DELETE", "/v1/prompts/{name}/labels/{label}", ADMIN, REGISTRY, GATE_MD, api_delete_label, NULL},
    {"GET", "/v1/prompts/{name}/history", VIEWER, REGISTRY, GATE_MD, api_prompt_history, NULL},
    {"GET", "/v1/prompts/{name}/metrics", VIEWER, REGISTRY, API_MD, api_prompt_metrics, NULL},
    {"GET", "/v1/prompts/{name}/series", VIEWER, REGISTRY, API_MD, api_prompt_series, NULL},

    /* datasets (api_registry.c) */
    {"GET", "/v1/datasets", VIEWER, REGISTRY, GATE_MD, api_list_datasets, NULL},
    {"GET", "/v1/datasets/{name}", VIEWER, REGISTRY, GATE_MD, api_show_dataset, NULL},
    {"POST", "/v1/datasets/{name}/cases", ADMIN, REGISTRY, GATE_MD, api_import_cases, NULL},
    {"GET", "/v1/datasets/{name}/cases", VIEWER, REGISTRY, GATE_MD, api_export_cases, NULL},
    {"DELETE", "/v1/datasets/{name}/cases/{id}", ADMIN, REGISTRY, GATE_MD, api_delete_case, NULL},
    {"POST", "/v1/datasets/{name}/from-trace", ADMIN, REGISTRY, GATE_MD, api_case_from_trace, NULL},
    {"POST", "/v1/datasets/{name}/from-traces", ADMIN, REGISTRY, GATE_MD, api_cases_from_traces, NULL},
    {"GET", "/v1/datasets/{name}/versions", VIEWER, REGISTRY, GATE_MD, api_dataset_versions, NULL},
    {"GET", "/v1/datasets/{name}/diff", VIEWER, REGISTRY, GATE_MD, api_dataset_diff, NULL},

    /* regression runs and the loop (api_runs.c) */
    {"POST", "/v1/runs", ADMIN, RUNNER, GATE_MD, api_start_run, NULL},
    {"GET", "/v1/runs", VIEWER, RUNNER, GATE_MD, api_list_runs, NULL},
    {"GET", "/v1/runs/{id}", VIEWER, RUNNER, GATE_MD, api_get_run, NULL},
    {"GET", "/v1/runs/{id}/results", VIEWER, RUNNER, GATE_MD, api_run_results, NULL},
    {"POST", "/v1/runs/{id}/cancel", ADMIN, RUNNER, GATE_MD, api_cancel_run, NULL},
    {"POST", "/v1/runs/{id}/approve", ADMIN, LOOP, LOOP_MD, api_decide_run, "approve"},
    {"POST", "/v1/runs/{id}/reject", ADMIN, LOOP, LOOP_MD, api_decide_run, "reject"},
    {"POST", "/v1/prompts/{name}/optimize", ADMIN, LOOP, LOOP_MD, api_optimize_prompt, NULL},
    {"GET", "/v1/loop", VIEWER, LOOP, LOOP_MD, api_loop_status, NULL},
    {"GET", "/v1/loop/{name}", VIEWER, LOOP | REGISTRY, LOOP_MD, api_loop_prompt, NULL},

    /* gateway mode (api_gateway.c): OpenAI- and Anthropic-compatible */
    {"POST", "/v1/chat/completions", GATEWAY, 0, GATEWAY_MD, api_gateway_chat, NULL},
    {"POST", "/v1/messages", GATEWAY, 0, GATEWAY_MD, api_gateway_messages, NULL},
    {"GET", "/v1/models", GATEWAY, 0, GATEWAY_MD, api_gateway_models, NULL},

    /* operations (api_ops.c) */
    {"GET", "/healthz", NONE, 0, API_MD, api_healthz, NULL},
    {"GET", "/readyz", NONE, 0, API_MD, api_readyz, NULL},
    {"GET", "/v1/version", NONE, 0, API_MD, api_version, NULL},
    {"GET", "/v1/status", VIEWER, 0, API_MD, api_status, NULL},
    {"GET", "/metrics", METRICS, 0, API_MD, api_metrics, NULL},
    {"POST", "/v1/evaluations", ADMIN, API_NEEDS_ONLINE, API_MD, api_reevaluate, NULL},
    {"POST", "/v1/llm/chat", ADMIN, API_NEEDS_LLM, API_MD, api_llm_chat, NULL},
    {"GET", "/v1/llm/calls", VIEWER, 0, API_MD, api_llm_calls, NULL},
    {"POST", "/v1/debug/sleep", ADMIN, API_DEBUG_ONLY, API_MD, api_debug_sleep, NULL},

    /* the web console's static files (api_console.c): no data in them, so no
     * token; every page asks the API with the viewer or admin token */
    {"GET", "/v1/session", VIEWER, 0, CONSOLE_MD, api_session, NULL},
    {"GET", "/console/", NONE, 0, CONSOLE_MD, api_console_file, "index.html"},
    {"GET", "/console/{file}", NONE, 0, CONSOLE_MD, api_console_file, NULL},
};

const size_t api_nroutes = sizeof api_routes / sizeof api_routes[0];

/* The methods an Allow header names, in the order it names them. */
static const char *const methods[] = {"GET", "POST", "PUT", "DELETE"};

/* Matches path against pattern segment by segment; with c, copies the
 * {name} segments into it. */
static bool path_matches(const char *pattern, const char *path, api_call *c)
{
    size_t used = 0;
    int n = 0;
    while (*pattern == '/' && *path == '/') {
        pattern++, path++;
        size_t pl = strcspn(pattern, "/"), sl = strcspn(path, "/");
        if (*pattern == '{') {
            if (sl == 0 || n == API_MAX_PARAMS)
                return false;
            if (c) {
                memcpy(c->buf + used, path, sl);
                c->buf[used + sl] = '\0';
                c->param[n] = c->buf + used;
                used += sl + 1;
            }
            n++;
        } else if (pl != sl || memcmp(pattern, path, sl) != 0) {
            return false;
        }
        pattern += pl, path += sl;
    }
    return !*pattern && !*path;
}

/* What the route needs that this engine lacks (unit tests, the fuzzer), or NULL. */
static const char *missing(const api *a, unsigned uses)
{
    if ((uses & API_NEEDS_REGISTRY) && !a->registry)
        return "the registry is not available";
    if ((uses & API_NEEDS_RUNNER) && !a->runner)
        return "regression runs are not available";
    if ((uses & API_NEEDS_LOOP) && !a->loop_sm)
        return "the loop is not available";
    if ((uses & API_NEEDS_ONLINE) && !a->online)
        return "online evaluation is not running";
    if ((uses & API_NEEDS_LLM) && !a->llm)
        return "LLM calls are not available";
    return NULL;
}

/* The route of the request, or NULL: then allow holds the methods the path
 * takes ("" when none) and *off is set when the path is a debug endpoint
 * that is switched off. */
static const api_route *find(const api *a, const http_request *req, char *allow, size_t allowlen, bool *off)
{
    bool takes[sizeof methods / sizeof methods[0]] = {false};
    *off = false;
    for (size_t i = 0; i < api_nroutes; i++) {
        const api_route *r = &api_routes[i];
        if (!path_matches(r->pattern, req->path, NULL))
            continue;
        if ((r->uses & API_DEBUG_ONLY) && !a->cfg->debug_endpoints) {
            *off = true;
            continue;
        }
        if (!strcmp(r->method, req->method))
            return r;
        for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++)
            takes[m] |= !strcmp(r->method, methods[m]);
    }
    size_t n = 0;
    allow[0] = '\0';
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++)
        if (takes[m])
            n += (size_t)snprintf(allow + n, allowlen - n, "%s%s", n ? ", " : "", methods[m]);
    return NULL;
}

void api_handle(http_request *req, void *ctx)
{
    api_call c = {.a = ctx, .req = req};
    char allow[64] = "";
    bool off = false;
    bool too_long = strlen(req->path) >= API_MAX_PATH;
    c.route = too_long ? NULL : find(c.a, req, allow, sizeof allow, &off);
    /* a body is never decompressed; ingest checks this itself, after the token, counting it */
    if (req->body.len && !(c.route && (c.route->uses & API_OWN_ENCODING)) && !api_body_encoding_ok(req))
        return;
    if (too_long) {
        http_respond_error(req, 414, "uri_too_long", "the path is too long");
        return;
    }
    if (!c.route && allow[0]) {
        char hdr[96];
        snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
        http_respond_error_headers(req, 405, "method_not_allowed", hdr, "%s is not allowed here; use %s",
                                   req->method, allow);
        return;
    }
    if (!c.route && off) {
        http_respond_error(req, 404, "not_found",
                           "debug endpoints are off; set debug_endpoints = true in the config to use %s", req->path);
        return;
    }
    if (!c.route) {
        http_respond_error(req, 404, "not_found", "no endpoint at %s", req->path);
        return;
    }
    if (!api_authorize(c.a, req, c.route->scope))
        return;
    const char *lacks = missing(c.a, c.route->uses);
    if (lacks) {
        http_respond_error(req, 503, "unavailable", "%s", lacks);
        return;
    }
    if (!api_actor_ok(req))
        return;
    path_matches(c.route->pattern, req->path, &c);
    c.route->handler(&c);
}
