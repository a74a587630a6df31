/* ingest_parse on the ingest benchmark's trace (bench/trace.lua: ~1 KB,
 * escaped quotes in the output, 640 bytes of padding), NDJSON of 100 and one
 * object, in a loop: microseconds per trace. Build against any ingest.o to
 * compare two versions in the same run (bench/RESULTS.md).
 *   cc -O2 -Iengine bench/ingest_parse.c build/obj/api/ingest.o build/obj/base/util.o build/obj/store/sqlite.o ... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/ingest.h"
#include "base/util.h"

static double run(const char *body, size_t len, bool ndjson, int loops, size_t items)
{
    char *copy = malloc(len + 1);
    uint64_t t0 = mono_ns();
    for (int i = 0; i < loops; i++) {
        memcpy(copy, body, len + 1);
        ingest_batch b;
        const char *code;
        char err[256];
        if (ingest_parse(INGEST_TRACES, copy, len, ndjson, 10000, 1795507200000LL, &b, &code, err, sizeof err) != 0 ||
            b.write.ntraces != items) {
            fprintf(stderr, "parse failed: %s\n", err);
            exit(1);
        }
        ingest_batch_free(&b);
    }
    free(copy);
    return (double)(mono_ns() - t0) / 1e3 / loops / (double)items;
}

int main(int argc, char **argv)
{
    int loops = argc > 1 ? atoi(argv[1]) : 2000;
    char pad[641];
    memset(pad, 'x', 640);
    pad[640] = 0;
    buf_t b;
    buf_init(&b);
    for (int i = 0; i < 100; i++)
        buf_printf(&b, "%s{\"id\":\"bench-%d\",\"prompt\":{\"name\":\"ticket-triage\",\"version\":3},"
                       "\"input\":{\"variables\":{\"ticket\":\"I was charged twice this month and want a refund\"}},"
                       "\"output\":\"{\\\"category\\\":\\\"billing\\\",\\\"urgency\\\":\\\"high\\\"}\",\"model\":\"gpt-4o-mini\","
                       "\"latency_ms\":812,\"usage\":{\"input_tokens\":412,\"output_tokens\":31},\"metadata\":{\"pad\":\"%s\"}}",
                   i ? "\n" : "", i, pad);
    const char *first_nl = strchr(b.data, '\n');
    size_t one_len = (size_t)(first_nl - b.data);
    char *one = strndup(b.data, one_len);
    printf("ndjson of 100: %.2f us/trace\n", run(b.data, b.len, true, loops, 100));
    printf("one object:    %.2f us/trace\n", run(one, one_len, false, loops * 100, 1));
    free(one);
    buf_free(&b);
    return 0;
}
