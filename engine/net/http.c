/* http.c — HTTP/1.1 server on libuv with http-parser.
 *
 * One request per connection is handled at a time. When the parser completes
 * a message it pauses; the bytes after it (pipelined requests) wait in
 * conn->pending and reading stops until the response has been written, so
 * responses go out in request order and a fast client cannot queue unbounded
 * work. Each connection has one timer: the header deadline from the first
 * byte of a request, then the body deadline, then the keep-alive idle time. */
#include "net/http.h"

#include <http_parser.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "base/log.h"
#include "base/metrics.h"

enum conn_state { CONN_IDLE, CONN_HEADERS, CONN_BODY, CONN_HANDLING, CONN_WRITING };

/* How many connections an address holds (a small chained hash table). */
typedef struct addr_count {
    unsigned char addr[16]; /* IPv6, or IPv4 mapped */
    int n;
    struct addr_count *next;
} addr_count;
#define ADDR_BUCKETS 1024

/* The header section of the message being read, checked byte by byte
 * beside http-parser, which (built lenient) takes bare LF line ends and
 * obsolete line folding; both are ways to make two parsers on the path
 * disagree about where headers end (request smuggling). */
typedef struct {
    bool done;      /* the empty line ending the headers was seen */
    char prev;      /* the byte before */
    int lines;      /* complete lines so far (the request line is the first) */
    size_t line_len;
} header_scan;

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    http_parser parser;
    http_server *srv;
    http_conn *prev, *next;
    http_conn *idle_prev, *idle_next; /* the server's idle list, oldest first */
    bool in_idle_list;
    addr_count *addr;     /* this connection's count, or NULL */
    header_scan hscan;
    http_request req;
    enum conn_state state;
    size_t header_bytes;
    int hdr_state; /* 0: none, 1: in a field name, 2: in a value */
    buf_t hfield, hvalue, url;
    buf_t pending;        /* bytes received but not yet parsed */
    bool msg_complete;    /* a request is ready for the handler */
    int error_status;     /* set by a parser callback that rejects the request */
    const char *error_code;
    const char *error_field; /* the header at fault, or NULL */
    char error_msg[160];
    bool keep_alive;
    bool closing;
    bool in_flight;       /* handed to the handler, not answered yet */
    bool peer_eof;        /* the client half-closed while a request was handled */
    bool streaming;       /* http_stream_start sent the head; chunks follow until http_stream_end */
    bool stream_close;    /* the streamed answer ends the connection */
    http_abort_cb on_abort; /* the client went away while the request is in flight */
    void *abort_ud;
    int handles_open;
    char peer[64];
    bool loopback;
};

struct http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    http_limits lim;
    http_handler handler;
    void *ctx;
    http_error_writer error_writer; /* NULL: the API's JSON error */
    int nconns;
    http_conn *conns;
    http_conn *idle_head, *idle_tail; /* connections waiting for a request, longest-waiting first */
    addr_count *addrs[ADDR_BUCKETS];
    uint64_t evicted;   /* idle connections closed to make room at the cap */
    int nclosing;       /* connections closed whose handles are not yet */
    bool draining;
    http_drained_cb drained;
    char addr[80];
    /* for /metrics */
    uint64_t accepted, refused, refused_address, bytes_in, bytes_out;
    uint64_t by_status[600];
    metrics_hist seconds;
    char readbuf[65536]; /* parsing is synchronous, so one buffer serves all */
};

#define LINGER_MS 2000
/* Bytes of later (pipelined) requests held while one is being answered;
 * past this the connection stops reading until the answer is out. */
#define PENDING_MAX (1 << 20)

typedef struct {
    uv_write_t w;
    http_conn *conn;
    bool close_after;
    bool interim;     /* a 100 Continue: its completion says nothing about the answer */
    bool partial;     /* a chunk of a streamed answer: more follows */
    uv_buf_t buf;
    char data[];
} write_req;

static http_parser_settings parser_settings;

static void conn_close(http_conn *c);
static void conn_feed(http_conn *c, const char *data, size_t len);
static void conn_fail(http_conn *c, int status, const char *code, const char *msg);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* ---- helpers ---- */

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes n bytes of s into out (NUL-terminated). plus_is_space for
 * query strings. Returns -1 on a malformed escape, a NUL byte or overflow. */
static int percent_decode(const char *s, size_t n, char *out, size_t outlen, bool plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            ch = (char)(hi * 16 + lo);
            i += 2;
        } else if (ch == '+' && plus_is_space) {
            ch = ' ';
        }
        if (ch == '\0' || o + 1 >= outlen)
            return -1;
        out[o++] = ch;
    }
    out[o] = '\0';
    return 0;
}

