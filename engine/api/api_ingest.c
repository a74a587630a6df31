/* api_ingest.c — the traces endpoints: POST /v1/traces and /v1/feedback
 * (the body parsed by ingest.c, on the loop or in the thread pool by size,
 * then the store's group commit; answered after the commit) and the reads
 * GET /v1/traces and GET /v1/traces/{id} in the thread pool. */
#include "api/api_ingest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_request.h"
#include "api/ingest.h"
#include "base/log.h"

/* Bodies up to this size are parsed on the loop thread (a few µs); larger ones
 * in the thread pool so a multi-megabyte batch never stalls other clients. */
#define INLINE_PARSE_MAX (64 * 1024)

/* ---- ingest ---- */

typedef struct {
    uv_work_t work;
    api *a;
    http_request *req;
    ingest_kind kind;
    bool ndjson;
    int status;           /* from ingest_parse: 0 or an HTTP error */
    const char *err_code;
    char err[512];
    ingest_batch batch;
} ingest_job;

static void ingest_job_free(ingest_job *job)
{
    ingest_batch_free(&job->batch);
    free(job);
}

static void respond_results(ingest_job *job)
{
    ingest_batch *b = &job->batch;
    uint64_t *items = job->a->ingest_n[job->kind].items;
    for (size_t i = 0; i < b->nitems; i++) {
        int wi = b->items[i].write_index;
        if (wi < 0) {
            items[2]++;
            continue;
        }
        unsigned char r = b->kind == INGEST_TRACES ? b->write.trace_results[wi] : b->write.feedback_results[wi];
        items[r == STORE_ACCEPTED ? 0 : r == STORE_DUPLICATE ? 1 : r == STORE_NOT_FOUND ? 3 : 4]++;
    }
    int status;
    char *text = ingest_results_json(&job->batch, &status, job->req->id);
    http_respond(job->req, status, "application/json", status == 503 ? "Retry-After: 1\r\n" : NULL, text,
                 strlen(text));
    free(text);
    ingest_job_free(job);
}

void api_ingest_committed(api *a, const store_write *w)
{
    if (a->online && w->status == 0)
        for (size_t i = 0; i < w->ntraces; i++)
            if (w->trace_results[i] == STORE_ACCEPTED) {
                online_enqueue(a->online, w->traces[i].id, w->traces[i].prompt);
                if (a->loop_sm)
                    loop_note_traces(a->loop_sm, w->traces[i].prompt, 1);
            }
    if (a->online && w->status == 0)
        for (size_t i = 0; i < w->nfeedback; i++)
            if (w->feedback_results[i] == STORE_ACCEPTED && w->feedback[i].trace_prompt)
                online_feedback(a->online, w->feedback[i].trace_prompt, w->feedback[i].trace_version,
                                w->feedback[i].negative);
}

static void on_ingest_committed(store_write *w)
{
    ingest_job *job = w->data;
    api_ingest_committed(job->a, w);
    respond_results(job);
}

static void ingest_submit(ingest_job *job)
{
    if (job->status) {
        job->a->ingest_n[job->kind].refused++;
        http_respond_error(job->req, job->status, job->err_code, "%s", job->err);
        ingest_job_free(job);
        return;
    }
    if (job->batch.write.ntraces == 0 && job->batch.write.nfeedback == 0) {
        respond_results(job); /* every item was rejected: nothing to store */
        return;
    }
    job->batch.write.done = on_ingest_committed;
    job->batch.write.data = job;
    if (store_submit(job->a->store, &job->batch.write) != 0) {
        job->a->ingest_n[job->kind].refused++;
        http_respond_error(job->req, 503, "overloaded",
                           "the store's write queue is full or shutting down; nothing was stored, retry later");
        ingest_job_free(job);
    }
}

