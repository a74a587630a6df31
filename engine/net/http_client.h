/* http_client.h — the process's one HTTP client: libcurl's multi socket API driven
 * by libuv (a uv_poll per socket, one uv_timer), so requests never block the
 * loop. Connections are reused, HTTP/2 is used where the server offers it,
 * TLS is verified, DNS runs in libcurl's resolver thread, and every response
 * is capped in size. One request is one attempt: retries belong to callers. */
#ifndef RATCHET_HTTPC_H
#define RATCHET_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct httpc httpc;
typedef struct httpc_req httpc_req;

enum httpc_error {
    HTTPC_OK = 0,      /* a response arrived (any status) */
    HTTPC_CONNECT,     /* could not connect (refused, unreachable, DNS) */
    HTTPC_TIMEOUT,     /* connect, total or idle timeout */
    HTTPC_TLS,         /* the certificate or the handshake failed */
    HTTPC_TOO_LARGE,   /* the response passed max_response bytes */
    HTTPC_TRANSPORT,   /* the connection broke (reset, truncated body, bad HTTP) */
};

typedef struct {
    const char *method;          /* "GET", "POST", ...; default GET, POST with a body */
    const char *url;
    const char *const *headers;  /* "Name: value" lines */
    int nheaders;
    const char *body;
    size_t body_len;
    long connect_timeout_ms;     /* 0: 10 s */
    long timeout_ms;             /* whole request; 0: 60 s */
    long idle_timeout_ms;        /* no byte received for this long (the connect included); 0: none */
    size_t max_response;         /* body bytes; 0: 16 MiB */
    /* Streaming: with on_chunk set, the body of a 2xx answer is handed over
     * as it arrives (status and content type known) and not kept; other
     * answers are kept whole for done as usual. Returning false aborts the
     * transfer (done then runs with HTTPC_TRANSPORT). max_response does not
     * apply to a streamed body. */
    bool (*on_chunk)(httpc_req *r, int status, const char *content_type, const char *data, size_t len, void *ud);
} httpc_opts;

typedef struct {
    enum httpc_error error;
    const char *message;         /* for errors: what happened (never the URL's query or a header) */
    int status;                  /* HTTP status, 0 without a response */
    const char *body;            /* NUL-terminated */
    size_t body_len;
    int64_t retry_after_ms;      /* from retry-after-ms or Retry-After; -1 when absent */
    const char *request_id;      /* x-request-id / request-id / apim-request-id, or "" */
    const char *content_type;    /* or "" */
    double elapsed_ms;
} httpc_response;

typedef void (*httpc_done)(httpc_req *r, const httpc_response *resp, void *ud);

httpc *httpc_new(uv_loop_t *loop);
/* Starts a request; done runs once, later, on the loop (never inside this
 * call). Returns NULL (and done is not called) only if libcurl refuses it. */
httpc_req *httpc_start(httpc *h, const httpc_opts *o, httpc_done done, void *ud);
/* Abandons a request: done is not called. */
void httpc_cancel(httpc_req *r);
/* Requests in flight. */
int httpc_active(const httpc *h);
/* Cancels everything and closes the handles; the loop must run afterwards
 * for the close callbacks. */
void httpc_free(httpc *h);
const char *httpc_error_name(enum httpc_error e);

#endif