const char *http_header_get(const http_request *req, const char *lower_name)
{
    for (int i = 0; i < req->nheaders; i++)
        if (strcmp(req->headers[i].name, lower_name) == 0)
            return req->headers[i].value;
    return NULL;
}

int http_query_get(const http_request *req, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key);
    const char *p = req->query;
    while (p && *p) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t nlen = eq ? (size_t)(eq - p) : plen;
        if (nlen == klen && memcmp(p, key, klen) == 0) {
            const char *v = eq ? eq + 1 : p + plen;
            size_t vlen = eq ? plen - nlen - 1 : 0;
            /* a value that is not UTF-8 once decoded is malformed: answers
             * echo values, and JSON cannot hold such bytes */
            return percent_decode(v, vlen, out, outlen, true) == 0 && utf8_valid(out, strlen(out)) ? 1 : -1;
        }
        p = amp ? amp + 1 : NULL;
    }
    return 0;
}

static void request_reset(http_request *r)
{
    free(r->url);
    free(r->path);
    for (int i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    r->nheaders = 0;
    r->close_after = false;
    r->conn->on_abort = NULL;
    r->conn->abort_ud = NULL;
    r->conn->streaming = false;
    r->url = r->path = NULL;
    r->query = NULL;
    /* keep a modest body buffer for the next request, drop a large one */
    if (r->body.cap > 65536)
        buf_free(&r->body);
    else
        buf_reset(&r->body);
}

static void timer_start(http_conn *c, int ms, uv_timer_cb cb)
{
    uv_timer_start(&c->timer, cb, (uint64_t)ms, 0);
}

/* ---- the idle list and per-address counts ---- */

static void idle_remove(http_conn *c)
{
    if (!c->in_idle_list)
        return;
    http_server *srv = c->srv;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        srv->idle_head = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    else
        srv->idle_tail = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    c->in_idle_list = false;
}

/* c waits for a request (a new connection, or keep-alive after an answer) */
static void idle_add(http_conn *c)
{
    http_server *srv = c->srv;
    idle_remove(c);
    c->idle_prev = srv->idle_tail;
    if (srv->idle_tail)
        srv->idle_tail->idle_next = c;
    else
        srv->idle_head = c;
    srv->idle_tail = c;
    c->in_idle_list = true;
}

/* Under pressure (over three quarters of the cap), an idle connection gets
 * a tenth of the keep-alive time (at least a second), so idle connections
 * give their places back sooner. */
static int idle_ms(const http_server *srv)
{
    int ms = srv->lim.idle_timeout_ms;
    if ((int64_t)srv->nconns * 4 > (int64_t)srv->lim.max_connections * 3) {
        int short_ms = ms / 10 < 1000 ? 1000 : ms / 10;
        if (short_ms < ms)
            ms = short_ms;
    }
    return ms;
}

static unsigned addr_hash(const unsigned char a[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ a[i]) * 16777619u;
    return h % ADDR_BUCKETS;
}

static addr_count *addr_get(http_server *srv, const unsigned char a[16])
{
    addr_count **pp = &srv->addrs[addr_hash(a)];
    for (addr_count *e = *pp; e; e = e->next)
        if (!memcmp(e->addr, a, 16))
            return e;
    addr_count *e = xcalloc(1, sizeof *e);
    memcpy(e->addr, a, 16);
    e->next = *pp;
    *pp = e;
    return e;
}

static void addr_release(http_conn *c)
{
    addr_count *e = c->addr;
    if (!e)
        return;
    c->addr = NULL;
    if (--e->n > 0)
        return;
    for (addr_count **pp = &c->srv->addrs[addr_hash(e->addr)]; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            free(e);
            return;
        }
}

/* ---- timers ---- */

static void on_idle_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_request_timeout(uv_timer_t *t)
{
    http_conn *c = t->data;
    if (c->state == CONN_HEADERS)
        conn_fail(c, 408, "request_timeout", "the request headers did not arrive in time");
    else if (c->state == CONN_BODY)
        conn_fail(c, 408, "request_timeout", "the request body did not arrive in time");
}

/* ---- parser callbacks ---- */

static int reject(http_conn *c, int status, const char *code, const char *msg)
{
    c->error_status = status;
    c->error_code = code;
    snprintf(c->error_msg, sizeof c->error_msg, "%s", msg);
    return -1;
}

static int on_message_begin(http_parser *p)
{
    http_conn *c = p->data;
    idle_remove(c);
    request_reset(&c->req);
    buf_reset(&c->url);
    c->header_bytes = 0;
    c->hdr_state = 0;
    c->state = CONN_HEADERS;
    id_hex16(c->req.id);
    c->req.start_ns = mono_ns();
    timer_start(c, c->srv->lim.header_timeout_ms, on_request_timeout);
    return 0;
}

static int count_header_bytes(http_conn *c, size_t len)
{
    c->header_bytes += len;
    if (c->header_bytes > c->srv->lim.max_header_bytes)
        return reject(c, 431, "headers_too_large", "the request line and headers are over the size limit");
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    http_conn *c = p->data;
    if (count_header_bytes(c, len))
        return -1;
    buf_append(&c->url, at, len);
    return 0;
}

static int finish_header(http_conn *c)
{
    if (c->hdr_state == 0)
        return 0;
    if (c->req.nheaders >= HTTP_MAX_HEADERS)
        return reject(c, 431, "too_many_headers", "the request has too many header fields");
    http_header *h = &c->req.headers[c->req.nheaders++];
    h->name = buf_steal(&c->hfield);
    for (char *q = h->name; *q; q++)
        if (*q >= 'A' && *q <= 'Z')
            *q = (char)(*q - 'A' + 'a');
    h->value = buf_steal(&c->hvalue);
    c->hdr_state = 0;
    /* Fields that must come once: with two, which one counts would depend
     * on who reads the request (two credentials, two body types). */
    static const char *const single[] = {"authorization", "host", "content-type", "content-length",
                                         "x-ratchet-actor", NULL};
    for (const char *const *f = single; *f; f++)
        if (!strcmp(h->name, *f)) {
            for (int i = 0; i < c->req.nheaders - 1; i++)
                if (!strcmp(c->req.headers[i].name, *f)) {
                    c->error_field = *f;
                    char msg[120];
                    snprintf(msg, sizeof msg, "the request has more than one %s header", *f);
                    return reject(c, 400, "bad_request", msg);
                }
            break;
        }
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    http_conn *c = p->data;
    if (count_header_bytes(c, len))
        return -1;
    if (c->hdr_state == 2 && finish_header(c))
        return -1;
    c->hdr_state = 1;
    buf_append(&c->hfield, at, len);
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    http_conn *c = p->data;
    if (count_header_bytes(c, len))
        return -1;
    c->hdr_state = 2;
    buf_append(&c->hvalue, at, len);
    return 0;
}

static void write_raw(http_conn *c, const char *data, size_t len, bool close_after);

static int on_headers_complete(http_parser *p)
{
    http_conn *c = p->data;
    if (finish_header(c))
        return -1;
    if (p->http_major != 1 || p->http_minor > 1)
        return reject(c, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
    c->keep_alive = http_should_keep_alive(p);
    c->req.method = http_method_str((enum http_method)p->method);
    /* Content-Length absent is ULLONG_MAX in http-parser (chunked or none). */
    if (p->content_length != ULLONG_MAX && p->content_length > c->srv->lim.max_body_bytes) {
        char msg[120];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", c->srv->lim.max_body_bytes);
        return reject(c, 413, "body_too_large", msg);
    }
    const char *expect = http_header_get(&c->req, "expect");
    if (expect && strcasecmp(expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        write_raw(c, cont, sizeof cont - 1, false);
    }
    c->state = CONN_BODY;
    timer_start(c, c->srv->lim.body_timeout_ms, on_request_timeout);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    http_conn *c = p->data;
    if (c->req.body.len + len > c->srv->lim.max_body_bytes) {
        char msg[120];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", c->srv->lim.max_body_bytes);
        return reject(c, 413, "body_too_large", msg);
    }
    buf_append(&c->req.body, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    http_conn *c = p->data;
    memset(&c->hscan, 0, sizeof c->hscan); /* the next message's headers are scanned afresh */
    c->msg_complete = true;
    uv_timer_stop(&c->timer);
    http_parser_pause(p, 1);
    return 0;
}

/* ---- connection life ---- */

static void conn_free(http_conn *c)
{
    http_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    if (c->closing)
        srv->nclosing--;
    idle_remove(c);
    addr_release(c);
    request_reset(&c->req);
    buf_free(&c->req.body);
    buf_free(&c->hfield);
    buf_free(&c->hvalue);
    buf_free(&c->url);
    buf_free(&c->pending);
    free(c);
    if (srv->draining && srv->nconns == 0 && srv->drained) {
        http_drained_cb cb = srv->drained;
        srv->drained = NULL;
        cb(srv);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    http_conn *c = h->data;
    if (--c->handles_open == 0 && !c->in_flight)
        conn_free(c);
}

/* The client is gone while its request is in flight: the handler that asked
 * (http_on_abort) hears it once, and must still end the request (any
 * http_respond*, http_reset or http_stream_end), which then sends nothing. */
static void notify_abort(http_conn *c)
{
    http_abort_cb cb = c->on_abort;
    if (!cb || !c->in_flight)
        return;
    c->on_abort = NULL;
    cb(&c->req, c->abort_ud);
}

static void conn_close(http_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    notify_abort(c);
    c->srv->nclosing++;
    idle_remove(c);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

/* Lingering close (as nginx does): after refusing a request mid-stream, read
 * and discard what the client is still sending for a short while before
 * closing, so the kernel does not answer unread data with a reset that would
 * destroy the error response before the client reads it. */
static void on_discard_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    if (nread < 0)
        conn_close(s->data);
}

static void on_shutdown_done(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

static void conn_linger(http_conn *c)
{
    uv_shutdown_t *sr = xmalloc(sizeof *sr);
    if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, on_shutdown_done) != 0) {
        free(sr);
        conn_close(c);
        return;
    }
    timer_start(c, LINGER_MS, on_idle_timeout);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_discard_read);
}

static void on_write_done(uv_write_t *w, int status)
{
    write_req *wr = (write_req *)w;
    http_conn *c = wr->conn;
    bool close_after = wr->close_after, interim = wr->interim, partial = wr->partial;
    free(wr);
    if (c->closing)
        return;
    if (interim && status >= 0)
        return; /* the answer may already be written behind it (found by fuzz_http) */
    if (partial && status >= 0)
        return; /* a chunk of a streamed answer: the request is still the handler's */
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (close_after) {
        if (c->error_status)
            conn_linger(c);
        else
            conn_close(c);
        return;
    }
    c->state = CONN_IDLE;
    request_reset(&c->req);
    if ((c->srv->draining || c->peer_eof) && c->pending.len == 0) {
        conn_close(c);
        return;
    }
    http_parser_pause(&c->parser, 0);
    if (c->pending.len) {
        /* pipelined bytes first; conn_feed resumes reading if they hold no whole request */
        buf_t data = c->pending;
        buf_init(&c->pending);
        conn_feed(c, data.data, data.len);
        buf_free(&data);
    } else {
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
    }
    if (c->state == CONN_IDLE && !c->closing) {
        idle_add(c);
        timer_start(c, idle_ms(c->srv), on_idle_timeout);
    }
}

static void write_raw(http_conn *c, const char *data, size_t len, bool close_after)
{
    write_req *wr = xmalloc(sizeof *wr + len);
    memcpy(wr->data, data, len);
    wr->conn = c;
    wr->close_after = close_after;
    wr->interim = !close_after && c->state != CONN_WRITING; /* 100 Continue, sent mid-request */
    wr->partial = false;
    wr->buf = uv_buf_init(wr->data, (unsigned)len);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &wr->buf, 1, on_write_done) != 0) {
        free(wr);
        conn_close(c);
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    http_conn *c = h->data;
    buf->base = c->srv->readbuf;
    buf->len = sizeof c->srv->readbuf;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    http_conn *c = s->data;
    if (nread == 0)
        return;
    if (nread > 0)
        c->srv->bytes_in += (uint64_t)nread;
    if (c->state == CONN_HANDLING || c->state == CONN_WRITING) {
        /* Reading goes on while a request is answered (no watcher churn per
         * request); what arrives waits in pending, parsed after the answer. */
        if (nread < 0) {
            c->peer_eof = true;
            uv_read_stop(s);
            if (c->on_abort && c->in_flight) /* a proxied call: the client is gone, so is the reason for it */
                conn_close(c);
        } else {
            buf_append(&c->pending, buf->base, (size_t)nread);
            if (c->pending.len > PENDING_MAX)
                uv_read_stop(s);
        }
        return;
    }
    if (nread < 0) {
        if (c->state == CONN_HEADERS || c->state == CONN_BODY)
            log_info("http", "%s closed the connection in the middle of a request (id=%s); nothing of it was kept",
                     c->peer, c->req.id);
        conn_close(c);
        return;
    }
    conn_feed(c, buf->base, (size_t)nread);
}

static void split_target(http_request *r)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    size_t len = strlen(r->url);
    r->path = NULL;
    r->query = "";
    if (http_parser_parse_url(r->url, len, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH)))
        return;
    size_t plen = u.field_data[UF_PATH].len;
    char *path = xmalloc(plen + 1);
    if (percent_decode(r->url + u.field_data[UF_PATH].off, plen, path, plen + 1, false) != 0) {
        free(path);
        return;
    }
    r->path = path;
    if (u.field_set & (1 << UF_QUERY)) {
        r->url[u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len] = '\0';
        r->query = r->url + u.field_data[UF_QUERY].off;
    }
}

