/* cli_ops.c — the operator's commands: `ratchet status` (one screen: each
 * prompt's production and canary with their pass rates, the loop, runs,
 * budget spent today, script errors) and `ratchet history NAME` (the audit
 * log of a prompt: lifecycle moves and the loop's decisions, in order). */
#include "cli/cli.h"

#include <curl/curl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_private.h"
#include "base/jtree.h"
#include "loop/registry.h"
#include "base/util.h"
#include "base/jtree.h"

const char status_usage[] =
    "usage: ratchet status [--url URL] [-c FILE] [--json] [--stuck-after SECONDS]\n"
    "\n"
    "One screen for operators: the engine (version, uptime, store), each prompt's\n"
    "production and canary versions with their pass rates over the last 24 hours,\n"
    "the loop's state and run, regression runs under way, the evaluation backlog,\n"
    "LLM budget spent today, and what needs a look, each with the command that\n"
    "shows more.\n"
    "\n"
    "  -u, --url URL          the engine (default: the config's listen address)\n"
    "  -c, --config FILE      read the address and admin token from this config\n"
    "      --json             print it all as one JSON object\n"
    "      --stuck-after S    a run that recorded no result for S seconds is stuck\n"
    "                         (default 900: 15 minutes)\n"
    "\n"
    "Exit status: 0 all well; 3 the engine cannot be reached or refused, a usage\n"
    "error, or the engine answers but something needs a look: the store failing,\n"
    "script or config errors, a provider's circuit open, traces dropped from\n"
    "evaluation, gateway traces dropped or not stored, a run stuck, a run that ended incomplete in the last 24 hours (not\n"
    "cancelled by hand), or a daily LLM budget used up.\n";

const char history_usage[] =
    "usage: ratchet history NAME [--limit N] [--url URL] [-c FILE] [--json]\n"
    "\n"
    "The audit log of prompt NAME, oldest first: every lifecycle move of its\n"
    "versions (who, why) and every decision of the improvement loop.\n"
    "\n"
    "  -n, --limit N     only the newest N entries (default: all)\n"
    "      --json        print the entries as a JSON array\n"
    "\n"
    "Exit status: 0 printed, 3 the engine refused (unknown prompt) or cannot be reached, or usage.\n";

/* common options: --url, --config, --json, --limit, --help */
typedef struct {
    const char *url, *config;
    bool json;
    long limit;
    long stuck_after; /* status: seconds without a result that make a run stuck */
} ops_opts;

static int parse_opts(const char *cmd, const char *usage, int argc, char **argv, bool with_limit, ops_opts *o)
{
    /* history takes --limit; status takes --stuck-after */
    static const struct option with[] = {
        {"url", required_argument, NULL, 'u'}, {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},      {"limit", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},      {NULL, 0, NULL, 0},
    };
    static const struct option without[] = {
        {"url", required_argument, NULL, 'u'}, {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},      {"help", no_argument, NULL, 'h'},
        {"stuck-after", required_argument, NULL, 's'}, {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->stuck_after = 900;
    int ch;
    optind = 1;
    while ((ch = cli_getopt(cmd, argc, argv, with_limit ? "u:c:jn:h" : "u:c:jh", with_limit ? with : without)) != -1) {
        switch (ch) {
        case 's': {
            char *end;
            o->stuck_after = strtol(optarg, &end, 10);
            if (with_limit || *end || end == optarg || o->stuck_after < 1) {
                fprintf(stderr, "ratchet %s: --stuck-after must be a whole number of seconds, at least 1\n", cmd);
                return -1;
            }
            break;
        }
        case 'u': o->url = optarg; break;
        case 'c': o->config = optarg; break;
        case 'j': o->json = true; break;
        case 'n': {
            long long n;
            if (cli_int(cmd, "--limit", optarg, 1, 1000000000, &n))
                return -1;
            o->limit = (long)n;
            break;
        }
        case 'h': fputs(usage, stdout); return 1;
        default: fputs(usage, stderr); return -1;
        }
    }
    return 0;
}

static void print_json(json_t *v)
{
    char *t = jtree_dump_text(v, true);
    puts(t);
    free(t);
}

/* ---- status ---- */

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void duration(long long s, char *out, size_t n)
{
    if (s >= 86400)
        snprintf(out, n, "%lldd%lldh", s / 86400, s % 86400 / 3600);
    else if (s >= 3600)
        snprintf(out, n, "%lldh%lldm", s / 3600, s % 3600 / 60);
    else if (s >= 60)
        snprintf(out, n, "%lldm%llds", s / 60, s % 60);
    else
        snprintf(out, n, "%llds", s);
}

/* "91.2% of 1234" or "no traces" */
static void pass_rate(json_t *m, char *out, size_t n)
{
    long long ev = json_integer_value(json_object_get(m, "evaluated"));
    if (!m || ev == 0)
        snprintf(out, n, "%s", m ? "no verdicts" : "-");
    else
        snprintf(out, n, "%.1f%% of %lld", 100.0 * json_number_value(json_object_get(m, "pass_rate")), ev);
}

static json_t *version_metrics(json_t *metrics, const char *status)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(metrics, "versions"), i, v)
        if (!strcmp(str(v, "status"), status))
            return v;
    return NULL;
}

