/* api_otlp.c — the OTLP/HTTP receiver's HTTP side (docs/otlp.md): its
 * route table and dispatcher, the ingest token, the encodings (protobuf or
 * JSON, gzip or not), the status codes exporters act on (200 with partial
 * success, 400, 413, 415, 429 and 503 with Retry-After), and the hand-over to the
 * ingest path: the mapped traces are validated by ingest.c and committed by
 * the store's group commit before the 200. */
#include "api/api_otlp.h"

#include <otlp.pb-c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api_ingest.h"
#include "api/api_request.h"
#include "api/ingest.h"
#include "api/otlp_decode.h"
#include "api/otlp_map.h"
#include "base/jtree.h"
#include "base/log.h"
#include "script/policy.h"

#define OTLP_MD "docs/otlp.md"
/* larger bodies are decoded on the receiver's own threads */
#define INLINE_DECODE_MAX (64 * 1024)

static void otlp_traces(const api_call *c);
static void otlp_logs(const api_call *c);

const api_route api_otlp_routes[] = {
    {"POST", "/v1/traces", API_SCOPE_INGEST, API_OWN_ENCODING, OTLP_MD, otlp_traces, NULL},
    {"POST", "/v1/logs", API_SCOPE_INGEST, API_OWN_ENCODING, OTLP_MD, otlp_logs, NULL},
};
const size_t api_otlp_nroutes = sizeof api_otlp_routes / sizeof api_otlp_routes[0];

enum { R_ACCEPTED, R_DUPLICATE, R_REJECTED, R_DROPPED, R_UNLINKED, R_FAILED, R_PART, R_N };

typedef struct otlp_job {
    struct otlp_job *next; /* in the decoder's queue of bodies to decode, then of those decoded */
    api *a;
    http_request *req;
    otlp_signal sig;
    bool json, gzip;
    int status;            /* the request refused whole: 400, 413 */
    char err[512];
    otlp_mapped m;
    ingest_batch tb, fb;
    bool have_tb, have_fb;
    size_t rejected;       /* items rejected: the decoder's, the mapping's and ingest's */
    char error[600];       /* the first reason, for partial_success */
    bool store_failed;
    uint64_t decode_ns;
    /* otlp.prompt_rule over the spans no attribute linked (m.deferred) */
    json_t *answers;
    size_t asked;
    loaded_evaluator *rule;
    char *rule_name;       /* the config's, copied: a reload may change it while the rule runs */
    /* the parts waiting under the ids of the request's parts and unlinked
     * records' traces (otlp_map_join), read in the thread pool */
    uv_work_t read;
    char **ids, **bodies;
    size_t nids;
    int read_rc;
    char read_err[256];
    bool join_read, parsed;
    /* after the commit: traces formed from a part that holds both halves
     * (settle_pairs) */
    ingest_batch sb;
    bool have_sb;
} otlp_job;

/* ---- answers ---- */

/* gRPC's code for an HTTP status, for google.rpc.Status. */
static int grpc_code(int status)
{
    switch (status) {
    case 400: return 3;  /* INVALID_ARGUMENT */
    case 401: return 16; /* UNAUTHENTICATED */
    case 403: return 7;  /* PERMISSION_DENIED */
    case 404: return 5;  /* NOT_FOUND */
    case 413: return 11; /* OUT_OF_RANGE */
    case 405: return 12; /* UNIMPLEMENTED */
    case 408: return 4;  /* DEADLINE_EXCEEDED */
    case 415: return 3;
    case 429: return 8;  /* RESOURCE_EXHAUSTED */
    case 431: return 11;
    case 505: return 12;
    default: return 14;  /* UNAVAILABLE */
    }
}

/* A failure in the request's own encoding (a google.rpc.Status), with
 * Retry-After on the retryable 429 and 503 unless extra names headers. */
static void respond_status(http_request *req, bool json, int status, const char *msg, const char *extra)
{
    if (!extra && (status == 429 || status == 503))
        extra = "Retry-After: 1\r\n";
    if (json) {
        json_t *o = json_pack("{s:i,s:s}", "code", grpc_code(status), "message", msg);
        char *text = o ? jtree_dump(o) : xstrdup("{\"code\":13,\"message\":\"the error could not be written\"}");
        http_respond(req, status, "application/json", extra, text, strlen(text));
        free(text);
        json_decref(o);
        return;
    }
    Otlp__RpcStatus st = OTLP__RPC_STATUS__INIT;
    st.code = grpc_code(status);
    st.message = (char *)msg;
    size_t n = otlp__rpc_status__get_packed_size(&st);
    uint8_t *out = xmalloc(n + 1);
    otlp__rpc_status__pack(&st, out);
    http_respond(req, status, "application/x-protobuf", extra, (const char *)out, n);
    free(out);
}

