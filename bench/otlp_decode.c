/* otlp_decode.c — the CPU side of bench/otlp.sh, per span, no HTTP, no
 * disk: the native body through ingest_parse (the baseline, measured in the
 * same run) against an OTLP body through each stage of the receiver:
 * otlp_decode (protobuf-c or JSON into plain spans), otlp_map (into trace
 * trees), and ingest_tree (the validator on the trees, the stored text
 * written once). Also the parts any OTLP path must do, alone: protobuf-c's
 * unpack of the body, parsing the JSON text of the GenAI content attributes
 * (gen_ai.input.messages, gen_ai.output.messages, gen_ai.system_instructions)
 * and writing the stored text; the validator alone (ingest_tree less the
 * view and text it builds first: ingest_tree_prepare_only), and from these
 * the floor of any protobuf path (unpack + content JSON + stored text +
 * validator) against native's whole ingest_parse; for OTLP JSON, parsing its body alone (with
 * the engine's parser, and with yajl's tree, which ingest_parse uses).
 * Times are the thread's CPU time.
 * Usage: build/otlp_decode NATIVE_BODY PROTO_BODY JSON_BODY [loops] */
#include <otlp.pb-c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/ingest.h"
#include "api/otlp_decode.h"
#include "api/otlp_map.h"
#include "base/jtree.h"
#include "base/util.h"
#include <yajl/yajl_tree.h>

/* This thread's CPU time, ns: the machine is shared, so wall time would
 * count the other engineers' work too. */
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*len + 1);
    if (fread(b, 1, *len, f) != *len)
        exit(1);
    b[*len] = '\0';
    fclose(f);
    return b;
}