static void dispatch(http_conn *c)
{
    c->msg_complete = false;
    c->state = CONN_HANDLING;
    c->req.url = buf_steal(&c->url);
    split_target(&c->req);
    if (!c->req.path) {
        http_respond_field_error(&c->req, 400, "bad_request", "path", "the request target is not a valid path");
        return;
    }
    /* Handlers echo path segments (names, ids) in answers and errors, and
     * JSON cannot hold bytes that are not UTF-8: refuse them here, once. */
    if (!utf8_valid(c->req.path, strlen(c->req.path))) {
        http_respond_field_error(&c->req, 400, "bad_request", "path",
                                 "the request path is not valid UTF-8 once percent-decoded");
        return;
    }
    c->in_flight = true;
    c->srv->handler(&c->req, c->srv->ctx);
}

/* Runs the header scan over the bytes of a header section; returns an
 * error message, or NULL. */
static const char *scan_headers(header_scan *hs, const char *data, size_t len)
{
    for (size_t i = 0; i < len && !hs->done; i++) {
        char b = data[i];
        if (b == '\n') {
            if (hs->prev != '\r')
                return "a line ends with a bare LF; HTTP/1.1 lines end with CRLF";
            if (hs->line_len == 0 && hs->lines > 0)
                hs->done = true; /* the empty line: the body (if any) follows */
            else if (hs->line_len > 0)
                hs->lines++;
            hs->line_len = 0; /* (an empty line before the request line is skipped, RFC 9112 2.2) */
        } else if (b != '\r') {
            if (hs->line_len == 0 && hs->lines > 0 && (b == ' ' || b == '\t'))
                return "obsolete line folding (a header line starting with a space or tab) is not accepted";
            hs->line_len++;
        }
        hs->prev = b;
    }
    return NULL;
}

