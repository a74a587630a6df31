/* test_jtree.c — jtree reads and writes exactly what jansson does. */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistr.h>

#include "check.h"
#include "base/jtree.h"

/* Equal values of the same types (jansson's json_equal says 1 == 1.0 is false too). */
static bool same(const char *text)
{
    char err[200];
    json_t *a = json_loads(text, JSON_DECODE_ANY, NULL);
    json_t *b = jtree_parse(text, strlen(text), err, sizeof err);
    /* and the parse of text known valid (all these are) takes the same */
    json_t *c = jtree_parse_utf8(text, strlen(text), err, sizeof err);
    bool ok = a && b && json_equal(a, b) && c && json_equal(b, c);
    json_decref(c);
    if (ok) { /* and the dumps agree byte for byte */
        char *da = json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY), *db = jtree_dump(b);
        ok = !strcmp(da, db);
        if (!ok)
            printf("# jansson %s\n# jtree   %s\n", da, db);
        free(da);
        free(db);
    }
    json_decref(a);
    json_decref(b);
    return ok;
}

/* Both refuse it; jtree says why. */
static bool refused(const char *text, size_t len, const char *why)
{
    char err[200] = "";
    json_t *a = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    json_t *b = jtree_parse(text, len, err, sizeof err);
    bool ok = !a && !b && strstr(err, why);
    if (ok && !u8_check((const uint8_t *)text, len)) {
        /* valid UTF-8 text: jtree_parse_utf8 refuses it for the same reason */
        char err2[200] = "";
        json_t *c = jtree_parse_utf8(text, len, err2, sizeof err2);
        ok = !c && strstr(err2, why);
        if (!ok)
            printf("# %s: jtree_parse_utf8 %s (%s)\n", why, c ? "took it" : "refused", err2);
        json_decref(c);
    }
    if (!ok)
        printf("# %s: jansson %s, jtree %s (%s)\n", why, a ? "took it" : "refused", b ? "took it" : "refused", err);
    json_decref(a);
    json_decref(b);
    return ok;
}

static bool dumps_alike(json_t *v)
{
    char *da = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY), *db = jtree_dump(v);
    bool ok = da && db && !strcmp(da, db);
    if (!ok)
        printf("# jansson %s\n# jtree   %s\n", da, db);
    free(da);
    free(db);
    json_decref(v);
    return ok;
}

/* jtree_dump_text: reals as the shortest text that reads back the same;
 * everything else as json_dumps writes it (compact, or indented by 2) */
static void test_dump_text(void)
{
    json_t *v = json_loads("{\"share\":0.8,\"r\":[0.1,0.30000000000000004,3.0,1e300,-2.5e-7],\"i\":7,"
                           "\"s\":\"a\\\"b\",\"e\":{},\"l\":[],\"n\":null}", 0, NULL);
    char *t = jtree_dump_text(v, false);
    CHECK_STR(t, "{\"share\":0.8,\"r\":[0.1,0.30000000000000004,3.0,1e+300,-2.5e-07],\"i\":7,\"s\":\"a\\\"b\","
                 "\"e\":{},\"l\":[],\"n\":null}");
    json_t *back = json_loads(t, 0, NULL); /* reads back as the same values */
    CHECK(back && json_equal(v, back));
    json_decref(back);
    free(t);
    json_decref(v);
    /* without reals, the indented form is json_dumps' own, byte for byte */
    v = json_loads("{\"items\":[{\"a\":1,\"b\":\"x,{y}: [z]\",\"c\":{},\"d\":[]},{\"e\":[1,2]}],\"f\":null}", 0, NULL);
    char *mine = jtree_dump_text(v, true), *theirs = json_dumps(v, JSON_INDENT(2));
    CHECK_STR(mine, theirs);
    free(mine);
    free(theirs);
    json_decref(v);
}

