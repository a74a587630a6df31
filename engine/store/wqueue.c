/* wqueue.c — the group-commit writer's queue both backends share: the writes waiting for the
 * writer thread (bounded by limits.max_pending_writes), the batches it committed waiting for
 * the loop thread, and the lock and wake-ups between the two threads. */
#include "store/backend.h"

void store_wqueue_init(store_wqueue *q, size_t max_pending)
{
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cond, NULL);
    pthread_cond_init(&q->idle_cond, NULL);
    q->max_pending = max_pending;
}

void store_wqueue_destroy(store_wqueue *q)
{
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cond);
    pthread_cond_destroy(&q->idle_cond);
}

int store_wqueue_submit(store_wqueue *q, store_write *w)
{
    size_t items = store_write_prepare(w);
    pthread_mutex_lock(&q->mu);
    if (q->stopping || q->queued_items + items > q->max_pending) {
        pthread_mutex_unlock(&q->mu);
        store_write_unprepare(w);
        return -1;
    }
    q->queued_items += items;
    if (q->queue_tail)
        q->queue_tail->next = w;
    else
        q->queue_head = w;
    q->queue_tail = w;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

store_write *store_wqueue_take_locked(store_wqueue *q, size_t *items)
{
    store_write *batch = q->queue_head;
    q->queue_head = q->queue_tail = NULL;
    q->writing = batch != NULL;
    *items = q->queued_items;
    q->queued_items = 0;
    return batch;
}

void store_wqueue_done_locked(store_wqueue *q, store_write *batch)
{
    if (batch) {
        store_write *last = batch;
        while (last->next)
            last = last->next;
        if (q->done_tail)
            q->done_tail->next = batch;
        else
            q->done_head = batch;
        q->done_tail = last;
    }
    q->writing = false;
    pthread_cond_broadcast(&q->idle_cond);
}

void store_wqueue_drain(store_wqueue *q)
{
    pthread_mutex_lock(&q->mu);
    store_write *w = q->done_head;
    q->done_head = q->done_tail = NULL;
    pthread_mutex_unlock(&q->mu);
    store_writes_done(w);
}

void store_wqueue_flush(store_wqueue *q)
{
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (q->queue_head || q->writing)
            pthread_cond_wait(&q->idle_cond, &q->mu);
        bool done = q->done_head != NULL;
        pthread_mutex_unlock(&q->mu);
        if (!done)
            return;
        store_wqueue_drain(q); /* a callback may queue another write: wait for it too */
    }
}

void store_wqueue_stop(store_wqueue *q)
{
    pthread_mutex_lock(&q->mu);
    q->stopping = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}