static void ingest_parse_job(ingest_job *job)
{
    http_request *req = job->req;
    job->status = ingest_parse(job->kind, req->body.data, req->body.len, job->ndjson,
                               (size_t)job->a->cfg->limits.max_batch_items, now_ms(), &job->batch, &job->err_code,
                               job->err, sizeof job->err);
}

static void ingest_work(uv_work_t *w)
{
    ingest_parse_job(w->data);
}

static void ingest_after_work(uv_work_t *w, int status)
{
    (void)status;
    ingest_submit(w->data);
}

/* 0: JSON (or no Content-Type: detected from the body), 1: NDJSON, -1: other. */
static int body_format(const char *ct)
{
    static const char *const ndjson[] = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                                         "application/x-jsonl", "application/jsonlines", NULL};
    if (!ct)
        return 0;
    size_t n = strcspn(ct, "; \t");
    if (n == 16 && strncasecmp(ct, "application/json", n) == 0)
        return 0;
    for (const char *const *t = ndjson; *t; t++)
        if (strlen(*t) == n && strncasecmp(ct, *t, n) == 0)
            return 1;
    return -1;
}

/* The token was checked by the dispatcher; what an authorized request
 * brings is counted, refusals too (so the route checks the encoding itself). */
static void ingest(api *a, http_request *req, ingest_kind kind)
{
    a->ingest_n[kind].requests++;
    a->ingest_n[kind].bytes += req->body.len;
    if (!api_body_encoding_ok(req)) {
        a->ingest_n[kind].refused++;
        return;
    }
    int format = body_format(http_header_get(req, "content-type"));
    if (format < 0) {
        a->ingest_n[kind].refused++;
        http_respond_field_error(req, 415, "unsupported_media_type", "content-type",
                                 "send application/json (one object or an array) or application/x-ndjson");
        return;
    }
    if (req->body.len == 0) {
        a->ingest_n[kind].refused++;
        http_respond_error(req, 400, "empty_body", "the request has no body");
        return;
    }
    ingest_job *job = xcalloc(1, sizeof *job);
    job->a = a;
    job->req = req;
    job->kind = kind;
    job->ndjson = format == 1;
    job->work.data = job;
    if (req->body.len <= INLINE_PARSE_MAX) {
        ingest_parse_job(job);
        ingest_submit(job);
    } else {
        uv_queue_work(a->loop, &job->work, ingest_work, ingest_after_work);
    }
}

/* POST /v1/traces */
void api_ingest_traces(const api_call *c)
{
    ingest(c->a, c->req, INGEST_TRACES);
}

/* POST /v1/feedback */
void api_ingest_feedback(const api_call *c)
{
    ingest(c->a, c->req, INGEST_FEEDBACK);
}

/* ---- reads ---- */

static void get_trace_work(api_task *t)
{
    t->rc = store_get_trace_json(t->a->store, t->id, &t->out, t->err, sizeof t->err);
    if (t->rc == 1)
        snprintf(t->err, sizeof t->err, "no trace has id '%s'", t->id);
}

static void list_traces_work(api_task *t)
{
    t->rc = store_list_traces_json(t->a->store, &t->q, &t->out, t->err, sizeof t->err);
}

