/* cli.c — `ratchet prompt` and `ratchet eval`: clients of the engine's HTTP
 * API. `ratchet eval --standalone` needs no server: it starts a private
 * engine (this same binary) on an ephemeral loopback port with a temporary
 * data directory, loads the prompt and dataset files into it, runs the gate
 * and stops it, so CI gets exactly what a running engine would answer. */
#include "cli/cli.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "api/api_console.h"
#include "cli/cli_private.h"
#include "conf/config.h"
#include "base/jtree.h"
#include "loop/registry.h"
#include "base/util.h"
#include "base/jtree.h"

int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *longopts)
{
    char spec[80];
    snprintf(spec, sizeof spec, ":%s", shortopts); /* ':' first: a missing value returns ':' */
    opterr = 0;
    int ch = getopt_long(argc, argv, spec, longopts, NULL);
    if (ch != '?' && ch != ':')
        return ch;
    /* the word that was at fault: a long option as typed (without =value), else -c */
    const char *word = optind > 1 && optind - 1 < argc ? argv[optind - 1] : "";
    char name[64];
    if (!strncmp(word, "--", 2))
        snprintf(name, sizeof name, "%.*s", (int)strcspn(word, "="), word);
    else
        snprintf(name, sizeof name, "-%c", optopt ? optopt : '?');
    if (ch == ':')
        fprintf(stderr, "ratchet %s: option '%s' needs a value\n\n", cmd, name);
    else if (!strncmp(word, "--", 2) && strchr(word, '=') && optopt)
        fprintf(stderr, "ratchet %s: option '%s' takes no value\n\n", cmd, name);
    else
        fprintf(stderr, "ratchet %s: unknown option '%s'\n\n", cmd, name);
    return '?';
}

int cli_int(const char *cmd, const char *flag, const char *text, long long min, long long max, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end || errno || v < min || v > max) {
        fprintf(stderr, "ratchet %s: %s must be a whole number from %lld to %lld, not '%s'\n", cmd, flag, min, max,
                text);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_positive(const char *cmd, const char *flag, const char *text, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno || !isfinite(v) || v <= 0) {
        fprintf(stderr, "ratchet %s: %s must be a number above 0, not '%s'\n", cmd, flag, text);
        return -1;
    }
    *out = v;
    return 0;
}

static size_t collect(char *ptr, size_t size, size_t n, void *ud)
{
    buf_append(ud, ptr, size * n);
    return size * n;
}

/* The engine's URL and admin token: --url, else the config's listen; the
 * token from the config or $RATCHET_ADMIN_TOKEN. */
int client_init(client *c, const char *url, const char *config_path)
{
    memset(c, 0, sizeof *c);
    config cfg;
    config_defaults(&cfg);
    char err[1024];
    if (config_path && config_load(&cfg, config_path, err, sizeof err) != 0) {
        fprintf(stderr, "ratchet: configuration error: %s\n", err);
        config_free(&cfg);
        return -1;
    }
    if (url) {
        snprintf(c->base, sizeof c->base, "%s", url);
    } else {
        char host[256];
        int port;
        config_parse_listen(cfg.listen, host, sizeof host, &port);
        if (!strcmp(host, "0.0.0.0"))
            snprintf(host, sizeof host, "127.0.0.1");
        else if (!strcmp(host, "::"))
            snprintf(host, sizeof host, "::1");
        snprintf(c->base, sizeof c->base, strchr(host, ':') ? "http://[%s]:%d" : "http://%s:%d", host, port);
    }
    size_t n = strlen(c->base);
    while (n && c->base[n - 1] == '/')
        c->base[--n] = '\0';
    const char *t = cfg.admin_token ? cfg.admin_token : getenv("RATCHET_ADMIN_TOKEN");
    c->token = t ? xstrdup(t) : NULL;
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    const char *user = getenv("USER");
    snprintf(c->actor, sizeof c->actor, "%s@%s", user ? user : "cli", host);
    config_free(&cfg);
    return 0;
}

void client_free(client *c)
{
    free(c->token);
}

/* One request; returns the HTTP status (0 when the engine cannot be
 * reached, with the reason in *out as {"error":{"message":...}}). */
static long call(client *c, const char *method, const char *path, const char *ctype, const char *body, size_t len,
                 json_t **out, buf_t *raw)
{
    CURL *h = curl_easy_init();
    char url[1200], auth[600], actor[300], ct[128];
    snprintf(url, sizeof url, "%s%s", c->base, path);
    struct curl_slist *hdrs = NULL;
    if (c->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        hdrs = curl_slist_append(hdrs, auth);
    }
    snprintf(actor, sizeof actor, "X-Ratchet-Actor: %s", c->actor);
    hdrs = curl_slist_append(hdrs, actor);
    if (body) {
        snprintf(ct, sizeof ct, "Content-Type: %s", ctype ? ctype : "application/json");
        hdrs = curl_slist_append(hdrs, ct);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    buf_t resp;
    buf_init(&resp);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (out) {
        *out = NULL;
        if (rc != CURLE_OK)
            *out = json_pack("{s:{s:s, s:s}}", "error", "code", "unreachable", "message", curl_easy_strerror(rc));
        else if (resp.len)
            *out = json_loadb(resp.data, resp.len, 0, NULL);
        if (!*out)
            *out = json_pack("{s:{s:s, s:s%}}", "error", "code", "bad_answer", "message", resp.data ? resp.data : "",
                             resp.len);
    }
    if (raw)
        buf_append(raw, resp.data ? resp.data : "", resp.len);
    buf_free(&resp);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return status;
}

long call_raw(client *c, const char *method, const char *path, const char *ctype, const char *body, size_t len,
              json_t **out, buf_t *raw)
{
    return call(c, method, path, ctype, body, len, out, raw);
}

long call_json(client *c, const char *method, const char *path, json_t *body, json_t **out)
{
    char *t = body ? json_text(body, JSON_COMPACT) : NULL;
    long s = call(c, method, path, NULL, t, t ? strlen(t) : 0, out, NULL);
    free(t);
    return s;
}

void print_error(const char *cmd, long status, json_t *ans)
{
    json_t *e = json_object_get(ans, "error");
    const char *field = json_string_value(json_object_get(e, "field"));
    fprintf(stderr, "ratchet %s: %s%s%s%s%s\n", cmd, status ? "" : "cannot reach the engine: ",
            json_string_value(json_object_get(e, "message")) ? json_string_value(json_object_get(e, "message"))
                                                             : "unexpected answer",
            field ? " (field: " : "", field ? field : "", field ? ")" : "");
}

void query_add(buf_t *q, const char *key, const char *value)
{
    if (!value)
        return;
    char *e = curl_easy_escape(NULL, value, 0); /* the handle is ignored since libcurl 7.82 */
    buf_printf(q, "%c%s=%s", q->len && memchr(q->data, '?', q->len) ? '&' : '?', key, e ? e : "");
    curl_free(e);
}

int get_and_show(client *c, const char *cmd, const char *path, bool as_json, void (*show)(json_t *ans))
{
    json_t *ans = NULL;
    long code = call_json(c, "GET", path, NULL, &ans);
    int rc = 0;
    if (code != 200) {
        print_error(cmd, code, ans);
        rc = EXIT_ERROR;
    } else if (as_json) {
        char *t = jtree_dump_text(ans, true);
        puts(t);
        free(t);
    } else {
        show(ans);
    }
    json_decref(ans);
    return rc;
}

static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf_t b;
    buf_init(&b);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    *len = b.len;
    buf_append(&b, "", 1);
    return buf_steal(&b);
}

/* ---- ratchet evaluate ---- */

const char evaluate_usage[] =
    "usage: ratchet evaluate --prompt NAME [--since T] [--until T] [--unevaluated] [-c FILE] [--url URL]\n"
    "\n"
    "Asks the running engine to re-evaluate the prompt's traces with since <= time < until\n"
    "(after an evaluator changed, or to catch up on traces left unevaluated). Times are\n"
    "RFC 3339 (2026-11-24T00:00:00Z) or milliseconds since the epoch. Progress shows in\n"
    "GET /v1/status.\n"
    "\n"
    "  -p, --prompt NAME      the prompt (required)\n"
    "      --since T          from this time (default: the beginning)\n"
    "      --until T          up to this time (default: now and later)\n"
    "      --unevaluated      only traces never evaluated\n"
    "  -c, --config FILE      read the engine's address and admin_token from this config\n"
    "  -u, --url URL          the engine's base URL (default: from the config's listen)\n"
    "\n"
    "The admin token comes from the config, or from $RATCHET_ADMIN_TOKEN.\n"
    "Exit status: 0 when the engine took the job, 3 when it refused or cannot be reached,\n"
    "or on a usage error.\n";