static void respond_failure(http_request *req, bool json, int status, const char *msg)
{
    respond_status(req, json, status, msg, NULL);
}

static int content_kind(const char *ct);

void api_otlp_error(http_request *req, int status, const char *message, const char *extra_headers)
{
    /* protobuf when the request said protobuf; JSON otherwise (a JSON
     * request, or one whose content type is unknown or not read yet) */
    bool json = content_kind(http_header_get(req, "content-type")) != 1;
    respond_status(req, json, status, message, extra_headers);
}

static void respond_success(otlp_job *job)
{
    const char *count_name = job->sig == OTLP_TRACES ? "rejectedSpans" : "rejectedLogRecords";
    if (job->json) {
        json_t *o = json_object();
        if (job->rejected) {
            char n[32];
            snprintf(n, sizeof n, "%zu", job->rejected);
            json_object_set_new(o, "partialSuccess", json_pack("{s:s,s:s}", count_name, n, "errorMessage", job->error));
        }
        char *text = jtree_dump(o);
        http_respond(job->req, 200, "application/json", NULL, text, strlen(text));
        free(text);
        json_decref(o);
        return;
    }
    uint8_t *out;
    size_t n;
    if (job->sig == OTLP_TRACES) {
        Otlp__ExportTraceServiceResponse r = OTLP__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
        Otlp__ExportTracePartialSuccess ps = OTLP__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
        if (job->rejected) {
            ps.rejected_spans = (int64_t)job->rejected;
            ps.error_message = job->error;
            r.partial_success = &ps;
        }
        n = otlp__export_trace_service_response__get_packed_size(&r);
        out = xmalloc(n + 1);
        otlp__export_trace_service_response__pack(&r, out);
    } else {
        Otlp__ExportLogsServiceResponse r = OTLP__EXPORT_LOGS_SERVICE_RESPONSE__INIT;
        Otlp__ExportLogsPartialSuccess ps = OTLP__EXPORT_LOGS_PARTIAL_SUCCESS__INIT;
        if (job->rejected) {
            ps.rejected_log_records = (int64_t)job->rejected;
            ps.error_message = job->error;
            r.partial_success = &ps;
        }
        n = otlp__export_logs_service_response__get_packed_size(&r);
        out = xmalloc(n + 1);
        otlp__export_logs_service_response__pack(&r, out);
    }
    http_respond(job->req, 200, "application/x-protobuf", NULL, (const char *)out, n);
    free(out);
}

static void free_ids(otlp_job *job)
{
    for (size_t i = 0; i < job->nids; i++) {
        free(job->ids[i]);
        free(job->bodies ? job->bodies[i] : NULL);
    }
    free(job->ids);
    free(job->bodies);
    job->ids = job->bodies = NULL;
    job->nids = 0;
}

static void job_free(otlp_job *job)
{
    free_ids(job);
    otlp_mapped_free(&job->m);
    if (job->have_tb)
        ingest_batch_free(&job->tb);
    if (job->have_fb)
        ingest_batch_free(&job->fb);
    if (job->have_sb)
        ingest_batch_free(&job->sb);
    json_decref(job->answers);
    free(job->rule_name);
    free(job);
}

/* ---- decoding (on the loop, or on the receiver's threads for large bodies) ---- */

static void note_rejected(otlp_job *job, const char *fmt, const char *a, const char *b, const char *c)
{
    job->rejected++;
    if (!job->error[0])
        snprintf(job->error, sizeof job->error, fmt, a, b, c);
}

/* Ingest's verdict on each mapped item: a rejected one counts against its span. */
static void count_ingest_rejections(otlp_job *job, const ingest_batch *b, json_t *items)
{
    for (size_t i = 0; i < b->nitems; i++) {
        const ingest_item *it = &b->items[i];
        if (it->write_index >= 0)
            continue;
        const char *id = json_string_value(json_object_get(json_array_get(items, i), "id"));
        if (!id)
            id = json_string_value(json_object_get(json_array_get(items, i), "trace_id"));
        note_rejected(job, "%s: %s %s", id ? id : "?", it->nerrors ? it->errors[0].path : "",
                      it->nerrors ? it->errors[0].message : "is invalid");
    }
}

