/* api.h — the /v1 HTTP API: routing, authentication, ingest and reads. */
#ifndef RATCHET_API_H
#define RATCHET_API_H

#include <stdbool.h>

#include "config.h"
#include "http.h"
#include "store.h"

typedef struct {
    uv_loop_t *loop;
    const config *cfg;
    store *store;
    bool draining;
} api;

/* The http_handler for every request; ctx is an api*. */
void api_handle(http_request *req, void *ctx);

#endif
