/* main.c — the ratchet command line: subcommand dispatch and `serve`, which
 * wires the loop, the store, the HTTP server and the signals together. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#include <jansson.h>
#include <libgen.h>
#ifdef RATCHET_MIMALLOC
#include <mimalloc.h>
#endif

#include "api/api.h"
#include "api/api_otlp.h"
#include "api/api_console.h"
#include "api/api_gateway.h"
#include "api/ingest.h"
#include "base/metrics.h"
#include "script/catalog.h"
#include "cli/cli.h"
#include "conf/confcheck.h"
#include "conf/config.h"
#include "fake/llm_fake.h"
#include "net/http.h"
#include "net/http_client.h"
#include "llm/llm.h"
#include "base/log.h"
#include "loop/online.h"
#include "loop/registry.h"
#include "loop/loop.h"
#include "loop/runner.h"
#include "script/script.h"
#include "llm/script_io.h"
#include "store/datadir.h"
#include "store/store.h"

#ifndef RATCHET_VERSION
#define RATCHET_VERSION "0.0.0-dev"
#endif

static const char main_usage[] =
    "usage: ratchet <command> [options]\n"
    "\n"
    "ratchet makes the prompts of production LLM applications improve themselves\n"
    "without ever getting worse.\n"
    "\n"
    "commands:\n"
    "  serve     run the engine (HTTP API, ingest, store, online evaluation)\n"
    "  check     compile the config and every script without starting; exit 3 on errors\n"
    "  evaluate  ask a running engine to re-evaluate a window of a prompt's traces\n"
    "  prompt    the prompt registry: list, show, diff, add, promote, rollback, pin\n"
    "  eval      the regression gate for CI: baseline vs candidates on a dataset (or standalone)\n"
    "  dataset   datasets: list, show, import/export JSON Lines, cases from traces, versions, diff\n"
    "  optimize  start an optimization cycle of the loop for a prompt now\n"
    "  approve   approve (or --reject) a gate winner that waits for a human\n"
    "  loop      the loop's state per prompt, and a prompt's cycle events\n"
    "  status    one screen for operators: prompts, pass rates, loop, runs, budget, errors\n"
    "  history   the audit log of a prompt: lifecycle moves and loop decisions\n"
    "  traces    a page of traces, newest first: by prompt, version, time, verdict, evaluator, feedback, text, tag\n"
    "  series    a prompt's pass rate, traffic and negative feedback over time, of every version or one\n"
    "  init      make a project: config, a custom evaluator and policy with their specs, a dataset\n"
    "  routes    every endpoint of the HTTP API: method, path, token scope, the doc that describes it\n"
    "  version   print the version\n"
    "  fake-llm  run a fake LLM server (OpenAI and Anthropic APIs, fault injection) for tests\n"
    "  help      show this help, or `ratchet help <command>`\n"
    "\n"
    "Run `ratchet <command> --help` for a command's options.\n";

static const char serve_usage[] =
    "usage: ratchet serve [-c FILE] [--listen ADDR] [--data-dir DIR] [--script-dir DIR] [--address-file FILE]\n"
    "\n"
    "Runs the engine in the foreground until SIGTERM or SIGINT. SIGHUP (and, with\n"
    "scripts.watch, any change of a script or the config file) reloads the config and\n"
    "every script; what fails to load keeps its running version.\n"
    "\n"
    "  -c, --config FILE      read settings from this Lua file (default: built-in defaults)\n"
    "  -l, --listen ADDR      listen address, overriding the config (e.g. 127.0.0.1:7700, [::1]:0)\n"
    "  -d, --data-dir DIR     data directory, overriding the config\n"
    "  -s, --script-dir DIR   look for evaluators/, policies/, scripts/ here first\n"
    "      --address-file F   write the bound address (host:port) to F once listening\n"
    "  -h, --help             show this help\n"
    "\n"
    "Exit status: 0 after a clean shutdown, 3 on a usage or configuration error or\n"
    "when a start-up step fails (the message names the step and why).\n";

static const char check_usage[] =
    "usage: ratchet check [-c FILE] [--script-dir DIR]\n"
    "\n"
    "Reads the config and compiles every script (evaluators/, policies/, scripts/\n"
    "under each script folder) exactly as `serve` would, without starting the\n"
    "server, and prints every error with its file and line. For CI of your scripts.\n"
    "\n"
    "  -c, --config FILE      the config to check (default: built-in defaults)\n"
    "  -s, --script-dir DIR   look for scripts here first\n"
    "  -q, --quiet            print only errors\n"
    "\n"
    "Exit status: 0 when everything loads, 3 when anything fails or on a usage error.\n";

static const char version_usage[] = "usage: ratchet version\n\nPrints the version of ratchet and its libraries.\n";

/* ---- serve ---- */

#define MAX_WATCHES 64

typedef struct {
    uv_loop_t *loop;
    config cfg;
    const char *config_path;   /* NULL: built-in defaults */
    const char *script_dir;    /* --script-dir */
    const char *cli_listen;    /* --listen */
    const char *cli_data_dir;  /* --data-dir */
    store *store;
    http_server *http;
    api api;
    script_vm *vm;
    catalog *cat;
    online *online;
    httpc *httpc;
    llm *llm;
    scriptio *sio;
    registry *reg;
    runner *runner;
    optloop *lp;
    int cluster_reads; /* reads of another engine's changes in the thread pool */
    api_reload_info reload;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t shutdown_timer;
    uv_timer_t watchdog_timer;
    uv_timer_t status_timer;   /* STATUS= for systemctl status, when it changes */
    uv_timer_t orphan_timer;   /* several engines: the leader takes the runs of engines gone */
    uv_timer_t retention_timer; /* store.retention_days: a batch of old traces deleted each tick */
    store_write retention_write;
    bool retention_busy;       /* that write is queued */
    bool orphan_reading;       /* a claim of such runs is in the thread pool */
    json_t *aside;             /* ids of runs set aside when the lease lapsed, to re-claim */
    bool reclaiming;           /* a re-claim of them is in the thread pool */
    char last_status[256];
    metrics_lag *lag;
    uv_timer_t debounce_timer;
    uv_fs_event_t *watches[MAX_WATCHES];
    int nwatches;
    uv_work_t scan_work;
    /* what a reload's thread-pool half read from the disk */
    catalog_scan *scan;
    script_limits probe_limits; /* for the reload's probe VM */
    char **probe_dirs;
    uint64_t reload_t0;
    char **reload_watch_dirs;
    config new_cfg;
    int new_cfg_rc;
    char new_cfg_err[1024];
    char **watch_dirs;
    bool reload_again;
    const char *reload_why;
    char addr[96];
    bool stopping;
    /* start-up (serve_steps) */
    const char *address_file;  /* --address-file */
    bool address_written;
    char host[256];
    int port;
    int lock_fd;               /* the data directory's lock, or -1 */
    bool handles_ready;        /* the signal and timer handles are initialised */
    http_server *otlp_http;    /* the OTLP receiver's listener, when otlp.listen is set */
    int servers_draining;      /* listeners still draining at a stop */
} engine;

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static engine *the_engine;

static void finish_stop(void *arg);