/* The mapped items through ingest's validator, as trees: no text round trip. */
static int parse_items(otlp_job *job, ingest_kind kind, json_t *items, ingest_batch *b)
{
    const char *code;
    int rc = ingest_tree(kind, items, (size_t)job->a->cfg->limits.max_batch_items, now_ms(), b, &code, job->err,
                         sizeof job->err);
    if (rc) {
        job->status = rc;
        return -1;
    }
    count_ingest_rejections(job, b, items);
    return 0;
}

static void parse_mapped(otlp_job *job);

/* CPU time of the calling thread, ns: decoding may run on several threads at once */
static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void decode_job(otlp_job *job)
{
    uint64_t t0 = thread_cpu_ns();
    http_request *req = job->req;
    char *inflated = NULL;
    const char *body = req->body.data ? req->body.data : "";
    size_t len = req->body.len;
    if (job->gzip) {
        int rc = otlp_inflate(body, len, (size_t)job->a->cfg->limits.max_body_bytes, &inflated, &len, job->err,
                              sizeof job->err);
        if (rc) {
            job->status = rc;
            return;
        }
        body = inflated;
    }
    otlp_map_opts opts = {.defer_unlinked = job->a->cfg->otlp.prompt_rule != NULL};
    if (job->sig == OTLP_TRACES && !job->json) {
        /* protobuf spans: their attributes read in place, no plain spans */
        int rc = otlp_map_pb_spans(body, len, &opts, &job->m, job->err, sizeof job->err);
        free(inflated);
        if (rc) {
            job->status = 400;
            return;
        }
    } else {
        json_t *items = otlp_decode(job->sig, job->json, body, len, job->err, sizeof job->err);
        free(inflated);
        if (!items) {
            job->status = 400;
            return;
        }
        if (job->sig == OTLP_TRACES)
            otlp_map_spans(items, &opts, &job->m);
        else
            otlp_map_logs(items, &opts, &job->m);
        json_decref(items);
    }
    job->decode_ns = thread_cpu_ns() - t0; /* added to the counters on the loop thread */
    /* what needs the rule or the store's waiting parts goes on from the loop */
    if (!json_array_size(job->m.deferred) && !json_array_size(job->m.orphans) && !json_array_size(job->m.parts))
        parse_mapped(job);
}

/* The mapped traces and feedback through ingest's validation. */
static void parse_mapped(otlp_job *job)
{
    job->parsed = true;
    job->rejected = job->m.rejected;
    snprintf(job->error, sizeof job->error, "%s", job->m.error);
    if (json_array_size(job->m.traces)) {
        job->have_tb = true;
        if (parse_items(job, INGEST_TRACES, job->m.traces, &job->tb) != 0)
            return;
    }
    if (job->sig == OTLP_LOGS)
        for (size_t i = 0; i < job->tb.write.ntraces; i++)
            job->tb.write.traces[i].join_part = true; /* the span may have come first */
    /* traces a span formed with its records' waiting part (the last m.joined
     * items): that part is merged into them and deleted */
    for (size_t i = job->tb.nitems - (job->m.joined < job->tb.nitems ? job->m.joined : job->tb.nitems); i < job->tb.nitems; i++)
        if (job->tb.items[i].write_index >= 0)
            job->tb.write.traces[job->tb.items[i].write_index].join_part = true;
    size_t nparts = json_array_size(job->m.parts);
    if (nparts) {
        /* the spans' parts go with the traces' write (or alone) */
        store_write *w = &job->tb.write;
        job->have_tb = true;
        w->parts = xcalloc(nparts, sizeof *w->parts);
        size_t i;
        json_t *p;
        json_array_foreach(job->m.parts, i, p) {
            w->parts[i].id = xstrdup(json_string_value(json_object_get(p, "id")));
            w->parts[i].json = jtree_dump(json_object_get(p, "part"));
            w->parts[i].json_len = strlen(w->parts[i].json);
            w->parts[i].waits_only = json_is_true(json_object_get(p, "waits")); /* records waiting for their span */
        }
        w->nparts = nparts;
    }
    if (json_array_size(job->m.feedback)) {
        job->have_fb = true;
        parse_items(job, INGEST_FEEDBACK, job->m.feedback, &job->fb);
    }
    /* the store rows hold all that is needed now: free the trees here (in
     * the thread that built them) rather than after the commit */
    json_array_clear(job->m.traces);
    json_array_clear(job->m.feedback);
    json_array_clear(job->m.parts);
}

/* ---- the store ---- */

