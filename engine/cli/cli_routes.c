/* cli_routes.c — `ratchet routes [--json]`: every endpoint of the HTTP API
 * and of the OTLP listener, from the engine's own route tables (method, path
 * pattern, the token scope it needs, the page that describes it, the
 * listener); no engine needs to run. */
#include "cli/cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "api/api.h"
#include "api/api_otlp.h"

const char routes_usage[] =
    "usage: ratchet routes [--json]\n"
    "\n"
    "Lists every endpoint of the HTTP API, then those of the OTLP listener\n"
    "(otlp.listen, docs/otlp.md), from the engine's own route tables (no engine\n"
    "needs to run): method, path (a {name} segment is one path segment), the token\n"
    "scope it needs (none, ingest, viewer, admin, metrics; docs/api.md says which\n"
    "tokens open each) and the page of the docs that describes it.\n"
    "\n"
    "  --json   {\"api\": \"" API_VERSION "\", \"routes\": [{method, path, scope, doc, listener, requires?}]}\n"
    "           listener: \"api\" (listen) or \"otlp\" (otlp.listen)\n"
    "\n"
    "Exit status: 0, or 3 on a usage error.\n";

int cmd_routes(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {0}};
    bool as_json = false;
    int ch;
    optind = 1;
    while ((ch = cli_getopt("routes", argc, argv, "h", opts)) != -1) {
        switch (ch) {
        case 'j': as_json = true; break;
        case 'h': fputs(routes_usage, stdout); return 0;
        default: fputs(routes_usage, stderr); return EXIT_ERROR;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ratchet routes: unexpected argument '%s'\n\n%s", argv[optind], routes_usage);
        return EXIT_ERROR;
    }
    json_t *routes = json_array();
    static const struct {
        const api_route *table;
        const size_t *n;
        const char *listener;
    } tables[] = {{api_routes, &api_nroutes, "api"}, {api_otlp_routes, &api_otlp_nroutes, "otlp"}};
    for (size_t k = 0; k < sizeof tables / sizeof tables[0]; k++) {
        for (size_t i = 0; i < *tables[k].n; i++) {
            const api_route *r = &tables[k].table[i];
            const char *requires = r->uses & API_DEBUG_ONLY ? "debug_endpoints" : NULL;
            bool otlp = k == 1;
            if (!as_json) {
                printf("%-7s %-42s %-8s %s%s%s\n", r->method, r->pattern, api_scope_name(r->scope), r->doc,
                       requires ? "  (only with debug_endpoints = true)" : "",
                       otlp ? "  (on the OTLP listener, otlp.listen)" : "");
                continue;
            }
            json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "method", r->method, "path", r->pattern, "scope",
                                  api_scope_name(r->scope), "doc", r->doc, "listener", tables[k].listener);
            if (requires)
                json_object_set_new(o, "requires", json_string(requires));
            json_array_append_new(routes, o);
        }
    }
    if (as_json) {
        json_t *root = json_pack("{s:s, s:o}", "api", API_VERSION, "routes", routes);
        char *t = json_dumps(root, JSON_INDENT(2));
        puts(t);
        free(t);
        json_decref(root);
    } else {
        json_decref(routes);
    }
    return 0;
}