static void on_stop_retry(uv_timer_t *t)
{
    finish_stop(t->data);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void close_watches(engine *e)
{
    for (int i = 0; i < e->nwatches; i++)
        uv_close((uv_handle_t *)e->watches[i], free_handle);
    e->nwatches = 0;
}

/* Everything has drained: the loop returns to cmd_serve, which undoes the
 * start-up steps (serve_teardown), as after a failed start. */
static void finish_stop(void *arg)
{
    engine *e = arg;
    if (e->scan_work.data || catalog_applying(e->cat)) { /* a reload's scan or loads are under way */
        uv_timer_start(&e->shutdown_timer, on_stop_retry, 10, 0);
        return;
    }
    uv_timer_stop(&e->shutdown_timer);
    uv_stop(e->loop);
}

static void after_runs_drained(void *arg)
{
    engine *e = arg;
    online_drain(e->online, finish_stop, e);
}

static void after_loop_drained(void *arg)
{
    engine *e = arg;
    runner_drain(e->runner, after_runs_drained, e);
}

static void finish_shutdown(http_server *srv)
{
    (void)srv;
    engine *e = the_engine;
    if (--e->servers_draining > 0) /* the other listener still has requests in flight */
        return;
    uv_timer_stop(&e->shutdown_timer);
    /* the loop's steps in flight end and are written, then runs' calls in
     * flight and their results, then the evaluations running */
    loop_drain(e->lp, after_loop_drained, e);
}

static void on_shutdown_deadline(uv_timer_t *t)
{
    engine *e = t->data;
    log_warn("engine", "shutdown deadline passed with %d connections open; closing them",
             http_server_connections(e->http));
    http_server_close_all(e->http);
    if (e->otlp_http)
        http_server_close_all(e->otlp_http);
}

static void begin_shutdown(engine *e, const char *why)
{
    if (e->stopping)
        return;
    e->stopping = true;
    e->api.draining = true;
    sd_notify(0, "STOPPING=1");
    loop_drain(e->lp, NULL, NULL);       /* no new step of the loop starts */
    runner_drain(e->runner, NULL, NULL); /* runs stop starting jobs; they resume at the next start */
    if (e->handles_ready)
    {
        uv_timer_stop(&e->orphan_timer); /* (several engines: the leader takes them once we are gone) */
        uv_timer_stop(&e->retention_timer);
    }
    script_vm_cancel_io(e->vm); /* scripts waiting on an LLM or HTTP call get "cancelled" and finish */
    llm_abort_all(e->llm, "the engine is stopping");
    api_gateway_stop(&e->api); /* gateway calls in flight: cancelled, answered 503 */
    log_info("engine", "%s: stopping (finishing %d open connections)", why, http_server_connections(e->http));
    uv_timer_start(&e->shutdown_timer, on_shutdown_deadline, (uint64_t)e->cfg.limits.shutdown_timeout_ms, 0);
    e->servers_draining = e->otlp_http ? 2 : 1;
    if (e->otlp_http)
        http_server_drain(e->otlp_http, finish_shutdown);
    http_server_drain(e->http, finish_shutdown);
}

/* ---- scripts and reloading ---- */

typedef void (*report_fn)(const char *msg, void *ud);

/* The folders require() looks in: each root's script folders. */
static char **require_dirs(const config *cfg)
{
    size_t n = 0;
    while (cfg->scripts.dirs[n])
        n++;
    char **out = xcalloc(3 * n + 1, sizeof *out);
    static const char *const kinds[] = {"evaluators", "policies", "scripts"};
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) {
            out[3 * i + (size_t)k] = xmalloc(strlen(cfg->scripts.dirs[i]) + 16);
            sprintf(out[3 * i + (size_t)k], "%s/%s", cfg->scripts.dirs[i], kinds[k]);
        }
    return out;
}

static void vm_limits(const config *cfg, script_limits *lim)
{
    script_limits_default(lim);
    lim->memory_limit = (size_t)cfg->scripts.memory_limit_mb << 20;
    lim->budget_ms = cfg->scripts.evaluator_budget_ms;
    lim->load_budget_ms = cfg->scripts.load_budget_ms;
    lim->stall_ms = cfg->scripts.max_stall_ms;
}

static script_vm *new_vm(uv_loop_t *loop, const config *cfg)
{
    script_limits lim;
    vm_limits(cfg, &lim);
    char **dirs = require_dirs(cfg);
    script_vm *vm = script_vm_new(loop, &lim, (const char *const *)dirs);
    catalog_free_list(dirs);
    return vm;
}

static void log_report(const char *msg, void *ud)
{
    char **first = ud;
    log_error("config", "%s", msg);
    if (first && !*first)
        *first = xstrdup(msg);
}

static void swap_str(char **a, char **b)
{
    char *t = *a;
    *a = *b;
    *b = t;
}

