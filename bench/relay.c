/* bench/relay.c — the floor under the gateway's figures: the engine's own
 * HTTP server (net/http.c) and libcurl-on-libuv client (net/http_client.c)
 * relaying each POST body unchanged to one upstream URL and its answer back,
 * with nothing else: no JSON, no prompt, no canary, no trace, no store.
 * bench/gateway.sh runs it beside ratchet in the same run, so what ratchet
 * adds over it is the gateway's own work, and what the relay adds over
 * nginx proxy_pass is libuv + libcurl + this machine.
 *
 *   relay LISTEN_PORT UPSTREAM_URL     (prints "ready" once listening)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "net/http.h"
#include "net/http_client.h"

static httpc *H;
static const char *upstream;

static void on_done(httpc_req *r, const httpc_response *resp, void *ud)
{
    (void)r;
    http_request *req = ud;
    if (resp->error != HTTPC_OK) {
        http_respond_error(req, 502, "upstream", "%s", resp->message);
        return;
    }
    http_respond(req, resp->status, resp->content_type[0] ? resp->content_type : "application/json", NULL,
                 resp->body, resp->body_len);
}

static void on_request(http_request *req, void *ctx)
{
    (void)ctx;
    static const char *const hdrs[] = {"Content-Type: application/json"};
    httpc_opts o = {.method = "POST", .url = upstream, .headers = hdrs, .nheaders = 1,
                    .body = req->body.data ? req->body.data : "", .body_len = req->body.len};
    if (!httpc_start(H, &o, on_done, req))
        http_respond_error(req, 502, "upstream", "the upstream call could not start");
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: relay LISTEN_PORT UPSTREAM_URL\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    upstream = argv[2];
    uv_loop_t *loop = uv_default_loop();
    H = httpc_new(loop);
    http_limits lim = {.max_connections = 4096, .max_header_bytes = 65536, .max_body_bytes = 1 << 20,
                       .header_timeout_ms = 10000, .body_timeout_ms = 10000, .idle_timeout_ms = 60000};
    http_server *srv;
    char err[256];
    if (http_server_start(&srv, loop, "127.0.0.1", atoi(argv[1]), &lim, on_request, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "relay: %s\n", err);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);
}
