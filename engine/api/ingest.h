/* ingest.h — turns a request body (one JSON object, a JSON array, or NDJSON),
 * or traces already built as jansson trees (OTLP, captured calls), into
 * validated, normalised traces or feedback ready for the store, with a
 * result per item: rejected items carry the JSON path and the reason. Both
 * entry points run the same validator. */
#ifndef RATCHET_INGEST_H
#define RATCHET_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include <stdint.h>

#include "store/store.h"

#define INGEST_MAX_DEPTH 64
#define INGEST_MAX_ERRORS 8

typedef struct {
    char *path;
    char *message;
} ingest_error;

typedef struct {
    int write_index;        /* index into write.traces / write.feedback, or -1 if rejected */
    int line;               /* NDJSON line number, or 0 */
    char *id;               /* the item's id when it has one */
    ingest_error errors[INGEST_MAX_ERRORS];
    int nerrors;
} ingest_item;

typedef enum { INGEST_TRACES, INGEST_FEEDBACK } ingest_kind;

typedef struct {
    ingest_kind kind;
    ingest_item *items;
    size_t nitems;
    store_write write;      /* the valid items (and inline feedback of traces) */
    bool array_form;        /* items are addressed as $[i] (else $) */
} ingest_batch;

/* A trace's tags (the trace field "tags", the tag filter of GET /v1/traces):
 * at most INGEST_MAX_TAGS distinct tags of 1 to INGEST_TAG_MAX_LEN bytes of
 * letters, digits and - _ . : / = */
#define INGEST_MAX_TAGS 20
#define INGEST_TAG_MAX_LEN 64
bool ingest_tag_ok(const char *tag);

/* Parses and validates body. Returns 0 with the batch filled, or an HTTP
 * status (400, 413) with err_code and err (the whole request is refused). */
/* body must be NUL-terminated at len; lines are NUL-terminated in place while
 * parsed and restored after. */
int ingest_parse(ingest_kind kind, char *body, size_t len, bool ndjson, size_t max_items, int64_t now_ms,
                 ingest_batch *out, const char **err_code, char *err, size_t errlen);
/* The same for items built in memory: items is a JSON array of trace (or
 * feedback) objects in the form POST /v1/traces (or /v1/feedback) takes.
 * Each is checked by the same rules as ingest_parse's (errors name the
 * field, each item addressed as "$", like an NDJSON line) and, when valid,
 * written once as compact JSON for the store row: no text round trip.
 * Returns 0 with the batch filled, or 400 (no items) / 413 (more than
 * max_items) with err_code and err. items is not modified or kept. */
int ingest_tree(ingest_kind kind, const json_t *items, size_t max_items, int64_t now_ms, ingest_batch *out,
                const char **err_code, char *err, size_t errlen);
/* What ingest_tree does before its validator, alone: each item's view and
 * stored text, built and dropped. For bench/otlp_decode, which subtracts it
 * from ingest_tree's time to state the validator's own cost. Returns the
 * stored texts' total bytes. */
size_t ingest_tree_prepare_only(const json_t *items);
/* The response body after the store answered: counts and per-item results.
 * *status is set to 200, 422 (all rejected) or 503 (the store failed). */
char *ingest_results_json(const ingest_batch *b, int *status, const char *request_id);
void ingest_batch_free(ingest_batch *b);

#endif