static bool differ(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

static bool dirs_differ(char **a, char **b)
{
    for (; *a && *b; a++, b++)
        if (strcmp(*a, *b) != 0)
            return true;
    return *a || *b;
}

/* Providers, budgets and the HTTP allow-list, from e->cfg into llm.c and
 * script/script_io.c (at start and on each reload). */
static void configure_io(engine *e)
{
    const config *c = &e->cfg;
    char **names = xcalloc(c->nproviders + 1, sizeof *names), **jsons = xcalloc(c->nproviders + 1, sizeof *jsons);
    for (size_t i = 0; i < c->nproviders; i++) {
        names[i] = c->providers[i].name;
        jsons[i] = c->providers[i].json;
    }
    llm_budgets b = {c->llm.daily_calls, c->llm.daily_tokens, c->llm.daily_cost,
                     c->llm.run_calls, c->llm.run_tokens, c->llm.run_cost};
    llm_configure(e->llm, names, jsons, c->nproviders, &b);
    free(names);
    free(jsons);
    scriptio_configure(e->sio, c->http.allow, c->http.timeout_ms, c->http.max_response_bytes);
}

/* Takes what can change while running from n into e->cfg; n keeps the old
 * values (the caller frees it). The rest needs a restart, and says so. */
static void tell_scripts(engine *e);
static void on_cluster(void *data, bool leadership, bool registry_changed);
static void on_orphan_timer(uv_timer_t *t);
static void on_retention_timer(uv_timer_t *t);
/* store.retention_days: how often, and how many traces at most in one transaction */
#define RETENTION_CHECK_MS 1000
#define RETENTION_BATCH 1000
/* how often a leader on a shared database looks for runs whose engine is gone */
#define ORPHAN_CHECK_MS 1000

static void apply_config(engine *e, config *n)
{
    config *c = &e->cfg;
    if (differ(c->listen, n->listen) || differ(c->data_dir, n->data_dir) || differ(c->log_format, n->log_format) ||
        c->access_log != n->access_log || memcmp(&c->limits, &n->limits, sizeof c->limits) != 0 ||
        c->scripts.memory_limit_mb != n->scripts.memory_limit_mb ||
        c->scripts.load_budget_ms != n->scripts.load_budget_ms || c->scripts.watch != n->scripts.watch ||
        dirs_differ(c->scripts.dirs, n->scripts.dirs))
        log_warn("config", "changes to listen, data_dir, log_format, access_log, limits and scripts.dirs, "
                           "memory_limit_mb, load_budget_ms, watch take effect at the next restart; the rest is "
                           "applied now");
    swap_str(&c->source, &n->source); /* the lines of messages about the prompts taken below */
    swap_str(&c->ingest_token, &n->ingest_token);
    swap_str(&c->admin_token, &n->admin_token);
    swap_str(&c->metrics_token, &n->metrics_token);
    swap_str(&c->viewer_token, &n->viewer_token);
    c->debug_endpoints = n->debug_endpoints;
    swap_str(&c->log_level, &n->log_level);
    log_set_level((enum log_level)log_level_parse(c->log_level));
    config_prompt *p = c->prompts;
    size_t np = c->nprompts;
    c->prompts = n->prompts;
    c->nprompts = n->nprompts;
    n->prompts = p;
    n->nprompts = np;
    c->scripts.evaluator_budget_ms = n->scripts.evaluator_budget_ms;
    c->scripts.policy_budget_ms = n->scripts.policy_budget_ms;
    c->scripts.template_budget_ms = n->scripts.template_budget_ms;
    c->scripts.reload_debounce_ms = n->scripts.reload_debounce_ms;
    c->evaluation = n->evaluation;
    online_configure(e->online, c);
    runner_configure(e->runner, c);
    loop_configure(e->lp, c);
    config_provider *pv = c->providers;
    size_t npv = c->nproviders;
    c->providers = n->providers;
    c->nproviders = n->nproviders;
    n->providers = pv;
    n->nproviders = npv;
    c->llm = n->llm;
    char **allow = c->http.allow;
    c->http = n->http;
    n->http.allow = allow;
    configure_io(e);
}

static void setup_watches(engine *e, char **dirs);
static void reload_start(engine *e, const char *why);

/* The command line wins over the file, at start and on every reload. */
static void apply_cli(const engine *e, config *c)
{
    if (e->cli_listen) {
        free(c->listen);
        c->listen = xstrdup(e->cli_listen);
    }
    if (e->cli_data_dir) {
        free(c->data_dir);
        c->data_dir = xstrdup(e->cli_data_dir);
    }
    if (e->script_dir)
        config_prepend_script_dir(c, e->script_dir);
}

static void on_scripts_applied(catalog *cat, int failed, void *ud);

/* The reload's disk half, in the thread pool: the scripts, the config file,
 * the folders to watch. */
static void scan_work(uv_work_t *w)
{
    engine *e = w->data;
    e->scan = catalog_scan_run(catalog_dirs(e->cat));
    /* each script loads once here, off the loop, in a VM of its own: one
     * that spins, runs out of memory or fails keeps its running version and
     * never runs in the engine's VM */
    catalog_scan_probe(e->scan, &e->probe_limits, (const char *const *)e->probe_dirs);
    config_defaults(&e->new_cfg);
    e->new_cfg_rc = e->config_path ? config_load(&e->new_cfg, e->config_path, e->new_cfg_err,
                                                 sizeof e->new_cfg_err) : 0;
    e->watch_dirs = e->cfg.scripts.watch ? catalog_watch_dirs(catalog_dirs(e->cat)) : NULL;
}

/* A reload's checks of each new script version against the configuration
 * that will run (the new one when it parsed, else the running one). */
static void first_report(const char *msg, void *ud)
{
    buf_t *b = ud;
    if (b->len < 700) /* the first few; the config check lists them all */
        buf_printf(b, "%s%s", b->len ? "; " : "", msg);
}

static int accept_version(void *ud, catalog *cat, const char *slot, const loaded_evaluator *le, char *why,
                          size_t whylen)
{
    const config *cfg = ud;
    buf_t b;
    buf_init(&b);
    int n = confcheck_script(cfg, cat, slot, le, first_report, &b);
    if (n)
        snprintf(why, whylen, "%s", b.data);
    buf_free(&b);
    return n ? -1 : 0;
}

static bool script_in_use(void *ud, const char *slot)
{
    return confcheck_uses(ud, slot);
}

static void scan_after(uv_work_t *w, int status)
{
    (void)status;
    engine *e = w->data;
    w->data = NULL;
    char **watch_dirs = e->watch_dirs;
    e->watch_dirs = NULL;
    if (e->stopping) {
        catalog_scan_free(e->scan);
        e->scan = NULL;
        config_free(&e->new_cfg);
        catalog_free_list(watch_dirs);
        return;
    }
    e->reload_t0 = mono_ns();
    bool new_ok = e->config_path && e->new_cfg_rc == 0;
    if (new_ok)
        apply_cli(e, &e->new_cfg);
    /* each new script version must fit the configuration that will run;
     * a removed script that it uses keeps running */
    catalog_hooks hooks = {accept_version, script_in_use, new_ok ? (void *)&e->new_cfg : (void *)&e->cfg};
    catalog_scan *scan = e->scan;
    e->scan = NULL;
    e->reload_watch_dirs = watch_dirs;
    catalog_apply_async(e->cat, scan, true, &hooks, on_scripts_applied, e);
}

/* The reload's scripts are in place (each file's top level ran sliced on
 * the loop); now the config. */
static void on_scripts_applied(catalog *cat, int failed, void *ud)
{
    (void)cat;
    engine *e = ud;
    char **watch_dirs = e->reload_watch_dirs;
    e->reload_watch_dirs = NULL;
    uint64_t t0 = e->reload_t0;
    if (e->stopping) {
        config_free(&e->new_cfg);
        catalog_free_list(watch_dirs);
        e->reload.reloading = false;
        return;
    }
    char *config_error = NULL;
    if (e->config_path) {
        config *n = &e->new_cfg;
        if (e->new_cfg_rc != 0) {
            log_error("config", "%s (the running configuration stays)", e->new_cfg_err);
            config_error = xstrdup(e->new_cfg_err);
        } else if (confcheck_config(n, e->cat, log_report, &config_error) == 0) {
            apply_config(e, n);
        } else {
            log_error("config", "the running configuration stays");
        }
        /* the running configuration stays: do the scripts taken in still fit it? */
        char *stale = NULL;
        if (config_error && confcheck_config(&e->cfg, e->cat, log_report, &stale) > 0) {
            char *both = xmalloc(strlen(config_error) + strlen(stale) + 80);
            sprintf(both, "%s; and the running configuration no longer fits the scripts: %s", config_error, stale);
            free(config_error);
            config_error = both;
        }
        free(stale);
    }
    config_free(&e->new_cfg);
    free(e->reload.config_error);
    e->reload.config_error = config_error;
    e->reload.reloads++;
    e->reload.last_ms = now_ms();
    tell_scripts(e); /* the heartbeat carries the versions now running */
    e->reload.reloading = false;
    if (failed || config_error)
        e->reload.failures++;
    log_info("engine", "reloaded (%s) in %.1f ms: %d script errors%s", e->reload_why,
             (double)(mono_ns() - t0) / 1e6, failed, config_error ? ", config error" : "");
    sd_notifyf(0, "READY=1\nSTATUS=listening on %s; reloaded (%s)%s", e->addr, e->reload_why,
               failed || config_error ? " with errors, see /v1/status" : "");
    if (e->cfg.scripts.watch)
        setup_watches(e, watch_dirs); /* folders may have come or gone */
    catalog_free_list(watch_dirs);
    if (e->reload_again) {
        e->reload_again = false;
        reload_start(e, "further changes");
    }
}

static void reload_start(engine *e, const char *why)
{
    if (e->stopping)
        return;
    if (e->scan_work.data || catalog_applying(e->cat)) {
        e->reload_again = true;
        return;
    }
    e->reload_why = why;
    e->reload.reloading = true;
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading (%s)",
               (unsigned long long)(mono_ns() / 1000), why);
    e->scan_work.data = e;
    uv_queue_work(e->loop, &e->scan_work, scan_work, scan_after);
}

static void on_debounced(uv_timer_t *t)
{
    reload_start(t->data, "a file changed");
}

static bool worth_reloading(engine *e, const char *name)
{
    if (!name)
        return true;
    size_t n = strlen(name);
    if (n > 4 && strcmp(name + n - 4, ".lua") == 0 && name[0] != '.')
        return true;
    if (!strcmp(name, "evaluators") || !strcmp(name, "policies") || !strcmp(name, "scripts"))
        return true;
    if (e->config_path) {
        const char *base = strrchr(e->config_path, '/');
        base = base ? base + 1 : e->config_path;
        if (strcmp(base, name) == 0)
            return true;
    }
    return false;
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)events;
    engine *e = h->data;
    if (status < 0 || !worth_reloading(e, filename))
        return;
    uv_timer_start(&e->debounce_timer, on_debounced, (uint64_t)e->cfg.scripts.reload_debounce_ms, 0);
}

static void add_watch(engine *e, const char *dir)
{
    if (e->nwatches >= MAX_WATCHES)
        return;
    uv_fs_event_t *w = xmalloc(sizeof *w);
    uv_fs_event_init(e->loop, w);
    w->data = e;
    if (uv_fs_event_start(w, on_fs_event, dir, 0) != 0) {
        uv_close((uv_handle_t *)w, free_handle);
        return;
    }
    e->watches[e->nwatches++] = w;
}