int cmd_evaluate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"prompt", required_argument, NULL, 'p'}, {"since", required_argument, NULL, 'S'},
        {"until", required_argument, NULL, 'U'},  {"unevaluated", no_argument, NULL, 'n'},
        {"config", required_argument, NULL, 'c'}, {"url", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *prompt = NULL, *since = NULL, *until = NULL, *config_path = NULL, *url = NULL;
    bool unevaluated = false;
    int ch;
    optind = 1;
    while ((ch = cli_getopt("evaluate", argc, argv, "p:c:u:h", opts)) != -1) {
        switch (ch) {
        case 'p': prompt = optarg; break;
        case 'S': since = optarg; break;
        case 'U': until = optarg; break;
        case 'n': unevaluated = true; break;
        case 'c': config_path = optarg; break;
        case 'u': url = optarg; break;
        case 'h': fputs(evaluate_usage, stdout); return 0;
        default: fputs(evaluate_usage, stderr); return EXIT_ERROR;
        }
    }
    if (optind < argc || !prompt) {
        fprintf(stderr, "ratchet evaluate: %s\n\n%s", prompt ? "unexpected argument" : "--prompt is required",
                evaluate_usage);
        return EXIT_ERROR;
    }
    json_t *body = json_pack("{s:s, s:b}", "prompt", prompt, "only_unevaluated", unevaluated);
    const char *names[2] = {"since", "until"}, *values[2] = {since, until};
    for (int i = 0; i < 2; i++) {
        int64_t t;
        if (!values[i])
            continue;
        if (!time_parse(values[i], &t)) {
            fprintf(stderr, "ratchet evaluate: --%s '%s' is not an RFC 3339 time or milliseconds\n", names[i],
                    values[i]);
            json_decref(body);
            return EXIT_ERROR;
        }
        json_object_set_new(body, names[i], json_integer(t));
    }
    client c;
    if (client_init(&c, url, config_path) != 0) {
        json_decref(body);
        return EXIT_ERROR;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char *payload = json_text(body, JSON_COMPACT);
    buf_t resp;
    buf_init(&resp);
    json_t *ans;
    long status = call(&c, "POST", "/v1/evaluations", NULL, payload, strlen(payload), &ans, &resp);
    int ret = 0;
    if (status == 0) {
        fprintf(stderr, "ratchet evaluate: cannot reach the engine at %s: %s\n", c.base,
                json_string_value(json_object_get(json_object_get(ans, "error"), "message")));
        ret = EXIT_ERROR;
    } else if (status != 202) {
        fprintf(stderr, "ratchet evaluate: the engine answered %ld: %.*s\n", status, (int)resp.len,
                resp.data ? resp.data : "");
        ret = EXIT_ERROR;
    } else {
        printf("%.*s\n", (int)resp.len, resp.data);
    }
    json_decref(ans);
    buf_free(&resp);
    free(payload);
    json_decref(body);
    client_free(&c);
    curl_global_cleanup();
    return ret;
}

/* ---- ratchet prompt ---- */

const char prompt_usage[] =
    "usage: ratchet prompt <list|show|diff|add|promote|rollback|pin|unpin|history> [args] [--url URL] [-c FILE]\n"
    "\n"
    "  list                         prompts with their production and canary versions\n"
    "  show NAME [VERSION]          a prompt's versions, or one version in full\n"
    "  diff NAME FROM TO            the line diff of each message of two versions\n"
    "  add NAME FILE [--note T]     add a version from a JSON file {messages, model}\n"
    "                               (the prompt is created when new)\n"
    "  promote NAME VERSION [--reason T]\n"
    "  rollback NAME [VERSION] [--reason T]   end the canary, or go back a production version\n"
    "  pin NAME [--reason T] / unpin NAME     freeze (or free) automation for a prompt\n"
    "  history NAME                 the prompt's audit log\n"
    "\n"
    "  -u, --url URL       the engine (default: from the config's listen)\n"
    "  -c, --config FILE   read the address and admin_token from this config\n"
    "      --json          print the engine's JSON answer\n"
    "Exit status: 0 done, 3 the engine refused or cannot be reached, or a usage error.\n";

static void print_diff(json_t *d, FILE *out)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(d, "messages"), i, m) {
        const char *st = json_string_value(json_object_get(m, "status"));
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role)
            role = json_string_value(json_object_get(m, "from_role"));
        fprintf(out, "message %zu (%s): %s\n", i + 1, role ? role : "?", st);
        size_t j;
        json_t *l;
        json_array_foreach(json_object_get(m, "diff"), j, l) fprintf(out, "  %s\n", json_string_value(l));
    }
    json_t *model = json_object_get(d, "model");
    if (json_is_true(json_object_get(model, "changed"))) {
        char *a = json_text(json_object_get(model, "from"), JSON_COMPACT | JSON_SORT_KEYS);
        char *b = json_text(json_object_get(model, "to"), JSON_COMPACT | JSON_SORT_KEYS);
        fprintf(out, "model:\n  -%s\n  +%s\n", a, b);
        free(a);
        free(b);
    }
}