static void finish(otlp_job *job)
{
    uint64_t *n = job->a->otlp_n[job->sig].items;
    n[R_REJECTED] += job->rejected;
    n[R_DROPPED] += job->m.dropped;
    n[R_UNLINKED] += job->m.unlinked;
    if (job->store_failed) {
        job->a->otlp_n[job->sig].refused++;
        respond_failure(job->req, job->json, 503, "the store could not commit the batch; nothing of it is acknowledged, retry later");
    } else {
        respond_success(job);
    }
    job_free(job);
}

static void count_results(otlp_job *job, const store_write *w)
{
    uint64_t *n = job->a->otlp_n[job->sig].items;
    for (size_t i = 0; i < w->ntraces; i++)
        n[w->status ? R_FAILED : w->trace_results[i] == STORE_ACCEPTED ? R_ACCEPTED
                               : w->trace_results[i] == STORE_DUPLICATE ? R_DUPLICATE : R_FAILED]++;
    for (size_t i = 0; i < w->nparts; i++)
        n[w->status ? R_FAILED : w->part_results[i] == STORE_PART_DUPLICATE ? R_DUPLICATE : R_PART]++;
    for (size_t i = 0; i < w->nfeedback; i++) {
        unsigned char r = w->feedback_results[i];
        if (w->status || r == STORE_FAILED)
            n[R_FAILED]++;
        else if (r == STORE_NOT_FOUND)
            note_rejected(job, "%s%s%s", "gen_ai.evaluation.result names a span ratchet has no trace of (",
                          w->feedback[i].trace_id ? w->feedback[i].trace_id : "?", ")");
        else
            n[r == STORE_ACCEPTED ? R_ACCEPTED : R_DUPLICATE]++;
    }
    if (w->status)
        job->store_failed = true;
}

static void submit_feedback(otlp_job *job);
static void submit_job(otlp_job *job);

static bool settle_pairs(otlp_job *job);

static void on_committed(store_write *w)
{
    otlp_job *job = w->data;
    api_ingest_committed(job->a, w);
    count_results(job, w);
    if (w == &job->tb.write && !job->store_failed) {
        if (!settle_pairs(job))
            submit_feedback(job);
        return;
    }
    finish(job);
}

/* ---- after the commit: two halves that missed each other ---- */

/* A span naming the prompt and its log records naming none, sent in two
 * requests at once, may each read the store's waiting parts (join_read)
 * before the other commits: both then wait, merged into one part that
 * holds the records' trace (its output) and the span's prompt, and nothing
 * forms the trace. So after its commit a request reads again the parts it
 * left waiting. Of two such requests at least one reads after both
 * commits, and forms the trace from a part holding both halves; when both
 * do, the second insert is a duplicate. The request's own items are on disk
 * already: a failure here is logged, the part keeps waiting as before, and
 * the answer is still the request's. */
static void on_settled(store_write *w)
{
    otlp_job *job = w->data;
    api_ingest_committed(job->a, w);
    uint64_t *n = job->a->otlp_n[job->sig].items;
    for (size_t i = 0; i < w->ntraces; i++)
        if (w->status)
            log_warn("otlp", "trace %s: its span and log records wait as one part; storing the trace they form failed "
                     "(store error %d); the part keeps waiting", w->traces[i].id, w->status);
        else
            n[w->trace_results[i] == STORE_ACCEPTED ? R_ACCEPTED : R_DUPLICATE]++;
    submit_feedback(job);
}