int main(void)
{
    test_dump_text();
    CHECK(same("{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
               "\"{\\\"a\\\":1}\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12}}"));
    CHECK(same("[1,-0,2.5,-0.0,1e3,1E-7,1.5e300,123456789012345678,9223372036854775807,-9223372036854775808]"));
    CHECK(same("[0.1,0.30000000000000004,1.0,100.0,1e20,1e-5,5e-324,2.2250738585072014e-308,1e-400]"));
    CHECK(same("{\"\":\"\",\"q\":\"\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\",\"u\":\"é☃\\ud83d\\ude00\"}"));
    CHECK(same("{\"a\":1,\"a\":2,\"b\":{\"a\":[]},\"c\":{},\"d\":[[],[{}]],\"e\":null,\"f\":true,\"g\":false}"));
    CHECK(same("\"just a string\""));
    CHECK(same("42"));
    CHECK(same("  [ 1 , 2 ]  "));
    CHECK(refused("{\"a\":1", 6, ""));
    CHECK(refused("[1] x", 5, ""));
    CHECK(refused("[01]", 4, ""));
    CHECK(refused("[9223372036854775808]", 21, "too big integer"));
    CHECK(refused("[1e400]", 7, "real number overflow"));
    CHECK(refused("[\"a\\u0000b\"]", 12, "NUL byte"));
    CHECK(refused("{\"a\\u0000\":1}", 13, "NUL byte"));
    CHECK(refused("[\"a\\udc00\"]", 12, "invalid UTF-8")); /* a lone low surrogate, escaped */
    CHECK(refused("{\"\\udc00\":1}", 13, "invalid UTF-8"));
    CHECK(refused("[\"a\x01\"]", 6, ""));                  /* a raw control character */
    CHECK(refused("[\"\xff\"]", 5, "invalid UTF-8"));
    CHECK(refused("[\"\xc0\xaf\"]", 6, "invalid UTF-8"));       /* overlong '/' */
    CHECK(refused("[\"\xed\xa0\x80\"]", 7, "invalid UTF-8"));   /* a surrogate */
    CHECK(refused("{\"\xc0\xaf\":1}", 8, "invalid UTF-8"));
    CHECK(refused("", 0, ""));
    /* nesting: jansson's limit (2048), and dumps deeper than yajl's generator goes (128) */
    char deep[6000];
    for (int depth = 2048; depth <= 2049; depth++) {
        size_t n = 0;
        for (int i = 0; i < depth; i++)
            deep[n++] = '[';
        for (int i = 0; i < depth; i++)
            deep[n++] = ']';
        char err[200] = "";
        json_t *a = json_loadb(deep, n, 0, NULL), *b = jtree_parse(deep, n, err, sizeof err);
        CHECK(!a == !b);
        CHECK(depth == 2048 ? b != NULL : strstr(err, "depth") != NULL);
        if (b)
            CHECK(dumps_alike(json_incref(b)));
        json_decref(a);
        json_decref(b);
    }
    /* trees the engine builds */
    CHECK(dumps_alike(json_pack("{s:s, s:b, s:s, s:b, s:f, s:s}", "evaluator", "json_schema", "required", 1, "status",
                                "ok", "pass", 1, "score", 1.0, "reason", "ok")));
    CHECK(dumps_alike(json_pack("[f, f, f, f, f]", 0.0, -1.5, 1e-10, 3.0e15, 1.0 / 3)));
    CHECK(dumps_alike(json_stringn("a\0b", 3)));
    CHECK(dumps_alike(json_object()));
    /* a real written alone (verdict scores) is written as in a tree */
    const double reals[] = {0.0, -0.0, 1.0, 0.5, 1.0 / 3, 1e300, 1e-7, -2.5, 100.0};
    for (size_t i = 0; i < sizeof reals / sizeof *reals; i++) {
        char t[40];
        json_t *r = json_real(reals[i]);
        char *want = json_dumps(r, JSON_ENCODE_ANY);
        size_t n = jtree_real_text(reals[i], t);
        CHECK(n == strlen(want) && !strcmp(t, want));
        free(want);
        json_decref(r);
    }
    char t[40];
    CHECK(jtree_real_text(NAN, t) == 0 && jtree_real_text(INFINITY, t) == 0);
    return check_done();
}
