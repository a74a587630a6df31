/* fuzz_http.c — libFuzzer target: the HTTP server (http.c: http-parser,
 * the framing checks, limits) through routing (api.c) and every error
 * answer, over a real loopback connection. The input is sent as the client
 * sent it, then half-closed; the engine answers and closes. Every answer
 * must be an HTTP/1.1 status line, and every JSON body must parse: an
 * error that cannot be written (the old non-UTF-8 crash) fails here.
 *
 * The store is real (in a temporary directory), so ingest commits; the
 * subsystems a unit of the engine does not need here (online evaluation,
 * the registry, runs, the loop, LLM) are absent and their routes answer
 * 503. No token is configured: loopback clients reach everything. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "api/api.h"
#include "conf/config.h"
#include "net/http.h"
#include "base/log.h"
#include "store/store.h"

static uv_loop_t *loop;
static http_server *srv;
static api the_api;
static config cfg;
static int port;

static int setup(void)
{
    log_set_level(LOG_ERROR);
    loop = uv_default_loop();
    char dir[] = "/tmp/ratchet-fuzz-http-XXXXXX";
    if (!mkdtemp(dir))
        abort();
    config_defaults(&cfg);
    char err[512];
    store *st;
    store_options so = {.dir = dir, .max_pending = 100000};
    if (store_open(&st, loop, &so, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    the_api.loop = loop;
    the_api.cfg = &cfg;
    the_api.store = st;
    http_limits lim = {.max_connections = 64, .max_connections_per_address = 64, .max_header_bytes = 16384,
                       .max_body_bytes = 1 << 20, .header_timeout_ms = 1000, .body_timeout_ms = 1000,
                       .idle_timeout_ms = 1000, .access_log = false};
    if (http_server_start(&srv, loop, "127.0.0.1", 0, &lim, api_handle, &the_api, err, sizeof err) != 0)
        abort();
    the_api.http = srv;
    char addr[80];
    http_server_address(srv, addr, sizeof addr);
    port = atoi(strrchr(addr, ':') + 1);
    return 0;
}

/* Checks what the engine answered: status lines, and JSON bodies that parse. */
static void check_answers(const char *out, size_t n)
{
    size_t at = 0;
    while (at < n) {
        if (n - at < 12 || memcmp(out + at, "HTTP/1.1 ", 9) != 0) {
            if (!memcmp(out + at, "HTTP/1.1 100 Continue\r\n\r\n", n - at < 25 ? n - at : 25))
                break;
            fprintf(stderr, "not an HTTP/1.1 answer at %zu: %.40s\n", at, out + at);
            abort();
        }
        const char *end = memmem(out + at, n - at, "\r\n\r\n", 4);
        if (!end)
            abort(); /* headers cut short: the engine writes an answer whole */
        const char *cl = memmem(out + at, (size_t)(end - (out + at)), "Content-Length: ", 16);
        size_t len = cl ? strtoul(cl + 16, NULL, 10) : 0;
        const char *body = end + 4;
        if ((size_t)(out + n - body) < len)
            abort();
        bool is_json = memmem(out + at, (size_t)(end - (out + at)), "Content-Type: application/json", 30) != NULL;
        if (is_json && len) {
            json_error_t je;
            json_t *j = json_loadb(body, len, 0, &je);
            if (!j) {
                fprintf(stderr, "an answer's JSON body does not parse (%s): %.*s\n", je.text, (int)len, body);
                abort();
            }
            json_decref(j);
        }
        at = (size_t)(body + len - out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready = -1;
    if (ready < 0)
        ready = setup();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    connect(fd, (struct sockaddr *)&sa, sizeof sa);
    size_t sent = 0;
    bool shut = false;
    char buf[65536];
    char *out = NULL;
    size_t nout = 0;
    for (int spins = 0; spins < 100000; spins++) {
        if (sent < size) {
            ssize_t w = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINPROGRESS && errno != ENOTCONN)
                sent = size; /* the engine closed on us */
        } else if (!shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        uv_run(loop, UV_RUN_NOWAIT);
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r > 0) {
            out = realloc(out, nout + (size_t)r);
            memcpy(out + nout, buf, (size_t)r);
            nout += (size_t)r;
        } else if (r == 0 || (r < 0 && errno != EAGAIN && errno != ENOTCONN)) {
            break; /* closed: every answer is in */
        } else if (shut) {
            uv_run(loop, UV_RUN_ONCE); /* wait for the store, a timer or the socket */
        }
    }
    close(fd);
    check_answers(out, nout);
    free(out);
    return 0;
}