static void settle_read_done(uv_work_t *req, int status)
{
    otlp_job *job = req->data;
    if (status != 0 || job->read_rc != 0) {
        log_warn("otlp", "reading back the parts a request left waiting failed (%s); they keep waiting",
                 status ? uv_strerror(status) : job->read_err);
        free_ids(job);
        submit_feedback(job);
        return;
    }
    json_t *formed = json_array();
    for (size_t i = 0; i < job->nids; i++) {
        json_t *p = job->bodies[i] ? json_loads(job->bodies[i], 0, NULL) : NULL;
        /* an output comes only from the records' trace, a prompt only from the span's part */
        if (json_is_object(p) && json_object_get(p, "output") && json_is_object(json_object_get(p, "prompt"))) {
            json_object_set_new(p, "id", json_string(job->ids[i]));
            json_array_append(formed, p);
        }
        json_decref(p);
    }
    free_ids(job);
    const char *code;
    char err[256];
    if (!json_array_size(formed) ||
        ingest_tree(INGEST_TRACES, formed, SIZE_MAX, now_ms(), &job->sb, &code, err, sizeof err) != 0) {
        json_decref(formed);
        submit_feedback(job);
        return;
    }
    job->have_sb = true;
    for (size_t i = 0; i < job->sb.nitems; i++)
        if (job->sb.items[i].write_index < 0)
            log_warn("otlp", "trace %s: its span and log records wait as one part that is not a valid trace (%s %s)",
                     json_string_value(json_object_get(json_array_get(formed, i), "id")),
                     job->sb.items[i].nerrors ? job->sb.items[i].errors[0].path : "",
                     job->sb.items[i].nerrors ? job->sb.items[i].errors[0].message : "");
    json_decref(formed);
    store_write *w = &job->sb.write;
    for (size_t i = 0; i < w->ntraces; i++)
        w->traces[i].join_part = true; /* the waiting part merged in and deleted */
    w->done = on_settled;
    w->data = job;
    if (!w->ntraces || store_submit(job->a->store, w) != 0)
        submit_feedback(job); /* nothing to store, or the queue is full: the part keeps waiting */
}

static void join_read_work(uv_work_t *w);

/* Reads back the parts this request left waiting; false when there are none. */
static bool settle_pairs(otlp_job *job)
{
    const store_write *w = &job->tb.write;
    size_t n = 0;
    for (size_t i = 0; i < w->nparts; i++)
        n += w->part_results[i] == STORE_PART_WAITING;
    if (!n)
        return false;
    free_ids(job);
    job->ids = xcalloc(n, sizeof *job->ids);
    job->bodies = xcalloc(n, sizeof *job->bodies);
    for (size_t i = 0; i < w->nparts; i++)
        if (w->part_results[i] == STORE_PART_WAITING)
            job->ids[job->nids++] = xstrdup(w->parts[i].id);
    job->read.data = job;
    uv_queue_work(job->a->loop, &job->read, join_read_work, settle_read_done); /* the same read as the join's */
    return true;
}

static bool submit(otlp_job *job, store_write *w)
{
    w->done = on_committed;
    w->data = job;
    if (store_submit(job->a->store, w) == 0)
        return true;
    job->a->otlp_n[job->sig].refused++;
    /* OTLP/HTTP's throttling answers: 429 for more than the engine takes
     * now (the exporter backs off and retries), 503 for an engine going away */
    if (job->a->draining)
        respond_failure(job->req, job->json, 503,
                        "the engine is shutting down; this batch is not acknowledged, retry later");
    else
        respond_failure(job->req, job->json, 429,
                        "the store's write queue is full; this batch is not acknowledged, retry after the Retry-After delay");
    job_free(job);
    return false;
}

static void submit_feedback(otlp_job *job)
{
    if (job->have_fb && job->fb.write.nfeedback) {
        submit(job, &job->fb.write);
        return;
    }
    finish(job);
}

static void ask_rule(otlp_job *job);

static void on_rule(const char *result, const char *error, void *ud)
{
    otlp_job *job = ud;
    catalog_release(job->rule);
    job->rule = NULL;
    json_t *r = result ? json_loads(result, JSON_DECODE_ANY, NULL) : NULL;
    json_t *name = json_object_get(r, "name"), *version = json_object_get(r, "version");
    char why[700];
    if (error) {
        json_array_append_new(job->answers, json_string(error));
    } else if (!r || json_is_false(r)) {
        json_array_append_new(job->answers, json_null());
    } else if (!json_is_object(r) || !json_is_string(name) || (version && !json_is_integer(version))) {
        snprintf(why, sizeof why, "%s.prompt(span) must return false or { name = \"...\", version = n } (got %.200s)",
                 job->rule_name, result);
        json_array_append_new(job->answers, json_string(why));
    } else {
        json_array_append_new(job->answers, version ? json_pack("{s:O,s:O}", "name", name, "version", version)
                                                    : json_pack("{s:O}", "name", name));
    }
    json_decref(r);
    job->asked++;
    ask_rule(job);
}

/* Asks the rule about the deferred spans one after another; then maps them
 * and goes on to the store. */