/* GET /v1/traces?prompt=&version=&since=&until=&limit=&cursor=&failed=&evaluator=&feedback=&q=&tag= */
void api_list_traces(const api_call *c)
{
    http_request *req = c->req;
    static const char *const known[] = {"prompt", "version", "since",    "until", "limit", "cursor",
                                        "failed", "evaluator", "feedback", "q",   "tag", NULL};
    if (!api_known_params(req, known))
        return;
    store_trace_query q = {.since_ms = 0, .until_ms = INT64_MAX, .limit = 100, .failed = -1};
    char failed[8];
    int fr = http_query_get(req, "failed", failed, sizeof failed);
    if (fr != 0) {
        if (fr > 0 && strcmp(failed, "true") == 0)
            q.failed = 1;
        else if (fr > 0 && strcmp(failed, "false") == 0)
            q.failed = 0;
        else {
            http_respond_field_error(req, 400, "invalid_parameter", "failed", "'failed' must be true or false");
            return;
        }
    }
    long long version = 0, limit = 100;
    if (!api_int_param(req, "version", 1, 2147483647, &version) ||
        !api_int_param(req, "limit", 1, 1000, &limit) || !api_time_param(req, "since", &q.since_ms) ||
        !api_time_param(req, "until", &q.until_ms))
        return;
    q.version = version;
    q.limit = (int)limit;
    char prompt[256], cursor[80];
    int pr = http_query_get(req, "prompt", prompt, sizeof prompt);
    if (pr < 0 || (pr > 0 && !prompt[0])) {
        http_respond_field_error(req, 400, "invalid_parameter", "prompt", "'prompt' must be a prompt name");
        return;
    }
    int cr = http_query_get(req, "cursor", cursor, sizeof cursor);
    if (cr != 0) {
        unsigned long long ts, seq;
        int used = 0;
        if (cr < 0 || sscanf(cursor, "%llx.%llx%n", &ts, &seq, &used) != 2 || cursor[used] != '\0') {
            http_respond_field_error(req, 400, "invalid_parameter", "cursor",
                                     "'cursor' must be a next_cursor value from an earlier page");
            return;
        }
        q.has_cursor = true;
        q.cursor_ts = (int64_t)ts;
        q.cursor_seq = (int64_t)seq;
    }
    char ev_name[256], feedback[16], text[256];
    int er = http_query_get(req, "evaluator", ev_name, sizeof ev_name);
    if (er < 0 || (er > 0 && !ev_name[0])) {
        http_respond_field_error(req, 400, "invalid_parameter", "evaluator",
                                 "'evaluator' must be the name an evaluator is attached under");
        return;
    }
    int fbr = http_query_get(req, "feedback", feedback, sizeof feedback);
    if (fbr != 0) {
        if (fbr > 0 && !strcmp(feedback, "negative"))
            q.feedback = 1;
        else if (fbr > 0 && !strcmp(feedback, "any"))
            q.feedback = 2;
        else {
            http_respond_field_error(req, 400, "invalid_parameter", "feedback", "'feedback' must be negative or any");
            return;
        }
    }
    int tr = http_query_get(req, "q", text, sizeof text);
    if (tr < 0 || (tr > 0 && !text[0])) {
        http_respond_field_error(req, 400, "invalid_parameter", "q", "'q' must be text of 1 to 255 bytes");
        return;
    }
    char tag[256];
    int gr = http_query_get(req, "tag", tag, sizeof tag);
    if (gr != 0 && !ingest_tag_ok(gr > 0 ? tag : NULL)) {
        http_respond_field_error(req, 400, "invalid_parameter", "tag",
                                 "'tag' must be a tag: 1 to %d bytes of letters, digits and - _ . : / =",
                                 INGEST_TAG_MAX_LEN);
        return;
    }
    api_task *t = api_task_new(c->a, req, list_traces_work);
    if (gr > 0) {
        t->j1 = json_string(tag);
        q.tag = json_string_value(t->j1);
    }
    if (pr > 0)
        t->name = xstrdup(prompt);
    if (er > 0)
        t->id = xstrdup(ev_name);
    if (tr > 0)
        t->text = xstrdup(text);
    q.prompt = t->name;
    q.evaluator = t->id;
    q.text = t->text;
    t->q = q;
    api_task_queue(t);
}

/* GET /v1/traces/{id} */
void api_get_trace(const api_call *c)
{
    const char *id = c->param[0];
    if (strlen(id) > 128) {
        http_respond_field_error(c->req, 400, "invalid_parameter", "id", "a trace id is 1 to 128 characters");
        return;
    }
    api_task *t = api_task_new(c->a, c->req, get_trace_work);
    t->id = xstrdup(id);
    api_task_queue(t);
}
