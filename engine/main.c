/* main.c — the ratchet command line: subcommand dispatch and `serve`, which
 * wires the loop, the store, the HTTP server and the signals together. */
#include <errno.h>
#include <http_parser.h>
#include <lua.h>
#include <sqlite3.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

#include "api.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "store.h"

#ifndef RATCHET_VERSION
#define RATCHET_VERSION "0.0.0-dev"
#endif

/* Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error. */
enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

static const char main_usage[] =
    "usage: ratchet <command> [options]\n"
    "\n"
    "ratchet makes the prompts of production LLM applications improve themselves\n"
    "without ever getting worse.\n"
    "\n"
    "commands:\n"
    "  serve     run the engine (HTTP API, ingest, store)\n"
    "  version   print the version\n"
    "  help      show this help, or `ratchet help <command>`\n"
    "\n"
    "Run `ratchet <command> --help` for a command's options.\n";

static const char serve_usage[] =
    "usage: ratchet serve [-c FILE] [--listen ADDR] [--data-dir DIR] [--address-file FILE]\n"
    "\n"
    "Runs the engine in the foreground until SIGTERM or SIGINT.\n"
    "\n"
    "  -c, --config FILE      read settings from this Lua file (default: built-in defaults)\n"
    "  -l, --listen ADDR      listen address, overriding the config (e.g. 127.0.0.1:7700, [::1]:0)\n"
    "  -d, --data-dir DIR     data directory, overriding the config\n"
    "      --address-file F   write the bound address (host:port) to F once listening\n"
    "  -h, --help             show this help\n"
    "\n"
    "Exit status: 0 after a clean shutdown, 1 on a runtime failure, 2 on a usage or\n"
    "configuration error.\n";

static const char version_usage[] = "usage: ratchet version\n\nPrints the version of ratchet and its libraries.\n";

/* ---- serve ---- */

typedef struct {
    uv_loop_t *loop;
    config cfg;
    store *store;
    http_server *http;
    api api;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t shutdown_timer;
    uv_timer_t watchdog_timer;
    bool stopping;
} engine;

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static engine *the_engine;

static void finish_shutdown(http_server *srv)
{
    (void)srv;
    engine *e = the_engine;
    uv_timer_stop(&e->shutdown_timer);
    close_handle((uv_handle_t *)&e->shutdown_timer);
    close_handle((uv_handle_t *)&e->watchdog_timer);
    close_handle((uv_handle_t *)&e->sigterm);
    close_handle((uv_handle_t *)&e->sigint);
    close_handle((uv_handle_t *)&e->sighup);
    store_close(e->store); /* flushes the writer: every queued write is committed */
    e->store = NULL;
    log_info("engine", "stopped");
}

static void on_shutdown_deadline(uv_timer_t *t)
{
    engine *e = t->data;
    log_warn("engine", "shutdown deadline passed with %d connections open; closing them",
             http_server_connections(e->http));
    http_server_close_all(e->http);
}

static void begin_shutdown(engine *e, const char *why)
{
    if (e->stopping)
        return;
    e->stopping = true;
    e->api.draining = true;
    sd_notify(0, "STOPPING=1");
    log_info("engine", "%s: stopping (finishing %d open connections)", why, http_server_connections(e->http));
    uv_timer_start(&e->shutdown_timer, on_shutdown_deadline, (uint64_t)e->cfg.limits.shutdown_timeout_ms, 0);
    http_server_drain(e->http, finish_shutdown);
}

static void on_signal(uv_signal_t *h, int signum)
{
    engine *e = h->data;
    if (signum == SIGHUP) {
        log_info("engine", "SIGHUP: nothing to reload in this version");
        return;
    }
    begin_shutdown(e, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* WATCHDOG=1 is sent from a loop timer, so a loop that stops turning stops
 * the pings and systemd (WatchdogSec=) restarts the engine. */
static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    sd_notify(0, "WATCHDOG=1");
}

static void start_watchdog(engine *e)
{
    uint64_t usec = 0;
    uv_timer_init(e->loop, &e->watchdog_timer);
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        uint64_t every_ms = usec / 2000; /* twice per interval, as sd_watchdog_enabled(3) advises */
        if (every_ms == 0)
            every_ms = 1;
        uv_timer_start(&e->watchdog_timer, on_watchdog, every_ms, every_ms);
        log_info("engine", "systemd watchdog: pinging every %llu ms", (unsigned long long)every_ms);
    }
}

static int write_address_file(const char *path, const char *addr)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%s\n", addr);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