static void ask_rule(otlp_job *job)
{
    const char *rule = job->rule_name;
    while (job->asked < json_array_size(job->m.deferred)) {
        char name[200];
        snprintf(name, sizeof name, "policies/%s", rule);
        job->rule = job->a->catalog ? catalog_get(job->a->catalog, name) : NULL;
        if (!job->rule) {
            char why[300];
            snprintf(why, sizeof why, "the policy %s.lua is not loaded", name);
            json_array_append_new(job->answers, json_string(why));
            job->asked++;
            continue;
        }
        char *span = jtree_dump(json_object_get(json_array_get(job->m.deferred, job->asked), "span"));
        policy_call(catalog_vm(job->a->catalog), job->rule->ev.ref, rule, "prompt", job->a->cfg->scripts.policy_budget_ms,
                    span, on_rule, job);
        free(span);
        return;
    }
    otlp_map_deferred(&job->m, job->answers);
    submit_job(job);
}

/* ---- the parts waiting in the store (otlp_map_join) ---- */

static void join_read_work(uv_work_t *w)
{
    otlp_job *job = w->data;
    job->read_rc = store_get_trace_parts(job->a->store, job->ids, job->nids, job->bodies, job->read_err,
                                         sizeof job->read_err);
}

static void join_read_done(uv_work_t *w, int status)
{
    otlp_job *job = w->data;
    json_t *waiting = json_object();
    if (status != 0 || job->read_rc != 0) {
        job->status = 503;
        snprintf(job->err, sizeof job->err, "the store could not be read (%s); nothing of this batch is acknowledged, "
                 "retry later", status ? uv_strerror(status) : job->read_err);
    } else {
        for (size_t i = 0; i < job->nids; i++) {
            json_t *p = job->bodies[i] ? json_loads(job->bodies[i], 0, NULL) : NULL;
            if (json_is_object(p))
                json_object_set_new(waiting, job->ids[i], p);
            else
                json_decref(p);
        }
        otlp_map_join(&job->m, waiting);
    }
    json_decref(waiting);
    free_ids(job);
    job->join_read = true;
    submit_job(job);
}

static void start_join_read(otlp_job *job)
{
    json_t *ids = otlp_map_join_ids(&job->m);
    job->nids = json_array_size(ids);
    job->ids = xcalloc(job->nids ? job->nids : 1, sizeof *job->ids);
    job->bodies = xcalloc(job->nids ? job->nids : 1, sizeof *job->bodies);
    for (size_t i = 0; i < job->nids; i++)
        job->ids[i] = xstrdup(json_string_value(json_array_get(ids, i)));
    json_decref(ids);
    job->read.data = job;
    uv_queue_work(job->a->loop, &job->read, join_read_work, join_read_done);
}

static void submit_job(otlp_job *job)
{
    job->a->otlp_n[job->sig].decode_seconds += (double)job->decode_ns / 1e9;
    job->decode_ns = 0;
    if (!job->status && json_array_size(job->m.deferred)) {
        const char *rule = job->a->cfg->otlp.prompt_rule;
        job->rule_name = xstrdup(rule ? rule : "(otlp.prompt_rule removed by a reload)");
        job->answers = json_array();
        ask_rule(job);
        return;
    }
    if (!job->status && !job->parsed) {
        if (!job->join_read && (json_array_size(job->m.orphans) || json_array_size(job->m.parts))) {
            start_join_read(job);
            return;
        }
        parse_mapped(job);
    }
    if (job->status) {
        job->a->otlp_n[job->sig].refused++;
        respond_failure(job->req, job->json, job->status, job->err);
        job_free(job);
        return;
    }
    if (job->have_tb && (job->tb.write.ntraces || job->tb.write.nparts)) {
        submit(job, &job->tb.write);
        return;
    }
    submit_feedback(job);
}

/* ---- the receiver's decoding threads ---- */

/* Large bodies (and gzip ones) are decoded off the loop, on threads of the
 * receiver's own, one per core the engine may run on
 * (uv_available_parallelism follows the CPU affinity): more at once on the
 * same cores only multiplies the trees in memory without decoding any
 * faster. Bodies wait their turn in arrival order. Not libuv's pool: a
 * request landing on any of its 4 threads left each thread's allocator
 * heap holding the pages of its last request (peak RSS 46-48 MB against 32
 * with one thread, bench/RESULTS.md); the same few threads here keep it to
 * theirs. The loop hears of a decoded body through one uv_async. */
typedef struct otlp_decoder {
    api *a;
    uv_mutex_t mu;
    uv_cond_t cv;
    uv_thread_t *threads;
    unsigned nthreads;
    otlp_job *todo_head, *todo_tail; /* to decode, in arrival order */
    otlp_job *done_head, *done_tail; /* decoded, for the loop */
    bool stopping;
    uv_async_t async;
} otlp_decoder;

