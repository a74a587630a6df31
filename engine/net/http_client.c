/* http_client.c — libcurl multi on libuv. The shape is curl's multi-uv example:
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
 * wake it (CURLMOPT_TIMERFUNCTION); libuv watches and wakes; finished
 * transfers are collected with curl_multi_info_read after each action. */
#include "net/http_client.h"

#include <ctype.h>
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/util.h"

/* Easy handles kept for reuse (curl_easy_reset keeps their buffers and
 * caches): a call costs no handle set-up beyond its options. */
#define EASY_POOL_MAX 64

struct httpc {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t *timer;
    httpc_req *reqs;
    int active;
    bool acting; /* inside act(): a zero timeout is served before returning */
    bool kick;   /* curl asked for a zero timeout while acting */
    struct sock_ctx **socks; /* by fd: the poll of each socket curl watches or keeps */
    int nsocks;
    CURL *pool[EASY_POOL_MAX];
    int npool;
};

struct httpc_req {
    httpc *h;
    CURL *easy;
    struct curl_slist *hdrs;
    buf_t body;
    size_t max_response;
    bool too_large;
    int64_t retry_after_ms;
    char request_id[128];
    char content_type[128];
    char errbuf[CURL_ERROR_SIZE];
    uint64_t start_ns;
    uv_timer_t *idle;    /* fails the request when nothing arrives for idle_ms */
    uint64_t idle_ms;
    httpc_done done;
    void *ud;
    bool (*on_chunk)(httpc_req *r, int status, const char *content_type, const char *data, size_t len, void *ud);
    bool streamed;       /* on_chunk took the body */
    httpc_req *prev, *next;
};

/* One socket's poll. A socket this file opened (CURLOPT_OPENSOCKETFUNCTION)
 * keeps its poll while curl keeps the connection between transfers: curl's
 * CURL_POLL_REMOVE only parks it (readable still watched, so a peer's close
 * is seen), and the next transfer on the connection finds it armed, without
 * the epoll_ctl calls of a poll closed and opened again per request. It is
 * closed in the close-socket callback, before the fd. */
typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    httpc *h;
    int events; /* what the poll watches now */
    bool owned; /* opened by open_socket: closed by close_socket */
    bool parked; /* curl is not watching it (kept connection) */
} sock_ctx;

const char *httpc_error_name(enum httpc_error e)
{
    switch (e) {
    case HTTPC_OK: return "ok";
    case HTTPC_CONNECT: return "connect";
    case HTTPC_TIMEOUT: return "timeout";
    case HTTPC_TLS: return "tls";
    case HTTPC_TOO_LARGE: return "too_large";
    case HTTPC_TRANSPORT: return "transport";
    }
    return "transport";
}

static void req_unlink(httpc_req *r)
{
    httpc *h = r->h;
    if (r->prev)
        r->prev->next = r->next;
    else
        h->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    h->active--;
}

static void on_idle_closed(uv_handle_t *h)
{
    free(h);
}

static void easy_release(httpc *h, CURL *e)
{
    if (h->npool < EASY_POOL_MAX) {
        curl_easy_reset(e);
        h->pool[h->npool++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

static void req_free(httpc_req *r)
{
    if (r->idle)
        uv_close((uv_handle_t *)r->idle, on_idle_closed);
    curl_multi_remove_handle(r->h->multi, r->easy);
    easy_release(r->h, r->easy);
    curl_slist_free_all(r->hdrs);
    buf_free(&r->body);
    free(r);
}

static enum httpc_error classify(CURLcode rc, bool too_large)
{
    if (too_large || rc == CURLE_FILESIZE_EXCEEDED)
        return HTTPC_TOO_LARGE;
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return HTTPC_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return HTTPC_TIMEOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
        return HTTPC_TLS;
    default:
        return HTTPC_TRANSPORT;
    }
}

static void check_multi_info(httpc *h)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        httpc_req *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode rc = m->data.result;
        httpc_response resp = {.retry_after_ms = r->retry_after_ms, .request_id = r->request_id,
                               .content_type = r->content_type};
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        resp.elapsed_ms = (double)(mono_ns() - r->start_ns) / 1e6;
        if (rc == CURLE_OK) {
            resp.status = (int)status;
        } else {
            resp.error = classify(rc, r->too_large);
            if (resp.error == HTTPC_TOO_LARGE)
                resp.message = "the response was larger than the limit";
            else
                resp.message = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
        }
        buf_append(&r->body, "", 1); /* NUL-terminate */
        r->body.len--;
        resp.body = r->body.data;
        resp.body_len = r->body.len;
        req_unlink(r);
        curl_multi_remove_handle(h->multi, r->easy);
        r->done(r, &resp, r->ud);
        req_free(r);
    }
}

/* One action, then whatever it made due at once. A finished transfer's
 * callback often starts the next request (a runner's next job): curl asks for
 * a zero timeout to send it, and serving that here sends it now, before the
 * other sockets of this loop turn are read, rather than one turn later. The
 * next turn's timer would do the same, late; the rounds are bounded. */