static void conn_feed(http_conn *c, const char *data, size_t len)
{
    if (!c->hscan.done) {
        const char *bad = scan_headers(&c->hscan, data, len);
        if (bad) {
            if (c->state == CONN_IDLE)
                c->state = CONN_HEADERS;
            conn_fail(c, 400, "bad_request", bad);
            return;
        }
    }
    size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
    if (c->error_status) {
        conn_fail(c, c->error_status, c->error_code, c->error_msg);
        return;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED && c->msg_complete) {
        if (n < len)
            buf_append(&c->pending, data + n, len - n);
        dispatch(c);
        return;
    }
    if (e != HPE_OK || n != len) {
        char msg[160];
        snprintf(msg, sizeof msg, "malformed HTTP request: %s", http_errno_description(e));
        conn_fail(c, 400, "bad_request", msg);
        return;
    }
    if (!c->closing && c->state != CONN_HANDLING)
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

/* Answers a request the parser rejected, then closes the connection: what is
 * left of the stream can no longer be trusted to be at a message boundary. */
static void conn_fail(http_conn *c, int status, const char *code, const char *msg)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_stop(&c->timer);
    if (!c->req.id[0])
        id_hex16(c->req.id);
    if (!c->req.method)
        c->req.method = "-";
    if (!c->req.url)
        c->req.url = buf_steal(&c->url);
    c->keep_alive = false;
    c->state = CONN_HANDLING;
    c->in_flight = true;
    idle_remove(c);
    if (c->error_field)
        http_respond_field_error(&c->req, status, code, c->error_field, "%s", msg);
    else
        http_respond_error(&c->req, status, code, "%s", msg);
}