/* dirs: from catalog_watch_dirs (listed off the loop on a reload) */
static void setup_watches(engine *e, char **dirs)
{
    close_watches(e);
    for (char **d = dirs; d && *d; d++)
        add_watch(e, *d);
    if (e->config_path) {
        char *copy = xstrdup(e->config_path);
        add_watch(e, dirname(copy));
        free(copy);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    engine *e = h->data;
    if (signum == SIGHUP) {
        log_info("engine", "SIGHUP: reloading the configuration and every script");
        reload_start(e, "SIGHUP");
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

/* The one-line summary systemctl status shows: what came in, what waits,
 * what the loop does. Sent when it changes, checked every second. */
static void on_status_timer(uv_timer_t *t)
{
    engine *e = t->data;
    if (e->stopping)
        return;
    buf_t line;
    buf_init(&line);
    buf_printf(&line, "listening on %s; %llu traces in, evaluation backlog %zu", e->addr,
               (unsigned long long)e->api.ingest_n[INGEST_TRACES].items[0], online_backlog(e->online));
    int runs = runner_active(e->runner);
    if (runs)
        buf_printf(&line, ", %d run%s", runs, runs == 1 ? "" : "s");
    loop_summary(e->lp, &line);
    if (line.len >= sizeof e->last_status) /* systemctl shows one line: cut it */
        line.data[line.len = sizeof e->last_status - 1] = '\0';
    if (strcmp(line.data, e->last_status) != 0) {
        memcpy(e->last_status, line.data, line.len + 1);
        sd_notifyf(0, "STATUS=%s", line.data);
    }
    buf_free(&line);
}

static void start_watchdog(engine *e)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        uint64_t every_ms = usec / 2000; /* twice per interval, as sd_watchdog_enabled(3) advises */
        if (every_ms == 0)
            every_ms = 1;
        uv_timer_start(&e->watchdog_timer, on_watchdog, every_ms, every_ms);
        log_info("engine", "systemd watchdog: pinging every %llu ms", (unsigned long long)every_ms);
    }
}

/* ---- serve: start-up in steps, each with its undo ----
 *
 * cmd_serve runs the steps in order. When one fails, the message names the
 * step and why, and the undo of that step and of every step before it runs
 * in reverse order (serve_teardown); a clean shutdown ends with the same
 * teardown once everything has drained. So every exit of `serve` goes
 * through one path, and each undo must accept what a half-done step left
 * (NULL pointers). Nothing that starts work in the background (queued
 * re-evaluations, resumed runs, the loop) happens before every step has
 * succeeded: that is begin_serving's. */

static int start_config(engine *e, char *err, size_t errlen)
{
    config_defaults(&e->cfg);
    if (e->config_path && config_load(&e->cfg, e->config_path, err, errlen) != 0)
        return -1;
    if (e->cli_listen && config_parse_listen(e->cli_listen, e->host, sizeof e->host, &e->port) != 0) {
        snprintf(err, errlen, "--listen '%s' is not an address like 127.0.0.1:7700 or [::1]:7700", e->cli_listen);
        return -1;
    }
    apply_cli(e, &e->cfg);
    if (config_parse_listen(e->cfg.listen, e->host, sizeof e->host, &e->port) != 0) {
        snprintf(err, errlen, "listen '%s' is not an address like 127.0.0.1:7700 or [::1]:7700", e->cfg.listen);
        return -1;
    }
    log_set_level((enum log_level)log_level_parse(e->cfg.log_level));
    log_set_json(strcmp(e->cfg.log_format, "json") == 0);
    return 0;
}

static void undo_config(engine *e)
{
    config_free(&e->cfg);
}

static int start_data_dir(engine *e, char *err, size_t errlen)
{
    e->lock_fd = datadir_lock(e->cfg.data_dir, err, errlen);
    return e->lock_fd < 0 ? -1 : 0;
}

static void undo_data_dir(engine *e)
{
    datadir_unlock(e->lock_fd);
    e->lock_fd = -1;
}

/* the store, with its writer and checkpointer threads */
static int start_store(engine *e, char *err, size_t errlen)
{
    store_options o = {.kind = e->cfg.store.kind, .dir = e->cfg.data_dir, .dsn = e->cfg.store.dsn,
                       .max_pending = e->cfg.limits.max_pending_writes, .read_pool = e->cfg.store.read_pool,
                       .retention_days = e->cfg.store.retention_days};
    return store_open(&e->store, e->loop, &o, err, errlen);
}

static void undo_store(engine *e)
{
    if (e->store)
        store_close(e->store); /* every queued write is committed and answered; the threads are joined */
    e->store = NULL;
}

/* every script must load at start (later, a reload that fails keeps the old
 * version; at start there is none to keep) */
static int start_scripts(engine *e, char *err, size_t errlen)
{
    e->vm = new_vm(e->loop, &e->cfg);
    vm_limits(&e->cfg, &e->probe_limits);
    e->probe_dirs = require_dirs(&e->cfg); /* for reloads' probes */
    e->cat = catalog_new(e->vm, (const char *const *)e->cfg.scripts.dirs);
    int n = catalog_reload(e->cat, true) + confcheck_config(&e->cfg, e->cat, log_report, NULL);
    if (n) {
        snprintf(err, errlen, "%d script or configuration error%s, listed above (`ratchet check` lists them too)", n,
                 n == 1 ? "" : "s");
        return -1;
    }
    return 0;
}

static void undo_scripts(engine *e)
{
    if (e->cat)
        catalog_free(e->cat);
    e->cat = NULL;
    if (e->vm)
        script_vm_free(e->vm);
    e->vm = NULL;
    catalog_free_list(e->probe_dirs);
    e->probe_dirs = NULL;
    free(e->reload.config_error);
    e->reload.config_error = NULL;
}

/* the HTTP client, LLM calls, and what scripts' ratchet.llm.chat and
 * ratchet.http.request go through */
static int start_io(engine *e, char *err, size_t errlen)
{
    e->httpc = httpc_new(e->loop);
    e->llm = llm_new(e->loop, e->httpc, e->store);
    if (llm_load_totals(e->llm, err, errlen) != 0)
        log_warn("llm", "cannot read today's spending from the ledger (%s); daily budgets count from zero", err);
    err[0] = '\0';
    e->sio = scriptio_new(e->loop, e->llm, e->httpc);
    configure_io(e);
    script_vm_set_io(e->vm, scriptio_hooks(e->sio));
    return 0;
}

static void undo_io(engine *e)
{
    if (e->vm) {
        /* scripts waiting on a call get "cancelled"; none can start another */
        static const script_io none;
        script_vm_cancel_io(e->vm);
        script_vm_set_io(e->vm, &none);
    }
    api_gateway_stop(&e->api); /* no gateway call outlives the HTTP client */
    api_gateway_free(&e->api);
    if (e->store) {
        llm_ledger_flush(e->llm);
        store_flush(e->store); /* the ledger's last rows are written and answered */
    }
    scriptio_free(e->sio);
    llm_free(e->llm);
    httpc_free(e->httpc);
    e->sio = NULL;
    e->llm = NULL;
    e->httpc = NULL;
}

/* online evaluation, the prompt registry, regression runs and the loop, with
 * the state the store holds for them */
static int start_state(engine *e, char *err, size_t errlen)
{
    char why[900];
    e->online = online_new(e->loop, e->store, e->vm, e->cat, &e->cfg);
    e->reg = registry_new(e->store);
    if (registry_load(e->reg, why, sizeof why) != 0) {
        snprintf(err, errlen, "cannot read the prompt registry: %s", why);
        return -1;
    }
    e->runner = runner_new(e->loop, e->store, e->reg, e->cat, e->vm, e->llm, &e->cfg);
    e->lp = loop_new(e->loop, e->store, e->reg, e->runner, e->cat, e->vm, e->llm, &e->cfg);
    if (loop_load(e->lp, why, sizeof why) != 0) {
        snprintf(err, errlen, "cannot read the loop's state: %s", why);
        return -1;
    }
    return 0;
}

static void undo_state(engine *e)
{
    if (e->store) {
        /* (teardown runs after the loop stopped) no more news from the other engines, and the
         * reads of it in the thread pool finish before what they update goes */
        store_on_cluster(e->store, NULL, NULL);
        while (e->cluster_reads > 0)
            uv_run(e->loop, UV_RUN_ONCE);
        store_flush(e->store); /* no write of theirs still waits for its answer */
    }
    loop_free(e->lp);
    json_decref(e->aside);
    e->aside = NULL;
    runner_free(e->runner);
    registry_free(e->reg);
    if (e->online)
        online_free(e->online);
    e->lp = NULL;
    e->runner = NULL;
    e->reg = NULL;
    e->online = NULL;
}

/* the HTTP API's listener */
static int start_listener(engine *e, char *err, size_t errlen)
{
    e->api.loop = e->loop;
    e->api.cfg = &e->cfg;
    e->api.store = e->store;
    e->api.online = e->online;
    e->api.catalog = e->cat;
    e->api.llm = e->llm;
    e->api.registry = e->reg;
    e->api.runner = e->runner;
    e->api.loop_sm = e->lp;
    e->api.reload = &e->reload;
    e->api.started_ms = now_ms();
    char cerr[600];
    e->api.console = console_load(config_share_dir(), cerr, sizeof cerr);
    if (!e->api.console)
        log_warn("engine", "the web console is off: %s", cerr);
    http_limits lim = {
        .max_connections = e->cfg.limits.max_connections,
        .max_connections_per_address = e->cfg.limits.max_connections_per_address,
        .max_header_bytes = (size_t)e->cfg.limits.max_header_bytes,
        .max_body_bytes = (size_t)e->cfg.limits.max_body_bytes,
        .header_timeout_ms = e->cfg.limits.header_timeout_ms,
        .body_timeout_ms = e->cfg.limits.body_timeout_ms,
        .idle_timeout_ms = e->cfg.limits.idle_timeout_ms,
        .access_log = e->cfg.access_log,
    };
    if (http_server_start(&e->http, e->loop, e->host, e->port, &lim, api_handle, &e->api, err, errlen) != 0) {
        e->http = NULL;
        return -1;
    }
    e->api.http = e->http;
    http_server_address(e->http, e->addr, sizeof e->addr);
    return 0;
}

static void undo_listener(engine *e)
{
    if (e->http) { /* its memory goes after the loop has closed its handles (serve_teardown) */
        http_server_drain(e->http, NULL);
        http_server_close_all(e->http);
    }
    e->api.http = NULL;
    console_free(e->api.console); /* no request is answered after close_all */
    e->api.console = NULL;
}

/* the OTLP receiver's own listener (otlp.listen; none when absent), on the
 * same API state: its spans take the ingest path (api/api_otlp.c) */
static int start_otlp(engine *e, char *err, size_t errlen)
{
    if (!e->cfg.otlp.listen)
        return 0;
    char host[256];
    int port;
    if (config_parse_listen(e->cfg.otlp.listen, host, sizeof host, &port) != 0) {
        snprintf(err, errlen, "otlp.listen '%s' is not an address like 127.0.0.1:4318", e->cfg.otlp.listen);
        return -1;
    }
    http_limits lim = {
        .max_connections = e->cfg.limits.max_connections,
        .max_connections_per_address = e->cfg.limits.max_connections_per_address,
        .max_header_bytes = (size_t)e->cfg.limits.max_header_bytes,
        .max_body_bytes = (size_t)e->cfg.limits.max_body_bytes,
        .header_timeout_ms = e->cfg.limits.header_timeout_ms,
        .body_timeout_ms = e->cfg.limits.body_timeout_ms,
        .idle_timeout_ms = e->cfg.limits.idle_timeout_ms,
        .access_log = e->cfg.access_log,
    };
    char why[512];
    if (http_server_start(&e->otlp_http, e->loop, host, port, &lim, api_otlp_handle, &e->api, why, sizeof why) != 0) {
        e->otlp_http = NULL;
        snprintf(err, errlen, "otlp.listen: %s", why);
        return -1;
    }
    http_server_set_error_writer(e->otlp_http, api_otlp_error);
    e->api.otlp_http = e->otlp_http;
    char addr[96];
    http_server_address(e->otlp_http, addr, sizeof addr);
    log_info("engine", "OTLP receiver listening on %s (POST /v1/traces, /v1/logs)", addr);
    return 0;
}

static void undo_otlp(engine *e)
{
    if (e->otlp_http) { /* freed after the loop has closed its handles (serve_teardown) */
        http_server_drain(e->otlp_http, NULL);
        http_server_close_all(e->otlp_http);
    }
    e->api.otlp_http = NULL;
}

/* signals, the timers (shutdown deadline, reload debounce, watchdog,
 * status), file watches and the event-loop lag probe */
static int start_handles(engine *e, char *err, size_t errlen)
{
    uv_signal_init(e->loop, &e->sigterm);
    uv_signal_init(e->loop, &e->sigint);
    uv_signal_init(e->loop, &e->sighup);
    uv_timer_init(e->loop, &e->shutdown_timer);
    uv_timer_init(e->loop, &e->debounce_timer);
    uv_timer_init(e->loop, &e->watchdog_timer);
    uv_timer_init(e->loop, &e->status_timer);
    uv_timer_init(e->loop, &e->orphan_timer);
    e->orphan_timer.data = e;
    uv_timer_init(e->loop, &e->retention_timer);
    e->retention_timer.data = e;
    e->sigterm.data = e->sigint.data = e->sighup.data = e;
    e->shutdown_timer.data = e->debounce_timer.data = e->status_timer.data = e;
    e->handles_ready = true;
    static const int signums[] = {SIGTERM, SIGINT, SIGHUP};
    uv_signal_t *sigs[] = {&e->sigterm, &e->sigint, &e->sighup};
    for (int i = 0; i < 3; i++) {
        int rc = uv_signal_start(sigs[i], on_signal, signums[i]);
        if (rc != 0) {
            snprintf(err, errlen, "cannot handle %s: %s", strsignal(signums[i]), uv_strerror(rc));
            return -1;
        }
    }
    if (e->cfg.scripts.watch) {
        char **dirs = catalog_watch_dirs(catalog_dirs(e->cat));
        setup_watches(e, dirs);
        catalog_free_list(dirs);
    }
    start_watchdog(e);
    if (getenv("NOTIFY_SOCKET"))
        uv_timer_start(&e->status_timer, on_status_timer, 1000, 1000);
    e->lag = metrics_lag_start(e->loop, 100);
    e->api.lag = e->lag;
    return 0;
}

static void undo_handles(engine *e)
{
    if (e->lag)
        metrics_lag_stop(e->lag);
    e->lag = e->api.lag = NULL;
    close_watches(e);
    if (!e->handles_ready)
        return;
    uv_handle_t *hs[] = {(uv_handle_t *)&e->sigterm,        (uv_handle_t *)&e->sigint,
                         (uv_handle_t *)&e->sighup,         (uv_handle_t *)&e->shutdown_timer,
                         (uv_handle_t *)&e->debounce_timer, (uv_handle_t *)&e->watchdog_timer,
                         (uv_handle_t *)&e->status_timer,   (uv_handle_t *)&e->orphan_timer,
                         (uv_handle_t *)&e->retention_timer};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        close_handle(hs[i]);
    e->handles_ready = false;
}

/* the address file that says where the listener is: the last step, so
 * whoever reads it (a supervisor, a spec) finds an engine whose signal
 * handlers are in place (a SIGTERM sent at once used to meet the default
 * action and kill it uncleanly, status 143) */
static int start_address_file(engine *e, char *err, size_t errlen)
{
    if (!e->address_file)
        return 0;
    if (write_address_file(e->address_file, e->addr) != 0) {
        snprintf(err, errlen, "cannot write the address file '%s': %s", e->address_file, strerror(errno));
        return -1;
    }
    e->address_written = true;
    return 0;
}

static void undo_address_file(engine *e)
{
    if (e->address_written && unlink(e->address_file) != 0)
        log_warn("engine", "cannot remove the address file '%s': %s", e->address_file, strerror(errno));
    e->address_written = false;
}

typedef struct {
    const char *what; /* "start-up failed at the ..." */
    int (*start)(engine *e, char *err, size_t errlen);
    void (*undo)(engine *e);
} serve_step;

static const serve_step serve_steps[] = {
    {"configuration", start_config, undo_config},
    {"data directory", start_data_dir, undo_data_dir},
    {"store", start_store, undo_store},
    {"scripts", start_scripts, undo_scripts},
    {"LLM and HTTP clients", start_io, undo_io},
    {"registry and loop state", start_state, undo_state},
    {"listener", start_listener, undo_listener},
    {"OTLP listener", start_otlp, undo_otlp},
    {"signals and timers", start_handles, undo_handles},
    {"address file", start_address_file, undo_address_file},
};
enum { SERVE_STEPS = sizeof serve_steps / sizeof serve_steps[0] };

static void close_stray(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h))
        return;
    log_error("engine", "teardown: a %s handle was left open; closing it", uv_handle_type_name(h->type));
    uv_close(h, NULL);
}