static void act(httpc *h, curl_socket_t fd, int flags)
{
    int running;
    h->acting = true;
    h->kick = false;
    curl_multi_socket_action(h->multi, fd, flags, &running);
    check_multi_info(h);
    for (int i = 0; h->kick && i < 8; i++) {
        h->kick = false;
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_multi_info(h);
    }
    h->acting = false;
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    sock_ctx *s = p->data;
    if (s->parked) { /* a kept connection became readable: closed by the peer, or stray bytes */
        uv_poll_stop(&s->poll); /* curl finds it dead when it next looks; no spinning meanwhile */
        s->events = 0;
        return;
    }
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    act(s->h, s->fd, flags);
}

static void on_poll_closed(uv_handle_t *p)
{
    free(p->data);
}

static sock_ctx *sock_get(httpc *h, curl_socket_t fd)
{
    return fd >= 0 && fd < h->nsocks ? h->socks[fd] : NULL;
}

static void sock_set(httpc *h, curl_socket_t fd, sock_ctx *s)
{
    if (fd >= h->nsocks) {
        int n = h->nsocks ? h->nsocks : 64;
        while (n <= fd)
            n *= 2;
        h->socks = xrealloc(h->socks, (size_t)n * sizeof *h->socks);
        memset(h->socks + h->nsocks, 0, (size_t)(n - h->nsocks) * sizeof *h->socks);
        h->nsocks = n;
    }
    h->socks[fd] = s;
}

static void sock_close(httpc *h, sock_ctx *s)
{
    sock_set(h, s->fd, NULL);
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_poll_closed);
}

static void sock_watch(sock_ctx *s, int events)
{
    if (events == s->events)
        return; /* already armed: no epoll_ctl */
    s->events = events;
    if (events)
        uv_poll_start(&s->poll, events, on_poll);
    else
        uv_poll_stop(&s->poll);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    httpc *h = userp;
    sock_ctx *s = sock_get(h, fd);
    if (what == CURL_POLL_REMOVE) {
        if (!s)
            return 0;
        if (!s->owned) {
            sock_close(h, s); /* curl may close it without telling us */
        } else {
            s->parked = true;
            sock_watch(s, s->events ? UV_READABLE : 0);
        }
        return 0;
    }
    if (!s) {
        s = xcalloc(1, sizeof *s);
        s->fd = fd;
        s->h = h;
        if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        sock_set(h, fd, s);
    }
    s->parked = false;
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    sock_watch(s, events);
    return 0;
}

/* The sockets of connections: opened here so that their polls can outlive a
 * transfer (see sock_ctx), and closed here, the poll first. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
    httpc *h = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN)
        return CURL_SOCKET_BAD;
    curl_socket_t fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
    if (fd < 0)
        return CURL_SOCKET_BAD;
    sock_ctx *s = xcalloc(1, sizeof *s);
    s->fd = fd;
    s->h = h;
    s->owned = true;
    if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
        free(s);
        close(fd);
        return CURL_SOCKET_BAD;
    }
    s->poll.data = s;
    sock_ctx *old = sock_get(h, fd);
    if (old) /* a socket curl closed without close_socket: its poll goes */
        sock_close(h, old);
    sock_set(h, fd, s);
    return fd;
}

static int close_socket(void *clientp, curl_socket_t fd)
{
    httpc *h = clientp;
    sock_ctx *s = sock_get(h, fd);
    if (s)
        sock_close(h, s);
    return close(fd);
}

static void on_timer(uv_timer_t *t)
{
    act(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    httpc *h = userp;
    if (timeout_ms < 0) {
        uv_timer_stop(h->timer);
        return 0;
    }
    if (timeout_ms == 0 && h->acting)
        h->kick = true; /* act() serves it once curl has returned */
    uv_timer_start(h->timer, on_timer, (uint64_t)timeout_ms, 0); /* never call curl from here */
    return 0;
}

/* Nothing arrived for idle_ms: the request fails as a timeout. (libcurl's
 * own low-speed check averages over several seconds, including the bytes
 * sent, so it cannot tell a stall of one second.) */
static void on_idle_timeout(uv_timer_t *t)
{
    httpc_req *r = t->data;
    char msg[96];
    snprintf(msg, sizeof msg, "nothing received for %llu ms", (unsigned long long)r->idle_ms);
    httpc_response resp = {.error = HTTPC_TIMEOUT, .message = msg, .body = "", .retry_after_ms = -1,
                           .request_id = r->request_id, .content_type = r->content_type,
                           .elapsed_ms = (double)(mono_ns() - r->start_ns) / 1e6};
    req_unlink(r);
    r->done(r, &resp, r->ud);
    req_free(r);
}

/* Restarts the idle clock: a byte arrived. */
static void idle_touch(httpc_req *r)
{
    if (r->idle)
        uv_timer_start(r->idle, on_idle_timeout, r->idle_ms, 0);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    httpc_req *r = ud;
    size_t len = size * n;
    idle_touch(r);
    if (r->on_chunk) {
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status < 300) {
            r->streamed = true;
            return r->on_chunk(r, (int)status, r->content_type, p, len, r->ud) ? len : 0;
        }
    }
    if (r->body.len + len > r->max_response) {
        r->too_large = true;
        return 0; /* aborts the transfer */
    }
    buf_append(&r->body, p, len);
    return len;
}