int cmd_prompt(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'}, {"config", required_argument, NULL, 'c'},
        {"reason", required_argument, NULL, 'r'}, {"note", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *config_path = NULL, *reason = NULL, *note = NULL;
    bool as_json = false;
    int ch;
    optind = 1;
    while ((ch = cli_getopt("prompt", argc, argv, "u:c:r:n:jh", opts)) != -1) {
        switch (ch) {
        case 'u': url = optarg; break;
        case 'c': config_path = optarg; break;
        case 'r': reason = optarg; break;
        case 'n': note = optarg; break;
        case 'j': as_json = true; break;
        case 'h': fputs(prompt_usage, stdout); return 0;
        default: fputs(prompt_usage, stderr); return EXIT_ERROR;
        }
    }
    int n = argc - optind;
    char **a = argv + optind;
    static const struct {
        const char *name;
        int min, max;
    } subs[] = {{"list", 1, 1},     {"show", 2, 3},     {"diff", 4, 4}, {"add", 3, 3},   {"promote", 3, 3},
                {"rollback", 2, 3}, {"pin", 2, 2},      {"unpin", 2, 2}, {"history", 2, 2}};
    int which = -1;
    for (int i = 0; n > 0 && i < (int)(sizeof subs / sizeof subs[0]); i++)
        if (!strcmp(a[0], subs[i].name))
            which = i;
    if (which < 0 || n < subs[which].min || n > subs[which].max) {
        fprintf(stderr, "ratchet prompt: %s\n\n%s",
                which < 0 ? (n ? "unknown subcommand" : "which subcommand?") : "wrong number of arguments",
                prompt_usage);
        return EXIT_ERROR;
    }
    const char *sub = subs[which].name;
    for (int i = 1; i < n && i < 2; i++)
        if (!registry_name_ok(a[i])) {
            fprintf(stderr, "ratchet prompt: '%s' is not a prompt name\n", a[i]);
            return EXIT_ERROR;
        }
    /* the version arguments: show NAME V, diff NAME FROM TO, promote NAME V, rollback NAME V */
    if (strcmp(sub, "add"))
        for (int i = 2; i < n; i++) {
            long long v;
            static const char *const what[] = {"", "", "VERSION", "TO"};
            if (cli_int("prompt", !strcmp(sub, "diff") && i == 2 ? "FROM" : what[i], a[i], 1, 1000000000, &v))
                return EXIT_ERROR;
        }
    client c;
    if (client_init(&c, url, config_path) != 0)
        return EXIT_ERROR;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char path[600];
    json_t *ans = NULL, *body = NULL;
    long st = 0;
    int rc = 0;
    if (!strcmp(sub, "list")) {
        st = call_json(&c, "GET", "/v1/prompts", NULL, &ans);
    } else if (!strcmp(sub, "show")) {
        snprintf(path, sizeof path, n == 3 ? "/v1/prompts/%s/versions/%s" : "/v1/prompts/%s/versions", a[1],
                 n == 3 ? a[2] : "");
        st = call_json(&c, "GET", path, NULL, &ans);
    } else if (!strcmp(sub, "diff")) {
        snprintf(path, sizeof path, "/v1/prompts/%s/diff?from=%s&to=%s", a[1], a[2], a[3]);
        st = call_json(&c, "GET", path, NULL, &ans);
    } else if (!strcmp(sub, "history")) {
        snprintf(path, sizeof path, "/v1/prompts/%s/history?limit=1000", a[1]);
        st = call_json(&c, "GET", path, NULL, &ans);
    } else if (!strcmp(sub, "add")) {
        json_error_t je;
        body = json_load_file(a[2], JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(body)) {
            fprintf(stderr, "ratchet prompt add: %s:%d: %s\n", a[2], je.line,
                    body ? "the file must hold a JSON object {messages, model}" : je.text);
            rc = EXIT_ERROR;
        } else {
            if (note)
                json_object_set_new(body, "note", json_string(note));
            snprintf(path, sizeof path, "/v1/prompts/%s/versions", a[1]);
            st = call_json(&c, "POST", path, body, &ans);
            if (st == 404) {
                json_decref(ans);
                json_t *cr = json_pack("{s:s}", "name", a[1]);
                st = call_json(&c, "POST", "/v1/prompts", cr, &ans);
                json_decref(cr);
                if (st == 201) {
                    json_decref(ans);
                    st = call_json(&c, "POST", path, body, &ans);
                }
            }
        }
    } else {
        body = json_object();
        if (reason)
            json_object_set_new(body, "reason", json_string(reason));
        if (n == 3)
            json_object_set_new(body, "version", json_integer(strtoll(a[2], NULL, 10)));
        snprintf(path, sizeof path, "/v1/prompts/%s/%s", a[1], sub);
        st = call_json(&c, "POST", path, body, &ans);
    }
    if (!rc && (st < 200 || st > 299)) {
        print_error("prompt", st, ans);
        rc = EXIT_ERROR;
    } else if (!rc && as_json) {
        char *t = jtree_dump_text(ans, true);
        puts(t);
        free(t);
    } else if (!rc) {
        size_t i;
        json_t *x;
        if (!strcmp(sub, "list")) {
            printf("%-32s %-10s %-10s %-8s %s\n", "PROMPT", "PRODUCTION", "CANARY", "VERSIONS", "PINNED");
            json_array_foreach(json_object_get(ans, "items"), i, x) {
                char p[16] = "-", cn[32] = "-";
                if (json_is_integer(json_object_get(x, "production")))
                    snprintf(p, sizeof p, "v%lld", (long long)json_integer_value(json_object_get(x, "production")));
                if (json_is_integer(json_object_get(x, "canary")))
                    snprintf(cn, sizeof cn, "v%lld (%.0f%%)", (long long)json_integer_value(json_object_get(x, "canary")),
                             100 * json_number_value(json_object_get(x, "canary_share")));
                printf("%-32s %-10s %-10s %-8lld %s\n", json_string_value(json_object_get(x, "name")), p, cn,
                       (long long)json_integer_value(json_object_get(x, "versions")),
                       json_is_true(json_object_get(x, "pinned")) ? "yes" : "");
                if (json_is_false(json_object_get(x, "registered"))) /* declared in the config only */
                    printf("  config only, not in the registry: %s\n", json_string_value(json_object_get(x, "next")));
            }
        } else if (!strcmp(sub, "show") && n == 2) {
            printf("%-8s %-12s %-20s %-24s %s\n", "VERSION", "STATUS", "AUTHOR", "CREATED", "NOTE");
            json_array_foreach(json_object_get(ans, "items"), i, x)
                printf("v%-7lld %-12s %-20s %-24s %s\n", (long long)json_integer_value(json_object_get(x, "version")),
                       json_string_value(json_object_get(x, "status")), json_string_value(json_object_get(x, "author")),
                       json_string_value(json_object_get(x, "created_at")), json_string_value(json_object_get(x, "note")));
        } else if (!strcmp(sub, "show")) {
            printf("%s v%lld (%s), by %s, %s\n", a[1], (long long)json_integer_value(json_object_get(ans, "version")),
                   json_string_value(json_object_get(ans, "status")), json_string_value(json_object_get(ans, "author")),
                   json_string_value(json_object_get(ans, "created_at")));
            char *model = jtree_dump_text(json_object_get(ans, "model"), false);
            printf("model: %s\n", model);
            free(model);
            json_array_foreach(json_object_get(ans, "messages"), i, x)
                printf("--- %s\n%s\n", json_string_value(json_object_get(x, "role")),
                       json_string_value(json_object_get(x, "content")));
        } else if (!strcmp(sub, "diff")) {
            print_diff(ans, stdout);
        } else if (!strcmp(sub, "history")) {
            json_array_foreach(json_object_get(ans, "items"), i, x) {
                json_t *v = json_object_get(x, "version");
                char vs[24] = "";
                if (json_is_integer(v))
                    snprintf(vs, sizeof vs, "v%lld ", (long long)json_integer_value(v));
                const char *from = json_string_value(json_object_get(x, "from"));
                printf("%s  %s%s%s%s  by %s: %s\n", json_string_value(json_object_get(x, "at")), vs, from ? from : "",
                       from ? " -> " : "", json_string_value(json_object_get(x, "to")),
                       json_string_value(json_object_get(x, "actor")), json_string_value(json_object_get(x, "reason")));
            }
        } else if (!strcmp(sub, "add")) {
            printf("%s v%lld added (%s)\n", a[1], (long long)json_integer_value(json_object_get(ans, "version")),
                   json_string_value(json_object_get(ans, "status")));
        } else {
            json_t *p = json_object_get(ans, "production"), *cn = json_object_get(ans, "canary");
            printf("%s: production %s%lld, canary %s%lld%s\n", a[1], json_is_integer(p) ? "v" : "none ",
                   (long long)json_integer_value(p), json_is_integer(cn) ? "v" : "none ",
                   (long long)json_integer_value(cn), json_is_true(json_object_get(ans, "pinned")) ? ", pinned" : "");
        }
    }
    json_decref(ans);
    json_decref(body);
    client_free(&c);
    curl_global_cleanup();
    return rc;
}

/* ---- ratchet eval ---- */

const char eval_usage[] =
    "usage: ratchet eval --prompt NAME --baseline V --candidate V [--candidate V ...] [--dataset NAME]\n"
    "                    [--failed-since T] [-k K] [--concurrency N] [--budget-calls N] [--budget-cost USD]\n"
    "                    [--no-cache] [--json] [--junit FILE] [--html FILE] [--require-improvement]\n"
    "                    [--url URL | -c FILE]\n"
    "       ratchet eval --standalone -c FILE --dataset-file CASES.jsonl --baseline-file V1.json\n"
    "                    --candidate-file V2.json [...] [--prompt NAME] [--data-dir DIR] [options above]\n"
    "\n"
    "Runs the regression gate: the baseline and each candidate version on the cases, k\n"
    "samples each; the prompt's evaluators judge every output; policies/accept.lua gives\n"
    "each candidate its verdict: improved (significantly better on the cases to fix,\n"
    "nothing broken), no_regression (nothing broken, nothing shown better), regressed\n"
    "or inconclusive. Prints pass rates with 95% confidence intervals per\n"
    "version and tag, the cases that changed, the verdicts and the prompt diff.\n"
    "\n"
    "With --standalone no server is needed: a private engine starts on loopback with the\n"
    "config's providers, evaluators and prompt (its data in a temporary directory, or in\n"
    "--data-dir to keep the output cache between CI runs), loads the files, runs, stops.\n"
    "A version file is JSON {messages, model}; the dataset file JSON Lines of\n"
    "{id, variables, expected, tags}.\n"
    "\n"
    "  -p, --prompt NAME        the prompt (standalone: default the config's only prompt)\n"
    "  -b, --baseline V         baseline version;  -C, --candidate V  candidate version\n"
    "  -d, --dataset NAME       dataset (its current version, or NAME@VERSION)\n"
    "      --failed-since T     add the prompt's failed traces since T (RFC 3339 or ms)\n"
    "  -k N                     samples per case and version (default 1)\n"
    "      --concurrency N      calls at once (default 8)\n"
    "      --budget-calls N, --budget-cost USD   stop (incomplete) past these\n"
    "      --no-cache           call the model even when an identical call is cached\n"
    "      --json               print the run as JSON;  --junit FILE  write JUnit XML\n"
    "      --html FILE          write a self-contained HTML report\n"
    "  -q, --quiet              no progress bar\n"
    "      --require-improvement  exit 2, not 0, when nothing was shown better\n"
    "\n"
    "Exit status: 0 improved or no regression, 1 regressed, 2 inconclusive or incomplete\n"
    "(or no improvement with --require-improvement), 3 an error.\n";

typedef struct {
    const char *prompt, *dataset, *failed_since, *junit, *html, *data_dir;
    const char *dataset_file, *baseline_file;
    const char *cand_files[8];
    int ncand_files;
    long long baseline, cands[8];
    int ncands;
    int k, concurrency;
    double budget_calls, budget_cost;
    bool no_cache, as_json, quiet, standalone, require_improvement;
} eval_opts;

static void html_escape_char(FILE *f, char c)
{
    switch (c) {
    case '<': fputs("&lt;", f); break;
    case '>': fputs("&gt;", f); break;
    case '&': fputs("&amp;", f); break;
    case '"': fputs("&quot;", f); break;
    default: fputc(c, f);
    }
}

/* XML 1.0 text: escaped, and the control characters it cannot hold at all
 * (a model's output may carry them) written as U+FFFD */
static void xml_escape(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            fputs("\xef\xbf\xbd", f);
        else if (c == '\'')
            fputs("&apos;", f);
        else
            html_escape_char(f, *s);
    }
}

