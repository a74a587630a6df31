/* Unit tests for ingest.c: body forms, per-item results and paths, the
 * nesting guard, UTF-8 and duplicate keys, inline feedback. */
#include <jansson.h>
#include <stdlib.h>

#include "check.h"
#include "api/ingest.h"
#include "base/util.h"

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

/* ---- property: whatever ingest accepts, the store's reader (jansson)
 * reads back as the same value ---- */

static unsigned long long rng = 2110;
static unsigned rnd(unsigned n)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)(rng >> 33) % n;
}

static const char *const str_pieces[] = {"a", " ", "\\n", "\\\"", "\\\\", "\\u00e9", "\\ud83d\\ude00", "\\ud800",
                                         "\\udc00", "\\u0041", "\xc3\xa9", "\xf0\x9f\x98\x80", "\\/", "\\t",
                                         "x\\ud800\\u0041", "\\uDBFF\\uDFFF", "\\ud800\\ud800", "\\u0000"};
static bool allow_nul = true; /* a NUL refuses a whole body: the array rounds leave it out */
static const char *const num_pieces[] = {"0", "-0", "1", "-1", "1.5", "1e10", "1E-5", "1e308", "1e309", "1e-400",
                                         "9223372036854775807", "9223372036854775808", "-9223372036854775808",
                                         "-9223372036854775809", "123456789012345678901234567890", "0.1",
                                         "2.5e-3", "-1e400", "4.9e-324"};
#define NPIECES(a) (sizeof a / sizeof a[0])

static void random_string(buf_t *b)
{
    buf_puts(b, "\"");
    for (unsigned i = 0, n = rnd(5) + 1; i < n; i++)
        buf_puts(b, str_pieces[rnd(NPIECES(str_pieces) - !allow_nul)]);
    buf_puts(b, "\"");
}

static void random_value(buf_t *b, int depth)
{
    switch (rnd(depth > 2 ? 3 : 5)) {
    case 0: random_string(b); break;
    case 1: buf_puts(b, num_pieces[rnd(NPIECES(num_pieces))]); break;
    case 2: buf_puts(b, rnd(2) ? "true" : "null"); break;
    case 3:
        buf_puts(b, "[");
        for (unsigned i = 0, n = rnd(3) + 1; i < n; i++) {
            if (i)
                buf_puts(b, ",");
            random_value(b, depth + 1);
        }
        buf_puts(b, "]");
        break;
    default:
        buf_puts(b, "{");
        for (unsigned i = 0, n = rnd(3) + 1; i < n; i++) {
            buf_printf(b, "%s", i ? "," : "");
            if (rnd(8) == 0)
                random_string(b); /* a risky key */
            else
                buf_printf(b, "\"k%u\"", i);
            buf_puts(b, ":");
            random_value(b, depth + 1);
        }
        buf_puts(b, "}");
    }
}

static void random_trace(buf_t *b)
{
    buf_puts(b, "{\"prompt\":{\"name\":\"p\"},\"output\":");
    random_string(b);
    buf_puts(b, ",\"metadata\":{\"v\":");
    random_value(b, 0);
    buf_puts(b, "}}");
}

/* Each item alone, as one object (stored as sent), and 8 at a time as an
 * array (re-encoded): 3000 + 3000 items. */
static void test_readback_property(void)
{
    int accepted = 0, rejected = 0, wrong = 0, lost = 0;
    for (int round = 0; round < 3000; round++) {
        buf_t text;
        buf_init(&text);
        random_trace(&text);
        json_t *want = json_loadb(text.data, text.len, JSON_REJECT_DUPLICATES, NULL); /* the reader's view */
        ingest_batch b;
        const char *code;
        int rc = parse(INGEST_TRACES, text.data, false, &b, &code);
        bool acked = rc == 0 && b.write.ntraces == 1;
        if (acked) {
            accepted++;
            json_t *got = json_loadb(b.write.traces[0].json, b.write.traces[0].json_len, 0, NULL);
            if (!got || !want || !json_equal(got, want)) {
                wrong++;
                printf("# acked but reads back differently: %s\n", text.data);
            }
            json_decref(got);
        } else {
            rejected++;
            if (want && rc == 0) { /* the reader takes it, so ingest should have */
                lost++;
                printf("# readable but rejected: %s (%s)\n", text.data,
                       b.nitems && b.items[0].nerrors ? b.items[0].errors[0].message : "?");
            }
        }
        if (rc == 0)
            ingest_batch_free(&b);
        json_decref(want);
        buf_free(&text);
    }
    CHECK(wrong == 0);
    CHECK(lost == 0);
    CHECK(accepted > 300 && rejected > 300);
    printf("# one object: %d accepted, %d rejected\n", accepted, rejected);

    accepted = rejected = wrong = 0;
    allow_nul = false;
    for (int round = 0; round < 375; round++) {
        buf_t text;
        buf_init(&text);
        buf_puts(&text, "[");
        for (int i = 0; i < 8; i++) {
            if (i)
                buf_puts(&text, ",");
            random_trace(&text);
        }
        buf_puts(&text, "]");
        json_t *arr = json_loadb(text.data, text.len, JSON_REJECT_DUPLICATES, NULL);
        ingest_batch b;
        const char *code;
        if (parse(INGEST_TRACES, text.data, false, &b, &code) != 0) {
            wrong++;
            printf("# array refused whole: %s\n", text.data);
            json_decref(arr);
            buf_free(&text);
            continue;
        }
        for (size_t i = 0; i < b.nitems; i++) {
            int wi = b.items[i].write_index;
            if (wi < 0) {
                rejected++;
                continue;
            }
            accepted++;
            json_t *got = json_loadb(b.write.traces[wi].json, b.write.traces[wi].json_len, 0, NULL);
            json_t *want = arr ? json_array_get(arr, i) : NULL;
            if (!got || (want && !json_equal(got, want))) {
                wrong++;
                printf("# array item %zu acked but reads back differently: %s\n", i, text.data);
            }
            json_decref(got);
        }
        ingest_batch_free(&b);
        json_decref(arr);
        buf_free(&text);
    }
    CHECK(wrong == 0);
    CHECK(accepted > 300 && rejected > 300);
    printf("# arrays: %d items accepted, %d rejected\n", accepted, rejected);
}