/* Undoes steps [0, n) in reverse order, then lets the loop finish the
 * closes they began (so it cannot hang on a handle an undo forgot, such a
 * handle is named and closed) and closes it. */
static void serve_teardown(engine *e, int n)
{
    while (n-- > 0)
        serve_steps[n].undo(e);
    uv_walk(e->loop, close_stray, NULL);
    uv_run(e->loop, UV_RUN_DEFAULT);
    http_server_free(e->http);
    e->http = NULL;
    http_server_free(e->otlp_http);
    e->otlp_http = NULL;
    int rc = uv_loop_close(e->loop);
    if (rc != 0)
        log_error("engine", "teardown: the event loop closed with handles still open: %s", uv_strerror(rc));
    /* libuv's thread pool and signal pipe: after this, nothing of serve runs
     * besides this thread */
    uv_library_shutdown();
}

/* What was open before serve started: file descriptors 0..1023. */
typedef struct {
    unsigned char fd[1024 / 8];
} open_fds;

static void list_open_fds(open_fds *o)
{
    memset(o, 0, sizeof *o);
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) != -1)
            o->fd[fd / 8] |= (unsigned char)(1u << (fd % 8));
}

static int count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* After the teardown: the one thread left is this one, and every file
 * descriptor open is one that was open before serve started. Anything else
 * is an undo that forgot something, named in the log. */
