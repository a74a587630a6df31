/* api_otlp.h — the OTLP/HTTP receiver: its own listener's small route table
 * (POST /v1/traces, POST /v1/logs) and the handler that listener's HTTP
 * server calls. After decoding (otlp_decode.c) and mapping (otlp_map.c),
 * spans take the ingest path unchanged: ingest.c's validation, the store's
 * group commit, the answer after the fsync, then online evaluation. */
#ifndef RATCHET_API_OTLP_H
#define RATCHET_API_OTLP_H

#include "api/api.h"

extern const api_route api_otlp_routes[];
extern const size_t api_otlp_nroutes;

/* The http_handler of the OTLP listener; ctx is the engine's api*. */
void api_otlp_handle(http_request *req, void *ctx);

/* The receiver's counters for /metrics (the API's listener serves them). */
void api_otlp_metrics(api *a, buf_t *b);

#endif
