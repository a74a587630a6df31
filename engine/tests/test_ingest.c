/* Unit tests for ingest.c: body forms, per-item results and paths, the
 * nesting guard, UTF-8 and duplicate keys, inline feedback. */
#include <stdlib.h>

#include "check.h"
#include "ingest.h"

#define NOW 1795507200000LL

static int parse(ingest_kind kind, const char *text, bool ndjson, ingest_batch *b, const char **code)
{
    char *body = strdup(text);
    char err[512];
    *code = NULL;
    int rc = ingest_parse(kind, body, strlen(body), ndjson, 10000, NOW, b, code, err, sizeof err);
    free(body);
    return rc;
}

static const char *first_path(const ingest_batch *b, size_t i)
{
    return b->items[i].nerrors ? b->items[i].errors[0].path : "";
}

static void test_forms(void)
{
    ingest_batch b;
    const char *code;
    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\"},\"output\":\"x\"}", false, &b, &code) == 0);
    CHECK(b.nitems == 1 && b.write.ntraces == 1 && !b.array_form);
    CHECK(b.write.traces[0].ts_ms == NOW && strlen(b.write.traces[0].id) == 36);
    CHECK_STR(b.write.traces[0].json, "{\"prompt\":{\"name\":\"p\"},\"output\":\"x\"}"); /* stored as sent */
    ingest_batch_free(&b);

    /* pretty-printed single object: one item, not NDJSON */
    CHECK(parse(INGEST_TRACES, "{\n  \"prompt\": {\"name\": \"p\"},\n  \"output\": 1\n}\n", false, &b, &code) == 0);
    CHECK(b.nitems == 1 && b.write.ntraces == 1);
    ingest_batch_free(&b);

    /* several objects, one per line, without the NDJSON content type */
    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\"},\"output\":1}\n{\"prompt\":{\"name\":\"q\"},\"output\":2}\n",
                false, &b, &code) == 0);
    CHECK(b.nitems == 2 && b.items[1].line == 2 && strcmp(b.write.traces[1].prompt, "q") == 0);
    ingest_batch_free(&b);

    /* arrays: items re-encoded, paths with an index */
    CHECK(parse(INGEST_TRACES, "[{\"prompt\":{\"name\":\"p\"},\"output\":1.50},{\"output\":2}]", false, &b, &code) == 0);
    CHECK(b.array_form && b.nitems == 2 && b.write.ntraces == 1);
    CHECK_STR(b.write.traces[0].json, "{\"prompt\":{\"name\":\"p\"},\"output\":1.50}"); /* number text kept */
    CHECK_STR(first_path(&b, 1), "$[1].prompt");
    ingest_batch_free(&b);

    CHECK(parse(INGEST_TRACES, "42", false, &b, &code) == 400 && strcmp(code, "malformed_json") == 0);
    CHECK(parse(INGEST_TRACES, "[]", false, &b, &code) == 400 && strcmp(code, "empty_batch") == 0);
    CHECK(parse(INGEST_TRACES, "   \n  ", true, &b, &code) == 400 && strcmp(code, "empty_batch") == 0);
    CHECK(parse(INGEST_TRACES, "[{\"a\":1}", false, &b, &code) == 400);
    CHECK(parse(INGEST_TRACES, "[1] [2]", false, &b, &code) == 400);
}

static void test_limits(void)
{
    ingest_batch b;
    const char *code;
    /* a body nested past the checking pass's bound is refused whole */
    size_t n = 5000;
    char *deep = malloc(2 * n + 1);
    memset(deep, '[', n);
    memset(deep + n, ']', n);
    deep[2 * n] = '\0';
    CHECK(parse(INGEST_TRACES, deep, false, &b, &code) == 400);
    free(deep);

    /* 65 levels in one item: that item only is rejected */
    buf_t t;
    buf_init(&t);
    buf_puts(&t, "{\"prompt\":{\"name\":\"p\"},\"output\":");
    for (int i = 0; i < 64; i++)
        buf_puts(&t, "[");
    for (int i = 0; i < 64; i++)
        buf_puts(&t, "]");
    buf_puts(&t, "}\n{\"prompt\":{\"name\":\"p\"},\"output\":\"ok\"}");
    CHECK(parse(INGEST_TRACES, t.data, true, &b, &code) == 0);
    CHECK(b.write.ntraces == 1 && b.items[0].nerrors == 1);
    CHECK(strstr(b.items[0].errors[0].message, "deeper than 64") != NULL);
    ingest_batch_free(&b);
    buf_free(&t);

    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\"},\"output\":\"\xc0\x80\"}", true, &b, &code) == 0);
    CHECK(b.write.ntraces == 0 && strstr(b.items[0].errors[0].message, "UTF-8") != NULL);
    ingest_batch_free(&b);
    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\"},\"output\":\"a\\u0000\"}", true, &b, &code) == 0);
    CHECK(b.write.ntraces == 0 && strstr(b.items[0].errors[0].message, "NUL") != NULL);
    ingest_batch_free(&b);
    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\"},\"output\":1,\"output\":2}", true, &b, &code) == 0);
    CHECK(b.write.ntraces == 0 && strstr(b.items[0].errors[0].message, "'output' twice") != NULL);
    ingest_batch_free(&b);
}