static void on_connection(uv_stream_t *server, int status)
{
    http_server *srv = server->data;
    if (status < 0) {
        log_warn("http", "accept failed: %s", uv_strerror(status));
        return;
    }
    http_conn *c = xcalloc(1, sizeof *c);
    c->srv = srv;
    c->req.conn = c;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    srv->accepted++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    ss.ss_family = AF_UNSPEC;
    strcpy(c->peer, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof c->peer);
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof c->peer);
        c->loopback = http_addr_is_loopback((struct sockaddr *)&ss);
    }
    c->req.loopback = c->loopback;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
        unsigned char a[16] = {0};
        if (ss.ss_family == AF_INET) {
            a[10] = a[11] = 0xff;
            memcpy(a + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        } else {
            memcpy(a, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        }
        c->addr = addr_get(srv, a);
        c->addr->n++;
        int per = srv->lim.max_connections_per_address;
        if (per > 0 && c->addr->n > per) {
            srv->refused++;
            srv->refused_address++;
            char msg[160];
            snprintf(msg, sizeof msg, "%s already holds %d connections, the limit per address; try again later",
                     c->peer, per);
            conn_fail(c, 503, "too_many_connections", msg);
            return;
        }
    }
    /* At the cap, the connection that has waited longest for a request
     * makes room: idle connections cannot lock new clients out. Only when
     * every connection is busy with a request is the new one refused. */
    if (srv->nconns > srv->lim.max_connections && srv->idle_head) {
        srv->evicted++;
        conn_close(srv->idle_head);
    }
    if (srv->nconns - srv->nclosing > srv->lim.max_connections) {
        srv->refused++;
        conn_fail(c, 503, "too_many_connections", "the server is at its connection limit; try again later");
        return;
    }
    idle_add(c);
    timer_start(c, idle_ms(srv), on_idle_timeout);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

bool http_addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return IN6_IS_ADDR_LOOPBACK(a) || (memcmp(a->s6_addr, v4mapped, 12) == 0 && a->s6_addr[12] == 127);
    }
    return false;
}

