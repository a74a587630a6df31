/* api.h — the /v1 HTTP API: routing, authentication, ingest and reads. */
#ifndef RATCHET_API_H
#define RATCHET_API_H

#include <stdbool.h>

#include "script/catalog.h"
#include "conf/config.h"
#include "net/http.h"
#include "llm/llm.h"
#include "loop/online.h"
#include "loop/registry.h"
#include "loop/loop.h"
#include "loop/runner.h"
#include "store/store.h"

/* What the last reload did, for /v1/status (kept by main). */
typedef struct {
    uint64_t reloads;
    uint64_t failures;      /* reloads that kept something old */
    int64_t last_ms;
    char *config_error;     /* the config file's error, or NULL */
    bool reloading;
} api_reload_info;

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
    struct metrics_lag *lag;
    int64_t started_ms;
    bool draining;
    /* ingest counters, by ingest_kind: [INGEST_TRACES], [INGEST_FEEDBACK] */
    struct {
        uint64_t requests, bytes, refused;
        uint64_t items[5]; /* accepted, duplicate, invalid, not_found, failed */
    } ingest_n[2];
} api;

/* The http_handler for every request; ctx is an api*. */
void api_handle(http_request *req, void *ctx);

#endif
