/* Unit tests for streamed answers end to end on one loop: the server's
 * http_stream_* and abort hook against the client's on_chunk. No timing:
 * the server writes its next chunk only once the client has received the
 * previous one, so a chunk held back anywhere would hang the test (its
 * timer then fails it). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "net/http.h"
#include "net/http_client.h"

typedef struct {
    uv_loop_t *loop;
    http_server *srv;
    httpc *h;
    http_request *req;    /* the streamed request, while open */
    httpc_req *cr;
    int chunks_sent, chunks_seen, aborts;
    bool cancel_after_first;
    bool done;
    int status;
    char got[256];
    uv_timer_t guard;
} ctx;

static void on_abort(http_request *req, void *ud)
{
    ctx *x = ud;
    x->aborts++;
    x->req = NULL;
    http_stream_end(req);
    uv_stop(x->loop);
}

static void handler(http_request *req, void *ud)
{
    ctx *x = ud;
    x->req = req;
    http_on_abort(req, on_abort, x);
    CHECK(http_stream_start(req, 200, "text/event-stream", "X-Test: 1\r\n"));
    http_stream_write(req, "data: one\n\n", 11);
    x->chunks_sent = 1;
}

static bool on_chunk(httpc_req *r, int status, const char *ctype, const char *data, size_t len, void *ud)
{
    (void)r;
    ctx *x = ud;
    x->status = status;
    CHECK_STR(ctype, "text/event-stream");
    strncat(x->got, data, len < sizeof x->got - strlen(x->got) - 1 ? len : sizeof x->got - strlen(x->got) - 1);
    x->chunks_seen++;
    if (x->cancel_after_first)
        return true; /* cancelled from the loop, below */
    if (x->req && x->chunks_sent == 1) { /* the client has chunk 1: now chunk 2 and the end */
        x->chunks_sent = 2;
        http_stream_write(x->req, "data: two\n\n", 11);
        http_stream_end(x->req);
        x->req = NULL;
    }
    return true;
}

static void on_done(httpc_req *r, const httpc_response *resp, void *ud)
{
    (void)r;
    ctx *x = ud;
    x->cr = NULL;
    x->done = true;
    CHECK(resp->error == HTTPC_OK);
    CHECK(resp->body_len == 0); /* handed over as it came, not kept */
    uv_stop(x->loop);
}

static void on_guard(uv_timer_t *t)
{
    ctx *x = t->data;
    CHECK(!"the stream stalled");
    uv_stop(x->loop);
}

static void on_idle_cancel(uv_timer_t *t)
{
    ctx *x = t->data;
    if (x->chunks_seen >= 1 && x->cr) {
        httpc_cancel(x->cr); /* the client goes: the server's hook must run */
        x->cr = NULL;
        uv_timer_stop(t);
    }
}

static void start(ctx *x, const char *url)
{
    httpc_opts o = {.method = "POST", .url = url, .body = "{}", .body_len = 2, .on_chunk = on_chunk};
    x->cr = httpc_start(x->h, &o, on_done, x);
    CHECK(x->cr != NULL);
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

int main(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    ctx x = {.loop = &loop};
    http_limits lim = {.max_connections = 16, .max_header_bytes = 16384, .max_body_bytes = 1 << 20,
                       .header_timeout_ms = 5000, .body_timeout_ms = 5000, .idle_timeout_ms = 5000};
    char err[256], addr[80], url[128];
    CHECK(http_server_start(&x.srv, &loop, "127.0.0.1", 0, &lim, handler, &x, err, sizeof err) == 0);
    http_server_address(x.srv, addr, sizeof addr);
    snprintf(url, sizeof url, "http://%s/stream", addr);
    x.h = httpc_new(&loop);
    uv_timer_init(&loop, &x.guard);
    x.guard.data = &x;

    /* 1: two chunks, each delivered before the next is written */
    uv_timer_start(&x.guard, on_guard, 10000, 0);
    start(&x, url);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(x.done);
    CHECK(x.status == 200);
    CHECK(x.chunks_seen >= 2);
    CHECK_STR(x.got, "data: one\n\ndata: two\n\n");
    CHECK(x.aborts == 0);

    /* 2: the client cancels after the first chunk: the server hears it */
    memset(x.got, 0, sizeof x.got);
    x.done = false;
    x.chunks_seen = 0;
    x.cancel_after_first = true;
    uv_timer_t poll;
    uv_timer_init(&loop, &poll);
    poll.data = &x;
    uv_timer_start(&poll, on_idle_cancel, 1, 1);
    uv_timer_start(&x.guard, on_guard, 10000, 0);
    start(&x, url);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(x.aborts == 1);
    CHECK(!x.done); /* a cancelled request's done never runs */
    CHECK_STR(x.got, "data: one\n\n");

    uv_timer_stop(&x.guard);
    uv_close((uv_handle_t *)&x.guard, on_closed);
    uv_close((uv_handle_t *)&poll, on_closed);
    httpc_free(x.h);
    http_server_drain(x.srv, NULL);
    http_server_close_all(x.srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    http_server_free(x.srv);
    CHECK(uv_loop_close(&loop) == 0);
    return check_done();
}