/* ---- responses ---- */

/* The handler is done with the request. False when the peer went away
 * meanwhile: nothing is sent, and the connection is freed if it can be. */
static bool answering(http_conn *c)
{
    c->in_flight = false;
    if (!c->closing)
        return true;
    if (c->handles_open == 0)
        conn_free(c);
    return false;
}

void http_respond(http_request *req, int status, const char *content_type, const char *extra_headers,
                  const char *body, size_t len)
{
    http_conn *c = req->conn;
    if (!answering(c))
        return;
    /* Only a request the parser refused leaves the stream at an unknown
     * place (conn_fail clears keep_alive); a 400 from a handler (a body that
     * is not JSON) was framed fine, so pipelined requests behind it are
     * answered too. */
    bool close_after = !c->keep_alive || c->srv->draining || c->error_status || req->close_after;
    char head[2048]; /* the console's static files send a Content-Security-Policy and an ETag */
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nX-Request-Id: %s\r\n"
                      "%sConnection: %s\r\n\r\n",
                      status, http_status_text(status), content_type, len, req->id,
                      extra_headers ? extra_headers : "", close_after ? "close" : "keep-alive");
    if (hn < 0 || (size_t)hn >= sizeof head)
        hn = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                      status, http_status_text(status), len), close_after = true;
    http_server *srv = c->srv;
    srv->by_status[status >= 100 && status < 600 ? status : 0]++;
    srv->bytes_out += (uint64_t)hn + len;
    metrics_observe(&srv->seconds, (double)(mono_ns() - req->start_ns) / 1e9);
    if (c->srv->lim.access_log)
        log_info("access", "%s %s %s %d %zu %.3fms id=%s", c->peer, req->method ? req->method : "-",
                 req->url ? req->url : "-", status, len, (double)(mono_ns() - req->start_ns) / 1e6, req->id);
    c->state = CONN_WRITING;
    write_req *wr = xmalloc(sizeof *wr + (size_t)hn + len);
    memcpy(wr->data, head, (size_t)hn);
    if (len)
        memcpy(wr->data + hn, body, len);
    wr->conn = c;
    wr->close_after = close_after;
    wr->interim = false;
    wr->partial = false;
    wr->buf = uv_buf_init(wr->data, (unsigned)((size_t)hn + len));
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &wr->buf, 1, on_write_done) != 0) {
        free(wr);
        conn_close(c);
    }
}

void http_on_abort(http_request *req, http_abort_cb cb, void *ud)
{
    req->conn->on_abort = cb;
    req->conn->abort_ud = ud;
}

/* Queues bytes of a streamed answer; last ends the request. */
static void stream_write(http_conn *c, const char *data, size_t len, bool last, bool close_after)
{
    write_req *wr = xmalloc(sizeof *wr + len);
    memcpy(wr->data, data, len);
    wr->conn = c;
    wr->close_after = close_after;
    wr->interim = false;
    wr->partial = !last;
    wr->buf = uv_buf_init(wr->data, (unsigned)len);
    c->srv->bytes_out += len;
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &wr->buf, 1, on_write_done) != 0) {
        free(wr);
        conn_close(c);
    }
}

