/* fuzz_ingest.c — libFuzzer target: ingest validation (ingest.c), the body
 * forms (one object, an array, NDJSON) for traces and feedback. The first
 * byte picks the kind and form; the rest is the body. What it checks beyond
 * "no crash": every item accepted reads back through jansson (the store's
 * reader) as a JSON object, and the per-item answer is valid JSON. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/ingest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    ingest_kind kind = (data[0] & 1) ? INGEST_FEEDBACK : INGEST_TRACES;
    bool ndjson = (data[0] & 2) != 0;
    char *body = malloc(size); /* NUL-terminated, as the HTTP server's buffer is */
    memcpy(body, data + 1, size - 1);
    body[size - 1] = '\0';
    ingest_batch b;
    const char *code = NULL;
    char err[512];
    int rc = ingest_parse(kind, body, size - 1, ndjson, 1000, 1795507200000LL, &b, &code, err, sizeof err);
    if (rc == 0) {
        for (size_t i = 0; i < b.write.ntraces; i++) {
            json_t *j = json_loadb(b.write.traces[i].json, b.write.traces[i].json_len, 0, NULL);
            if (!json_is_object(j)) {
                fprintf(stderr, "an accepted trace does not read back: %.*s\n", (int)b.write.traces[i].json_len,
                        b.write.traces[i].json);
                abort();
            }
            json_decref(j);
        }
        for (size_t i = 0; i < b.write.nfeedback; i++) {
            json_t *j = json_loadb(b.write.feedback[i].json, b.write.feedback[i].json_len, 0, NULL);
            if (!json_is_object(j))
                abort();
            json_decref(j);
        }
        /* the answer, as if every item were stored */
        b.write.trace_results = calloc(b.write.ntraces + 1, 1);
        b.write.feedback_results = calloc(b.write.nfeedback + 1, 1);
        int status;
        char *answer = ingest_results_json(&b, &status, "fuzz");
        json_t *a = json_loads(answer, 0, NULL);
        if (!a) {
            fprintf(stderr, "the ingest answer is not JSON: %s\n", answer);
            abort();
        }
        json_decref(a);
        free(answer);
        ingest_batch_free(&b);
    } else if (!code || !err[0]) {
        abort(); /* a refusal always says why */
    }
    free(body);
    return 0;
}
