/* api.h — the /v1 HTTP API: its state, its one route table, and the handler
 * the HTTP server calls for every request. */
#ifndef RATCHET_API_H
#define RATCHET_API_H

#include <stdbool.h>
#include <stddef.h>

#include "script/catalog.h"
#include "conf/config.h"
#include "net/http.h"
#include "llm/llm.h"
#include "loop/online.h"
#include "loop/registry.h"
#include "loop/loop.h"
#include "loop/runner.h"
#include "store/store.h"

/* The API's version: the prefix of its paths. An endpoint is added under it;
 * one that changes or goes away needs the next. */
#define API_VERSION "v1"

/* What the last reload did, for /v1/status (kept by main). */
typedef struct {
    uint64_t reloads;
    uint64_t failures;      /* reloads that kept something old */
    int64_t last_ms;
    char *config_error;     /* the config file's error, or NULL */
    bool reloading;
} api_reload_info;

/* The console's static files (api_console.h). */
typedef struct console_assets console_assets;

typedef struct {
    uv_loop_t *loop;
    const config *cfg;
    store *store;
    online *online;         /* NULL in unit tests */
    catalog *catalog;
    llm *llm;               /* NULL in unit tests */
    registry *registry;     /* NULL in unit tests */
    runner *runner;         /* NULL in unit tests */
    optloop *loop_sm;          /* the self-improvement loop; NULL in unit tests */
    api_reload_info *reload;
    http_server *http;      /* for /metrics; NULL in unit tests */
    http_server *otlp_http; /* the OTLP listener, for /v1/status; NULL when off */
    console_assets *console; /* the console's files; NULL when not found (its pages answer 404 saying so) */
    struct metrics_lag *lag;
    int64_t started_ms;
    bool draining;
    /* ingest counters, by ingest_kind: [INGEST_TRACES], [INGEST_FEEDBACK] */
    struct {
        uint64_t requests, bytes, refused;
        uint64_t items[5]; /* accepted, duplicate, invalid, not_found, failed */
    } ingest_n[2];
    /* the OTLP receiver's counters, by signal: [OTLP_TRACES], [OTLP_LOGS] (api_otlp.c) */
    struct {
        uint64_t requests, bytes, refused;
        uint64_t items[7]; /* accepted, duplicate, rejected, dropped (not an LLM call), unlinked (no prompt), failed, part (a span without its content) */
        double decode_seconds; /* decoding and mapping, summed */
    } otlp_n[2];
    /* the OTLP receiver's own decoding threads for large bodies, started
     * at the first one (api_otlp.c); NULL until then */
    struct otlp_decoder *otlp_decoder;
    /* gateway mode (api_gateway.c): its state, and its counters for /metrics */
    struct gateway *gateway;
    struct api_capture *capture; /* captured traces waiting for the writer (api_ingest.c) */
    struct {
        uint64_t requests[2][2];   /* [openai, anthropic][pass-through, managed] */
        uint64_t refused;          /* answered by the gateway itself: auth, limits, bad requests */
        uint64_t upstream_errors;  /* no answer from upstream (connect, timeout, transport) */
        uint64_t client_gone;      /* the caller went away first: the upstream call was cancelled */
        uint64_t captured, capture_dropped, capture_failed;
    } gateway_n;
} api;

/* Who may call a route: the token scopes of docs/api.md#authentication.
 * A scope is a row of the rules in api_request.c (its token, the messages);
 * a new one (a read-only viewer) is a value here and a row there. */
enum api_scope { API_SCOPE_NONE, API_SCOPE_INGEST, API_SCOPE_ADMIN, API_SCOPE_METRICS, API_SCOPE_GATEWAY, API_SCOPE_VIEWER };

/* What a route needs besides its scope (api_route.uses): the dispatcher
 * answers 503 naming what is missing (unit tests and the fuzzer run the API
 * without them), or treats the route specially. */
enum {
    API_NEEDS_REGISTRY = 1 << 0,
    API_NEEDS_RUNNER = 1 << 1,
    API_NEEDS_LOOP = 1 << 2,
    API_NEEDS_ONLINE = 1 << 3,
    API_NEEDS_LLM = 1 << 4,
    API_OWN_ENCODING = 1 << 5, /* the handler checks Content-Encoding itself, after the token (ingest counts it) */
    API_DEBUG_ONLY = 1 << 6,   /* there only with debug_endpoints = true; else 404 saying so */
};

/* One request matched to its route: the {name} segments of the pattern in
 * order (api_request.h has the whole struct). Valid while the handler runs. */
typedef struct api_call api_call;

/* One route: every endpoint is one row of api_routes[] (api.c). */
typedef struct {
    const char *method;      /* GET, POST, PUT, DELETE */
    const char *pattern;     /* "/v1/prompts/{name}/versions/{version}": a {name} segment matches one non-empty segment */
    enum api_scope scope;
    unsigned uses;           /* API_NEEDS_*, API_OWN_ENCODING, API_DEBUG_ONLY */
    const char *doc;         /* the page that describes it: "docs/gate.md" */
    void (*handler)(const api_call *c);
    const char *arg;         /* handed to the handler (an action's name), or NULL */
} api_route;

extern const api_route api_routes[];
extern const size_t api_nroutes;

/* "none", "ingest", "admin", "metrics", "viewer". */
const char *api_scope_name(enum api_scope s);

/* The http_handler for every request; ctx is an api*. */
void api_handle(http_request *req, void *ctx);

#endif