bool http_stream_start(http_request *req, int status, const char *content_type, const char *extra_headers)
{
    http_conn *c = req->conn;
    if (c->closing)
        return false;
    c->stream_close = !c->keep_alive || c->srv->draining || req->close_after;
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\nX-Request-Id: %s\r\n"
                      "Cache-Control: no-cache\r\n%sConnection: %s\r\n\r\n",
                      status, http_status_text(status), content_type, req->id, extra_headers ? extra_headers : "",
                      c->stream_close ? "close" : "keep-alive");
    if (hn < 0 || (size_t)hn >= sizeof head)
        return false;
    c->srv->by_status[status >= 100 && status < 600 ? status : 0]++;
    c->streaming = true;
    c->state = CONN_WRITING;
    stream_write(c, head, (size_t)hn, false, false);
    return !c->closing;
}

bool http_stream_write(http_request *req, const char *data, size_t len)
{
    http_conn *c = req->conn;
    if (c->closing || !c->streaming)
        return false;
    if (!len)
        return true;
    char *chunk = xmalloc(len + 32);
    int n = snprintf(chunk, 32, "%zx\r\n", len);
    memcpy(chunk + n, data, len);
    memcpy(chunk + n + len, "\r\n", 2);
    stream_write(c, chunk, (size_t)n + len + 2, false, false);
    free(chunk);
    return !c->closing;
}

void http_stream_end(http_request *req)
{
    http_conn *c = req->conn;
    bool streaming = c->streaming;
    if (!answering(c))
        return;
    metrics_observe(&c->srv->seconds, (double)(mono_ns() - req->start_ns) / 1e9);
    if (c->srv->lim.access_log)
        log_info("access", "%s %s %s streamed %.3fms id=%s", c->peer, req->method ? req->method : "-",
                 req->url ? req->url : "-", (double)(mono_ns() - req->start_ns) / 1e6, req->id);
    if (!streaming) {
        conn_close(c);
        return;
    }
    stream_write(c, "0\r\n\r\n", 5, true, c->stream_close);
}

void http_respond_raw(http_request *req, const char *data, size_t len)
{
    http_conn *c = req->conn;
    if (!answering(c))
        return;
    c->state = CONN_WRITING;
    write_raw(c, data, len, true);
}

void http_reset(http_request *req)
{
    http_conn *c = req->conn;
    if (!answering(c))
        return;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close() now sends RST */
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    conn_close(c);
}

static void respond_error_v(http_request *req, int status, const char *code, const char *field, const char *extra,
                            const char *fmt, va_list ap)
{
    /* A message may echo what the client sent (a path, a parameter's name)
     * and JSON holds only UTF-8: each invalid byte becomes U+FFFD, so no
     * client can make an error unanswerable. */
    char raw[1024], msg[1024], fld[256];
    vsnprintf(raw, sizeof raw, fmt, ap);
    utf8_clean(msg, sizeof msg, raw, strlen(raw));
    if (field)
        utf8_clean(fld, sizeof fld, field, strlen(field));
    json_t *e = json_pack("{s:s, s:s, s:s}", "code", code, "message", msg, "request_id", req->id);
    if (e && field)
        json_object_set_new(e, "field", json_string(fld));
    json_t *o = e ? json_pack("{s:o}", "error", e) : NULL;
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!extra && status == 503)
        extra = "Retry-After: 1\r\n";
    else if (!extra && status == 401)
        extra = "WWW-Authenticate: Bearer\r\n";
    else if (!extra && status == 415 && field && !strcmp(field, "content-encoding"))
        extra = "Accept-Encoding: identity\r\n"; /* RFC 7694: what the server takes */
    if (req->conn && req->conn->srv->error_writer) {
        free(text);
        req->conn->srv->error_writer(req, status, msg, extra);
        return;
    }
    if (!text) { /* out of memory: still an answer, and still JSON */
        log_error("http", "could not build the error body of request %s", req->id);
        static const char fallback[] = "{\"error\":{\"code\":\"internal\",\"message\":\"the error could not be written\"}}";
        http_respond(req, status, "application/json", extra, fallback, sizeof fallback - 1);
        return;
    }
    http_respond(req, status, "application/json", extra, text, strlen(text));
    free(text);
}

void http_respond_error(http_request *req, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    respond_error_v(req, status, code, NULL, NULL, fmt, ap);
    va_end(ap);
}

