/* api_capture.c — the gateway's capture thread (api_capture.h): items
 * handed over by the loop wait in a bounded queue; the thread gathers them
 * for at most CAPTURE_WAIT_MS (or CAPTURE_BATCH of them), builds their
 * traces, runs ingest's checks on the batch (ingest_tree: the store row's
 * JSON text written there too) and hands the batch back through one
 * uv_async; the loop submits it to the group-commit writer (one transaction
 * per batch) and runs the items' follow-ups. */
#include "api/api_capture.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api_ingest.h"
#include "api/ingest.h"
#include "base/log.h"

/* A commit costs the writer some 400 µs of CPU whatever its size: gathered
 * for 20 ms, a single caller pays a few µs of it per call (bench/RESULTS.md,
 * gateway second pass). */
#define CAPTURE_BATCH 256
#define CAPTURE_WAIT_MS 20
/* handed over and not yet back on the loop: past either, items are dropped */
#define CAPTURE_HELD_MAX 4096
#define CAPTURE_HELD_BYTES_MAX ((size_t)64 << 20)

typedef struct capture_job capture_job;
struct capture_job {
    capture_job *next;
    api *a;
    api_capture_item *items; /* built; their follow-ups not yet run */
    size_t nitems, bytes;
    size_t ntraces;          /* traces built */
    int status;              /* ingest_tree's: 0 or an HTTP status */
    char err[512];
    ingest_batch batch;
};

struct api_capture {
    api *a;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_t thread;
    bool running;                      /* the thread started */
    bool stop, flush;
    api_capture_item *head, *tail;     /* waiting for the thread */
    size_t waiting;
    uint64_t first_ns;                 /* when the oldest waiting item came */
    size_t held, held_bytes;           /* handed over, not yet back on the loop */
    capture_job *done_head, *done_tail;
    uv_async_t *async;
};

/* ---- the capture thread ---- */

/* Builds the items' traces and checks them as one batch. */
static capture_job *job_build(api *a, api_capture_item *items)
{
    capture_job *job = xcalloc(1, sizeof *job);
    job->a = a;
    job->items = items;
    json_t *traces = json_array();
    for (api_capture_item *it = items; it; it = it->next) {
        job->nitems++;
        job->bytes += it->bytes;
        json_t *t = it->build(it);
        if (t)
            json_array_append_new(traces, t);
    }
    job->ntraces = json_array_size(traces);
    if (job->ntraces) {
        const char *code;
        job->status = ingest_tree(INGEST_TRACES, traces, job->ntraces, now_ms(), &job->batch, &code, job->err,
                                  sizeof job->err);
    }
    json_decref(traces);
    return job;
}

