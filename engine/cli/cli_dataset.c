/* cli_dataset.c — `ratchet dataset`: the datasets of a running engine from
 * the shell, a client of /v1/datasets (docs/gate.md#datasets): list, show,
 * export and import JSON Lines, add and remove cases, cases from one trace
 * or from every trace a filter matches, versions and the diff of two. The
 * engine does the validation; this file checks its own flags first. */
#include "cli/cli.h"

#include <curl/curl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_private.h"
#include "loop/registry.h"
#include "base/util.h"

const char dataset_usage[] =
    "usage: ratchet dataset <command> NAME [args] [--url URL] [-c FILE] [--json]\n"
    "\n"
    "  list                          the datasets: current version, cases, last change\n"
    "  show NAME [--version V]       a version's cases (default the current one)\n"
    "  export NAME [--version V] [-o FILE]   the cases as JSON Lines (stdout, or FILE)\n"
    "  import NAME FILE [--mode M]   cases from JSON Lines or a JSON array (FILE - reads stdin);\n"
    "                                M: append (default; an id already there is an error),\n"
    "                                upsert, replace (the file becomes the whole dataset)\n"
    "  add NAME CASE [CASE...] [--mode M]   cases given as JSON objects {id, variables, expected, tags}\n"
    "  remove NAME ID                a case (the dataset gets a new version without it)\n"
    "  from-trace NAME TRACE [--id ID] [--expected JSON] [--tag T]...\n"
    "                                a case from one stored trace (expected: its output unless given)\n"
    "  from-traces NAME --prompt P [--failed | --passed] [--evaluator E] [--since T] [--until T]\n"
    "              [--prompt-version V] [--meta KEY=VALUE]... [--trace-tag T] [--limit N]\n"
    "              [--tag T]... [--expected-from output|none] [--mode M]\n"
    "                                a case from every trace the filter matches (newest first, up to\n"
    "                                --limit, default 1000; one per distinct variables): --failed\n"
    "                                only failed traces, --evaluator only those that evaluator failed,\n"
    "                                --meta the trace's metadata.KEY is VALUE (or a list holding it),\n"
    "                                --trace-tag T is --meta tags=T. Expected: each trace's output,\n"
    "                                except with --failed or --evaluator (none) unless --expected-from.\n"
    "                                The cases' ids are the traces' ids; --tag tags the new cases\n"
    "  versions NAME                 every version: cases, added, removed, changed\n"
    "  diff NAME FROM TO             the cases added, removed and changed between two versions\n"
    "\n"
    "Times are RFC 3339 (2026-11-24T00:00:00Z) or milliseconds since the epoch. Every change\n"
    "makes a new version; older versions stay readable.\n"
    "\n"
    "  -u, --url URL       the engine (default: from the config's listen)\n"
    "  -c, --config FILE   read the address and admin_token from this config\n"
    "      --json          print the engine's JSON answer\n"
    "Exit status: 0 done, 3 the engine refused (the message names the field or line) or cannot be\n"
    "reached, or a usage error.\n";

/* which subcommands take which flags */
enum {
    F_VERSION = 1 << 0, F_OUTPUT = 1 << 1, F_MODE = 1 << 2, F_ID = 1 << 3, F_EXPECTED = 1 << 4, F_TAG = 1 << 5,
    F_FILTER = 1 << 6, /* --prompt --failed --passed --evaluator --since --until --prompt-version --meta
                          --trace-tag --limit --expected-from */
};

static const struct {
    const char *name;
    int min, max; /* arguments after the subcommand */
    int flags;
} subs[] = {
    {"list", 0, 0, 0},
    {"show", 1, 1, F_VERSION},
    {"export", 1, 1, F_VERSION | F_OUTPUT},
    {"import", 2, 2, F_MODE},
    {"add", 2, 1000, F_MODE},
    {"remove", 2, 2, 0},
    {"from-trace", 2, 2, F_ID | F_EXPECTED | F_TAG},
    {"from-traces", 1, 1, F_FILTER | F_TAG | F_MODE},
    {"versions", 1, 1, 0},
    {"diff", 3, 3, 0},
};