void http_respond_error_headers(http_request *req, int status, const char *code, const char *extra_headers,
                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    respond_error_v(req, status, code, NULL, extra_headers, fmt, ap);
    va_end(ap);
}

void http_respond_field_error(http_request *req, int status, const char *code, const char *field,
                              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    respond_error_v(req, status, code, field, NULL, fmt, ap);
    va_end(ap);
}

/* ---- server ---- */

int http_server_start(http_server **out, uv_loop_t *loop, const char *host, int port, const http_limits *limits,
                      http_handler handler, void *ctx, char *err, size_t errlen)
{
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;

    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        snprintf(err, errlen, "'%s' is not an IP address", host);
        return -1;
    }
    http_server *srv = xcalloc(1, sizeof *srv);
    srv->loop = loop;
    srv->lim = *limits;
    srv->handler = handler;
    srv->ctx = ctx;
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    int rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "cannot listen on %s port %d: %s", host, port, uv_strerror(rc));
        uv_close((uv_handle_t *)&srv->listener, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        free(srv);
        return -1;
    }
    struct sockaddr_storage bound;
    int bl = sizeof bound;
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &bl);
    char name[64] = "?";
    if (bound.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&bound, name, sizeof name);
        snprintf(srv->addr, sizeof srv->addr, "[%s]:%d", name, ntohs(((struct sockaddr_in6 *)&bound)->sin6_port));
    } else {
        uv_ip4_name((struct sockaddr_in *)&bound, name, sizeof name);
        snprintf(srv->addr, sizeof srv->addr, "%s:%d", name, ntohs(((struct sockaddr_in *)&bound)->sin_port));
    }
    *out = srv;
    return 0;
}

void http_server_set_error_writer(http_server *srv, http_error_writer fn)
{
    srv->error_writer = fn;
}

void http_server_address(http_server *srv, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", srv->addr);
}

void http_server_metrics(http_server *srv, buf_t *b)
{
    metrics_one(b, "ratchet_http_connections", "gauge", "Open client connections.", srv->nconns);
    metrics_one(b, "ratchet_http_connections_max", "gauge",
                "The connection cap (limits.max_connections).", srv->lim.max_connections);
    metrics_one(b, "ratchet_http_connections_total", "counter", "Connections accepted.", (double)srv->accepted);
    metrics_one(b, "ratchet_http_connections_refused_total", "counter",
                "Connections answered 503 and closed because a cap was reached (the total or the address's).",
                (double)srv->refused);
    metrics_one(b, "ratchet_http_connections_refused_address_total", "counter",
                "Connections refused because their address held limits.max_connections_per_address already.",
                (double)srv->refused_address);
    metrics_one(b, "ratchet_http_connections_evicted_total", "counter",
                "Idle connections closed to make room for a new one at limits.max_connections.",
                (double)srv->evicted);
    metrics_family(b, "ratchet_http_responses_total", "counter", "Responses sent, by status code.");
    for (int i = 100; i < 600; i++)
        if (srv->by_status[i]) {
            char code[16];
            snprintf(code, sizeof code, "%d", i);
            metrics_sample(b, "ratchet_http_responses_total", (double)srv->by_status[i], "code", code, NULL);
        }
    metrics_one(b, "ratchet_http_received_bytes_total", "counter", "Bytes read from clients.", (double)srv->bytes_in);
    metrics_one(b, "ratchet_http_sent_bytes_total", "counter",
                "Bytes of responses (headers and bodies).", (double)srv->bytes_out);
    metrics_family(b, "ratchet_http_request_duration_seconds", "histogram",
                   "Time from a request's arrival to its response, store commits included.");
    metrics_histogram(b, "ratchet_http_request_duration_seconds", &srv->seconds, NULL);
}

int http_server_connections(http_server *srv)
{
    return srv->nconns;
}

void http_server_drain(http_server *srv, http_drained_cb cb)
{
    srv->draining = true;
    srv->drained = cb;
    if (!uv_is_closing((uv_handle_t *)&srv->listener))
        uv_close((uv_handle_t *)&srv->listener, NULL);
    for (http_conn *c = srv->conns; c; c = c->next)
        if (c->state == CONN_IDLE && c->pending.len == 0)
            conn_close(c);
    if (srv->nconns == 0 && srv->drained) {
        srv->drained = NULL;
        cb(srv);
    }
}

void http_server_close_all(http_server *srv)
{
    for (http_conn *c = srv->conns; c; c = c->next)
        conn_close(c);
}

void http_server_free(http_server *srv)
{
    free(srv);
}
