/* fuzz_otlp.c — libFuzzer target: the OTLP decoder and mapping
 * (otlp_decode.c, otlp_map.c), then ingest's validation of what they made.
 * The first byte picks the form (bit 0: JSON, else protobuf; bit 1: logs,
 * else traces; bit 2: gzip); the rest is the body. What it checks beyond
 * "no crash": a refusal says why; every span is accounted for exactly once
 * (a trace, a part of one, dropped or rejected); every trace the mapping made is an object
 * with an id and a prompt; ingest_tree (what the receiver runs) and
 * ingest_parse of the same traces as text agree on every item. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/ingest.h"
#include "api/otlp_decode.h"
#include "api/otlp_map.h"
#include "base/jtree.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool json = data[0] & 1;
    otlp_signal sig = (data[0] & 2) ? OTLP_LOGS : OTLP_TRACES;
    bool gzip = data[0] & 4;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    char err[512] = "";
    char *inflated = NULL;
    if (gzip) {
        int rc = otlp_inflate(body, len, 1 << 20, &inflated, &len, err, sizeof err);
        if (rc) {
            if ((rc != 400 && rc != 413) || !err[0])
                abort();
            return 0;
        }
        body = inflated;
    }
    json_t *items = otlp_decode(sig, json, body, len, err, sizeof err);
    if (!items) {
        if (!err[0])
            abort(); /* a refusal always says why */
        if (sig == OTLP_TRACES && !json) {
            otlp_mapped none;
            char perr[512] = "";
            if (otlp_map_pb_spans(body, len, NULL, &none, perr, sizeof perr) == 0 || strcmp(perr, err))
                abort(); /* the in-place path refuses it alike */
        }
        free(inflated);
        return 0;
    }
    otlp_mapped m;
    if (sig == OTLP_TRACES && !json) {
        /* the receiver's protobuf path (attributes read in place) maps
         * exactly as the plain spans do, with and without the prompt rule */
        for (int defer = 0; defer < 2; defer++) {
            otlp_map_opts opts = {.defer_unlinked = defer};
            otlp_mapped a, b;
            char perr[512] = "";
            otlp_map_spans(items, &opts, &a);
            if (otlp_map_pb_spans(body, len, &opts, &b, perr, sizeof perr) != 0)
                abort(); /* otlp_decode read it */
            if (!json_equal(a.traces, b.traces) || !json_equal(a.parts, b.parts) ||
                !json_equal(a.deferred, b.deferred) || !json_equal(a.feedback, b.feedback) || a.dropped != b.dropped ||
                a.rejected != b.rejected || a.unlinked != b.unlinked || strcmp(a.error, b.error) ||
                (json_array_size(a.traces) && memcmp(a.source, b.source, json_array_size(a.traces) * sizeof *a.source))) {
                char *x = jtree_dump(a.traces), *y = jtree_dump(b.traces);
                fprintf(stderr, "plain and in-place mappings differ:\n%s\n%s\n%s | %s\n", x, y, a.error, b.error);
                abort();
            }
            otlp_mapped_free(&a);
            otlp_mapped_free(&b);
        }
    }
    if (sig == OTLP_TRACES) {
        otlp_map_spans(items, NULL, &m);
        if (json_array_size(m.traces) + json_array_size(m.parts) + m.dropped + m.rejected != json_array_size(items)) {
            fprintf(stderr, "%zu spans, but %zu traces + %zu parts + %zu dropped + %zu rejected\n",
                    json_array_size(items), json_array_size(m.traces), json_array_size(m.parts), m.dropped, m.rejected);
            abort();
        }
    } else {
        otlp_map_logs(items, NULL, &m);
    }
    size_t i;
    json_t *t;
    /* the join with the parts the store would hold (otlp_map_join): each
     * unlinked records' trace finds its span's part naming a prompt, each
     * span's part a records' trace waiting; what they form is checked below
     * like the rest */
    json_t *waiting = json_object();
    json_array_foreach(m.orphans, i, t) {
        const char *id = json_string_value(json_object_get(json_object_get(t, "trace"), "id"));
        if (id)
            json_object_set_new(waiting, id, json_pack("{s:{s:s}}", "prompt", "name", "p"));
    }
    json_array_foreach(m.parts, i, t) {
        const char *id = json_string_value(json_object_get(t, "id"));
        if (id)
            json_object_set_new(waiting, id, json_pack("{s:s,s:s,s:{s:s}}", "id", id, "output", "x", "prompt", "name", "p"));
    }
    otlp_map_join(&m, waiting);
    json_decref(waiting);
    if (m.rejected && !m.error[0])
        abort(); /* a rejection always says why */
    json_array_foreach(m.traces, i, t) {
        if (!json_is_string(json_object_get(t, "id")) || !json_is_object(json_object_get(t, "prompt")))
            abort();
    }
    if (json_array_size(m.traces)) {
        char *text = jtree_dump(m.traces);
        ingest_batch b, tb;
        const char *code = NULL, *tcode = NULL;
        char terr[512] = "";
        int rc = ingest_parse(INGEST_TRACES, text, strlen(text), false, 100000, 1795507200000LL, &b, &code, err,
                              sizeof err);
        int trc = ingest_tree(INGEST_TRACES, m.traces, 100000, 1795507200000LL, &tb, &tcode, terr, sizeof terr);
        /* one granularity apart: a NUL in a string refuses a text body whole
         * (400), and rejects only its item in a tree (partial success; the
         * other items keep their own verdicts) */
        bool nul = rc == 400 && trc == 0 && strstr(err, "NUL character");
        size_t nul_items = 0;
        for (size_t k = 0; nul && k < tb.nitems; k++)
            for (int e = 0; e < tb.items[k].nerrors; e++)
                nul_items += strstr(tb.items[k].errors[e].message, "NUL") != NULL;
        if (nul && nul_items) {
            ingest_batch_free(&tb);
            trc = rc = -1; /* compared no further */
        }
        if (rc != trc)
            abort(); /* one validator: the same verdict on the request */
        if (rc == 0) {
            if (b.nitems != tb.nitems)
                abort();
            for (size_t k = 0; k < b.nitems; k++) {
                if ((b.items[k].write_index < 0) != (tb.items[k].write_index < 0) ||
                    b.items[k].nerrors != tb.items[k].nerrors)
                    abort(); /* ... and on each item */
                if (tb.items[k].write_index >= 0) {
                    /* the tree path's stored text (written in the view's walk) is jtree_dump's, byte for byte */
                    const store_trace *st = &tb.write.traces[tb.items[k].write_index];
                    char *want = jtree_dump(json_array_get(m.traces, k));
                    if (st->json_len != strlen(want) || memcmp(st->json, want, st->json_len))
                        abort();
                    free(want);
                }
            }
            ingest_batch_free(&b);
            ingest_batch_free(&tb);
        } else if (rc > 0 && (!code || !err[0] || !tcode || !terr[0])) {
            abort();
        }
        free(text);
    }
    otlp_mapped_free(&m);
    json_decref(items);
    free(inflated);
    return 0;
}
