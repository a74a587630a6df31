/* otlp_decode.h — OTLP export requests (traces and logs; protobuf through
 * protobuf-c, or OTLP JSON) decoded into plain items, and gzip bodies
 * inflated under a cap. Pure: no I/O, no engine state, so the fuzzer drives
 * it directly (fuzz/fuzz_otlp.c).
 *
 * A plain span is a JSON object:
 *   {"trace_id":"<32 hex>","span_id":"<16 hex>","name":"...","start_ns":N,"end_ns":N,
 *    "status_code":0|1|2,"status_message":"...","scope":"...",
 *    "attributes":{key: value},"resource":{key: value},
 *    "events":[{"name":"...","time_ns":N,"attributes":{...}}]}
 * a plain log record:
 *   {"trace_id":"...","span_id":"...","time_ns":N,"event_name":"...","body":value,
 *    "attributes":{...},"resource":{...},"scope":"..."}
 * where an OTLP AnyValue becomes the plain JSON value (string, integer,
 * real, bool, array, object; bytes as base64 text). An item the decoder
 * found broken (ids of the wrong length, invalid UTF-8, a value nested
 * deeper than OTLP_MAX_DEPTH, too many attributes) carries "invalid": the
 * reason, naming the field; the rest of the request is still read. */
#ifndef RATCHET_OTLP_DECODE_H
#define RATCHET_OTLP_DECODE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define OTLP_MAX_DEPTH 32          /* nesting of array and kvlist values */
#define OTLP_MAX_ATTRIBUTES 4096   /* per span, event, log record or resource */

typedef enum { OTLP_TRACES, OTLP_LOGS } otlp_signal;

/* Decodes body (protobuf, or OTLP JSON when json) into a new JSON array of
 * plain spans or log records. Returns it, or NULL with the reason in err
 * (the body is not an export request at all: answered 400). */
json_t *otlp_decode(otlp_signal sig, bool json, const char *body, size_t len, char *err, size_t errlen);

/* ---- protobuf spans read in place ----
 * The receiver's path for protobuf traces: the spans are not turned into
 * plain spans first. A span with no fault and no events is given to the
 * mapping as a plain span without "attributes" and "events", plus its
 * attributes read where protobuf-c unpacked them (each value converted to
 * its plain JSON value when first asked for); any other span as the plain
 * span otlp_decode makes, so its fault reads the same. */
typedef struct otlp_pb_span otlp_pb_span;

/* The value of attribute key (the last of equal keys), as otlp_decode
 * would have it, borrowed for the span's callback; NULL when absent. */
json_t *otlp_pb_attr(otlp_pb_span *s, const char *key);
/* A string attribute's text, not NUL-terminated (valid UTF-8: checked
 * before the span was given); NULL when absent or not a string. */
const char *otlp_pb_text(otlp_pb_span *s, const char *key, size_t *len);
/* The i-th attribute's key (not NUL-terminated); false past the last. */
bool otlp_pb_key(const otlp_pb_span *s, size_t i, const char **key, size_t *len);
/* The whole plain span, as otlp_decode makes it (a new reference). */
json_t *otlp_pb_plain(const otlp_pb_span *s);
/* Unpacks a protobuf ExportTraceServiceRequest and gives each span to fn,
 * in order: (light span, s) or (plain span, NULL), both valid only during
 * the call. Returns 0, or -1 with the reason in err (not an export
 * request at all: answered 400). */
int otlp_decode_pb_spans(const char *body, size_t len, void (*fn)(void *ud, json_t *span, otlp_pb_span *s), void *ud,
                         char *err, size_t errlen);

/* Inflates a gzip (or zlib) body into a new buffer of at most cap bytes.
 * Returns 0 with *out (NUL-terminated, free it) and *outlen; 413 when the
 * inflated size passes cap; 400 when the data is not valid gzip. */
int otlp_inflate(const char *in, size_t len, size_t cap, char **out, size_t *outlen, char *err, size_t errlen);

#endif
