/* api_capture.h — traces captured by the gateway, built and checked off the
 * loop thread: the loop hands over what a call left (its request tree, the
 * answer's bytes, its figures) as an item; the capture thread builds each
 * item's trace, runs ingest's checks on a batch of them (ingest_tree) and
 * hands the batch back; the loop submits it to the group-commit writer and
 * runs each item's follow-up (the ledger row, the token bucket). */
#ifndef RATCHET_API_CAPTURE_H
#define RATCHET_API_CAPTURE_H

#include <jansson.h>

#include "api/api.h"

typedef struct api_capture_item api_capture_item;
struct api_capture_item {
    api_capture_item *next; /* (the queue's) */
    size_t bytes;           /* what the item holds, for the queue's bound */
    /* On the capture thread (or, once the queue is full, on the loop): the
     * trace in the form POST /v1/traces takes, a new reference, or NULL.
     * It may read only what the item owns, and trees nothing changes. */
    json_t *(*build)(api_capture_item *it);
    /* On the loop thread, after build, whether the trace was stored or not:
     * the item's follow-up; frees the item. */
    void (*done)(api *a, api_capture_item *it);
};

/* Hands an item over, never waiting. Items are gathered for at most 20 ms
 * (or 256 of them) per batch: one ingest check and one write per batch.
 * When the queue holds too much already (4096 items or 64 MiB), the item
 * is built here, its trace dropped and counted
 * (ratchet_gateway_traces_dropped_total), and done called: the answers
 * never wait. */
void api_capture_trace(api *a, api_capture_item *it);
/* Sends what is gathered without waiting the rest of the 20 ms (at
 * shutdown's start). */
void api_capture_flush(api *a);
/* Stops the capture thread once every item handed over is built, submits
 * the last batches to the store and runs their items' follow-ups, then
 * frees the queue (its async handle closes with the loop). */
void api_capture_close(api *a);

#endif