typedef struct {
    const char *url, *config, *output, *mode, *id, *expected, *prompt, *evaluator, *since, *until, *expected_from,
        *trace_tag;
    long long version, prompt_version, limit;
    int failed; /* -1 any */
    json_t *tags, *meta;
    bool json;
    int used; /* F_ flags given */
} ds_opts;

static const char *flag_owner(int f)
{
    switch (f) {
    case F_VERSION: return "--version belongs to show and export";
    case F_OUTPUT: return "-o/--output belongs to export";
    case F_MODE: return "--mode belongs to import, add and from-traces";
    case F_ID: return "--id belongs to from-trace";
    case F_EXPECTED: return "--expected belongs to from-trace";
    case F_TAG: return "--tag belongs to from-trace and from-traces";
    default: return "--prompt, --failed, --passed, --evaluator, --since, --until, --prompt-version, --meta, "
                    "--trace-tag, --limit and --expected-from belong to from-traces";
    }
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "ratchet dataset: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", dataset_usage);
    return EXIT_ERROR;
}

static bool time_ok(const char *flag, const char *v)
{
    int64_t t;
    if (time_parse(v, &t))
        return true;
    fprintf(stderr, "ratchet dataset: %s '%s' is not an RFC 3339 time or milliseconds\n", flag, v);
    return false;
}

static void print_json(json_t *v)
{
    char *t = json_dumps(v, JSON_INDENT(2));
    puts(t);
    free(t);
}

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* "a, b" of a JSON list of strings */
static void join_tags(json_t *tags, char *out, size_t n)
{
    size_t i, w = 0;
    json_t *t;
    out[0] = '\0';
    json_array_foreach(tags, i, t) {
        int k = snprintf(out + w, n - w, "%s%s", i ? "," : "", json_string_value(t));
        if (k < 0 || (size_t)k >= n - w)
            break;
        w += (size_t)k;
    }
}

static void print_case_line(const char *mark, json_t *c)
{
    char tags[200];
    join_tags(json_object_get(c, "tags"), tags, sizeof tags);
    char *vars = json_dumps(json_object_get(c, "variables"), JSON_COMPACT | JSON_SORT_KEYS);
    printf("%s%-32s %-24s %.70s%s\n", mark, str(c, "id"), tags[0] ? tags : "-", vars ? vars : "",
           vars && strlen(vars) > 70 ? "..." : "");
    free(vars);
}

/* a dataset change answered: "golden v3: 12 cases (4 changed)" */
static void print_change(json_t *ans)
{
    printf("%s v%lld: %lld cases (%lld changed)", str(ans, "name"), (long long)json_integer_value(json_object_get(ans, "version")),
           (long long)json_integer_value(json_object_get(ans, "cases")),
           (long long)json_integer_value(json_object_get(ans, "changed")));
    json_t *ft = json_object_get(ans, "from_traces");
    if (ft)
        printf("; %lld traces matched, %lld skipped for the same variables as a newer one",
               (long long)json_integer_value(json_object_get(ft, "matched")),
               (long long)json_integer_value(json_object_get(ft, "duplicates")));
    printf("\n");
}

static char *read_input(const char *file, size_t *len)
{
    FILE *f = strcmp(file, "-") ? fopen(file, "rb") : stdin;
    if (!f)
        return NULL;
    buf_t b;
    buf_init(&b);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    if (f != stdin)
        fclose(f);
    *len = b.len;
    buf_append(&b, "", 1);
    return buf_steal(&b);
}