/* The one-pass parse (no checking pass) must refuse and accept exactly what
 * the two-pass parse did at its edges. */
static void test_one_pass_edges(void)
{
    ingest_batch b;
    const char *code;
    char err[512];
    /* a NUL byte after a whole object: the tree parser would stop there */
    const char withnul[] = "{\"prompt\":{\"name\":\"p\"},\"output\":1}\0{\"x\":";
    char *body = malloc(sizeof withnul);
    memcpy(body, withnul, sizeof withnul);
    CHECK(ingest_parse(INGEST_TRACES, body, sizeof withnul - 1, false, 10000, NOW, &b, &code, err, sizeof err) != 0 ||
          b.write.ntraces == 0);
    if (b.items)
        ingest_batch_free(&b);
    memcpy(body, withnul, sizeof withnul);
    CHECK(ingest_parse(INGEST_TRACES, body, sizeof withnul - 1, true, 10000, NOW, &b, &code, err, sizeof err) == 0);
    CHECK(b.write.ntraces == 0 && b.items[0].nerrors == 1);
    ingest_batch_free(&b);
    free(body);

    /* more than 1000 brackets but shallow: the checking pass runs and accepts */
    buf_t t;
    buf_init(&t);
    buf_puts(&t, "{\"prompt\":{\"name\":\"p\"},\"output\":[");
    for (int i = 0; i < 1200; i++)
        buf_puts(&t, i ? ",{}" : "{}");
    buf_puts(&t, "]}");
    CHECK(parse(INGEST_TRACES, t.data, false, &b, &code) == 0 && b.write.ntraces == 1);
    ingest_batch_free(&b);
    buf_free(&t);

    /* an escaped backslash before u0000 is no NUL: accepted after the checking pass */
    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\"},\"output\":\"a\\\\u0000\"}", false, &b, &code) == 0);
    CHECK(b.write.ntraces == 1);
    ingest_batch_free(&b);
    /* a \u0000 in a key, and in an array body */
    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\"},\"output\":1,\"metadata\":{\"a\\u0000\":1}}", false, &b,
                &code) == 400);
    CHECK(parse(INGEST_TRACES, "[{\"prompt\":{\"name\":\"p\"},\"output\":\"\\u0000\"}]", false, &b, &code) == 400);
    CHECK(code && strcmp(code, "malformed_json") == 0);
    /* broken JSON in one object and in an array is still explained with its place */
    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\"},\n\"output\":tru}", false, &b, &code) == 400);
    CHECK(parse(INGEST_TRACES, "[{\"prompt\":{\"name\":\"p\"},\"output\":1},]", false, &b, &code) == 400);
    /* an array of valid items parsed in one pass */
    CHECK(parse(INGEST_TRACES, "[{\"prompt\":{\"name\":\"p\"},\"output\":1}, {\"prompt\":{\"name\":\"q\"},\"output\":2}]",
                false, &b, &code) == 0);
    CHECK(b.array_form && b.write.ntraces == 2);
    ingest_batch_free(&b);
}

static void test_fields(void)
{
    ingest_batch b;
    const char *code;
    CHECK(parse(INGEST_TRACES,
                "{\"id\":\"t-1\",\"prompt\":{\"name\":\"p\",\"version\":2},\"output\":\"x\",\"retry_of\":\"t-0\","
                "\"timestamp\":\"2026-11-24T09:00:00+01:00\",\"feedback\":[{\"thumbs\":\"down\"},{\"score\":0.5}]}",
                false, &b, &code) == 0);
    CHECK(b.write.ntraces == 1 && b.write.traces[0].version == 2 && b.write.traces[0].ts_ms == NOW);
    CHECK_STR(b.write.traces[0].retry_of, "t-0");
    CHECK(b.write.nfeedback == 2 && b.write.feedback[0].thumbs == -1);
    CHECK_STR(b.write.feedback[1].id, "t-1:fb:1");
    CHECK(strstr(b.write.feedback[0].json, "\"source\":\"inline\"") != NULL);
    ingest_batch_free(&b);

    CHECK(parse(INGEST_TRACES, "{\"prompt\":{\"name\":\"p\",\"version\":0},\"output\":\"x\",\"usage\":{\"input_tokens\":-1}}",
                false, &b, &code) == 0);
    CHECK(b.items[0].nerrors == 2);
    CHECK_STR(b.items[0].errors[0].path, "$.prompt.version");
    CHECK_STR(b.items[0].errors[1].path, "$.usage.input_tokens");
    ingest_batch_free(&b);

    CHECK(parse(INGEST_FEEDBACK, "{\"trace_id\":\"t-1\",\"thumbs\":\"up\",\"who\":\"me\"}", false, &b, &code) == 0);
    CHECK(b.write.nfeedback == 1 && b.write.feedback[0].thumbs == 1);
    CHECK(strncmp(b.write.feedback[0].json, "{\"id\":", 6) == 0);
    ingest_batch_free(&b);
}

int main(void)
{
    test_forms();
    test_limits();
    test_one_pass_edges();
    test_fields();
    return check_done();
}
