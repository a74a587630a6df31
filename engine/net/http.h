/* http.h — the HTTP/1.1 server: libuv for I/O, Debian's http-parser for
 * parsing. Keep-alive, pipelining (answered in order), Content-Length and
 * chunked bodies, size limits, timeouts for slow clients, a connection cap.
 * Handlers may answer later (after a store commit): the connection waits. */
#ifndef RATCHET_HTTP_H
#define RATCHET_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/util.h"

#define HTTP_MAX_HEADERS 64

typedef struct http_server http_server;
typedef struct http_conn http_conn;

typedef struct {
    char *name; /* lower-cased */
    char *value;
} http_header;

typedef struct http_request {
    http_conn *conn;
    const char *method;     /* "GET", "POST", ... */
    char *url;              /* raw request target */
    char *path;             /* percent-decoded path, NUL-terminated */
    char *query;            /* raw query string after '?', or "" */
    http_header headers[HTTP_MAX_HEADERS];
    int nheaders;
    buf_t body;
    char id[17];            /* request id, sent back as X-Request-Id */
    bool loopback;          /* the peer is 127.0.0.0/8 or ::1 */
    bool close_after;       /* a handler may set it: the connection closes after the answer */
    uint64_t start_ns;
} http_request;

typedef void (*http_handler)(http_request *req, void *ctx);
typedef void (*http_drained_cb)(http_server *srv);

typedef struct {
    int max_connections;
    int max_connections_per_address; /* 0: no cap of its own */
    size_t max_header_bytes;
    size_t max_body_bytes;
    int header_timeout_ms;
    int body_timeout_ms;
    int idle_timeout_ms;
    bool access_log;
} http_limits;

/* Binds and listens. Returns 0, or -1 with a message in err. */
int http_server_start(http_server **out, uv_loop_t *loop, const char *host, int port, const http_limits *limits,
                      http_handler handler, void *ctx, char *err, size_t errlen);
/* Writes the body of every error this server answers (http_respond_error
 * and its variants, and the server's own refusals: 400, 408, 413, 431,
 * 503, 505 ...) in place of {"error":{...}}: a protocol with its own error
 * shape (OTLP's google.rpc.Status) sets it. message is clean UTF-8;
 * extra_headers are the ones the status implies ("Name: value\r\n"...,
 * Allow, Retry-After, WWW-Authenticate) or NULL; the writer must respond. */
typedef void (*http_error_writer)(http_request *req, int status, const char *message, const char *extra_headers);
void http_server_set_error_writer(http_server *srv, http_error_writer fn);
/* The address actually bound (useful with port 0). */
void http_server_address(http_server *srv, char *out, size_t outlen);
/* Stops accepting, closes idle connections, lets in-flight requests finish;
 * cb runs once every connection is closed. */
void http_server_drain(http_server *srv, http_drained_cb cb);
/* Closes every connection now (after the drain deadline). */
void http_server_close_all(http_server *srv);
void http_server_free(http_server *srv);
int http_server_connections(http_server *srv);
/* Connections, responses by status, bytes and latency, for /metrics. */
void http_server_metrics(http_server *srv, buf_t *b);

/* Sends the response. body is copied. extra_headers: "Name: value\r\n"... or NULL.
 * Exactly one respond per request. */
void http_respond(http_request *req, int status, const char *content_type, const char *extra_headers,
                  const char *body, size_t len);
/* {"error":{"code":code,"message":msg,"request_id":id}} */
void http_respond_error(http_request *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same with extra headers ("Name: value\r\n"...) in place of the ones
 * the status implies (Retry-After on a 503, ...): Allow on a 405. */
void http_respond_error_headers(http_request *req, int status, const char *code, const char *extra_headers,
                                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The same with "field": the request field (parameter, header) at fault. */
void http_respond_field_error(http_request *req, int status, const char *code, const char *field,
                              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Test tooling (the fake LLM server): sends data as it is, then closes the
 * connection; or drops the connection with a TCP reset, answering nothing. */
void http_respond_raw(http_request *req, const char *data, size_t len);
void http_reset(http_request *req);
const char *http_header_get(const http_request *req, const char *lower_name);

/* A streamed answer (a proxy's server-sent events): the head goes out with
 * Transfer-Encoding: chunked, then each write is a chunk sent at once, then
 * http_stream_end (instead of http_respond) ends the request. start and write
 * return false once the client is gone (nothing more is sent; still end). */
bool http_stream_start(http_request *req, int status, const char *content_type, const char *extra_headers);
bool http_stream_write(http_request *req, const char *data, size_t len);
void http_stream_end(http_request *req);
/* cb runs once if the client goes away (closes, resets, a write fails)
 * while the request is in flight: a proxy cancels its upstream call there.
 * The handler must still end the request; what it sends then goes nowhere.
 * With a hook set, a client's EOF while it waits ends the connection (as
 * nginx's proxy treats it). */
typedef void (*http_abort_cb)(http_request *req, void *ud);
void http_on_abort(http_request *req, http_abort_cb cb, void *ud);
/* Looks a key up in the query string, percent-decoding the value into out.
 * Returns 1 found, 0 absent, -1 malformed or too long. */
int http_query_get(const http_request *req, const char *key, char *out, size_t outlen);
const char *http_status_text(int status);
/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104: the clients trusted without a token. */
bool http_addr_is_loopback(const struct sockaddr *sa);

#endif