static size_t parse(char *text, size_t len, bool ndjson)
{
    ingest_batch b;
    const char *code;
    char err[256];
    if (ingest_parse(INGEST_TRACES, text, len, ndjson, 100000, 1795507200000LL, &b, &code, err, sizeof err) != 0) {
        fprintf(stderr, "ingest_parse: %s\n", err);
        exit(1);
    }
    size_t n = b.write.ntraces;
    ingest_batch_free(&b);
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s NATIVE PROTO JSON [loops]\n", argv[0]);
        return 2;
    }
    int loops = argc > 4 ? atoi(argv[4]) : 20;
    size_t nlen, plen, jlen;
    char *native = slurp(argv[1], &nlen), *proto = slurp(argv[2], &plen), *json = slurp(argv[3], &jlen);
    char *copy = malloc(nlen + 1);
    size_t spans = 0;
    uint64_t t0 = cpu_ns();
    for (int i = 0; i < loops; i++) {
        memcpy(copy, native, nlen + 1);
        spans = parse(copy, nlen, false);
    }
    double base = (double)(cpu_ns() - t0) / 1e3 / loops / (double)spans;
    printf("native ingest_parse (JSON array): %.2f us/span (%zu spans a batch)\n", base, spans);
    uint64_t tu = cpu_ns();
    size_t nspans = 0;
    for (int i = 0; i < loops; i++) {
        Otlp__ExportTraceServiceRequest *r =
            otlp__export_trace_service_request__unpack(NULL, plen, (const uint8_t *)proto);
        nspans = 0;
        for (size_t a = 0; r && a < r->n_resource_spans; a++)
            for (size_t b = 0; b < r->resource_spans[a]->n_scope_spans; b++)
                nspans += r->resource_spans[a]->scope_spans[b]->n_spans;
        otlp__export_trace_service_request__free_unpacked(r, NULL);
    }
    double unpack = (double)(cpu_ns() - tu) / 1e3 / loops / (double)nspans, content = 0;
    printf("protobuf-c unpack alone: %.2f us/span\n", unpack);
    {
        /* the content attributes' JSON text, parsed alone */
        json_t *items = otlp_decode(OTLP_TRACES, false, proto, plen, NULL, 0);
        static const char *const keys[] = {"gen_ai.input.messages", "gen_ai.output.messages",
                                           "gen_ai.system_instructions"};
        uint64_t p0 = cpu_ns();
        for (int i = 0; i < loops; i++) {
            size_t j;
            json_t *sp;
            json_array_foreach(items, j, sp) {
                for (size_t k = 0; k < 3; k++) {
                    json_t *v = json_object_get(json_object_get(sp, "attributes"), keys[k]);
                    if (json_is_string(v))
                        json_decref(jtree_parse(json_string_value(v), json_string_length(v), NULL, 0));
                }
            }
        }
        content = (double)(cpu_ns() - p0) / 1e3 / loops / (double)json_array_size(items);
        printf("parsing the GenAI content attributes' JSON alone: %.2f us/span\n", content);
        json_decref(items);
    }
    {
        /* the OTLP JSON body, parsed alone: jansson through yajl (jtree_parse), and yajl's tree */
        uint64_t a = cpu_ns();
        for (int i = 0; i < loops; i++)
            json_decref(jtree_parse(json, jlen, NULL, 0));
        uint64_t b = cpu_ns();
        for (int i = 0; i < loops; i++)
            yajl_tree_free(yajl_tree_parse(json, NULL, 0));
        uint64_t c = cpu_ns();
        printf("parsing the OTLP JSON body alone: %.2f us/span (jtree_parse), %.2f (yajl_tree_parse)\n",
               (double)(b - a) / 1e3 / loops / (double)spans, (double)(c - b) / 1e3 / loops / (double)spans);
    }
    const char *names[] = {"protobuf", "JSON"};
    char *bodies[] = {proto, json};
    size_t lens[] = {plen, jlen};
    for (int k = 0; k < 2; k++) {
        uint64_t td = 0, tm = 0, tp = 0, tfi = 0, tfr = 0;
        size_t n = 0;
        for (int i = 0; i < loops; i++) {
            char err[256];
            uint64_t a = cpu_ns();
            json_t *items = otlp_decode(OTLP_TRACES, k == 1, bodies[k], lens[k], err, sizeof err);
            uint64_t b = cpu_ns();
            otlp_mapped m;
            otlp_map_spans(items, NULL, &m);
            uint64_t c = cpu_ns();
            ingest_batch ib;
            const char *code;
            if (ingest_tree(INGEST_TRACES, m.traces, 100000, 1795507200000LL, &ib, &code, err, sizeof err) != 0) {
                fprintf(stderr, "ingest_tree: %s\n", err);
                exit(1);
            }
            n = ib.write.ntraces;
            uint64_t d = cpu_ns();
            ingest_batch_free(&ib);
            otlp_mapped_free(&m);
            uint64_t e = cpu_ns();
            json_decref(items); /* the plain spans */
            uint64_t f = cpu_ns();
            td += b - a, tm += c - b, tp += d - c, tfr += e - d, tfi += f - e;
        }
        double per = (double)loops * (double)n * 1e3; /* ns to us per span */
        double total = (double)(td + tm + tp + tfr + tfi) / per;
        /* of ingest_tree: writing the stored text alone, and the view with the text (what precedes the validator) */
        json_t *items = otlp_decode(OTLP_TRACES, k == 1, bodies[k], lens[k], NULL, 0);
        otlp_mapped m;
        otlp_map_spans(items, NULL, &m);
        uint64_t w0 = cpu_ns();
        for (int i = 0; i < loops; i++) {
            size_t j;
            json_t *t;
            json_array_foreach(m.traces, j, t) free(jtree_dump(t));
        }
        uint64_t w1 = cpu_ns();
        for (int i = 0; i < loops; i++)
            ingest_tree_prepare_only(m.traces);
        uint64_t w2 = cpu_ns();
        double dump = (double)(w1 - w0) / per, prep = (double)(w2 - w1) / per;
        otlp_mapped_free(&m);
        json_decref(items);
        printf("OTLP %-8s decode %.2f + map %.2f + ingest_tree %.2f + freeing %.2f = %.2f us/span (%.2fx native)\n",
               names[k], (double)td / per, (double)tm / per, (double)tp / per, (double)(tfr + tfi) / per, total,
               total / base);
        printf("  of ingest_tree: the view and the stored text %.2f (the text alone %.2f), the validator alone %.2f\n",
               prep, dump, (double)tp / per - prep);
        printf("  freeing: the plain spans %.2f, the traces and the batch %.2f\n", (double)tfi / per, (double)tfr / per);
        if (k == 0) {
            /* the receiver's protobuf path: the spans' attributes read in
             * place (otlp_map_pb_spans), decode and map as one stage */
            uint64_t tq = 0, tv = 0, tf = 0;
            for (int i = 0; i < loops; i++) {
                char err[256];
                uint64_t a = cpu_ns();
                otlp_mapped pm;
                if (otlp_map_pb_spans(bodies[0], lens[0], NULL, &pm, err, sizeof err) != 0)
                    exit(1);
                uint64_t b = cpu_ns();
                ingest_batch ib;
                const char *code;
                if (ingest_tree(INGEST_TRACES, pm.traces, 100000, 1795507200000LL, &ib, &code, err, sizeof err) != 0)
                    exit(1);
                uint64_t c = cpu_ns();
                ingest_batch_free(&ib);
                otlp_mapped_free(&pm);
                uint64_t d = cpu_ns();
                tq += b - a, tv += c - b, tf += d - c;
            }
            double direct = (double)(tq + tv + tf) / per;
            printf("OTLP protobuf in place (the receiver's path): decode + map %.2f + ingest_tree %.2f + freeing %.2f = "
                   "%.2f us/span (%.2fx native)\n",
                   (double)tq / per, (double)tv / per, (double)tf / per, direct, direct / base);
            double plain = (double)td / per - unpack + (double)tfi / per;
            double validator = (double)tp / per - prep;
            double floor = unpack + content + dump + validator;
            printf("  the plain-span tree (decode beyond unpack, and its freeing) %.2f\n", plain);
            printf("floor of any OTLP protobuf path: unpack %.2f + content JSON %.2f + stored text %.2f + validator "
                   "%.2f = %.2f us/span (%.2fx native's ingest_parse %.2f)\n",
                   unpack, content, dump, validator, floor, floor / base, base);
        }
    }
    return 0;
}