static void check_left_behind(const open_fds *before)
{
    open_fds now;
    list_open_fds(&now);
    for (int fd = 0; fd < 1024; fd++) {
        bool was = before->fd[fd / 8] & (1u << (fd % 8)), is = now.fd[fd / 8] & (1u << (fd % 8));
        if (is && !was) {
            char link[64], target[512] = "?";
            snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
            ssize_t n = readlink(link, target, sizeof target - 1);
            target[n > 0 ? n : 1] = '\0';
            log_error("engine", "teardown left file descriptor %d open (%s)", fd, target);
        }
    }
    int threads = count_threads();
    if (threads > 1)
        log_error("engine", "teardown left %d threads running besides the main one", threads - 1);
}

/* Every step done: announce, then start what works in the background. */
static void begin_serving(engine *e)
{
    log_info("engine", "ratchet %s listening on %s, data in %s%s%s", RATCHET_VERSION, e->addr, e->cfg.data_dir,
             e->cfg.path ? ", config " : " (built-in default config)", e->cfg.path ? e->cfg.path : "");
    if (!e->cfg.ingest_token)
        log_warn("engine", "no ingest_token is configured: only loopback clients may ingest");
    if (!e->cfg.admin_token)
        log_warn("engine", "no admin_token is configured: only loopback clients may read or administer");
    /* READY only now: the listener is bound, the store open, the scripts loaded */
    catalog_stats cst;
    catalog_get_stats(e->cat, &cst);
    sd_notifyf(0, "READY=1\nSTATUS=listening on %s, data in %s, %zu evaluators, %zu prompts", e->addr,
               e->cfg.data_dir, cst.evaluators, e->cfg.nprompts);
    /* traces acknowledged but not evaluated before the last stop; with several engines the
     * leader claims those of engines gone instead, each once (on_orphan_timer) */
    bool shared = !strcmp(store_kind(e->store), "postgres");
    for (size_t i = 0; i < e->cfg.nprompts && !shared; i++)
        if (online_has_prompt(e->online, e->cfg.prompts[i].name))
            online_reevaluate(e->online, e->cfg.prompts[i].name, 0, INT64_MAX, true);
    char err[1024];
    /* with several engines, the leader resumes the runs (a follower's would run twice) */
    if (store_leader(e->store) && runner_resume(e->runner, err, sizeof err) < 0)
        log_error("runs", "cannot resume the runs a stop interrupted: %s", err);
    tell_scripts(e);
    store_on_cluster(e->store, on_cluster, e);
    loop_start(e->lp);
    /* several engines: runs whose engine died are taken by the leader, at a takeover too */
    if (e->handles_ready && shared)
        uv_timer_start(&e->orphan_timer, on_orphan_timer, ORPHAN_CHECK_MS, ORPHAN_CHECK_MS);
    if (e->handles_ready)
        uv_timer_start(&e->retention_timer, on_retention_timer, RETENTION_CHECK_MS, RETENTION_CHECK_MS);
}

static void on_retention_done(store_write *w)
{
    engine *e = w->data;
    if (w->status)
        log_warn("store", "a batch of traces past store.retention_days could not be deleted; the next pass retries");
    store_write_clear(w);
    e->retention_busy = false;
}

/* store.retention_days: a batch of the oldest traces past it, deleted by the writer thread
 * (one engine of several: the leader) while no batch is queued; on PostgreSQL also, with a
 * retention or without, the upkeep of the daily partitions of traces (docs/scale-out.md) */
static void on_retention_timer(uv_timer_t *t)
{
    engine *e = t->data;
    int days = e->cfg.store.retention_days;
    if (e->stopping || e->retention_busy || (days <= 0 && !store_has_upkeep(e->store)) || !store_leader(e->store))
        return;
    store_write *w = &e->retention_write;
    memset(w, 0, sizeof *w);
    store_delete_old_traces(w, days > 0 ? now_ms() - (int64_t)days * 86400000 : 0, RETENTION_BATCH);
    w->done = on_retention_done;
    w->data = e;
    if (store_submit(e->store, w) != 0) {
        store_write_clear(w);
        return;
    }
    e->retention_busy = true;
}

typedef struct {
    uv_work_t req;
    engine *e;
    json_t *runs;
    char **prompts; /* with online evaluation: their unevaluated traces of engines gone */
    size_t nprompts;
    json_t *traces; /* [[id, prompt], ...] claimed */
    json_t *ids;    /* the runs claimed */
    uint64_t lease_gen;
    int rc;
    char err[256];
} orphan_read;

/* traces claimed per prompt and second: the online queue takes them in steps */
#define ORPHAN_TRACES 500

/* on a pool thread: claim the unfinished runs whose owner stopped beating (a compare-and-set
 * in the store, so no other engine resumes them too) and read what they had done */
static void orphan_work(uv_work_t *req)
{
    orphan_read *r = req->data;
    r->rc = store_unfinished_runs(r->e->store, &r->ids, r->err, sizeof r->err);
    if (!r->rc && json_array_size(r->ids))
        r->rc = runner_resume_read(r->e->store, r->ids, &r->runs, r->err, sizeof r->err);
    r->traces = json_array();
    for (size_t i = 0; i < r->nprompts && !r->rc; i++) {
        char **tids = NULL;
        size_t n = 0;
        r->rc = store_claim_unevaluated(r->e->store, r->prompts[i], ORPHAN_TRACES, &tids, &n, r->err, sizeof r->err);
        for (size_t k = 0; k < n; k++) {
            json_array_append_new(r->traces, json_pack("[s, s]", tids[k], r->prompts[i]));
            free(tids[k]);
        }
        free(tids);
    }
}