/* The outcome of case ci for version v in the results list. */
static void case_outcome(json_t *results, int64_t ci, int64_t v, int *passed, int *failed, int *errors,
                         const char **output, const char **reason)
{
    *passed = *failed = *errors = 0;
    *output = *reason = NULL;
    size_t i;
    json_t *r;
    json_array_foreach(results, i, r) {
        if (json_integer_value(json_object_get(r, "case")) != ci || json_integer_value(json_object_get(r, "version")) != v)
            continue;
        const char *st = json_string_value(json_object_get(r, "status"));
        *passed += !strcmp(st, "pass");
        *failed += !strcmp(st, "fail");
        *errors += !strcmp(st, "error");
        if (!*output || strcmp(st, "pass")) {
            *output = json_string_value(json_object_get(r, "output"));
            const char *err = json_string_value(json_object_get(r, "error"));
            *reason = err;
            size_t j;
            json_t *vd;
            json_array_foreach(json_object_get(r, "verdicts"), j, vd) if (!json_is_true(json_object_get(vd, "pass")))
                *reason = json_string_value(json_object_get(vd, "reason"));
        }
    }
}

static void print_summary(json_t *run, json_t *diffs, json_t *results)
{
    json_t *rep = json_object_get(run, "report");
    json_t *ds = json_object_get(rep, "dataset");
    printf("\nratchet eval: prompt %s, %lld cases", json_string_value(json_object_get(rep, "prompt")),
           (long long)json_integer_value(json_object_get(rep, "cases")));
    if (json_is_object(ds))
        printf(" (dataset %s v%lld)", json_string_value(json_object_get(ds, "name")),
               (long long)json_integer_value(json_object_get(ds, "version")));
    printf(", k=%lld, run %s\n\n", (long long)json_integer_value(json_object_get(rep, "k")),
           json_string_value(json_object_get(run, "id")));
    printf("  %-8s %-10s %9s  %-17s %7s\n", "VERSION", "ROLE", "PASS", "95% CI", "ERRORS");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(rep, "versions"), i, v) {
        json_t *ci = json_object_get(v, "ci95");
        printf("  v%-7lld %-10s %8.1f%%  [%5.1f%%, %5.1f%%]  %6lld\n", (long long)json_integer_value(json_object_get(v, "version")),
               json_string_value(json_object_get(v, "role")), 100 * json_number_value(json_object_get(v, "pass_rate")),
               100 * json_number_value(json_array_get(ci, 0)), 100 * json_number_value(json_array_get(ci, 1)),
               (long long)json_integer_value(json_object_get(v, "errors")));
    }
    json_t *first = json_array_get(json_object_get(rep, "versions"), 0);
    const char *tag;
    json_t *tv;
    if (json_object_size(json_object_get(first, "by_tag"))) {
        printf("\n  by tag:\n");
        json_object_foreach(json_object_get(first, "by_tag"), tag, tv) {
            printf("    %-16s", tag);
            json_array_foreach(json_object_get(rep, "versions"), i, v) {
                json_t *t = json_object_get(json_object_get(v, "by_tag"), tag);
                printf("  v%lld %5.1f%% (%lld/%lld)", (long long)json_integer_value(json_object_get(v, "version")),
                       100 * json_number_value(json_object_get(t, "pass_rate")),
                       (long long)json_integer_value(json_object_get(t, "cases_passed")),
                       (long long)json_integer_value(json_object_get(t, "cases")));
            }
            printf("\n");
        }
    }
    json_t *changed = json_object_get(rep, "changed");
    if (json_array_size(changed)) {
        printf("\n  changed cases (%lld):\n", (long long)json_integer_value(json_object_get(rep, "changed_cases")));
        json_array_foreach(changed, i, v) {
            if (i == 20) {
                printf("    ... and %lld more (--json or --html for all)\n",
                       (long long)json_integer_value(json_object_get(rep, "changed_cases")) - 20);
                break;
            }
            printf("    %s [%s]\n", json_string_value(json_object_get(v, "id")),
                   json_string_value(json_object_get(v, "source")));
            const char *k;
            json_t *o;
            json_object_foreach(json_object_get(v, "results"), k, o) {
                int p, f, e;
                const char *out, *why;
                case_outcome(results, json_integer_value(json_object_get(v, "case")), strtoll(k, NULL, 10), &p, &f,
                             &e, &out, &why);
                printf("      v%-4s %d/%lld pass  %.60s%s%s\n", k, p, (long long)json_integer_value(json_object_get(rep, "k")),
                       out ? out : "", why ? "  <- " : "", why ? why : "");
            }
        }
    }
    printf("\n  verdicts:\n");
    json_array_foreach(json_object_get(rep, "verdicts"), i, v) {
        printf("    v%lld: %s\n", (long long)json_integer_value(json_object_get(v, "version")),
               json_string_value(json_object_get(v, "verdict")));
        size_t j;
        json_t *r;
        json_array_foreach(json_object_get(v, "reasons"), j, r) printf("      - %s\n", json_string_value(r));
    }
    json_array_foreach(diffs, i, v) {
        printf("\n  prompt diff v%lld -> v%lld:\n", (long long)json_integer_value(json_object_get(v, "from")),
               (long long)json_integer_value(json_object_get(v, "to")));
        print_diff(v, stdout);
    }
    json_t *w = json_object_get(rep, "winner");
    printf("\n%s: %s", json_string_value(json_object_get(run, "state")), json_string_value(json_object_get(run, "verdict")));
    if (json_is_integer(w))
        printf(" (winner v%lld)", (long long)json_integer_value(w));
    if (json_string_value(json_object_get(run, "error")))
        printf(" — %s", json_string_value(json_object_get(run, "error")));
    printf("\n");
}

/* "3/3 pass", "1/3 pass, 2 errors", "no result" */
static void outcome_text(int p, int fl, int e, long long k, char *out, size_t n)
{
    if (p + fl + e == 0)
        snprintf(out, n, "no result");
    else if (e)
        snprintf(out, n, "%d/%lld pass, %d error%s", p, k, e, e == 1 ? "" : "s");
    else
        snprintf(out, n, "%d/%lld pass", p, k);
}

/* JUnit for CI: per candidate, one testcase per case that fails only where
 * the candidate fails the case (as the gate counts it: most of its k samples
 * pass and none erred); the baseline's failures are no test failures (its
 * outcome is in the message). Then one testcase for the verdict, failing
 * when `ratchet eval` exits other than 0 (exit_code): it reads the verdict's
 * name, whatever the policy calls it. */
