/* otlp_map.h — plain OTLP spans and log records (otlp_decode.h) mapped to
 * ratchet traces and feedback in the form POST /v1/traces and /v1/feedback
 * take (docs/traces.md), so they go through ingest's validation unchanged.
 * Reads the OpenTelemetry GenAI conventions (current attributes, and the
 * older event form as span events or log records), OpenLLMetry,
 * OpenInference and the Vercel AI SDK; docs/otlp.md has the table. Pure. */
#ifndef RATCHET_OTLP_MAP_H
#define RATCHET_OTLP_MAP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* How the mapping treats an LLM call no attribute links to a prompt. */
typedef struct {
    /* the configured rule (otlp.prompt_rule, a Lua policy) runs on the loop
     * thread and asynchronously, so the mapping cannot call it: such spans
     * are set aside in otlp_mapped.deferred (at most OTLP_MAX_DEFERRED; the
     * rest rejected) and mapped by otlp_map_deferred with the rule's answers */
    bool defer_unlinked;
} otlp_map_opts;

#define OTLP_MAX_DEFERRED 1000

typedef struct {
    json_t *traces;      /* ratchet trace objects, one per LLM span (or span's log records) */
    json_t *feedback;    /* feedback objects for traces sent earlier (log records) */
    size_t *source;      /* source[i]: the item traces[i] came from */
    size_t dropped;      /* items that are not LLM calls (counted in metrics, not rejected) */
    size_t rejected;     /* invalid items, and LLM calls with no prompt to link to */
    size_t unlinked;     /* of rejected: LLM calls no attribute or rule linked to a prompt */
    char error[512];     /* the first rejection's reason, for partial_success */
    json_t *deferred;    /* with defer_unlinked: [{"index": i, "span": plain span, ...}] waiting for the rule
                          * (an LLM call's trace, or the part of a span without its content) */
    /* LLM calls whose content is not on the span (it comes as log records,
     * on /v1/logs, in any order): [{"id": trace id, "part": {model, usage,
     * latency_ms, metadata}}], merged into the trace the records form */
    json_t *parts;
    /* log records' traces no attribute or rule linked to a prompt:
     * [{"index": i, "trace": the trace without prompt}]: their span's part
     * may name it (otlp_map_join) */
    json_t *orphans;
    size_t joined;       /* traces otlp_map_join formed from a waiting records' part and its span */
} otlp_mapped;

/* Maps the plain spans of one request. */
void otlp_map_spans(json_t *spans, const otlp_map_opts *opts, otlp_mapped *out);
/* Maps the spans of a protobuf ExportTraceServiceRequest as otlp_decode +
 * otlp_map_spans would, reading each valid span's attributes in place
 * (otlp_decode_pb_spans): no plain span of them is built. Returns 0, or -1
 * with the reason in err and out empty (answered 400). */
int otlp_map_pb_spans(const char *body, size_t len, const otlp_map_opts *opts, otlp_mapped *out, char *err,
                      size_t errlen);
/* Maps the plain log records of one request: the GenAI events of one span
 * (gen_ai.user.message, gen_ai.choice, ...) become one trace;
 * gen_ai.evaluation.result events become feedback. */
void otlp_map_logs(json_t *logs, const otlp_map_opts *opts, otlp_mapped *out);
/* Maps the deferred spans with the rule's answers (answers[i] for
 * deferred[i]): a {"name", "version"?} object links the span; null leaves
 * it unlinked (rejected); a string is the rule's error (rejected with it).
 * Empties deferred. */
void otlp_map_deferred(otlp_mapped *m, json_t *answers);
void otlp_mapped_free(otlp_mapped *m);

/* An LLM call whose content comes as log records and whose prompt is named
 * only on its span (ratchet.prompt.name, the convention's attributes),
 * joined in either order. The span's part carries the prompt; the records'
 * trace, linked by nothing of its own, is an orphan. otlp_map_join_ids
 * lists the ids whose waiting parts the receiver reads (a new array of
 * strings); otlp_map_join takes them (waiting: {id: the part's JSON}) and
 * settles each: an orphan whose span's part waits with a prompt becomes a
 * trace with that prompt; one whose part names none is rejected as
 * unlinked; one with no part waits as a part itself. A span's part naming
 * the prompt whose records' trace waits (a part with an output) forms the
 * trace now (the records' fields, the span's on top), added to traces after
 * the others; the receiver stores those with join_part (the waiting part is
 * merged and deleted). */
json_t *otlp_map_join_ids(const otlp_mapped *m);
void otlp_map_join(otlp_mapped *m, json_t *waiting);

/* "<32 hex trace id>-<16 hex span id>": the id of the trace a span becomes. */
void otlp_trace_id(const char *trace_hex, const char *span_hex, char out[64]);

#endif