static void push_job(otlp_job **head, otlp_job **tail, otlp_job *job)
{
    job->next = NULL;
    if (*tail)
        (*tail)->next = job;
    else
        *head = job;
    *tail = job;
}

static void decoder_thread(void *arg)
{
    otlp_decoder *d = arg;
    uv_mutex_lock(&d->mu);
    for (;;) {
        while (!d->todo_head && !d->stopping)
            uv_cond_wait(&d->cv, &d->mu);
        otlp_job *job = d->todo_head;
        if (!job) /* stopping, with nothing left to decode */
            break;
        d->todo_head = job->next;
        if (!d->todo_head)
            d->todo_tail = NULL;
        uv_mutex_unlock(&d->mu);
        decode_job(job);
        uv_mutex_lock(&d->mu);
        push_job(&d->done_head, &d->done_tail, job);
        uv_async_send(&d->async);
    }
    uv_mutex_unlock(&d->mu);
}

/* On the loop: the decoded bodies go on to the store. */
static void on_decoded(uv_async_t *h)
{
    otlp_decoder *d = h->data;
    uv_mutex_lock(&d->mu);
    otlp_job *job = d->done_head;
    d->done_head = d->done_tail = NULL;
    uv_mutex_unlock(&d->mu);
    while (job) {
        otlp_job *next = job->next;
        submit_job(job);
        job = next;
    }
}

static void free_decoder(uv_handle_t *h)
{
    otlp_decoder *d = h->data;
    uv_cond_destroy(&d->cv);
    uv_mutex_destroy(&d->mu);
    free(d->threads);
    free(d);
}

/* As xmalloc on no memory: the engine cannot go on without them. */
static void setup_failed(const char *what)
{
    log_error("otlp", "%s", what);
    abort();
}

static otlp_decoder *decoder_of(api *a)
{
    if (a->otlp_decoder)
        return a->otlp_decoder;
    otlp_decoder *d = xcalloc(1, sizeof *d);
    d->a = a;
    if (uv_mutex_init(&d->mu) || uv_cond_init(&d->cv) || uv_async_init(a->loop, &d->async, on_decoded))
        setup_failed("cannot set up the decoding threads' queue");
    d->async.data = d;
    unsigned n = uv_available_parallelism();
    d->threads = xcalloc(n, sizeof *d->threads);
    for (; d->nthreads < n; d->nthreads++)
        if (uv_thread_create(&d->threads[d->nthreads], decoder_thread, d) != 0) {
            if (d->nthreads == 0)
                setup_failed("cannot start a decoding thread");
            break; /* fewer threads: still correct */
        }
    a->otlp_decoder = d;
    return d;
}

static void start_decode(api *a, otlp_job *job)
{
    otlp_decoder *d = decoder_of(a);
    uv_mutex_lock(&d->mu);
    push_job(&d->todo_head, &d->todo_tail, job);
    uv_cond_signal(&d->cv);
    uv_mutex_unlock(&d->mu);
}

void api_otlp_stop(api *a)
{
    otlp_decoder *d = a->otlp_decoder;
    if (!d)
        return;
    uv_mutex_lock(&d->mu);
    d->stopping = true;
    uv_cond_broadcast(&d->cv);
    uv_mutex_unlock(&d->mu);
    for (unsigned i = 0; i < d->nthreads; i++)
        uv_thread_join(&d->threads[i]);
    on_decoded(&d->async); /* what they decoded last: answered before the store closes */
    a->otlp_decoder = NULL;
    uv_close((uv_handle_t *)&d->async, free_decoder);
}

/* ---- the endpoints ---- */

/* 1: protobuf, 2: JSON, 0: neither. */
static int content_kind(const char *ct)
{
    if (!ct)
        return 0;
    size_t n = strcspn(ct, "; \t");
    if (n == 22 && !strncasecmp(ct, "application/x-protobuf", n))
        return 1;
    if (n == 16 && !strncasecmp(ct, "application/json", n))
        return 2;
    return 0;
}

/* 0 identity, 1 gzip, -1 other. */
static int encoding_kind(const char *ce)
{
    if (!ce)
        return 0;
    ce += strspn(ce, " \t");
    size_t n = strcspn(ce, " \t");
    if (n == 0 || (n == 8 && !strncasecmp(ce, "identity", 8)))
        return 0;
    if (n == 4 && !strncasecmp(ce, "gzip", 4) && ce[n + strspn(ce + n, " \t")] == '\0')
        return 1;
    return -1;
}