static int write_junit(const char *path, json_t *run, json_t *cases, json_t *results, int exit_code)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    json_t *rep = json_object_get(run, "report");
    const char *prompt = json_string_value(json_object_get(rep, "prompt"));
    long long k = json_integer_value(json_object_get(rep, "k"));
    if (k < 1)
        k = 1;
    int64_t baseline = 0;
    size_t vi;
    json_t *v;
    json_array_foreach(json_object_get(rep, "versions"), vi, v)
        if (!strcmp(json_string_value(json_object_get(v, "role")) ? json_string_value(json_object_get(v, "role")) : "",
                    "baseline"))
            baseline = json_integer_value(json_object_get(v, "version"));
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"ratchet eval ");
    xml_escape(f, prompt);
    fprintf(f, "\">\n");
    int64_t ncase = (int64_t)json_array_size(cases);
    json_array_foreach(json_object_get(rep, "versions"), vi, v) {
        int64_t ver = json_integer_value(json_object_get(v, "version"));
        if (ver == baseline)
            continue;
        int fails = 0, errs = 0, skips = 0;
        for (int64_t ci = 0; ci < ncase; ci++) {
            int p, fl, e;
            const char *o, *w;
            case_outcome(results, ci, ver, &p, &fl, &e, &o, &w);
            skips += p + fl + e == 0;
            errs += e > 0;
            fails += p + fl + e > 0 && e == 0 && 2 * p <= k;
        }
        fprintf(f, "  <testsuite name=\"");
        xml_escape(f, prompt);
        fprintf(f, " v%lld (candidate, baseline v%lld)\" tests=\"%lld\" failures=\"%d\" errors=\"%d\" skipped=\"%d\">\n",
                (long long)ver, (long long)baseline, (long long)ncase, fails, errs, skips);
        for (int64_t ci = 0; ci < ncase; ci++) {
            json_t *c = json_array_get(cases, (size_t)ci);
            int p, fl, e, bp, bf, be;
            const char *o, *w, *bo, *bw;
            case_outcome(results, ci, ver, &p, &fl, &e, &o, &w);
            case_outcome(results, ci, baseline, &bp, &bf, &be, &bo, &bw);
            char mine[64], base[64];
            outcome_text(p, fl, e, k, mine, sizeof mine);
            outcome_text(bp, bf, be, k, base, sizeof base);
            fprintf(f, "    <testcase classname=\"");
            xml_escape(f, prompt);
            fprintf(f, ".v%lld\" name=\"", (long long)ver);
            xml_escape(f, json_string_value(json_object_get(c, "id")));
            fprintf(f, "\">");
            if (p + fl + e == 0) {
                fprintf(f, "<skipped message=\"no result: the run ended before this case\"/>");
            } else if (e || 2 * p <= k) {
                fprintf(f, e ? "<error message=\"" : "<failure message=\"");
                xml_escape(f, w ? w : "failed");
                fprintf(f, " (v%lld: %s; baseline v%lld: %s)\">", (long long)ver, mine, (long long)baseline, base);
                xml_escape(f, o ? o : "");
                fprintf(f, e ? "</error>" : "</failure>");
            }
            fprintf(f, "</testcase>\n");
        }
        fprintf(f, "  </testsuite>\n");
    }
    /* the verdict */
    const char *verdict = json_string_value(json_object_get(run, "verdict"));
    const char *state = json_string_value(json_object_get(run, "state"));
    fprintf(f, "  <testsuite name=\"");
    xml_escape(f, prompt);
    fprintf(f, " gate\" tests=\"1\" failures=\"%d\" errors=\"0\">\n    <testcase classname=\"", exit_code != EXIT_OK);
    xml_escape(f, prompt);
    fprintf(f, "\" name=\"verdict\">");
    if (exit_code != EXIT_OK) {
        fprintf(f, "<failure message=\"");
        xml_escape(f, verdict ? verdict : "none");
        fprintf(f, " (run %s, exit status %d)\">", state ? state : "?", exit_code);
        json_array_foreach(json_object_get(rep, "verdicts"), vi, v) {
            fprintf(f, "v%lld: ", (long long)json_integer_value(json_object_get(v, "version")));
            xml_escape(f, json_string_value(json_object_get(v, "verdict")));
            size_t j;
            json_t *r;
            json_array_foreach(json_object_get(v, "reasons"), j, r) {
                fprintf(f, "\n  - ");
                xml_escape(f, json_string_value(r));
            }
            fprintf(f, "\n");
        }
        if (json_string_value(json_object_get(run, "error")))
            xml_escape(f, json_string_value(json_object_get(run, "error")));
        fprintf(f, "</failure>");
    } else {
        fprintf(f, "<system-out>");
        xml_escape(f, verdict ? verdict : "");
        fprintf(f, "</system-out>");
    }
    fprintf(f, "</testcase>\n  </testsuite>\n</testsuites>\n");
    return fclose(f);
}

/* Writes text with every occurrence of a replaced by b. */
static void put_replacing(FILE *f, const char *text, size_t len, const char *a, const char *b)
{
    size_t al = strlen(a);
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *hit = memmem(p, (size_t)(end - p), a, al);
        if (!hit) {
            fwrite(p, 1, (size_t)(end - p), f);
            break;
        }
        fwrite(p, 1, (size_t)(hit - p), f);
        fputs(b, f);
        p = hit + al;
    }
}

/* The run's dataset cases (inputs, expected values, tags) for the report, or
 * an empty array when the run used none or they cannot be read. */
static json_t *run_cases(client *c, json_t *run)
{
    json_t *cases = json_array();
    json_t *ds = json_object_get(json_object_get(run, "report"), "dataset");
    const char *name = json_string_value(json_object_get(ds, "name"));
    if (!c || !name)
        return cases;
    char path[600];
    snprintf(path, sizeof path, "/v1/datasets/%s/cases?version=%lld", name,
             (long long)json_integer_value(json_object_get(ds, "version")));
    buf_t raw = {0};
    if (call_raw(c, "GET", path, NULL, NULL, 0, NULL, &raw) == 200) {
        const char *p = raw.data, *end = raw.data + raw.len;
        while (p && p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
            json_t *one = n ? json_loadb(p, n, 0, NULL) : NULL;
            if (json_is_object(one))
                json_array_append(cases, one);
            json_decref(one);
            p = nl ? nl + 1 : NULL;
        }
    }
    buf_free(&raw);
    return cases;
}

/* The console's run-compare page (docs/console.md) with the run's JSON
 * embedded and the page's own files inlined: one self-contained file, the
 * same renderer as the console. */
static int write_html(const char *path, client *c, json_t *run, json_t *diffs, json_t *results)
{
    char err[600];
    console_assets *ca = console_load(config_share_dir(), err, sizeof err);
    if (!ca) {
        fprintf(stderr, "ratchet eval: the console's files are needed for --html: %s\n", err);
        return -1;
    }
    const char *page, *js, *css;
    size_t plen, jlen, clen;
    if (console_file_body(ca, "index.html", &page, &plen) || console_file_body(ca, "app.js", &js, &jlen) ||
        console_file_body(ca, "style.css", &css, &clen)) {
        fprintf(stderr, "ratchet eval: %s lacks app.js or style.css\n", console_dir(ca));
        console_free(ca);
        return -1;
    }
    json_t *data = json_pack("{s:O, s:O, s:O, s:o}", "run", run, "results", results, "diffs", diffs, "cases",
                             run_cases(c, run));
    char *text = jtree_dump_text(data, false);
    json_decref(data);
    FILE *f = fopen(path, "w");
    if (!f) {
        free(text);
        console_free(ca);
        return -1;
    }
    /* the page as the console serves it, its links to its own files replaced
     * by their contents (the compare page draws no chart: no Chart.js) */
    static const char *const css_link = "<link rel=\"stylesheet\" href=\"style.css\">";
    static const char *const app_tag = "<script type=\"module\" src=\"app.js\"></script>";
    const char *a = strstr(page, css_link), *d = strstr(page, app_tag);
    if (!a || !d || a > d) {
        fprintf(stderr, "ratchet eval: %s/index.html does not link style.css and app.js as expected\n",
                console_dir(ca));
        fclose(f);
        free(text);
        console_free(ca);
        return -1;
    }
    fwrite(page, 1, (size_t)(a - page), f);
    fputs("<style>\n", f);
    fwrite(css, 1, clen, f);
    fputs("</style>", f);
    const char *after_css = a + strlen(css_link);
    fwrite(after_css, 1, (size_t)(d - after_css), f);
    /* in JSON, '<' only appears inside strings, where \u003c means the same:
     * nothing in the data can close the script element */
    fputs("<script type=\"application/json\" id=\"ratchet-run\">", f);
    put_replacing(f, text, strlen(text), "<", "\\u003c");
    fputs("</script>\n<script type=\"module\">\n", f);
    put_replacing(f, js, jlen, "</script", "<\\/script");
    fputs("</script>", f);
    const char *rest = d + strlen(app_tag);
    fwrite(rest, 1, plen - (size_t)(rest - page), f);
    free(text);
    console_free(ca);
    return fclose(f);
}

