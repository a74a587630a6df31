/* api_otlp.h — the OTLP/HTTP receiver: its own listener's small route table
 * (POST /v1/traces, POST /v1/logs) and the handler that listener's HTTP
 * server calls. After decoding (otlp_decode.c) and mapping (otlp_map.c),
 * spans take the ingest path: ingest.c's validator (ingest_tree), the
 * store's group commit, the answer after the fsync, then online evaluation. */
#ifndef RATCHET_API_OTLP_H
#define RATCHET_API_OTLP_H

#include "api/api.h"

extern const api_route api_otlp_routes[];
extern const size_t api_otlp_nroutes;

/* The http_handler of the OTLP listener; ctx is the engine's api*. */
void api_otlp_handle(http_request *req, void *ctx);

/* The OTLP listener's http_error_writer: every error it answers (its own,
 * the token's, the HTTP server's: 400, 401, 403, 404, 405, 408, 413, 415,
 * 431, 503 ...) is a google.rpc.Status in the request's encoding (protobuf
 * for application/x-protobuf, else JSON), as OTLP/HTTP asks. */
void api_otlp_error(http_request *req, int status, const char *message, const char *extra_headers);

/* Stops the receiver's decoding threads: the bodies they hold or wait for
 * are decoded and handed on first (the listener has drained). Called once,
 * on the loop thread, before the store closes. */
void api_otlp_stop(api *a);

/* The receiver's counters for /metrics (the API's listener serves them). */
void api_otlp_metrics(api *a, buf_t *b);

#endif
