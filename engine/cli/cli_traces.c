/* cli_traces.c — `ratchet traces`: one page of a running engine's traces,
 * newest first, with the filters of GET /v1/traces (the console's trace
 * explorer), and the cursor of the next page. */
#include "cli/cli.h"

#include <curl/curl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/exitcode.h"
#include "base/jtree.h"
#include "cli/cli_private.h"

const char traces_usage[] =
    "usage: ratchet traces [--prompt NAME] [--version V] [--since T] [--until T] [--failed]\n"
    "                      [--evaluator NAME] [--feedback negative|any] [--text TEXT] [--tag TAG]\n"
    "                      [--limit N] [--cursor C] [--json] [--url URL | -c FILE]\n"
    "\n"
    "One page of the engine's traces, newest first (GET /v1/traces): time, id,\n"
    "prompt and version, verdict, the start of the output. Filters: the prompt, its\n"
    "version, a time range (RFC 3339 or ms), failed ones only, those an evaluator\n"
    "failed, those with negative (or any) feedback, those holding a text, those\n"
    "carrying a tag (the trace's \"tags\"). The last line names the --cursor of the\n"
    "next page.\n"
    "\n"
    "  --limit N    traces on the page, 1 to 1000 (default 20)\n"
    "  --json       the API's answer as it is\n"
    "\n"
    "Exit status: 0, or 3 on a usage error or when the engine refuses.\n";

static const char *field(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void show_page(json_t *ans)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(ans, "items"), i, t) {
        json_t *p = json_object_get(t, "prompt");
        json_t *out = json_object_get(t, "output");
        char *o = json_is_string(out) ? strdup(json_string_value(out)) : jtree_dump_text(out, false);
        for (char *s = o; s && *s; s++)
            if (*s == '\n' || *s == '\r' || *s == '\t')
                *s = ' ';
        char ver[32] = "";
        if (json_is_integer(json_object_get(p, "version")))
            snprintf(ver, sizeof ver, " v%lld", (long long)json_integer_value(json_object_get(p, "version")));
        printf("%s  %-24s %s%s  %-8s %.70s\n", field(t, "timestamp"), field(t, "id"), field(p, "name"), ver,
               *field(t, "verdict") ? field(t, "verdict") : "-", o ? o : "");
        free(o);
    }
    if (json_array_size(json_object_get(ans, "items")) == 0)
        printf("no trace matches\n");
    if (json_is_string(json_object_get(ans, "next_cursor")))
        printf("next page: --cursor %s\n", field(ans, "next_cursor"));
}

int cmd_traces(int argc, char **argv)
{
    static const struct option opts[] = {
        {"prompt", required_argument, NULL, 'p'}, {"version", required_argument, NULL, 'V'},
        {"since", required_argument, NULL, 's'},  {"until", required_argument, NULL, 'U'},
        {"failed", no_argument, NULL, 'f'},       {"evaluator", required_argument, NULL, 'e'},
        {"feedback", required_argument, NULL, 'F'}, {"text", required_argument, NULL, 't'},
        {"tag", required_argument, NULL, 'T'},
        {"limit", required_argument, NULL, 'n'},  {"cursor", required_argument, NULL, 'C'},
        {"json", no_argument, NULL, 'j'},         {"url", required_argument, NULL, 'u'},
        {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *prompt = NULL, *version = NULL, *since = NULL, *until = NULL, *evaluator = NULL, *feedback = NULL,
               *text = NULL, *tag = NULL, *cursor = NULL, *url = NULL, *config = NULL;
    bool failed = false, as_json = false;
    long long limit = 20, v;
    int ch;
    optind = 1;
    while ((ch = cli_getopt("traces", argc, argv, "p:n:c:u:jh", opts)) != -1) {
        switch (ch) {
        case 'p': prompt = optarg; break;
        case 'V':
            if (cli_int("traces", "--version", optarg, 1, 2147483647, &v))
                return EXIT_ERROR;
            version = optarg;
            break;
        case 's': since = optarg; break;
        case 'U': until = optarg; break;
        case 'f': failed = true; break;
        case 'e': evaluator = optarg; break;
        case 'F':
            if (strcmp(optarg, "negative") && strcmp(optarg, "any")) {
                fprintf(stderr, "ratchet traces: --feedback must be negative or any, not '%s'\n", optarg);
                return EXIT_ERROR;
            }
            feedback = optarg;
            break;
        case 't': text = optarg; break;
        case 'T': tag = optarg; break;
        case 'n':
            if (cli_int("traces", "--limit", optarg, 1, 1000, &limit))
                return EXIT_ERROR;
            break;
        case 'C': cursor = optarg; break;
        case 'j': as_json = true; break;
        case 'u': url = optarg; break;
        case 'c': config = optarg; break;
        case 'h': fputs(traces_usage, stdout); return 0;
        default: fputs(traces_usage, stderr); return EXIT_ERROR;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ratchet traces: unexpected argument '%s'\n\n%s", argv[optind], traces_usage);
        return EXIT_ERROR;
    }
    client c;
    if (client_init(&c, url, config) != 0)
        return EXIT_ERROR;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    buf_t q = {0};
    buf_printf(&q, "/v1/traces");
    char n[24];
    snprintf(n, sizeof n, "%lld", limit);
    query_add(&q, "limit", n);
    query_add(&q, "prompt", prompt);
    query_add(&q, "version", version);
    query_add(&q, "since", since);
    query_add(&q, "until", until);
    query_add(&q, "failed", failed ? "true" : NULL);
    query_add(&q, "evaluator", evaluator);
    query_add(&q, "feedback", feedback);
    query_add(&q, "q", text);
    query_add(&q, "tag", tag);
    query_add(&q, "cursor", cursor);
    int rc = get_and_show(&c, "traces", q.data, as_json, show_page);
    buf_free(&q);
    client_free(&c);
    curl_global_cleanup();
    return rc;
}