static void orphan_after(uv_work_t *req, int status)
{
    orphan_read *r = req->data;
    engine *e = r->e;
    e->cluster_reads--;
    e->orphan_reading = false;
    /* claimed: this engine runs them even if it no longer leads; if it is stopping they stay
     * its own, and the leader takes them once its heartbeat stops. If its lease lapsed since
     * the claim, they are set aside and re-claimed like its own (another may have them now). */
    bool lapsed = store_lease_generation(e->store) != r->lease_gen;
    if (status == 0 && r->rc == 0 && lapsed && json_array_size(r->ids)) {
        if (!e->aside)
            e->aside = json_array();
        json_array_extend(e->aside, r->ids);
    } else if (status == 0 && r->rc == 0 && r->runs && e->runner && !e->stopping) {
        runner_resume_apply(e->runner, r->runs);
    }
    else if (status == 0 && r->rc)
        log_error("runs", "cannot take over the runs or traces of engines gone: %s", r->err);
    size_t i;
    json_t *t;
    /* claimed traces are this engine's to evaluate (a stopping engine leaves them to the next) */
    json_array_foreach(r->traces, i, t)
        if (e->online && !e->stopping)
            online_enqueue(e->online, json_string_value(json_array_get(t, 0)), json_string_value(json_array_get(t, 1)));
    if (json_array_size(r->traces))
        log_info("online", "evaluating %zu traces that engines gone left unevaluated", json_array_size(r->traces));
    for (size_t k = 0; k < r->nprompts; k++)
        free(r->prompts[k]);
    free(r->prompts);
    json_decref(r->traces);
    json_decref(r->runs);
    json_decref(r->ids);
    free(r);
}

typedef struct {
    uv_work_t req;
    engine *e;
    json_t *ids, *kept, *runs;
    uint64_t lease_gen; /* store_lease_generation before the claim: another after it, claim again */
    int rc;
    char err[256];
} reclaim_read;

/* on a pool thread: which runs set aside are still this engine's (a compare-and-set under
 * the claim lock), and what they had done */
static void reclaim_work(uv_work_t *req)
{
    reclaim_read *r = req->data;
    r->rc = store_reclaim_runs(r->e->store, r->ids, &r->kept, r->err, sizeof r->err);
    if (!r->rc && json_array_size(r->kept))
        r->rc = runner_resume_read(r->e->store, r->kept, &r->runs, r->err, sizeof r->err);
}

static void reclaim_after(uv_work_t *req, int status)
{
    reclaim_read *r = req->data;
    engine *e = r->e;
    e->cluster_reads--;
    e->reclaiming = false;
    if (status == 0 && r->rc == 0 && store_lease_generation(e->store) != r->lease_gen) {
        r->rc = -1; /* the lease lapsed again meanwhile: what was re-claimed may be another's by now */
        snprintf(r->err, sizeof r->err, "the lease lapsed again during the re-claim");
    }
    if (status == 0 && r->rc == 0) {
        size_t i;
        json_t *id;
        json_array_foreach(r->ids, i, id) {
            bool kept = false;
            size_t k;
            json_t *x;
            json_array_foreach(r->kept, k, x) kept |= json_equal(x, id);
            if (!kept)
                log_info("runs", "run %s: no longer this engine's after its lease lapsed (another engine claimed "
                         "it, or it ended); not resumed here", json_string_value(id));
        }
        if (r->runs && e->runner && !e->stopping)
            runner_resume_apply(e->runner, r->runs);
    } else {
        /* tried again at the next tick */
        if (status == 0)
            log_error("runs", "cannot re-claim the runs set aside when the lease lapsed: %s", r->err);
        if (!e->aside)
            e->aside = json_array();
        json_array_extend(e->aside, r->ids);
    }
    json_decref(r->ids);
    json_decref(r->kept);
    json_decref(r->runs);
    free(r);
}

/* Every engine: the runs it set aside when its lease lapsed, re-claimed once the lease is
 * fresh again (docs/scale-out.md, "Leases"). */
static void reclaim_aside(engine *e)
{
    json_t *ids = runner_set_aside(e->runner);
    if (json_array_size(ids)) {
        if (!e->aside)
            e->aside = json_array();
        json_array_extend(e->aside, ids);
    }
    json_decref(ids);
    if (e->stopping || e->reclaiming || !json_array_size(e->aside) || !store_lease_fresh(e->store))
        return;
    reclaim_read *r = xcalloc(1, sizeof *r);
    r->e = e;
    r->req.data = r;
    r->ids = e->aside;
    r->lease_gen = store_lease_generation(e->store);
    e->aside = NULL;
    e->reclaiming = true;
    e->cluster_reads++;
    uv_queue_work(e->loop, &r->req, reclaim_work, reclaim_after);
}

static void on_orphan_timer(uv_timer_t *t)
{
    engine *e = t->data;
    if (!e->stopping)
        reclaim_aside(e);
    if (e->stopping || e->orphan_reading || !store_leader(e->store))
        return;
    orphan_read *r = xcalloc(1, sizeof *r);
    r->e = e;
    r->req.data = r;
    r->lease_gen = store_lease_generation(e->store);
    /* claim no more traces while the online queue still has many */
    if (e->online && online_backlog(e->online) < ORPHAN_TRACES) {
        r->prompts = xcalloc(e->cfg.nprompts ? e->cfg.nprompts : 1, sizeof *r->prompts);
        for (size_t i = 0; i < e->cfg.nprompts; i++)
            if (online_has_prompt(e->online, e->cfg.prompts[i].name))
                r->prompts[r->nprompts++] = xstrdup(e->cfg.prompts[i].name);
    }
    e->orphan_reading = true;
    e->cluster_reads++;
    uv_queue_work(e->loop, &r->req, orphan_work, orphan_after);
}

/* ---- several engines on one database (docs/scale-out.md) ---- */

/* {name: version} of every script loaded, for the heartbeat other engines compare. */
static void tell_scripts(engine *e)
{
    json_t *st = catalog_status_json(e->cat), *out = json_object();
    static const char *const kinds[] = {"evaluators", "policies", "metaprompts"};
    for (size_t k = 0; k < 3; k++) {
        size_t i;
        json_t *s;
        json_array_foreach(json_object_get(st, kinds[k]), i, s) {
            char key[300];
            snprintf(key, sizeof key, "%s/%s", kinds[k], json_string_value(json_object_get(s, "name")));
            json_object_set(out, key, json_object_get(s, "version"));
        }
    }
    store_set_scripts(e->store, out);
    json_decref(out);
    json_decref(st);
}

typedef struct {
    uv_work_t req;
    engine *e;
    bool takeover;
    json_t *prompts, *datasets, *states;
    int rc;
    char err[256];
} cluster_read;

/* on a pool thread: the registry (and at a takeover the loop's states) as the database has them */
static void cluster_read_work(uv_work_t *req)
{
    cluster_read *r = req->data;
    r->rc = store_load_registry(r->e->store, &r->prompts, &r->datasets, r->err, sizeof r->err);
    if (!r->rc && r->takeover)
        r->rc = store_load_loop_states(r->e->store, &r->states, r->err, sizeof r->err);
    /* the gate runs the last leader was running are not resumed here at once: they are runs
     * like any other, claimed by on_orphan_timer once their owner's lease has run out (a
     * leader that lost its session but not its process may still be working on them until
     * then; docs/scale-out.md, "Leases") */
}

static void cluster_read_after(uv_work_t *req, int status)
{
    cluster_read *r = req->data;
    engine *e = r->e;
    e->cluster_reads--;
    if (status == 0 && r->rc == 0 && e->reg) {
        registry_replace(e->reg, r->prompts, r->datasets);
        r->prompts = r->datasets = NULL;
        if (r->takeover && e->lp)
            loop_apply_states(e->lp, r->states);
    } else if (status == 0) {
        log_error("engine", "cannot read what another engine changed: %s", r->err);
    }
    json_decref(r->prompts);
    json_decref(r->datasets);
    json_decref(r->states);
    free(r);
}

/* The store says this engine became (or stopped being) the leader, or another engine
 * changed the registry: read the database's state on a pool thread and take it. */