/* Every result of a run, page by page. */
static json_t *all_results(client *c, const char *id)
{
    json_t *all = json_array();
    long long cursor = -1;
    for (;;) {
        char path[300];
        if (cursor >= 0)
            snprintf(path, sizeof path, "/v1/runs/%s/results?limit=5000&cursor=%lld", id, cursor);
        else
            snprintf(path, sizeof path, "/v1/runs/%s/results?limit=5000", id);
        json_t *ans;
        if (call_json(c, "GET", path, NULL, &ans) != 200) {
            json_decref(ans);
            break;
        }
        json_array_extend(all, json_object_get(ans, "items"));
        json_t *next = json_object_get(ans, "next_cursor");
        cursor = json_is_integer(next) ? json_integer_value(next) : -1;
        json_decref(ans);
        if (cursor < 0)
            break;
    }
    return all;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Starts the run, follows it, prints and writes the reports. */
static int eval_run(client *c, const eval_opts *o)
{
    json_t *spec = json_pack("{s:s, s:I, s:[]}", "prompt", o->prompt, "baseline", (json_int_t)o->baseline, "candidates");
    for (int i = 0; i < o->ncands; i++)
        json_array_append_new(json_object_get(spec, "candidates"), json_integer(o->cands[i]));
    if (o->dataset) {
        const char *at = strchr(o->dataset, '@');
        if (at) {
            json_object_set_new(spec, "dataset", json_stringn(o->dataset, (size_t)(at - o->dataset)));
            json_object_set_new(spec, "dataset_version", json_integer(strtoll(at + 1, NULL, 10)));
        } else {
            json_object_set_new(spec, "dataset", json_string(o->dataset));
        }
    }
    if (o->failed_since)
        json_object_set_new(spec, "failed", json_pack("{s:s}", "since", o->failed_since));
    if (o->k)
        json_object_set_new(spec, "k", json_integer(o->k));
    if (o->concurrency)
        json_object_set_new(spec, "concurrency", json_integer(o->concurrency));
    if (o->no_cache)
        json_object_set_new(spec, "cache", json_false());
    if (o->budget_calls > 0 || o->budget_cost > 0) {
        json_t *b = json_object();
        if (o->budget_calls > 0)
            json_object_set_new(b, "calls", json_real(o->budget_calls));
        if (o->budget_cost > 0)
            json_object_set_new(b, "cost", json_real(o->budget_cost));
        json_object_set_new(spec, "budget", b);
    }
    json_t *ans;
    long st = call_json(c, "POST", "/v1/runs", spec, &ans);
    json_decref(spec);
    if (st != 201) {
        print_error("eval", st, ans);
        json_decref(ans);
        return EXIT_ERROR;
    }
    char id[80];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(ans, "id")));
    json_decref(ans);
    bool bar = !o->quiet && !o->as_json && isatty(2);
    char path[200];
    /* the engine answers as soon as the run ends, else after the wait: the
     * progress bar's pace (an engine that does not know ?wait answers at once,
     * and the rest of the wait is slept here) */
    int wait_ms = bar ? 200 : 5000;
    snprintf(path, sizeof path, "/v1/runs/%s?wait=%d", id, wait_ms);
    json_t *run = NULL;
    for (;;) {
        uint64_t t0 = mono_ns();
        st = call_json(c, "GET", path, NULL, &run);
        if (st != 200) {
            print_error("eval", st, run);
            json_decref(run);
            return EXIT_ERROR;
        }
        const char *state = json_string_value(json_object_get(run, "state"));
        if (strcmp(state, "running"))
            break;
        json_t *p = json_object_get(run, "progress");
        if (bar && p) {
            double jobs = (double)json_integer_value(json_object_get(p, "jobs"));
            double done = (double)json_integer_value(json_object_get(p, "done"));
            int w = jobs > 0 ? (int)(30 * done / jobs) : 0;
            fprintf(stderr, "\r[%.*s%*s] %3.0f%% %lld/%lld  %lld calls, %lld cached, $%.4f ", w,
                    "##############################", 30 - w, "", jobs > 0 ? 100 * done / jobs : 0, (long long)done,
                    (long long)jobs, (long long)json_integer_value(json_object_get(p, "calls")),
                    (long long)json_integer_value(json_object_get(p, "cached")),
                    json_number_value(json_object_get(p, "cost")));
        }
        json_decref(run);
        run = NULL;
        uint64_t took = (mono_ns() - t0) / 1000000u;
        if (took < (uint64_t)wait_ms)
            sleep_ms((int)((uint64_t)wait_ms - took));
    }
    if (bar)
        fprintf(stderr, "\r%*s\r", 90, "");
    json_t *diffs = json_array();
    for (int i = 0; i < o->ncands; i++) {
        char dp[300];
        snprintf(dp, sizeof dp, "/v1/prompts/%s/diff?from=%lld&to=%lld", o->prompt, o->baseline, o->cands[i]);
        json_t *d;
        if (call_json(c, "GET", dp, NULL, &d) == 200)
            json_array_append_new(diffs, d);
        else
            json_decref(d);
    }
    json_t *results = all_results(c, id);
    int rc = EXIT_INCONCLUSIVE;
    const char *verdict = json_string_value(json_object_get(run, "verdict"));
    const char *state = json_string_value(json_object_get(run, "state"));
    if (!strcmp(state, "finished") && verdict)
        rc = !strcmp(verdict, "improved")        ? EXIT_OK
             : !strcmp(verdict, "no_regression") ? (o->require_improvement ? EXIT_INCONCLUSIVE : EXIT_OK)
             : !strcmp(verdict, "regressed")     ? EXIT_REGRESSED
                                                 : EXIT_INCONCLUSIVE;
    if (o->as_json) {
        json_object_set(run, "diffs", diffs);
        char *t = jtree_dump_text(run, true);
        puts(t);
        free(t);
    } else {
        print_summary(run, diffs, results);
    }
    if (o->junit || o->html) {
        json_t *cases = json_array();
        /* the case ids, by index, from the results and the changed list */
        int64_t n = json_integer_value(json_object_get(json_object_get(run, "report"), "cases"));
        for (int64_t i = 0; i < n; i++)
            json_array_append_new(cases, json_pack("{s:s}", "id", ""));
        size_t i;
        json_t *r;
        json_array_foreach(results, i, r) {
            json_t *c0 = json_array_get(cases, (size_t)json_integer_value(json_object_get(r, "case")));
            if (c0 && json_is_string(json_object_get(r, "case_id")))
                json_object_set(c0, "id", json_object_get(r, "case_id"));
        }
        if (o->junit && write_junit(o->junit, run, cases, results, rc) != 0) {
            fprintf(stderr, "ratchet eval: cannot write %s\n", o->junit);
            rc = EXIT_ERROR;
        }
        if (o->html && write_html(o->html, c, run, diffs, results) != 0) {
            fprintf(stderr, "ratchet eval: cannot write %s\n", o->html);
            rc = EXIT_ERROR;
        }
        json_decref(cases);
    }
    json_decref(results);
    json_decref(diffs);
    json_decref(run);
    return rc;
}

/* ---- standalone ---- */

typedef struct {
    pid_t pid;
    char dir[256];
    bool own_dir;
} private_engine;

static int engine_start(private_engine *pe, const char *config_path, const char *data_dir, char *base, size_t baselen)
{
    memset(pe, 0, sizeof *pe);
    snprintf(pe->dir, sizeof pe->dir, "%s/ratchet-eval-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(pe->dir)) {
        perror("ratchet eval: mkdtemp");
        return -1;
    }
    pe->own_dir = true;
    char addr[300], data[300], logf[300];
    snprintf(addr, sizeof addr, "%s/addr", pe->dir);
    snprintf(data, sizeof data, "%s/data", pe->dir);
    snprintf(logf, sizeof logf, "%s/engine.log", pe->dir);
    pe->pid = fork();
    if (pe->pid < 0)
        return -1;
    if (pe->pid == 0) {
        FILE *lf = freopen(logf, "w", stderr);
        (void)lf;
        int fd = open("/dev/null", 0);
        dup2(fd, 0);
        dup2(2, 1);
        char *args[] = {"ratchet", "serve", "-c", (char *)config_path, "--listen", "127.0.0.1:0", "--data-dir",
                        (char *)(data_dir ? data_dir : data), "--address-file", addr, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* 10 s */
        size_t n;
        char *a = read_whole(addr, &n);
        if (a && n && a[n - 1] == '\n') {
            a[n - 1] = '\0';
            snprintf(base, baselen, "http://%s", a);
            free(a);
            return 0;
        }
        free(a);
        int status;
        if (waitpid(pe->pid, &status, WNOHANG) == pe->pid) {
            pe->pid = 0;
            break;
        }
        sleep_ms(20);
    }
    size_t n;
    char *log = read_whole(logf, &n);
    fprintf(stderr, "ratchet eval: the private engine did not start:\n%s", log ? log : "");
    free(log);
    return -1;
}

static void engine_stop(private_engine *pe)
{
    if (pe->pid > 0) {
        kill(pe->pid, SIGTERM);
        int status;
        waitpid(pe->pid, &status, 0);
    }
    if (pe->own_dir) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", pe->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "ratchet eval: could not remove %s\n", pe->dir);
    }
}