static int run(client *c, const char *sub, char **a, int n, ds_opts *o)
{
    char path[900];
    json_t *ans = NULL, *body = NULL;
    long st = 0;
    int rc = 0;
    const char *name = n > 1 ? a[1] : NULL;
    if (!strcmp(sub, "list")) {
        st = call_json(c, "GET", "/v1/datasets", NULL, &ans);
        if (st == 200 && !o->json) {
            printf("%-32s %-8s %-8s %-24s %s\n", "DATASET", "VERSION", "CASES", "UPDATED", "DESCRIPTION");
            size_t i;
            json_t *d;
            json_array_foreach(json_object_get(ans, "items"), i, d)
                printf("%-32s v%-7lld %-8lld %-24s %s\n", str(d, "name"), (long long)json_integer_value(json_object_get(d, "version")),
                       (long long)json_integer_value(json_object_get(d, "cases")), str(d, "updated_at"), str(d, "description"));
            if (json_array_size(json_object_get(ans, "items")) == 0)
                printf("no datasets yet: `ratchet dataset import NAME FILE` makes one\n");
        }
    } else if (!strcmp(sub, "show") || !strcmp(sub, "export")) {
        snprintf(path, sizeof path, "/v1/datasets/%s", name);
        st = call_json(c, "GET", path, NULL, &ans);
        if (st == 200) {
            long long v = o->version ? o->version : json_integer_value(json_object_get(ans, "version"));
            snprintf(path, sizeof path, "/v1/datasets/%s/cases?version=%lld", name, v);
            buf_t raw;
            buf_init(&raw);
            /* the answer is JSON Lines: read raw, parsed only on an error */
            st = call_raw(c, "GET", path, NULL, NULL, 0, NULL, &raw);
            if (st != 200) {
                json_decref(ans);
                ans = raw.len ? json_loadb(raw.data, raw.len, 0, NULL) : NULL;
                if (!ans)
                    ans = json_pack("{s:{s:s}}", "error", "message", st ? "unexpected answer" : "unreachable");
            } else if (!strcmp(sub, "export")) {
                FILE *f = o->output ? fopen(o->output, "w") : stdout;
                if (!f || fwrite(raw.data ? raw.data : "", 1, raw.len, f) != raw.len || (o->output && fclose(f) != 0)) {
                    fprintf(stderr, "ratchet dataset: cannot write %s\n", o->output ? o->output : "stdout");
                    rc = EXIT_ERROR;
                } else if (o->output) {
                    fprintf(stderr, "%s v%lld: %lld cases written to %s\n", name, v,
                            (long long)json_integer_value(json_object_get(ans, "cases")), o->output);
                }
            } else {
                json_t *cases = json_array();
                const char *p = raw.data ? raw.data : "", *end = p + raw.len;
                while (p < end) {
                    const char *nl = memchr(p, '\n', (size_t)(end - p));
                    size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
                    json_t *cs = len ? json_loadb(p, len, 0, NULL) : NULL;
                    if (cs)
                        json_array_append_new(cases, cs);
                    p += len + 1;
                }
                if (o->json) {
                    json_t *out = json_pack("{s:O, s:I, s:O}", "dataset", ans, "version", (json_int_t)v, "cases", cases);
                    print_json(out);
                    json_decref(out);
                } else {
                    printf("%s v%lld of v%lld: %zu cases%s%s\n", name, v,
                           (long long)json_integer_value(json_object_get(ans, "version")), json_array_size(cases),
                           *str(ans, "description") ? ", " : "", str(ans, "description"));
                    printf("  %-32s %-24s %s\n", "ID", "TAGS", "VARIABLES");
                    size_t i;
                    json_t *cs;
                    json_array_foreach(cases, i, cs) print_case_line("  ", cs);
                }
                json_decref(cases);
            }
            buf_free(&raw);
            if (st == 200) {
                json_decref(ans);
                ans = NULL;
                o->json = false; /* printed already */
            }
        }
    } else if (!strcmp(sub, "import") || !strcmp(sub, "add")) {
        size_t len = 0;
        char *text = NULL;
        if (!strcmp(sub, "import")) {
            text = read_input(a[2], &len);
            if (!text) {
                fprintf(stderr, "ratchet dataset: cannot read %s\n", a[2]);
                return EXIT_ERROR;
            }
        } else {
            buf_t lines;
            buf_init(&lines);
            for (int i = 2; i < n; i++) {
                json_error_t je;
                json_t *cs = json_loads(a[i], JSON_REJECT_DUPLICATES, &je);
                if (!json_is_object(cs)) {
                    fprintf(stderr, "ratchet dataset add: case %d is not a JSON object {id, variables, expected, tags}: %s\n",
                            i - 1, cs ? "another JSON value" : je.text);
                    json_decref(cs);
                    buf_free(&lines);
                    return EXIT_ERROR;
                }
                char *t = json_dumps(cs, JSON_COMPACT);
                buf_puts(&lines, t);
                buf_puts(&lines, "\n");
                free(t);
                json_decref(cs);
            }
            len = lines.len;
            text = buf_steal(&lines);
        }
        snprintf(path, sizeof path, "/v1/datasets/%s/cases?mode=%s", name, o->mode ? o->mode : "append");
        st = call_raw(c, "POST", path, "application/x-ndjson", text, len, &ans, NULL);
        free(text);
        if (st == 200 && !o->json)
            print_change(ans);
    } else if (!strcmp(sub, "remove")) {
        snprintf(path, sizeof path, "/v1/datasets/%s/cases/%s", name, a[2]);
        st = call_json(c, "DELETE", path, NULL, &ans);
        if (st == 200 && !o->json)
            print_change(ans);
    } else if (!strcmp(sub, "from-trace")) {
        body = json_pack("{s:s}", "trace_id", a[2]);
        if (o->id)
            json_object_set_new(body, "id", json_string(o->id));
        if (o->tags)
            json_object_set(body, "tags", o->tags);
        if (o->expected) {
            json_error_t je;
            json_t *e = json_loads(o->expected, JSON_DECODE_ANY, &je);
            if (!e) {
                fprintf(stderr, "ratchet dataset: --expected is not JSON: %s (a string is \"text\", quoted)\n", je.text);
                json_decref(body);
                return EXIT_ERROR;
            }
            json_object_set_new(body, "expected", e);
        }
        snprintf(path, sizeof path, "/v1/datasets/%s/from-trace", name);
        st = call_json(c, "POST", path, body, &ans);
        if (st == 200 && !o->json)
            print_change(ans);
    } else if (!strcmp(sub, "from-traces")) {
        body = json_pack("{s:s}", "prompt", o->prompt);
        if (o->prompt_version)
            json_object_set_new(body, "version", json_integer(o->prompt_version));
        if (o->since)
            json_object_set_new(body, "since", json_string(o->since));
        if (o->until)
            json_object_set_new(body, "until", json_string(o->until));
        if (o->failed >= 0)
            json_object_set_new(body, "failed", json_boolean(o->failed));
        if (o->evaluator)
            json_object_set_new(body, "evaluator", json_string(o->evaluator));
        if (o->meta)
            json_object_set(body, "metadata", o->meta);
        if (o->limit)
            json_object_set_new(body, "limit", json_integer(o->limit));
        if (o->tags)
            json_object_set(body, "tags", o->tags);
        if (o->expected_from)
            json_object_set_new(body, "expected_from", json_string(o->expected_from));
        if (o->mode)
            json_object_set_new(body, "mode", json_string(o->mode));
        snprintf(path, sizeof path, "/v1/datasets/%s/from-traces", name);
        st = call_json(c, "POST", path, body, &ans);
        if (st == 200 && !o->json)
            print_change(ans);
    } else if (!strcmp(sub, "versions")) {
        snprintf(path, sizeof path, "/v1/datasets/%s/versions", name);
        st = call_json(c, "GET", path, NULL, &ans);
        if (st == 200 && !o->json) {
            printf("%-8s %-8s %-8s %-8s %s\n", "VERSION", "CASES", "ADDED", "REMOVED", "CHANGED");
            size_t i;
            json_t *v;
            json_array_foreach(json_object_get(ans, "items"), i, v)
                printf("v%-7lld %-8lld %-8lld %-8lld %lld\n", (long long)json_integer_value(json_object_get(v, "version")),
                       (long long)json_integer_value(json_object_get(v, "cases")),
                       (long long)json_integer_value(json_object_get(v, "added")),
                       (long long)json_integer_value(json_object_get(v, "removed")),
                       (long long)json_integer_value(json_object_get(v, "changed")));
        }
    } else { /* diff */
        snprintf(path, sizeof path, "/v1/datasets/%s/diff?from=%s&to=%s", name, a[2], a[3]);
        st = call_json(c, "GET", path, NULL, &ans);
        if (st == 200 && !o->json) {
            json_t *ad = json_object_get(ans, "added"), *rm = json_object_get(ans, "removed"),
                   *ch = json_object_get(ans, "changed");
            printf("%s v%s -> v%s: %zu added, %zu removed, %zu changed\n", name, a[2], a[3], json_array_size(ad),
                   json_array_size(rm), json_array_size(ch));
            size_t i;
            json_t *x;
            json_array_foreach(ad, i, x) print_case_line("+ ", x);
            json_array_foreach(rm, i, x) print_case_line("- ", x);
            json_array_foreach(ch, i, x) {
                print_case_line("~ ", json_object_get(x, "to"));
                char *f = json_dumps(json_object_get(x, "from"), JSON_COMPACT | JSON_SORT_KEYS);
                char *t = json_dumps(json_object_get(x, "to"), JSON_COMPACT | JSON_SORT_KEYS);
                printf("    was: %s\n    now: %s\n", f, t);
                free(f);
                free(t);
            }
        }
    }
    if (st < 200 || st > 299) {
        print_error("dataset", st, ans);
        rc = EXIT_ERROR;
    } else if (o->json && ans) {
        print_json(ans);
    }
    json_decref(ans);
    json_decref(body);
    return rc;
}