static int cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},   {"listen", required_argument, NULL, 'l'},
        {"data-dir", required_argument, NULL, 'd'}, {"address-file", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *listen = NULL, *data_dir = NULL, *address_file = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:l:d:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config_path = optarg; break;
        case 'l': listen = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'a': address_file = optarg; break;
        case 'h': fputs(serve_usage, stdout); return 0;
        default: fputs(serve_usage, stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ratchet serve: unexpected argument '%s'\n\n%s", argv[optind], serve_usage);
        return EXIT_USAGE;
    }

    static engine e;
    memset(&e, 0, sizeof e);
    the_engine = &e;
    config_defaults(&e.cfg);
    char err[1024];
    if (config_path && config_load(&e.cfg, config_path, err, sizeof err) != 0) {
        fprintf(stderr, "ratchet: configuration error: %s\n", err);
        config_free(&e.cfg);
        return EXIT_USAGE;
    }
    char host[256];
    int port;
    if (listen) {
        if (config_parse_listen(listen, host, sizeof host, &port) != 0) {
            fprintf(stderr, "ratchet serve: --listen '%s' is not an address like 127.0.0.1:7700 or [::1]:7700\n", listen);
            config_free(&e.cfg);
            return EXIT_USAGE;
        }
        free(e.cfg.listen);
        e.cfg.listen = xstrdup(listen);
    }
    if (data_dir) {
        free(e.cfg.data_dir);
        e.cfg.data_dir = xstrdup(data_dir);
    }
    config_parse_listen(e.cfg.listen, host, sizeof host, &port);
    log_set_level((enum log_level)log_level_parse(e.cfg.log_level));
    log_set_json(strcmp(e.cfg.log_format, "json") == 0);
    signal(SIGPIPE, SIG_IGN);

    e.loop = uv_default_loop();
    if (store_open(&e.store, e.loop, e.cfg.data_dir, e.cfg.limits.max_pending_writes, err, sizeof err) != 0) {
        log_error("engine", "%s", err);
        config_free(&e.cfg);
        return EXIT_RUNTIME;
    }
    e.api.loop = e.loop;
    e.api.cfg = &e.cfg;
    e.api.store = e.store;
    http_limits lim = {
        .max_connections = e.cfg.limits.max_connections,
        .max_header_bytes = (size_t)e.cfg.limits.max_header_bytes,
        .max_body_bytes = (size_t)e.cfg.limits.max_body_bytes,
        .header_timeout_ms = e.cfg.limits.header_timeout_ms,
        .body_timeout_ms = e.cfg.limits.body_timeout_ms,
        .idle_timeout_ms = e.cfg.limits.idle_timeout_ms,
        .access_log = e.cfg.access_log,
    };
    if (http_server_start(&e.http, e.loop, host, port, &lim, api_handle, &e.api, err, sizeof err) != 0) {
        log_error("engine", "%s", err);
        store_close(e.store);
        uv_run(e.loop, UV_RUN_NOWAIT);
        uv_loop_close(e.loop);
        config_free(&e.cfg);
        return EXIT_RUNTIME;
    }
    char addr[96];
    http_server_address(e.http, addr, sizeof addr);
    if (address_file && write_address_file(address_file, addr) != 0)
        log_warn("engine", "cannot write the address file '%s': %s", address_file, strerror(errno));

    uv_signal_init(e.loop, &e.sigterm);
    uv_signal_init(e.loop, &e.sigint);
    uv_signal_init(e.loop, &e.sighup);
    e.sigterm.data = e.sigint.data = e.sighup.data = &e;
    uv_signal_start(&e.sigterm, on_signal, SIGTERM);
    uv_signal_start(&e.sigint, on_signal, SIGINT);
    uv_signal_start(&e.sighup, on_signal, SIGHUP);
    uv_timer_init(e.loop, &e.shutdown_timer);
    e.shutdown_timer.data = &e;
    start_watchdog(&e);

    log_info("engine", "ratchet %s listening on %s, data in %s%s%s", RATCHET_VERSION, addr, e.cfg.data_dir,
             e.cfg.path ? ", config " : " (built-in default config)", e.cfg.path ? e.cfg.path : "");
    if (!e.cfg.ingest_token)
        log_warn("engine", "no ingest_token is configured: only loopback clients may ingest");
    if (!e.cfg.admin_token)
        log_warn("engine", "no admin_token is configured: only loopback clients may read or administer");
    /* READY only now: the listener is bound and the store is open */
    sd_notifyf(0, "READY=1\nSTATUS=listening on %s, data in %s", addr, e.cfg.data_dir);

    uv_run(e.loop, UV_RUN_DEFAULT);

    http_server_free(e.http);
    int rc = uv_loop_close(e.loop);
    if (rc != 0)
        log_warn("engine", "event loop closed with handles still open: %s", uv_strerror(rc));
    config_free(&e.cfg);
    return 0;
}

/* ---- small commands ---- */

static int cmd_version(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(version_usage, stdout);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "ratchet version: unexpected argument '%s'\n", argv[1]);
        return EXIT_USAGE;
    }
    unsigned long hp = http_parser_version();
    printf("ratchet %s (libuv %s, http-parser %lu.%lu.%lu, SQLite %s, %s)\n", RATCHET_VERSION, uv_version_string(),
           (hp >> 16) & 255, (hp >> 8) & 255, hp & 255, sqlite3_libversion(), LUA_RELEASE);
    return 0;
}

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
} command;

static const command commands[] = {
    {"serve", cmd_serve, serve_usage},
    {"version", cmd_version, version_usage},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(main_usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(main_usage, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0)
        return cmd_version(1, argv + 1);
    if (strcmp(cmd, "help") == 0) {
        if (argc < 3) {
            fputs(main_usage, stdout);
            return 0;
        }
        for (const command *c = commands; c->name; c++)
            if (strcmp(c->name, argv[2]) == 0) {
                fputs(c->usage, stdout);
                return 0;
            }
        fprintf(stderr, "ratchet help: no command '%s'\n\n%s", argv[2], main_usage);
        return EXIT_USAGE;
    }
    for (const command *c = commands; c->name; c++)
        if (strcmp(c->name, cmd) == 0)
            return c->run(argc - 1, argv + 1);
    fprintf(stderr, "ratchet: no command '%s'\n\n%s", cmd, main_usage);
    return EXIT_USAGE;
}
