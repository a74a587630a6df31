/* cli_series.c — `ratchet series NAME`: a prompt's pass rate, traffic and
 * negative feedback over time, bucket by bucket, of every version or one
 * (GET /v1/prompts/{name}/series: the console's sparklines and per-version
 * charts, in a terminal). */
#include "cli/cli.h"

#include <curl/curl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/exitcode.h"
#include "base/jtree.h"
#include "cli/cli_private.h"

const char series_usage[] =
    "usage: ratchet series NAME [--version V] [--since T] [--until T] [--buckets N]\n"
    "                      [--json] [--url URL | -c FILE]\n"
    "\n"
    "A prompt's figures over time (GET /v1/prompts/NAME/series): the window (default\n"
    "the last 24 hours; T is RFC 3339 or ms) cut into N equal buckets (1 to 96,\n"
    "default 24), one line each: its start, traces, evaluated, the pass rate ('-'\n"
    "when nothing was evaluated), traces with negative feedback, and each\n"
    "evaluator's pass rate with how many it judged. Every version, or version V.\n"
    "\n"
    "  --json       the API's answer as it is\n"
    "\n"
    "Exit status: 0, or 3 on a usage error or when the engine refuses.\n";

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void print_rate(json_t *rate)
{
    if (json_is_number(rate))
        printf(" %6.1f %%", json_number_value(rate) * 100);
    else
        printf(" %8s", "-");
}

static void print_table(json_t *ans)
{
    json_t *points = json_object_get(ans, "points");
    /* the evaluators that judged in any bucket, in name order */
    json_t *names = json_object();
    size_t i;
    json_t *p;
    json_array_foreach(points, i, p) {
        const char *k;
        json_t *e;
        json_object_foreach(json_object_get(p, "evaluators"), k, e)
            json_object_set(names, k, json_true());
    }
    const char **cols = xcalloc(json_object_size(names) + 1, sizeof *cols);
    size_t ncols = 0;
    const char *k;
    json_t *e;
    json_object_foreach(names, k, e)
        cols[ncols++] = k;
    qsort(cols, ncols, sizeof *cols, cmp_str);
    json_t *version = json_object_get(ans, "version");
    char which[48] = "every version";
    if (json_is_integer(version))
        snprintf(which, sizeof which, "version %lld", (long long)json_integer_value(version));
    printf("%s, %s: %s to %s, %zu buckets of %lld min\n", json_string_value(json_object_get(ans, "prompt")), which,
           json_string_value(json_object_get(ans, "since")),
           json_string_value(json_object_get(ans, "until")), json_array_size(points),
           (long long)json_integer_value(json_object_get(ans, "bucket_ms")) / 60000);
    printf("%-24s %8s %9s %8s %8s", "bucket", "traces", "evaluated", "pass", "negative");
    for (size_t c = 0; c < ncols; c++)
        printf("  %s", cols[c]);
    printf("\n");
    json_array_foreach(points, i, p) {
        printf("%-24s %8lld %9lld", json_string_value(json_object_get(p, "t")),
               (long long)json_integer_value(json_object_get(p, "traces")),
               (long long)json_integer_value(json_object_get(p, "evaluated")));
        print_rate(json_object_get(p, "pass_rate"));
        printf(" %8lld", (long long)json_integer_value(json_object_get(p, "negative")));
        for (size_t c = 0; c < ncols; c++) {
            json_t *ev = json_object_get(json_object_get(p, "evaluators"), cols[c]);
            if (ev)
                printf("  %.1f %% of %lld", json_number_value(json_object_get(ev, "pass_rate")) * 100,
                       (long long)json_integer_value(json_object_get(ev, "n")));
            else
                printf("  -");
        }
        printf("\n");
    }
    free(cols);
    json_decref(names);
}

int cmd_series(int argc, char **argv)
{
    static const struct option opts[] = {
        {"version", required_argument, NULL, 'V'}, {"since", required_argument, NULL, 's'},
        {"until", required_argument, NULL, 'U'},   {"buckets", required_argument, NULL, 'b'},
        {"json", no_argument, NULL, 'j'},          {"url", required_argument, NULL, 'u'},
        {"config", required_argument, NULL, 'c'},  {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *version = NULL, *since = NULL, *until = NULL, *buckets = NULL, *url = NULL, *config = NULL;
    bool as_json = false;
    long long v;
    int ch;
    optind = 1;
    while ((ch = cli_getopt("series", argc, argv, "c:u:jh", opts)) != -1) {
        switch (ch) {
        case 'V':
            if (cli_int("series", "--version", optarg, 1, 2147483647, &v))
                return EXIT_ERROR;
            version = optarg;
            break;
        case 's': since = optarg; break;
        case 'U': until = optarg; break;
        case 'b':
            if (cli_int("series", "--buckets", optarg, 1, 96, &v))
                return EXIT_ERROR;
            buckets = optarg;
            break;
        case 'j': as_json = true; break;
        case 'u': url = optarg; break;
        case 'c': config = optarg; break;
        case 'h': fputs(series_usage, stdout); return 0;
        default: fputs(series_usage, stderr); return EXIT_ERROR;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "ratchet series: %s\n\n%s", optind >= argc ? "name a prompt" : "one prompt name only",
                series_usage);
        return EXIT_ERROR;
    }
    const char *name = argv[optind];
    client c;
    if (client_init(&c, url, config) != 0)
        return EXIT_ERROR;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    buf_t path = {0};
    char *en = curl_easy_escape(NULL, name, 0);
    buf_printf(&path, "/v1/prompts/%s/series", en ? en : "");
    curl_free(en);
    query_add(&path, "version", version);
    query_add(&path, "since", since);
    query_add(&path, "until", until);
    query_add(&path, "buckets", buckets);
    int rc = get_and_show(&c, "series", path.data, as_json, print_table);
    buf_free(&path);
    client_free(&c);
    curl_global_cleanup();
    return rc;
}