static void copy_value(char *out, size_t outlen, const char *v, size_t n)
{
    while (n && isspace((unsigned char)*v))
        v++, n--;
    while (n && isspace((unsigned char)v[n - 1]))
        n--;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, v, n);
    out[n] = 0;
}

/* Retry-After: delay-seconds or an HTTP-date; retry-after-ms: milliseconds. */
static int64_t parse_retry_after(const char *v, bool ms)
{
    char *end;
    double d = strtod(v, &end);
    if (end != v && *end == 0 && d >= 0)
        return (int64_t)(ms ? d : d * 1000.0);
    if (ms)
        return -1;
    time_t t = curl_getdate(v, NULL);
    if (t < 0)
        return -1;
    int64_t diff = (int64_t)t * 1000 - now_ms();
    return diff > 0 ? diff : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    httpc_req *r = ud;
    size_t len = size * n;
    idle_touch(r);
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { /* a new response (after a 1xx): forget the last headers */
        r->retry_after_ms = -1;
        r->request_id[0] = r->content_type[0] = 0;
        return len;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon)
        return len;
    size_t klen = (size_t)(colon - p);
    const char *v = colon + 1;
    size_t vlen = len - klen - 1;
    char val[128];
#define IS(name) (klen == sizeof(name) - 1 && strncasecmp(p, name, klen) == 0)
    if (IS("retry-after-ms") || (IS("retry-after") && r->retry_after_ms < 0)) {
        copy_value(val, sizeof val, v, vlen);
        int64_t ms = parse_retry_after(val, IS("retry-after-ms"));
        if (ms >= 0)
            r->retry_after_ms = ms;
    } else if (IS("x-request-id") || IS("request-id") || IS("apim-request-id")) {
        if (!r->request_id[0])
            copy_value(r->request_id, sizeof r->request_id, v, vlen);
    } else if (IS("content-type")) {
        copy_value(r->content_type, sizeof r->content_type, v, vlen);
    }
#undef IS
    return len;
}

httpc *httpc_new(uv_loop_t *loop)
{
    static bool inited;
    if (!inited) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        inited = true;
    }
    httpc *h = xcalloc(1, sizeof *h);
    h->loop = loop;
    h->multi = curl_multi_init();
    h->timer = xmalloc(sizeof *h->timer);
    uv_timer_init(loop, h->timer);
    h->timer->data = h;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 256L);
    return h;
}

httpc_req *httpc_start(httpc *h, const httpc_opts *o, httpc_done done, void *ud)
{
    httpc_req *r = xcalloc(1, sizeof *r);
    r->h = h;
    r->done = done;
    r->ud = ud;
    r->retry_after_ms = -1;
    r->on_chunk = o->on_chunk;
    r->max_response = o->max_response ? o->max_response : 16u << 20;
    r->easy = h->npool ? h->pool[--h->npool] : curl_easy_init();
    if (!r->easy) {
        free(r);
        return NULL;
    }
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, o->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, h);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, h);
    if (!o->on_chunk)
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_response);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 10000L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms > 0 ? o->timeout_ms : 60000L);
    for (int i = 0; i < o->nheaders; i++)
        r->hdrs = curl_slist_append(r->hdrs, o->headers[i]);
    r->hdrs = curl_slist_append(r->hdrs, "Expect:"); /* no 100-continue round trip */
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
    if (o->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body);
    }
    if (o->method)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method);
    r->start_ns = mono_ns();
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
        easy_release(h, e);
        curl_slist_free_all(r->hdrs);
        free(r);
        return NULL;
    }
    if (o->idle_timeout_ms > 0) { /* counted from the start: the request is sent at once */
        r->idle_ms = (uint64_t)o->idle_timeout_ms;
        r->idle = xmalloc(sizeof *r->idle);
        uv_timer_init(h->loop, r->idle);
        r->idle->data = r;
        idle_touch(r);
    }
    r->next = h->reqs;
    if (h->reqs)
        h->reqs->prev = r;
    h->reqs = r;
    h->active++;
    return r;
}

void httpc_cancel(httpc_req *r)
{
    req_unlink(r);
    req_free(r);
}

int httpc_active(const httpc *h)
{
    return h->active;
}

static void on_timer_closed(uv_handle_t *t)
{
    free(t);
}

void httpc_free(httpc *h)
{
    if (!h)
        return;
    while (h->reqs)
        httpc_cancel(h->reqs);
    curl_multi_cleanup(h->multi); /* closes cached connections: close_socket closes their polls */
    while (h->npool)
        curl_easy_cleanup(h->pool[--h->npool]);
    for (int fd = 0; fd < h->nsocks; fd++)
        if (h->socks[fd])
            sock_close(h, h->socks[fd]);
    free(h->socks);
    uv_close((uv_handle_t *)h->timer, on_timer_closed);
    free(h);
}