static void on_cluster(void *data, bool leadership, bool registry_changed)
{
    engine *e = data;
    bool takeover = leadership && store_leader(e->store);
    if (leadership)
        log_info("engine", takeover ? "this engine now runs the loop" : "this engine no longer runs the loop");
    if (!takeover && !registry_changed)
        return;
    cluster_read *r = xcalloc(1, sizeof *r);
    r->e = e;
    r->takeover = takeover;
    r->req.data = r;
    e->cluster_reads++;
    uv_queue_work(e->loop, &r->req, cluster_read_work, cluster_read_after);
}

static int cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},   {"listen", required_argument, NULL, 'l'},
        {"data-dir", required_argument, NULL, 'd'}, {"address-file", required_argument, NULL, 'a'},
        {"script-dir", required_argument, NULL, 's'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static engine e;
    memset(&e, 0, sizeof e);
    e.lock_fd = -1;
    int ch;
    optind = 1;
    while ((ch = cli_getopt("serve", argc, argv, "c:l:d:s:h", opts)) != -1) {
        switch (ch) {
        case 'c': e.config_path = optarg; break;
        case 'l': e.cli_listen = optarg; break;
        case 'd': e.cli_data_dir = optarg; break;
        case 's': e.script_dir = optarg; break;
        case 'a': e.address_file = optarg; break;
        case 'h': fputs(serve_usage, stdout); return 0;
        default: fputs(serve_usage, stderr); return EXIT_ERROR;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ratchet serve: unexpected argument '%s'\n\n%s", argv[optind], serve_usage);
        return EXIT_ERROR;
    }

    open_fds before;
    list_open_fds(&before);
    the_engine = &e;
    signal(SIGPIPE, SIG_IGN);
    e.loop = uv_default_loop();
    for (int i = 0; i < SERVE_STEPS; i++) {
        char err[1024] = "";
        if (serve_steps[i].start(&e, err, sizeof err) != 0) {
            log_error("engine", "start-up failed at the %s: %s", serve_steps[i].what, err[0] ? err : "(no reason given)");
            serve_teardown(&e, i + 1); /* the failed step's undo too: it takes what the step left half done */
            check_left_behind(&before);
            log_info("engine", "not started: every step undone; exit status %d", EXIT_ERROR);
            return EXIT_ERROR;
        }
    }
    begin_serving(&e);
    uv_run(e.loop, UV_RUN_DEFAULT); /* until finish_stop */
    serve_teardown(&e, SERVE_STEPS);
    check_left_behind(&before);
    log_info("engine", "stopped");
    return 0;
}

/* ---- check ---- */

static void print_report(const char *msg, void *ud)
{
    (void)ud;
    fprintf(stderr, "%s\n", msg);
}

static int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"script-dir", required_argument, NULL, 's'},
        {"quiet", no_argument, NULL, 'q'},        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *script_dir = NULL;
    bool quiet = false;
    int ch;
    optind = 1;
    while ((ch = cli_getopt("check", argc, argv, "c:s:qh", opts)) != -1) {
        switch (ch) {
        case 'c': config_path = optarg; break;
        case 's': script_dir = optarg; break;
        case 'q': quiet = true; break;
        case 'h': fputs(check_usage, stdout); return 0;
        default: fputs(check_usage, stderr); return EXIT_ERROR;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ratchet check: unexpected argument '%s'\n\n%s", argv[optind], check_usage);
        return EXIT_ERROR;
    }
    log_set_level(LOG_ERROR);
    config cfg;
    config_defaults(&cfg);
    char err[1024];
    if (config_path && config_load(&cfg, config_path, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        config_free(&cfg);
        fprintf(stderr, "ratchet check: 1 error\n");
        return EXIT_ERROR;
    }
    if (script_dir)
        config_prepend_script_dir(&cfg, script_dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    script_vm *vm = new_vm(&loop, &cfg);
    catalog *cat = catalog_new(vm, (const char *const *)cfg.scripts.dirs);
    catalog_reload(cat, false);
    const char *const *errors;
    size_t nerr = catalog_errors(cat, &errors);
    for (size_t i = 0; i < nerr; i++)
        fprintf(stderr, "%s\n", errors[i]);
    int bad = (int)nerr + confcheck_config(&cfg, cat, print_report, NULL);
    catalog_stats st;
    catalog_get_stats(cat, &st);
    if (!quiet && !bad) {
        printf("ok: %s, %zu evaluators, %zu prompts (script folders, first wins: ",
               config_path ? config_path : "built-in defaults", st.evaluators, cfg.nprompts);
        for (char **d = cfg.scripts.dirs; *d; d++)
            printf("%s%s", d == cfg.scripts.dirs ? "" : ", ", *d);
        printf(")\n");
    }
    if (bad)
        fprintf(stderr, "ratchet check: %d error%s\n", bad, bad == 1 ? "" : "s");
    catalog_free(cat);
    script_vm_free(vm);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    config_free(&cfg);
    return bad ? EXIT_ERROR : 0;
}

/* ---- evaluate (a client of the running engine) ---- */

/* ---- small commands ---- */

static int cmd_version(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(version_usage, stdout);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "ratchet version: %s '%s'\n\n%s", argv[1][0] == '-' ? "unknown option" : "unexpected argument",
                argv[1], version_usage);
        return EXIT_ERROR;
    }
    unsigned long hp = http_parser_version();
    char alloc[64] = "system malloc";
#ifdef RATCHET_MIMALLOC
    void *probe = malloc(16); /* the proof that mimalloc's malloc is the one in use, not just linked */
    int mv = mi_version();
    snprintf(alloc, sizeof alloc, mi_is_in_heap_region(probe) ? "mimalloc %d.%d.%d" : "system malloc (mimalloc %d.%d.%d unused)",
             mv / 100, mv / 10 % 10, mv % 10);
    free(probe);
#endif
    printf("ratchet %s (libuv %s, http-parser %lu.%lu.%lu, SQLite %s, %s, %s)\n", RATCHET_VERSION, uv_version_string(),
           (hp >> 16) & 255, (hp >> 8) & 255, hp & 255, sqlite3_libversion(), LUA_RELEASE, alloc);
    return 0;
}

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
} command;

static const command commands[] = {
    {"serve", cmd_serve, serve_usage},
    {"check", cmd_check, check_usage},
    {"evaluate", cmd_evaluate, evaluate_usage},
    {"prompt", cmd_prompt, prompt_usage},
    {"eval", cmd_eval, eval_usage},
    {"optimize", cmd_optimize, optimize_usage},
    {"approve", cmd_approve, approve_usage},
    {"loop", cmd_loop, loop_usage},
    {"status", cmd_status, status_usage},
    {"history", cmd_history, history_usage},
    {"traces", cmd_traces, traces_usage},
    {"series", cmd_series, series_usage},
    {"init", cmd_init, init_usage},
    {"dataset", cmd_dataset, dataset_usage},
    {"routes", cmd_routes, routes_usage},
    {"version", cmd_version, version_usage},
    {"fake-llm", fake_llm_main, fake_llm_usage},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(main_usage, stderr);
        return EXIT_ERROR;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(main_usage, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0)
        return cmd_version(1, argv + 1);
    if (strcmp(cmd, "help") == 0) {
        if (argc < 3 || !strcmp(argv[2], "--help") || !strcmp(argv[2], "-h")) {
            fputs(main_usage, stdout);
            return 0;
        }
        for (const command *c = commands; c->name; c++)
            if (strcmp(c->name, argv[2]) == 0) {
                fputs(c->usage, stdout);
                return 0;
            }
        fprintf(stderr, "ratchet help: no command '%s'\n\n%s", argv[2], main_usage);
        return EXIT_ERROR;
    }
    for (const command *c = commands; c->name; c++)
        if (strcmp(c->name, cmd) == 0)
            return c->run(argc - 1, argv + 1);
    fprintf(stderr, "ratchet: no command '%s'\n\n%s", cmd, main_usage);
    return EXIT_ERROR;
}
