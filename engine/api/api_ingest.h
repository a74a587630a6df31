/* api_ingest.h — the traces endpoints: POST /v1/traces and /v1/feedback
 * (ingest through the store's group commit), GET /v1/traces and
 * GET /v1/traces/{id}. Handlers of rows of api_routes[]. */
#ifndef RATCHET_API_INGEST_H
#define RATCHET_API_INGEST_H

#include "api/api.h"

void api_ingest_traces(const api_call *c);
void api_ingest_feedback(const api_call *c);
void api_list_traces(const api_call *c);
void api_get_trace(const api_call *c);
/* Queues one trace (its JSON, as POST /v1/traces takes it; json is
 * NUL-terminated at len) through ingest's checks to the group-commit writer,
 * without waiting: online evaluation follows the commit. -1 when it was not
 * queued (invalid, or the queue full: counted and logged). */
int api_capture_trace(api *a, char *json, size_t len);

#endif
