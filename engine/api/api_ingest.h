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
/* After a commit of traces or feedback: what was accepted goes to online
 * evaluation and the loop (every front door calls it: ingest, OTLP). */
void api_ingest_committed(api *a, const store_write *w);

#endif