/* Adds a version from a file; its number in *v. */
static int add_version_file(client *c, const char *prompt, const char *file, long long *v)
{
    json_error_t je;
    json_t *body = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(body)) {
        fprintf(stderr, "ratchet eval: %s:%d: %s\n", file, je.line,
                body ? "a version file holds a JSON object {messages, model}" : je.text);
        json_decref(body);
        return -1;
    }
    if (!json_object_get(body, "note"))
        json_object_set_new(body, "note", json_string(file));
    char path[300];
    snprintf(path, sizeof path, "/v1/prompts/%s/versions", prompt);
    json_t *ans;
    long st = call_json(c, "POST", path, body, &ans);
    json_decref(body);
    if (st != 201) {
        fprintf(stderr, "ratchet eval: %s: ", file);
        print_error("eval", st, ans);
        json_decref(ans);
        return -1;
    }
    *v = json_integer_value(json_object_get(ans, "version"));
    json_decref(ans);
    return 0;
}

static int eval_standalone(eval_opts *o, const char *config_path, client *c)
{
    config cfg;
    config_defaults(&cfg);
    char err[1024];
    if (config_load(&cfg, config_path, err, sizeof err) != 0) {
        fprintf(stderr, "ratchet eval: configuration error: %s\n", err);
        config_free(&cfg);
        return EXIT_ERROR;
    }
    char prompt[160] = "";
    if (o->prompt)
        snprintf(prompt, sizeof prompt, "%s", o->prompt);
    else if (cfg.nprompts == 1)
        snprintf(prompt, sizeof prompt, "%s", cfg.prompts[0].name);
    config_free(&cfg);
    if (!prompt[0]) {
        fprintf(stderr, "ratchet eval: the config declares %s prompt; say which with --prompt\n",
                "more than one (or no)");
        return EXIT_ERROR;
    }
    private_engine pe;
    if (engine_start(&pe, config_path, o->data_dir, c->base, sizeof c->base) != 0) {
        engine_stop(&pe);
        return EXIT_ERROR;
    }
    int rc = EXIT_ERROR;
    json_t *ans = NULL;
    json_t *cr = json_pack("{s:s}", "name", prompt);
    long st = call_json(c, "POST", "/v1/prompts", cr, &ans);
    json_decref(cr);
    if (st != 201 && st != 409) {
        print_error("eval", st, ans);
        goto out;
    }
    json_decref(ans);
    ans = NULL;
    o->prompt = prompt;
    if (add_version_file(c, prompt, o->baseline_file, &o->baseline) != 0)
        goto out;
    for (int i = 0; i < o->ncand_files; i++)
        if (add_version_file(c, prompt, o->cand_files[i], &o->cands[o->ncands++]) != 0)
            goto out;
    size_t len;
    char *cases = read_whole(o->dataset_file, &len);
    if (!cases) {
        fprintf(stderr, "ratchet eval: cannot read %s\n", o->dataset_file);
        goto out;
    }
    st = call(c, "POST", "/v1/datasets/eval/cases?mode=replace", "application/x-ndjson", cases, len, &ans, NULL);
    free(cases);
    if (st != 200) {
        fprintf(stderr, "ratchet eval: %s: ", o->dataset_file);
        print_error("eval", st, ans);
        goto out;
    }
    o->dataset = "eval";
    rc = eval_run(c, o);
out:
    json_decref(ans);
    engine_stop(&pe);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"prompt", required_argument, NULL, 'p'},      {"baseline", required_argument, NULL, 'b'},
        {"candidate", required_argument, NULL, 'C'},   {"dataset", required_argument, NULL, 'd'},
        {"failed-since", required_argument, NULL, 'F'}, {"concurrency", required_argument, NULL, 'N'},
        {"budget-calls", required_argument, NULL, 'B'}, {"budget-cost", required_argument, NULL, 'X'},
        {"no-cache", no_argument, NULL, 'n'},          {"json", no_argument, NULL, 'j'},
        {"junit", required_argument, NULL, 'J'},       {"html", required_argument, NULL, 'H'},
        {"quiet", no_argument, NULL, 'q'},             {"url", required_argument, NULL, 'u'},
        {"config", required_argument, NULL, 'c'},      {"standalone", no_argument, NULL, 's'},
        {"dataset-file", required_argument, NULL, 'D'}, {"baseline-file", required_argument, NULL, 'L'},
        {"candidate-file", required_argument, NULL, 'E'}, {"data-dir", required_argument, NULL, 'R'},
        {"require-improvement", no_argument, NULL, 'I'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    eval_opts o = {0};
    const char *url = NULL, *config_path = NULL;
    int ch;
    long long n;
    optind = 1;
    while ((ch = cli_getopt("eval", argc, argv, "p:b:C:d:k:qu:c:h", opts)) != -1) {
        switch (ch) {
        case 'p': o.prompt = optarg; break;
        case 'b':
            if (cli_int("eval", "--baseline", optarg, 1, 1000000000, &o.baseline))
                return EXIT_ERROR;
            break;
        case 'C':
            if (o.ncands == 8) {
                fprintf(stderr, "ratchet eval: at most 8 candidates\n");
                return EXIT_ERROR;
            }
            if (cli_int("eval", "--candidate", optarg, 1, 1000000000, &o.cands[o.ncands++]))
                return EXIT_ERROR;
            break;
        case 'd': o.dataset = optarg; break;
        case 'F': o.failed_since = optarg; break;
        case 'k':
            if (cli_int("eval", "-k", optarg, 1, 20, &n))
                return EXIT_ERROR;
            o.k = (int)n;
            break;
        case 'N':
            if (cli_int("eval", "--concurrency", optarg, 1, 512, &n))
                return EXIT_ERROR;
            o.concurrency = (int)n;
            break;
        case 'B':
            if (cli_int("eval", "--budget-calls", optarg, 1, 1000000000000LL, &n))
                return EXIT_ERROR;
            o.budget_calls = (double)n;
            break;
        case 'X':
            if (cli_positive("eval", "--budget-cost", optarg, &o.budget_cost))
                return EXIT_ERROR;
            break;
        case 'n': o.no_cache = true; break;
        case 'j': o.as_json = true; break;
        case 'J': o.junit = optarg; break;
        case 'H': o.html = optarg; break;
        case 'q': o.quiet = true; break;
        case 'u': url = optarg; break;
        case 'c': config_path = optarg; break;
        case 's': o.standalone = true; break;
        case 'D': o.dataset_file = optarg; break;
        case 'L': o.baseline_file = optarg; break;
        case 'E':
            if (o.ncand_files == 8) {
                fprintf(stderr, "ratchet eval: at most 8 candidates\n");
                return EXIT_ERROR;
            }
            o.cand_files[o.ncand_files++] = optarg;
            break;
        case 'R': o.data_dir = optarg; break;
        case 'I': o.require_improvement = true; break;
        case 'h': fputs(eval_usage, stdout); return 0;
        default: fputs(eval_usage, stderr); return EXIT_ERROR;
        }
    }
    if (o.prompt && !registry_name_ok(o.prompt)) {
        fprintf(stderr, "ratchet eval: --prompt '%s' is not a prompt name (1 to 128 letters, digits and - _ . :)\n",
                o.prompt);
        return EXIT_ERROR;
    }
    if (o.dataset) {
        const char *at = strchr(o.dataset, '@');
        char name[160];
        snprintf(name, sizeof name, "%.*s", at ? (int)(at - o.dataset) : (int)strlen(o.dataset), o.dataset);
        if (!registry_name_ok(name)) {
            fprintf(stderr, "ratchet eval: --dataset '%s' is not a dataset name (NAME or NAME@VERSION)\n", o.dataset);
            return EXIT_ERROR;
        }
        if (at && cli_int("eval", "--dataset's @VERSION", at + 1, 1, 1000000000, &n))
            return EXIT_ERROR;
    }
    int64_t t;
    if (o.failed_since && !time_parse(o.failed_since, &t)) {
        fprintf(stderr, "ratchet eval: --failed-since '%s' is not an RFC 3339 time or milliseconds\n", o.failed_since);
        return EXIT_ERROR;
    }
    const char *problem = NULL;
    if (optind < argc)
        problem = "unexpected argument";
    else if (o.standalone && (!config_path || !o.dataset_file || !o.baseline_file || !o.ncand_files))
        problem = "--standalone needs -c FILE, --dataset-file, --baseline-file and --candidate-file";
    else if (!o.standalone && (!o.prompt || o.baseline < 1 || !o.ncands || (!o.dataset && !o.failed_since)))
        problem = "give --prompt, --baseline, --candidate and --dataset or --failed-since (or --standalone with files)";
    if (problem) {
        fprintf(stderr, "ratchet eval: %s\n\n%s", problem, eval_usage);
        return EXIT_ERROR;
    }
    client c;
    if (client_init(&c, url, config_path) != 0)
        return EXIT_ERROR;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = o.standalone ? eval_standalone(&o, config_path, &c) : eval_run(&c, &o);
    client_free(&c);
    curl_global_cleanup();
    return rc;
}