/* ---- what needs a look ---- */

/* How the user reached the engine, for the commands we print. */
static void conn_args(const client *c, const ops_opts *o, char *out, size_t n)
{
    if (o->config)
        snprintf(out, n, " -c %s", o->config);
    else if (o->url)
        snprintf(out, n, " --url %s", c->base);
    else
        out[0] = '\0';
}

/* A curl command for an API path; the token stays out of it (an environment
 * variable the user sets stands in for it). */
static void curl_cmd(const client *c, const char *path, char *out, size_t n)
{
    snprintf(out, n, "curl -s%s '%s%s'", c->token ? " -H \"Authorization: Bearer $RATCHET_ADMIN_TOKEN\"" : "", c->base,
             path);
}

static void problem(json_t *problems, const char *more, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void problem(json_t *problems, const char *more, const char *fmt, ...)
{
    char text[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    json_array_append_new(problems, json_pack("{s:s, s:s}", "problem", text, "more", more));
}

/* "20m0s ago" and the like */
static void ago(long long s, char *out, size_t n)
{
    char d[32];
    duration(s, d, sizeof d);
    snprintf(out, n, "%s", d);
}

static void find_problems(client *c, const ops_opts *o, json_t *st, json_t *recent, json_t *problems)
{
    char conn[600], more[1200], path[300];
    conn_args(c, o, conn, sizeof conn);
    json_t *scripts = json_object_get(st, "scripts");
    json_t *ev = json_object_get(st, "evaluation");
    json_t *llm = json_object_get(st, "llm");
    size_t i;
    json_t *p;
    if (!json_is_true(json_object_get(st, "store_healthy")))
        problem(problems, "journalctl -u ratchet -p err (the engine logs each failed commit)",
                "the store's last commit failed");
    if (o->config)
        snprintf(more, sizeof more, "ratchet check -c %s", o->config);
    else
        curl_cmd(c, "/v1/status", more, sizeof more);
    json_array_foreach(json_object_get(scripts, "errors"), i, p)
        problem(problems, more, "script error: %s", json_string_value(p));
    if (json_is_string(json_object_get(scripts, "config_error")))
        problem(problems, more, "config error (the running config stays): %s", str(scripts, "config_error"));
    curl_cmd(c, "/v1/llm/calls?limit=20", more, sizeof more);
    json_array_foreach(json_object_get(llm, "providers"), i, p)
        if (strcmp(str(p, "circuit"), "closed"))
            problem(problems, more, "provider %s: circuit %s (its calls fail fast until it recovers)", str(p, "name"),
                    str(p, "circuit"));
    if (json_integer_value(json_object_get(ev, "dropped")) > 0) {
        snprintf(more, sizeof more, "ratchet evaluate --prompt NAME --unevaluated%s (for each prompt)", conn);
        problem(problems, more, "%lld traces were left unevaluated (the evaluation backlog was full)",
                (long long)json_integer_value(json_object_get(ev, "dropped")));
    }
    /* gateway traces lost: the answers went out, their traces did not reach the store */
    json_t *gtr = json_object_get(json_object_get(st, "gateway"), "traces");
    long long gdropped = json_integer_value(json_object_get(gtr, "dropped"));
    long long gfailed = json_integer_value(json_object_get(gtr, "failed"));
    if (gdropped > 0)
        problem(problems, "raise limits.max_pending_writes, or look at the store's commit times (GET /metrics)",
                "%lld trace%s captured by the gateway %s dropped: the store's write queue was full (the answers "
                "were sent)",
                gdropped, gdropped == 1 ? "" : "s", gdropped == 1 ? "was" : "were");
    if (gfailed > 0)
        problem(problems, "journalctl -u ratchet -p err (the engine logs why)",
                "%lld trace%s captured by the gateway %s not stored: ingest's checks or the commit failed", gfailed,
                gfailed == 1 ? "" : "s", gfailed == 1 ? "was" : "were");
    /* runs stuck: under way, and no result recorded for stuck_after seconds */
    json_array_foreach(json_object_get(json_object_get(st, "runs"), "active"), i, p) {
        long long idle = json_integer_value(json_object_get(p, "idle_s"));
        if (idle < o->stuck_after)
            continue;
        char d[32];
        ago(idle, d, sizeof d);
        snprintf(path, sizeof path, "/v1/runs/%s", str(p, "id"));
        curl_cmd(c, path, more, sizeof more);
        problem(problems, more, "run %s (prompt %s) is stuck: no result recorded for %s (%lld of %lld done, %lld in "
                                "flight)",
                str(p, "id"), str(p, "prompt"), d, (long long)json_integer_value(json_object_get(p, "done")),
                (long long)json_integer_value(json_object_get(p, "jobs")),
                (long long)json_integer_value(json_object_get(p, "running")));
    }
    /* runs that ended incomplete in the last 24 hours, unless a human cancelled them */
    int64_t now = now_ms();
    json_array_foreach(json_object_get(recent, "items"), i, p) {
        int64_t ended;
        if (strcmp(str(p, "state"), "incomplete") || !strcmp(str(p, "error"), "cancelled") ||
            !rfc3339_parse(str(p, "finished_at"), &ended) || now - ended > 86400000)
            continue;
        char d[32];
        ago((now - ended) / 1000, d, sizeof d);
        snprintf(path, sizeof path, "/v1/runs/%s", str(p, "id"));
        curl_cmd(c, path, more, sizeof more);
        if (!strcmp(str(p, "kind"), "gate")) {
            size_t len = strlen(more);
            snprintf(more + len, sizeof more - len, "; ratchet loop %s%s", str(p, "prompt"), conn);
        }
        problem(problems, more, "run %s (%s of prompt %s) ended incomplete %s ago: %s", str(p, "id"), str(p, "kind"),
                str(p, "prompt"), d, *str(p, "error") ? str(p, "error") : "stopped");
    }
    /* a daily budget used up: calls are refused until 00:00 UTC */
    json_t *today = json_object_get(llm, "today"), *bud = json_object_get(llm, "budgets");
    static const char *const res[][2] = {{"calls", "daily_calls"}, {"tokens", "daily_tokens"}, {"cost", "daily_cost"}};
    bool used_up = false;
    char what[200] = "";
    for (size_t k = 0; k < 3; k++) {
        double limit = json_number_value(json_object_get(bud, res[k][1]));
        double spent = json_number_value(json_object_get(today, res[k][0]));
        if (limit > 0 && spent >= limit) {
            char a[32], b[32];
            num_text(spent, a);
            num_text(limit, b);
            size_t len = strlen(what);
            snprintf(what + len, sizeof what - len, "%s%s %s of %s", len ? ", " : "", res[k][0], a, b);
            used_up = true;
        }
    }
    long long refused = json_integer_value(json_object_get(today, "refused"));
    if (used_up || refused > 0) {
        curl_cmd(c, "/v1/llm/calls?limit=20", more, sizeof more);
        size_t len = strlen(more);
        snprintf(more + len, sizeof more - len, "; raise llm.daily_* in the config, or wait for 00:00 UTC");
        char counted[80] = "";
        if (refused > 0)
            snprintf(counted, sizeof counted, "%s%lld call%s refused today", used_up ? "; " : "", refused,
                     refused == 1 ? "" : "s");
        problem(problems, more, "LLM daily budget used up%s%s%s%s%s%s", used_up ? " (" : "", used_up ? what : "",
                used_up ? ")" : "", counted, json_is_string(json_object_get(today, "last_refusal")) ? ", the last: " : "",
                str(today, "last_refusal"));
    }
}

/* Gathers the view: {engine, prompts[], runs[], evaluation, llm, scripts, problems[]} */
static int gather(client *c, const ops_opts *o, json_t **view)
{
    json_t *st = NULL, *list = NULL;
    long code = call_json(c, "GET", "/v1/status", NULL, &st);
    if (code != 200) {
        print_error("status", code, st);
        json_decref(st);
        return EXIT_ERROR;
    }
    code = call_json(c, "GET", "/v1/prompts", NULL, &list);
    if (code != 200) {
        print_error("status", code, list);
        json_decref(st);
        json_decref(list);
        return EXIT_ERROR;
    }
    json_t *problems = json_array();
    json_t *loop = json_object_get(json_object_get(st, "loop"), "prompts");
    json_t *prompts = json_array();
    size_t i;
    json_t *p;
    json_t *notes = json_array();
    json_array_foreach(json_object_get(list, "items"), i, p) {
        const char *name = str(p, "name");
        if (json_is_false(json_object_get(p, "registered"))) {
            /* declared in the config, no version in the registry yet: no figures to read */
            json_array_append_new(prompts, json_pack("{s:s, s:b, s:b}", "name", name, "pinned", 0, "config_only", 1));
            char note[400];
            snprintf(note, sizeof note, "prompt %s is in the config only: no version of it is in the registry, so "
                                        "nothing can resolve, gate or improve it yet", name);
            json_array_append_new(notes, json_pack("{s:s, s:s}", "note", note, "more", str(p, "next")));
            continue;
        }
        char path[300];
        snprintf(path, sizeof path, "/v1/prompts/%s/metrics", name);
        json_t *m = NULL;
        code = call_json(c, "GET", path, NULL, &m);
        if (code != 200) {
            print_error("status", code, m);
            json_decref(m);
            m = NULL;
        }
        json_t *row = json_pack("{s:s, s:b}", "name", name, "pinned", json_is_true(json_object_get(p, "pinned")));
        json_t *prod = version_metrics(m, "production"), *canary = version_metrics(m, "canary");
        if (json_is_integer(json_object_get(p, "production")))
            json_object_set_new(row, "production", prod ? json_deep_copy(prod)
                                                         : json_pack("{s:O}", "version", json_object_get(p, "production")));
        if (json_is_integer(json_object_get(p, "canary"))) {
            json_t *cv = canary ? json_deep_copy(canary) : json_pack("{s:O}", "version", json_object_get(p, "canary"));
            json_object_set(cv, "share", json_object_get(p, "canary_share"));
            json_object_set_new(row, "canary", cv);
        }
        json_t *lp = json_object_get(loop, name);
        if (lp) {
            json_t *l = json_pack("{s:O}", "state", json_object_get(lp, "state"));
            static const char *const keep[] = {"run", "cycle", "decision", "decided_at", "step", "percent", "busy", NULL};
            for (const char *const *k = keep; *k; k++)
                if (json_object_get(lp, *k) && !json_is_null(json_object_get(lp, *k)))
                    json_object_set(l, *k, json_object_get(lp, *k));
            json_object_set_new(row, "loop", l);
        }
        json_array_append_new(prompts, row);
        json_decref(m);
    }
    json_t *scripts = json_object_get(st, "scripts");
    json_t *ev = json_object_get(st, "evaluation");
    json_t *llm = json_object_get(st, "llm");
    json_t *recent = NULL;
    if (call_json(c, "GET", "/v1/runs?limit=100", NULL, &recent) != 200) {
        json_decref(recent);
        recent = NULL;
    }
    find_problems(c, o, st, recent, problems);
    json_decref(recent);
    *view = json_pack("{s:{s:s, s:O, s:O, s:O, s:O, s:O*}, s:o, s:O, s:{s:O, s:O, s:O, s:O, s:O}, s:{s:O, s:O}, "
                      "s:{s:O, s:O, s:O}, s:o}",
                      "engine", "url", c->base, "version", json_object_get(st, "version"), "started_at",
                      json_object_get(st, "started_at"), "uptime_s", json_object_get(st, "uptime_s"), "store_healthy",
                      json_object_get(st, "store_healthy"), "store", json_object_get(st, "store"), "prompts", prompts, "runs",
                      json_object_get(json_object_get(st, "runs"), "active"), "evaluation", "backlog",
                      json_object_get(ev, "backlog"), "max_backlog", json_object_get(ev, "max_backlog"), "evaluated",
                      json_object_get(ev, "evaluated"), "dropped", json_object_get(ev, "dropped"), "killed",
                      json_object_get(ev, "killed"), "llm", "today", json_object_get(llm, "today"), "budgets",
                      json_object_get(llm, "budgets"), "scripts", "errors", json_object_get(scripts, "errors"),
                      "config_error", json_object_get(scripts, "config_error"), "reloads",
                      json_object_get(scripts, "reloads"), "problems", problems);
    if (*view) {
        json_object_set_new(*view, "notes", notes);
        json_object_set(*view, "gateway", json_object_get(st, "gateway"));
    }
    else
        json_decref(notes);
    json_decref(st);
    json_decref(list);
    return *view ? 0 : EXIT_ERROR;
}

static void print_status(json_t *v)
{
    json_t *eng = json_object_get(v, "engine");
    char up[32];
    duration(json_integer_value(json_object_get(eng, "uptime_s")), up, sizeof up);
    json_t *st = json_object_get(eng, "store");
    const char *kind = json_string_value(json_object_get(st, "kind"));
    const char *why = json_string_value(json_object_get(st, "error"));
    printf("ratchet %s at %s, up %s, store%s%s %s%s%s\n", str(eng, "version"), str(eng, "url"), up, kind ? " " : "",
           kind ? kind : "", json_is_true(json_object_get(eng, "store_healthy")) ? "healthy" : "FAILING",
           why ? ": " : "", why ? why : "");
    json_t *engines = json_object_get(st, "engines");
    if (json_array_size(engines)) {
        printf("engines on this database (%zu):%s\n", json_array_size(engines),
               json_is_true(json_object_get(st, "scripts_differ")) ? " NOT ALL RUN THE SAME SCRIPTS" : "");
        size_t i;
        json_t *en;
        json_array_foreach(engines, i, en)
            printf("  %s %-8s last seen %s%s%s\n", str(en, "id"), str(en, "role"), str(en, "last_seen"),
                   json_is_true(json_object_get(en, "this")) ? " (this one)" : "",
                   json_is_true(json_object_get(en, "scripts_differ")) ? " (different scripts)" : "");
    }
    json_t *tp = json_object_get(st, "trace_partitions");
    if (tp) /* PostgreSQL: traces by day (docs/scale-out.md) */
        printf("traces in %lld daily partitions, %s to %s; this engine created %lld, dropped %lld, failed %lld\n",
               (long long)json_integer_value(json_object_get(tp, "daily")), str(tp, "oldest"), str(tp, "newest"),
               (long long)json_integer_value(json_object_get(tp, "created")),
               (long long)json_integer_value(json_object_get(tp, "dropped")),
               (long long)json_integer_value(json_object_get(tp, "create_failures")));
    json_t *ev = json_object_get(v, "evaluation");
    printf("evaluation: backlog %lld of %lld, %lld evaluated, %lld dropped, %lld killed\n",
           (long long)json_integer_value(json_object_get(ev, "backlog")),
           (long long)json_integer_value(json_object_get(ev, "max_backlog")),
           (long long)json_integer_value(json_object_get(ev, "evaluated")),
           (long long)json_integer_value(json_object_get(ev, "dropped")),
           (long long)json_integer_value(json_object_get(ev, "killed")));
    json_t *gw = json_object_get(v, "gateway");
    if (json_is_true(json_object_get(gw, "enabled"))) {
        long long calls = 0;
        const char *k;
        json_t *n;
        json_object_foreach(json_object_get(gw, "calls"), k, n)
            calls += json_integer_value(n);
        json_t *t = json_object_get(gw, "traces");
        printf("gateway: %lld calls, %lld refused, %lld upstream errors; traces %lld captured, %lld dropped, %lld "
               "failed\n",
               calls, (long long)json_integer_value(json_object_get(gw, "refused")),
               (long long)json_integer_value(json_object_get(gw, "upstream_errors")),
               (long long)json_integer_value(json_object_get(t, "captured")),
               (long long)json_integer_value(json_object_get(t, "dropped")),
               (long long)json_integer_value(json_object_get(t, "failed")));
    }
    json_t *today = json_object_get(json_object_get(v, "llm"), "today");
    json_t *bud = json_object_get(json_object_get(v, "llm"), "budgets");
    printf("LLM today: %.0f calls, %.0f tokens, $%.4f", json_number_value(json_object_get(today, "calls")),
           json_number_value(json_object_get(today, "tokens")), json_number_value(json_object_get(today, "cost")));
    double dc = json_number_value(json_object_get(bud, "daily_calls")),
           dt = json_number_value(json_object_get(bud, "daily_tokens")),
           dd = json_number_value(json_object_get(bud, "daily_cost"));
    if (dc > 0 || dt > 0 || dd > 0) {
        printf(" (daily budget:");
        if (dc > 0)
            printf(" %.0f calls", dc);
        if (dt > 0)
            printf(" %.0f tokens", dt);
        if (dd > 0) {
            char t[32];
            num_text(dd, t);
            printf(" $%s", t);
        }
        printf(")");
    }
    printf("\n\n");

    json_t *prompts = json_object_get(v, "prompts");
    if (json_array_size(prompts) == 0) {
        printf("no prompts in the registry yet\n");
    } else {
        printf("%-24s %-6s %-18s %-12s %-18s %s\n", "PROMPT", "PROD", "PASS 24H", "CANARY", "PASS 24H", "LOOP");
        size_t i;
        json_t *p;
        json_array_foreach(prompts, i, p) {
            json_t *prod = json_object_get(p, "production"), *can = json_object_get(p, "canary");
            json_t *loop = json_object_get(p, "loop");
            char pv[16] = "-", cv[32] = "-", pr[32] = "-", cr[32] = "-", lp[200] = "-";
            if (prod) {
                snprintf(pv, sizeof pv, "v%lld", (long long)json_integer_value(json_object_get(prod, "version")));
                pass_rate(prod, pr, sizeof pr);
            }
            if (can) {
                snprintf(cv, sizeof cv, "v%lld %.0f%%", (long long)json_integer_value(json_object_get(can, "version")),
                         100 * json_number_value(json_object_get(can, "share")));
                pass_rate(can, cr, sizeof cr);
            }
            if (json_is_true(json_object_get(p, "config_only")))
                snprintf(lp, sizeof lp, "config only (see notes)");
            if (loop) {
                int n = snprintf(lp, sizeof lp, "%s", str(loop, "state"));
                if (json_is_string(json_object_get(loop, "run")) && strcmp(str(loop, "state"), "idle"))
                    snprintf(lp + n, sizeof lp - (size_t)n, " (run %s)", str(loop, "run")); /* whole: approve takes it */
            }
            printf("%-24s %-6s %-18s %-12s %-18s %s%s\n", str(p, "name"), pv, pr, cv, cr, lp,
                   json_is_true(json_object_get(p, "pinned")) ? ", pinned" : "");
        }
    }
    json_t *runs = json_object_get(v, "runs");
    if (json_array_size(runs)) {
        printf("\nruns under way:\n");
        size_t i;
        json_t *r;
        json_array_foreach(runs, i, r) {
            char cost[32], idle[32];
            num_text(json_number_value(json_object_get(r, "cost")), cost);
            duration(json_integer_value(json_object_get(r, "idle_s")), idle, sizeof idle);
            printf("  %s  %s  %lld of %lld done, %lld in flight, %lld calls, $%s, last result %s ago%s%s\n",
                   str(r, "id"), str(r, "prompt"), (long long)json_integer_value(json_object_get(r, "done")),
                   (long long)json_integer_value(json_object_get(r, "jobs")),
                   (long long)json_integer_value(json_object_get(r, "running")),
                   (long long)json_integer_value(json_object_get(r, "calls")), cost, idle,
                   json_is_true(json_object_get(r, "stopping")) ? ", stopping: " : "",
                   json_is_true(json_object_get(r, "stopping")) ? str(r, "stop_reason") : "");
        }
    }
    json_t *notes = json_object_get(v, "notes");
    if (json_array_size(notes)) {
        printf("\nnotes:\n");
        size_t i;
        json_t *x;
        json_array_foreach(notes, i, x)
            printf("  %s\n    next: %s\n", str(x, "note"), str(x, "more"));
    }
    json_t *problems = json_object_get(v, "problems");
    if (json_array_size(problems)) {
        printf("\nneeds a look:\n");
        size_t i;
        json_t *x;
        json_array_foreach(problems, i, x)
            printf("  %s\n    more: %s\n", str(x, "problem"), str(x, "more"));
    }
}

int cmd_status(int argc, char **argv)
{
    ops_opts o;
    int r = parse_opts("status", status_usage, argc, argv, false, &o);
    if (r)
        return r > 0 ? 0 : EXIT_ERROR;
    if (optind < argc) {
        fprintf(stderr, "ratchet status: unexpected argument '%s'\n\n%s", argv[optind], status_usage);
        return EXIT_ERROR;
    }
    client c;
    if (client_init(&c, o.url, o.config) != 0)
        return EXIT_ERROR;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    json_t *view = NULL;
    int rc = gather(&c, &o, &view);
    if (rc == 0) {
        if (o.json)
            print_json(view);
        else
            print_status(view);
        if (json_array_size(json_object_get(view, "problems")))
            rc = EXIT_ERROR;
    }
    json_decref(view);
    client_free(&c);
    curl_global_cleanup();
    return rc;
}

/* ---- history ---- */

/* Every page of a listing into items; returns the HTTP status of the last call. */
static long fetch_all(client *c, const char *fmt, const char *name, json_t *items, json_t **err)
{
    long long cursor = 0;
    for (;;) {
        char path[400];
        snprintf(path, sizeof path, fmt, name, cursor);
        json_t *ans = NULL;
        long code = call_json(c, "GET", path, NULL, &ans);
        if (code != 200) {
            *err = ans;
            return code;
        }
        json_t *page = json_object_get(ans, "items") ? json_object_get(ans, "items") : json_object_get(ans, "events");
        json_array_extend(items, page);
        json_t *next = json_object_get(ans, "next_cursor");
        bool more = json_is_integer(next) && json_array_size(page) == 1000;
        cursor = json_integer_value(next);
        json_decref(ans);
        if (!more)
            return code;
    }
}

static int by_time(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int c = strcmp(str(x, "at"), str(y, "at"));
    if (c)
        return c;
    /* at the same millisecond: the loop's decision ("loop"), then the moves it made ("registry") */
    c = strcmp(str(x, "source"), str(y, "source"));
    if (c)
        return c;
    long long sx = json_integer_value(json_object_get(x, "seq")), sy = json_integer_value(json_object_get(y, "seq"));
    return sx < sy ? -1 : sx > sy;
}

int cmd_history(int argc, char **argv)
{
    ops_opts o;
    int r = parse_opts("history", history_usage, argc, argv, true, &o);
    if (r)
        return r > 0 ? 0 : EXIT_ERROR;
    if (argc - optind != 1) {
        fprintf(stderr, "ratchet history: %s\n\n%s", argc - optind ? "one prompt at a time" : "which prompt?",
                history_usage);
        return EXIT_ERROR;
    }
    const char *name = argv[optind];
    if (!registry_name_ok(name)) {
        fprintf(stderr, "ratchet history: '%s' is not a prompt name\n", name);
        return EXIT_ERROR;
    }
    client c;
    if (client_init(&c, o.url, o.config) != 0)
        return EXIT_ERROR;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    json_t *moves = json_array(), *events = json_array(), *err = NULL;
    int rc = 0;
    long code = fetch_all(&c, "/v1/prompts/%s/history?limit=1000&cursor=%lld", name, moves, &err);
    if (code == 200)
        code = fetch_all(&c, "/v1/loop/%s?limit=1000&cursor=%lld", name, events, &err);
    if (code == 503) { /* no loop in this engine: the moves alone */
        json_decref(err);
        err = NULL;
        code = 200;
    }
    if (code != 200) {
        print_error("history", code, err);
        rc = EXIT_ERROR;
    } else {
        size_t n = json_array_size(moves) + json_array_size(events), k = 0, i;
        json_t **all = xcalloc(n ? n : 1, sizeof *all);
        json_t *x;
        json_array_foreach(moves, i, x) {
            json_object_set_new(x, "source", json_string("registry"));
            all[k++] = x;
        }
        json_array_foreach(events, i, x) {
            json_object_set_new(x, "source", json_string("loop"));
            all[k++] = x;
        }
        qsort(all, n, sizeof *all, by_time);
        size_t first = o.limit > 0 && (size_t)o.limit < n ? n - (size_t)o.limit : 0;
        if (o.json) {
            json_t *out = json_array();
            for (i = first; i < n; i++)
                json_array_append(out, all[i]);
            print_json(out);
            json_decref(out);
        } else if (n == 0) {
            printf("%s: no history yet\n", name);
        }
        for (i = first; i < n && !o.json; i++) {
            x = all[i];
            if (!strcmp(str(x, "source"), "registry")) {
                char what[96];
                json_t *v = json_object_get(x, "version");
                int w = json_is_integer(v) ? snprintf(what, sizeof what, "v%lld ", (long long)json_integer_value(v))
                                           : (what[0] = '\0', 0);
                if (json_is_string(json_object_get(x, "from")))
                    snprintf(what + w, sizeof what - (size_t)w, "%s -> %s", str(x, "from"), str(x, "to"));
                else
                    snprintf(what + w, sizeof what - (size_t)w, "%s", str(x, "to"));
                printf("%s  %-32s by %s: %s\n", str(x, "at"), what, str(x, "actor"), str(x, "reason"));
            } else {
                char what[96];
                snprintf(what, sizeof what, "loop %s", str(x, "kind"));
                printf("%s  %-32s %s\n", str(x, "at"), what, str(x, "message"));
            }
        }
        free(all);
    }
    json_decref(err);
    json_decref(moves);
    json_decref(events);
    client_free(&c);
    curl_global_cleanup();
    return rc;
}