int cmd_dataset(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},          {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},               {"version", required_argument, NULL, 'V'},
        {"output", required_argument, NULL, 'o'},       {"mode", required_argument, NULL, 'm'},
        {"id", required_argument, NULL, 'i'},           {"expected", required_argument, NULL, 'e'},
        {"tag", required_argument, NULL, 't'},          {"prompt", required_argument, NULL, 'p'},
        {"failed", no_argument, NULL, 'F'},             {"passed", no_argument, NULL, 'P'},
        {"evaluator", required_argument, NULL, 'E'},    {"since", required_argument, NULL, 'S'},
        {"until", required_argument, NULL, 'U'},        {"prompt-version", required_argument, NULL, 'R'},
        {"meta", required_argument, NULL, 'M'},         {"trace-tag", required_argument, NULL, 'T'},
        {"limit", required_argument, NULL, 'n'},        {"expected-from", required_argument, NULL, 'X'},
        {"help", no_argument, NULL, 'h'},               {NULL, 0, NULL, 0},
    };
    ds_opts o = {.failed = -1};
    int ch, rc = EXIT_ERROR;
    optind = 1;
    while ((ch = cli_getopt("dataset", argc, argv, "u:c:o:h", opts)) != -1) {
        switch (ch) {
        case 'u': o.url = optarg; break;
        case 'c': o.config = optarg; break;
        case 'j': o.json = true; break;
        case 'V':
            o.used |= F_VERSION;
            if (cli_int("dataset", "--version", optarg, 1, 1000000000, &o.version))
                goto out;
            break;
        case 'o': o.used |= F_OUTPUT, o.output = optarg; break;
        case 'm':
            o.used |= F_MODE;
            o.mode = optarg;
            if (strcmp(optarg, "append") && strcmp(optarg, "upsert") && strcmp(optarg, "replace")) {
                fprintf(stderr, "ratchet dataset: --mode must be append, upsert or replace, not '%s'\n", optarg);
                goto out;
            }
            break;
        case 'i': o.used |= F_ID, o.id = optarg; break;
        case 'e': o.used |= F_EXPECTED, o.expected = optarg; break;
        case 't':
            o.used |= F_TAG;
            if (!registry_name_ok(optarg)) {
                fprintf(stderr, "ratchet dataset: --tag '%s' is not a tag (1 to 128 letters, digits and - _ . :)\n",
                        optarg);
                goto out;
            }
            if (!o.tags)
                o.tags = json_array();
            json_array_append_new(o.tags, json_string(optarg));
            break;
        case 'p': o.used |= F_FILTER, o.prompt = optarg; break;
        case 'F':
        case 'P':
            o.used |= F_FILTER;
            if (o.failed >= 0 && o.failed != (ch == 'F')) {
                fprintf(stderr, "ratchet dataset: --failed and --passed exclude each other\n");
                goto out;
            }
            o.failed = ch == 'F';
            break;
        case 'E':
            o.used |= F_FILTER, o.evaluator = optarg;
            if (!registry_name_ok(optarg)) {
                fprintf(stderr, "ratchet dataset: --evaluator '%s' is not an evaluator name\n", optarg);
                goto out;
            }
            break;
        case 'S':
            o.used |= F_FILTER, o.since = optarg;
            if (!time_ok("--since", optarg))
                goto out;
            break;
        case 'U':
            o.used |= F_FILTER, o.until = optarg;
            if (!time_ok("--until", optarg))
                goto out;
            break;
        case 'R':
            o.used |= F_FILTER;
            if (cli_int("dataset", "--prompt-version", optarg, 1, 1000000000, &o.prompt_version))
                goto out;
            break;
        case 'M':
        case 'T': {
            o.used |= F_FILTER;
            char key[80];
            const char *value;
            if (ch == 'T') {
                snprintf(key, sizeof key, "tags");
                value = optarg;
            } else {
                const char *eq = strchr(optarg, '=');
                size_t kl = eq ? (size_t)(eq - optarg) : 0;
                if (!eq || kl == 0 || kl > 64 ||
                    strspn(optarg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") != kl) {
                    fprintf(stderr, "ratchet dataset: --meta must be KEY=VALUE (a key of letters, digits, - _ .), "
                                    "not '%s'\n", optarg);
                    goto out;
                }
                snprintf(key, sizeof key, "%.*s", (int)kl, optarg);
                value = eq + 1;
            }
            if (!o.meta)
                o.meta = json_object();
            if (json_object_get(o.meta, key)) {
                fprintf(stderr, "ratchet dataset: metadata '%s' is matched twice (one value per key)\n", key);
                goto out;
            }
            json_object_set_new(o.meta, key, json_string(value));
            break;
        }
        case 'n':
            o.used |= F_FILTER;
            if (cli_int("dataset", "--limit", optarg, 1, 10000, &o.limit))
                goto out;
            break;
        case 'X':
            o.used |= F_FILTER, o.expected_from = optarg;
            if (strcmp(optarg, "output") && strcmp(optarg, "none")) {
                fprintf(stderr, "ratchet dataset: --expected-from must be output or none, not '%s'\n", optarg);
                goto out;
            }
            break;
        case 'h': fputs(dataset_usage, stdout); rc = 0; goto out;
        default: fputs(dataset_usage, stderr); goto out;
        }
    }
    int n = argc - optind;
    char **a = argv + optind;
    int which = -1;
    for (int i = 0; n > 0 && i < (int)(sizeof subs / sizeof subs[0]); i++)
        if (!strcmp(a[0], subs[i].name))
            which = i;
    if (which < 0) {
        rc = n ? usage_error("no subcommand '%s'", a[0]) : usage_error("%swhich subcommand?", "");
        goto out;
    }
    if (n - 1 < subs[which].min || n - 1 > subs[which].max) {
        rc = usage_error("wrong number of arguments for '%s'", a[0]);
        goto out;
    }
    int stray = o.used & ~subs[which].flags;
    if (stray) {
        fprintf(stderr, "ratchet dataset %s: %s\n", a[0], flag_owner(stray & -stray));
        goto out;
    }
    if (n > 1 && !registry_name_ok(a[1])) {
        fprintf(stderr, "ratchet dataset: '%s' is not a dataset name (1 to 128 letters, digits and - _ . :)\n", a[1]);
        goto out;
    }
    if ((!strcmp(a[0], "remove") || !strcmp(a[0], "from-trace")) && !registry_name_ok(a[2])) {
        fprintf(stderr, "ratchet dataset: '%s' is not a %s id\n", a[2], !strcmp(a[0], "remove") ? "case" : "trace");
        goto out;
    }
    long long v;
    if (!strcmp(a[0], "diff") &&
        (cli_int("dataset", "FROM", a[2], 1, 1000000000, &v) || cli_int("dataset", "TO", a[3], 1, 1000000000, &v)))
        goto out;
    if (!strcmp(a[0], "from-traces") && !o.prompt) {
        fprintf(stderr, "ratchet dataset from-traces: --prompt is required (the traces' prompt name)\n");
        goto out;
    }
    client c;
    if (client_init(&c, o.url, o.config) != 0)
        goto out;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = run(&c, a[0], a, n, &o);
    client_free(&c);
    curl_global_cleanup();
out:
    json_decref(o.tags);
    json_decref(o.meta);
    return rc;
}