/* ---- the loop: optimize, approve, loop ---- */

const char optimize_usage[] =
    "usage: ratchet optimize NAME [--template T] [--url URL] [-c FILE] [--json]\n"
    "\n"
    "Starts an optimization cycle of the loop for prompt NAME now (the trigger\n"
    "policy is skipped): failure mining, the optimizer, then the gate. Follow it\n"
    "with `ratchet loop NAME`. The prompt needs loop settings in the config.\n"
    "--template T uses scripts/metaprompts/T.lua for this cycle instead of\n"
    "loop.template (e.g. gepa: the search over a Pareto pool, docs/loop.md).\n"
    "Exit status: 0 started, 3 the engine refused (busy, pinned, a live canary) or cannot be reached, or usage.\n";

const char approve_usage[] =
    "usage: ratchet approve RUN [--reject] [--reason TEXT] [--url URL] [-c FILE] [--json]\n"
    "\n"
    "Answers a gate run whose winner waits for a human (loop.require_approval):\n"
    "approve starts its canary; --reject rejects the version instead.\n"
    "Exit status: 0 done, 3 the engine refused or cannot be reached, or usage.\n";

const char loop_usage[] =
    "usage: ratchet loop [NAME] [--url URL] [-c FILE] [--json]\n"
    "\n"
    "Without NAME: every prompt's loop state. With NAME: its state and the\n"
    "events of its cycles (triggers, candidates, gate verdicts, canary steps,\n"
    "promotions, rollbacks).\n"
    "Exit status: 0 done, 3 the engine refused or cannot be reached, or usage.\n";

static int loop_client(const char *cmd, const char *usage, int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'}, {"config", required_argument, NULL, 'c'},
        {"reason", required_argument, NULL, 'r'}, {"reject", no_argument, NULL, 'x'},
        {"json", no_argument, NULL, 'j'},      {"help", no_argument, NULL, 'h'},
        {"template", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *config_path = NULL, *reason = NULL, *tpl = NULL;
    bool as_json = false, reject = false;
    int ch;
    optind = 1;
    while ((ch = cli_getopt(cmd, argc, argv, "u:c:r:xjht:", opts)) != -1) {
        switch (ch) {
        case 't': tpl = optarg; break;
        case 'u': url = optarg; break;
        case 'c': config_path = optarg; break;
        case 'r': reason = optarg; break;
        case 'x': reject = true; break;
        case 'j': as_json = true; break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return EXIT_ERROR;
        }
    }
    int n = argc - optind;
    char **a = argv + optind;
    bool is_loop = !strcmp(cmd, "loop");
    if ((is_loop && n > 1) || (!is_loop && n != 1)) {
        fprintf(stderr, "ratchet %s: %s\n\n%s", cmd, n ? "too many arguments" : "which one?", usage);
        return EXIT_ERROR;
    }
    if ((reject || reason) && strcmp(cmd, "approve")) {
        fprintf(stderr, "ratchet %s: --reject and --reason belong to `ratchet approve`\n", cmd);
        return EXIT_ERROR;
    }
    if (tpl && strcmp(cmd, "optimize")) {
        fprintf(stderr, "ratchet %s: --template belongs to `ratchet optimize`\n", cmd);
        return EXIT_ERROR;
    }
    if (tpl && !registry_name_ok(tpl)) {
        fprintf(stderr, "ratchet optimize: --template: '%s' is not a template name\n", tpl);
        return EXIT_ERROR;
    }
    if (n == 1 && strcmp(cmd, "approve") && !registry_name_ok(a[0])) {
        fprintf(stderr, "ratchet %s: '%s' is not a prompt name\n", cmd, a[0]);
        return EXIT_ERROR;
    }
    if (n == 1 && !strcmp(cmd, "approve") && (strlen(a[0]) > 64 || strspn(a[0], "0123456789abcdef-") != strlen(a[0]))) {
        fprintf(stderr, "ratchet approve: '%s' is not a run id\n", a[0]);
        return EXIT_ERROR;
    }
    client c;
    if (client_init(&c, url, config_path) != 0)
        return EXIT_ERROR;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char path[600];
    json_t *ans = NULL, *body = NULL;
    long st;
    if (!strcmp(cmd, "optimize")) {
        snprintf(path, sizeof path, "/v1/prompts/%s/optimize", a[0]);
        if (tpl)
            body = json_pack("{s:s}", "template", tpl);
        st = call_json(&c, "POST", path, body, &ans);
    } else if (!strcmp(cmd, "approve")) {
        body = json_object();
        if (reason)
            json_object_set_new(body, "reason", json_string(reason));
        snprintf(path, sizeof path, "/v1/runs/%s/%s", a[0], reject ? "reject" : "approve");
        st = call_json(&c, "POST", path, body, &ans);
    } else {
        snprintf(path, sizeof path, n ? "/v1/loop/%s" : "/v1/loop", n ? a[0] : "");
        st = call_json(&c, "GET", path, NULL, &ans);
    }
    int rc = 0;
    if (st < 200 || st > 299) {
        print_error(cmd, st, ans);
        rc = EXIT_ERROR;
    } else if (as_json) {
        char *t = jtree_dump_text(ans, true);
        puts(t);
        free(t);
    } else if (!strcmp(cmd, "loop") && n == 0) {
        printf("%-32s %-18s %-8s %s\n", "PROMPT", "STATE", "VERSION", "LAST DECISION");
        const char *name;
        json_t *p;
        json_object_foreach(json_object_get(ans, "prompts"), name, p) {
            char v[24] = "-";
            if (json_is_integer(json_object_get(p, "version")))
                snprintf(v, sizeof v, "v%lld", (long long)json_integer_value(json_object_get(p, "version")));
            const char *d = json_string_value(json_object_get(p, "decision"));
            printf("%-32s %-18s %-8s %s\n", name, json_string_value(json_object_get(p, "state")), v, d ? d : "");
        }
    } else {
        const char *d = json_string_value(json_object_get(ans, "decision"));
        printf("%s: %s%s%s\n", json_string_value(json_object_get(ans, "prompt")),
               json_string_value(json_object_get(ans, "state")), d ? " — " : "", d ? d : "");
        if (json_is_string(json_object_get(ans, "run")) && strcmp(json_string_value(json_object_get(ans, "state")), "idle"))
            printf("run: %s\n", json_string_value(json_object_get(ans, "run")));
        size_t i;
        json_t *ev;
        json_array_foreach(json_object_get(ans, "events"), i, ev) {
            printf("%s  %-12s %s\n", json_string_value(json_object_get(ev, "at")),
                   json_string_value(json_object_get(ev, "kind")), json_string_value(json_object_get(ev, "message")));
            if (strcmp(json_string_value(json_object_get(ev, "kind")), "search"))
                continue;
            /* a search's lineage: each pool member, its parents and its score */
            size_t j;
            json_t *m;
            json_array_foreach(json_object_get(json_object_get(ev, "detail"), "pool"), j, m) {
                buf_t par;
                buf_init(&par);
                size_t k;
                json_t *x;
                json_array_foreach(json_object_get(m, "parents"), k, x)
                    buf_printf(&par, "%s#%lld", k ? "+" : "", (long long)json_integer_value(x));
                printf("    #%-3lld %-8s from %-8s mean %.3f\n", (long long)json_integer_value(json_object_get(m, "id")),
                       json_string_value(json_object_get(m, "origin")), par.data ? par.data : "-",
                       json_number_value(json_object_get(m, "mean")));
                buf_free(&par);
            }
        }
    }
    json_decref(ans);
    json_decref(body);
    client_free(&c);
    curl_global_cleanup();
    return rc;
}

int cmd_optimize(int argc, char **argv)
{
    return loop_client("optimize", optimize_usage, argc, argv);
}

int cmd_approve(int argc, char **argv)
{
    return loop_client("approve", approve_usage, argc, argv);
}

int cmd_loop(int argc, char **argv)
{
    return loop_client("loop", loop_usage, argc, argv);
}