static void deadline_at(struct timespec *ts, uint64_t ns)
{
    ts->tv_sec = (time_t)(ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
}

static void *capture_main(void *arg)
{
    struct api_capture *q = arg;
    api *a = q->a;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->head && !q->stop)
            pthread_cond_wait(&q->wake, &q->mu);
        if (!q->head)
            break; /* stopping, nothing left */
        while (!q->stop && !q->flush && q->waiting < CAPTURE_BATCH) {
            uint64_t deadline = q->first_ns + (uint64_t)CAPTURE_WAIT_MS * 1000000u;
            if (mono_ns() >= deadline)
                break;
            struct timespec ts;
            deadline_at(&ts, deadline);
            pthread_cond_timedwait(&q->wake, &q->mu, &ts);
        }
        api_capture_item *batch = q->head, *last = q->head;
        size_t n = 1;
        while (n < CAPTURE_BATCH && last->next)
            last = last->next, n++;
        q->head = last->next;
        if (!q->head)
            q->tail = NULL, q->flush = false;
        last->next = NULL;
        q->waiting -= n;
        pthread_mutex_unlock(&q->mu);

        capture_job *job = job_build(a, batch);

        pthread_mutex_lock(&q->mu);
        if (q->done_tail)
            q->done_tail->next = job;
        else
            q->done_head = job;
        q->done_tail = job;
        uv_async_send(q->async);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* ---- back on the loop ---- */

static void on_capture_committed(store_write *w)
{
    capture_job *job = w->data;
    api *a = job->a;
    if (w->status == 0) {
        for (size_t i = 0; i < w->ntraces; i++)
            a->gateway_n.captured += w->trace_results[i] == STORE_ACCEPTED;
        api_ingest_committed(a, w); /* evaluated and seen by the loop as any ingested trace */
    } else {
        if (a->gateway_n.capture_failed % 1000 == 0)
            log_error("gateway", "captured traces were not stored: the commit failed (store status %d)", w->status);
        a->gateway_n.capture_failed += w->ntraces;
    }
    ingest_batch_free(&job->batch);
    free(job);
}

/* A built batch: its items' follow-ups, then its valid traces to the writer. */
static void job_deliver(api *a, capture_job *job)
{
    for (api_capture_item *it = job->items, *next; it; it = next) {
        next = it->next;
        it->done(a, it);
    }
    job->items = NULL;
    size_t bad = job->status ? job->ntraces : job->ntraces - job->batch.write.ntraces;
    if (bad) {
        if (a->gateway_n.capture_failed % 1000 == 0)
            log_error("gateway", "captured traces did not pass ingest's checks: %s",
                      job->status ? job->err
                      : job->batch.nitems && job->batch.items[0].nerrors ? job->batch.items[0].errors[0].message
                                                                         : "(see the item)");
        a->gateway_n.capture_failed += bad;
    }
    if (job->status || !job->batch.write.ntraces) {
        ingest_batch_free(&job->batch);
        free(job);
        return;
    }
    job->batch.write.done = on_capture_committed;
    job->batch.write.data = job;
    if (store_submit(a->store, &job->batch.write) != 0) {
        if (a->gateway_n.capture_dropped % 1000 == 0)
            log_warn("gateway", "the store's write queue is full: captured traces were dropped (counted in "
                                "ratchet_gateway_traces_dropped_total); the answers were not affected");
        a->gateway_n.capture_dropped += job->batch.write.ntraces;
        ingest_batch_free(&job->batch);
        free(job);
    }
}

/* Every batch the thread has built so far. */
static void take_done(api *a)
{
    struct api_capture *q = a->capture;
    pthread_mutex_lock(&q->mu);
    capture_job *jobs = q->done_head;
    q->done_head = q->done_tail = NULL;
    for (capture_job *j = jobs; j; j = j->next)
        q->held -= j->nitems, q->held_bytes -= j->bytes;
    pthread_mutex_unlock(&q->mu);
    for (capture_job *j = jobs, *next; j; j = next) {
        next = j->next;
        j->next = NULL;
        job_deliver(a, j);
    }
}

static void on_capture_async(uv_async_t *h)
{
    take_done(h->data);
}

static struct api_capture *queue_of(api *a)
{
    if (a->capture)
        return a->capture;
    struct api_capture *q = a->capture = xcalloc(1, sizeof *q);
    q->a = a;
    pthread_mutex_init(&q->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* mono_ns's clock */
    pthread_cond_init(&q->wake, &ca);
    pthread_condattr_destroy(&ca);
    q->async = xmalloc(sizeof *q->async);
    uv_async_init(a->loop, q->async, on_capture_async);
    q->async->data = a;
    q->running = pthread_create(&q->thread, NULL, capture_main, q) == 0;
    if (!q->running)
        log_error("gateway", "cannot start the capture thread: captured traces are built on the loop thread");
    return q;
}

/* ---- the interface ---- */

void api_capture_trace(api *a, api_capture_item *it)
{
    struct api_capture *q = queue_of(a);
    it->next = NULL;
    if (!q->running) { /* no thread: the same work, here */
        job_deliver(a, job_build(a, it));
        return;
    }
    pthread_mutex_lock(&q->mu);
    if (q->held >= CAPTURE_HELD_MAX || q->held_bytes + it->bytes > CAPTURE_HELD_BYTES_MAX) {
        pthread_mutex_unlock(&q->mu);
        json_t *t = it->build(it); /* its figures, for the follow-up */
        if (t) {
            if (a->gateway_n.capture_dropped % 1000 == 0)
                log_warn("gateway", "the capture queue is full: captured traces were dropped (counted in "
                                    "ratchet_gateway_traces_dropped_total); the answers were not affected");
            a->gateway_n.capture_dropped++;
            json_decref(t);
        }
        it->done(a, it);
        return;
    }
    q->held++;
    q->held_bytes += it->bytes;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it, q->first_ns = mono_ns();
    q->tail = it;
    q->waiting++;
    /* the thread waits for a first item, then for the batch to fill */
    if (q->waiting == 1 || q->waiting == CAPTURE_BATCH)
        pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->mu);
}

void api_capture_flush(api *a)
{
    struct api_capture *q = a->capture;
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    if (q->head) {
        q->flush = true;
        pthread_cond_signal(&q->wake);
    }
    pthread_mutex_unlock(&q->mu);
}

static void on_async_closed(uv_handle_t *h)
{
    free(h);
}

void api_capture_close(api *a)
{
    struct api_capture *q = a->capture;
    if (!q)
        return;
    if (q->running) {
        pthread_mutex_lock(&q->mu);
        q->stop = true;
        pthread_cond_signal(&q->wake);
        pthread_mutex_unlock(&q->mu);
        pthread_join(q->thread, NULL); /* every item handed over is built */
    }
    take_done(a);
    uv_close((uv_handle_t *)q->async, on_async_closed);
    pthread_cond_destroy(&q->wake);
    pthread_mutex_destroy(&q->mu);
    free(q);
    a->capture = NULL;
}