/* ingest_tree runs the text path's validator on trees: for each item, the
 * same verdict, the same errors (path and message, each item as "$") and,
 * when valid, a stored text that reads back as the tree. */
static void test_tree_same_rules(void)
{
    static const char *const items[] = {
        "{\"prompt\":{\"name\":\"p\",\"version\":2},\"output\":\"x\",\"usage\":{\"input_tokens\":3}}",
        "{\"prompt\":{\"name\":\"p\"},\"output\":\"x\",\"latency_ms\":1.5,\"timestamp\":\"2026-11-24T08:00:00Z\"}",
        "{\"output\":\"x\"}",
        "{\"prompt\":{\"name\":\"bad name!\"},\"output\":\"x\"}",
        "{\"prompt\":{\"name\":\"p\",\"version\":0},\"output\":null,\"extra\":1}",
        "{\"prompt\":{\"name\":\"p\"},\"input\":{\"messages\":[{\"role\":\"robot\",\"content\":5}]},\"output\":\"x\"}",
        "{\"prompt\":{\"name\":\"p\"},\"output\":\"x\",\"usage\":{\"input_tokens\":-1,\"cost_usd\":\"1\"}}",
        "{\"prompt\":{\"name\":\"p\"},\"output\":\"x\",\"tool_calls\":[{\"arguments\":3}]}",
        "{\"id\":\"t-1\",\"prompt\":{\"name\":\"p\"},\"output\":\"x\",\"feedback\":{\"thumbs\":\"down\"}}",
        "{\"id\":\"t-2\",\"prompt\":{\"name\":\"p\"},\"output\":\"x\",\"feedback\":[{\"score\":7}]}",
        "[1,2]",
    };
    size_t n = sizeof items / sizeof items[0];
    json_t *arr = json_array();
    buf_t nd = {0};
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(arr, json_loads(items[i], JSON_DECODE_ANY, NULL));
        buf_puts(&nd, items[i]);
        buf_puts(&nd, "\n");
    }
    ingest_batch text, tree;
    const char *code;
    CHECK(parse(INGEST_TRACES, nd.data, true, &text, &code) == 0);
    char err[256];
    CHECK(ingest_tree(INGEST_TRACES, arr, 10000, NOW, &tree, &code, err, sizeof err) == 0);
    CHECK(text.nitems == n && tree.nitems == n);
    CHECK(tree.write.ntraces == text.write.ntraces && tree.write.ntraces == 3);
    CHECK(tree.write.nfeedback == text.write.nfeedback && tree.write.nfeedback == 1);
    for (size_t i = 0; i < n && i < tree.nitems; i++) {
        const ingest_item *a = &text.items[i], *b = &tree.items[i];
        CHECK((a->write_index < 0) == (b->write_index < 0));
        CHECK(a->nerrors == b->nerrors);
        for (int e = 0; e < a->nerrors && e < b->nerrors; e++) {
            CHECK_STR(b->errors[e].path, a->errors[e].path);
            CHECK_STR(b->errors[e].message, a->errors[e].message);
        }
        if (b->write_index >= 0) {
            const store_trace *t = &tree.write.traces[b->write_index];
            json_t *back = json_loadb(t->json, t->json_len, 0, NULL);
            CHECK(back && json_equal(back, json_array_get(arr, i)));
            json_decref(back);
        }
    }
    CHECK_STR(tree.write.traces[2].id, "t-1");
    CHECK(tree.write.feedback[0].negative && strcmp(tree.write.feedback[0].trace_id, "t-1") == 0);
    ingest_batch_free(&text);
    ingest_batch_free(&tree);

    /* a NUL inside a string cannot be stored as sent: rejected, like \u0000 in a text */
    json_t *nul = json_pack("[{s:{s:s},s:s#}]", "prompt", "name", "p", "output", "a\0b", (size_t)3);
    CHECK(ingest_tree(INGEST_TRACES, nul, 10000, NOW, &tree, &code, err, sizeof err) == 0);
    CHECK(tree.write.ntraces == 0 && tree.nitems == 1 && tree.items[0].nerrors == 1);
    CHECK(strstr(tree.items[0].errors[0].message, "NUL") != NULL);
    ingest_batch_free(&tree);
    json_decref(nul);

    /* the whole-request refusals */
    json_t *empty = json_array();
    CHECK(ingest_tree(INGEST_TRACES, empty, 10000, NOW, &tree, &code, err, sizeof err) == 400);
    CHECK_STR(code, "empty_batch");
    CHECK(ingest_tree(INGEST_TRACES, arr, 3, NOW, &tree, &code, err, sizeof err) == 413);
    CHECK_STR(code, "too_many_items");
    json_decref(empty);
    json_decref(arr);
    buf_free(&nd);
}

int main(void)
{
    test_tree_same_rules();
    test_readback_property();
    test_forms();
    test_limits();
    test_one_pass_edges();
    test_fields();
    return check_done();
}