static void receive(api *a, http_request *req, otlp_signal sig)
{
    a->otlp_n[sig].requests++;
    a->otlp_n[sig].bytes += req->body.len;
    int kind = content_kind(http_header_get(req, "content-type"));
    if (!kind) {
        a->otlp_n[sig].refused++;
        http_respond_field_error(req, 415, "unsupported_media_type", "content-type",
                                 "send application/x-protobuf or application/json (OTLP/HTTP)");
        return;
    }
    int enc = encoding_kind(http_header_get(req, "content-encoding"));
    if (enc < 0) {
        a->otlp_n[sig].refused++;
        respond_failure(req, kind == 2, 415, "Content-Encoding must be gzip or identity");
        return;
    }
    otlp_job *job = xcalloc(1, sizeof *job);
    job->a = a;
    job->req = req;
    job->sig = sig;
    job->json = kind == 2;
    job->gzip = enc == 1;
    if (req->body.len <= INLINE_DECODE_MAX && !job->gzip) {
        decode_job(job);
        submit_job(job);
    } else {
        start_decode(a, job);
    }
}

static void otlp_traces(const api_call *c)
{
    receive(c->a, c->req, OTLP_TRACES);
}

static void otlp_logs(const api_call *c)
{
    receive(c->a, c->req, OTLP_LOGS);
}

void api_otlp_handle(http_request *req, void *ctx)
{
    api_call c = {.a = ctx, .req = req};
    bool path_known = false;
    for (size_t i = 0; i < api_otlp_nroutes; i++) {
        if (strcmp(api_otlp_routes[i].pattern, req->path))
            continue;
        path_known = true;
        if (!strcmp(api_otlp_routes[i].method, req->method))
            c.route = &api_otlp_routes[i];
    }
    if (!c.route && path_known) {
        http_respond_error_headers(req, 405, "method_not_allowed", "Allow: POST\r\n",
                                   "%s is not allowed here; use POST", req->method);
        return;
    }
    if (!c.route) {
        http_respond_error(req, 404, "not_found",
                           "no endpoint at %s: the OTLP listener takes POST /v1/traces and POST /v1/logs", req->path);
        return;
    }
    if (!api_authorize(c.a, req, c.route->scope))
        return;
    c.route->handler(&c);
}

void api_otlp_metrics(api *a, buf_t *b)
{
    static const char *const sig[] = {"traces", "logs"};
    static const char *const res[R_N] = {"accepted", "duplicate", "rejected", "dropped", "unlinked", "failed", "part"};
    metrics_family(b, "ratchet_otlp_requests_total", "counter", "Authorized requests to the OTLP listener.");
    for (int k = 0; k < 2; k++)
        metrics_sample(b, "ratchet_otlp_requests_total", (double)a->otlp_n[k].requests, "signal", sig[k], NULL);
    metrics_family(b, "ratchet_otlp_refused_requests_total", "counter",
                   "OTLP requests refused whole (undecodable, too large, wrong content type, store queue full).");
    for (int k = 0; k < 2; k++)
        metrics_sample(b, "ratchet_otlp_refused_requests_total", (double)a->otlp_n[k].refused, "signal", sig[k], NULL);
    metrics_family(b, "ratchet_otlp_received_bytes_total", "counter", "Bytes of OTLP request bodies, as sent.");
    for (int k = 0; k < 2; k++)
        metrics_sample(b, "ratchet_otlp_received_bytes_total", (double)a->otlp_n[k].bytes, "signal", sig[k], NULL);
    metrics_family(b, "ratchet_otlp_items_total", "counter",
                   "Spans and log-record groups, by result: accepted (stored as traces or feedback), duplicate (already "
                   "stored), rejected (invalid, answered in partial_success), dropped (not an LLM call, or one whose content is not there to score; not rejected), "
                   "unlinked (an LLM call linked to no prompt; counted in rejected too), failed (the commit failed), "
                   "part (an LLM call's span without its content: its model, usage and latency stored to join the trace its log records form).");
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < R_N; r++)
            metrics_sample(b, "ratchet_otlp_items_total", (double)a->otlp_n[k].items[r], "signal", sig[k], "result",
                           res[r], NULL);
    metrics_family(b, "ratchet_otlp_decode_seconds_total", "counter", "CPU time spent decoding and mapping OTLP bodies.");
    for (int k = 0; k < 2; k++)
        metrics_sample(b, "ratchet_otlp_decode_seconds_total", a->otlp_n[k].decode_seconds, "signal", sig[k], NULL);
}
