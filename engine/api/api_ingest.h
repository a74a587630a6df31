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
/* Queues one trace (a JSON object as POST /v1/traces takes it; the
 * reference is taken) for the store, never waiting: captured traces are
 * gathered for at most 20 ms (or 256 of them), then pass ingest's checks as
 * a tree (ingest_tree: no text round trip) and go to the group-commit writer
 * as one write; online evaluation follows the commit. What fails the checks
 * or finds the writer's queue full is counted and logged. */
void api_capture_trace(api *a, json_t *trace);
/* Sends what is gathered now (at shutdown, before the store's flush). */
void api_capture_flush(api *a);
/* The same, then frees the queue (its timer closes with the loop). */
void api_capture_close(api *a);

#endif
