/* Unit tests for optdecl.c: declarations of options, and options checked
 * against them. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "script/optdecl.h"
#include "base/util.h"

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
    if (!v)
        fprintf(stderr, "bad test JSON: %s: %s\n", text, e.text);
    return v;
}

static void collect(const char *problem, void *ud)
{
    buf_printf(ud, "%s\n", problem);
}

/* The problems of opts against decl, one per line ("" when none). */
static char *problems(const char *decl, const char *opts)
{
    json_t *d = J(decl), *o = opts ? J(opts) : NULL;
    char err[700];
    buf_t b;
    buf_init(&b);
    if (optdecl_check(d, err, sizeof err) != 0)
        buf_printf(&b, "BAD DECLARATION: %s\n", err);
    else
        optdecl_validate(d, o, collect, &b);
    json_decref(d);
    json_decref(o);
    buf_puts(&b, "");
    return buf_steal(&b);
}

static int has(const char *text, const char *part)
{
    int ok = strstr(text, part) != NULL;
    if (!ok)
        fprintf(stderr, "# expected '%s' in:\n%s", part, text);
    return ok;
}

static const char *CONTAINS =
    "{\"value\":{\"type\":[\"string\",\"list\"],\"items\":\"string\",\"required\":true,\"nonempty\":true,"
    "\"description\":\"the text to look for\"},"
    "\"mode\":{\"type\":\"string\",\"allowed\":[\"all\",\"any\"],\"default\":\"all\",\"description\":\"all or any\"},"
    "\"case_sensitive\":{\"type\":\"boolean\",\"default\":true,\"description\":\"match case\"}}";

static void test_validate(void)
{
    char *p = problems(CONTAINS, "{\"value\":\"x\"}");
    CHECK_STR(p, "");
    free(p);
    p = problems(CONTAINS, "{\"value\":[\"a\",\"b\"],\"mode\":\"any\",\"case_sensitive\":false}");
    CHECK_STR(p, "");
    free(p);
    p = problems(CONTAINS, "{\"valeu\":\"x\"}"); /* the typo of issue 22 */
    CHECK(has(p, "unknown option 'valeu'; did you mean 'value'? (known: case_sensitive, mode, value)"));
    CHECK(has(p, "option 'value' is required (a string or a list: the text to look for)"));
    free(p);
    p = problems(CONTAINS, "{\"value\":\"x\",\"mode\":\"some\"}");
    CHECK(has(p, "option 'mode' must be one of \"all\", \"any\" (got \"some\")"));
    free(p);
    p = problems(CONTAINS, "{\"value\":3}");
    CHECK(has(p, "option 'value' must be a string or a list (got a number)"));
    free(p);
    p = problems(CONTAINS, "{\"value\":[\"a\",2,\"\"]}");
    CHECK(has(p, "option 'value': item 2 must be a string (got a number)"));
    CHECK(has(p, "option 'value': item 3 must not be an empty string"));
    free(p);
    p = problems(CONTAINS, "{\"value\":\"\"}");
    CHECK(has(p, "option 'value' must not be an empty string"));
    free(p);
    p = problems(CONTAINS, "{\"value\":\"x\",\"case_sensitive\":\"no\"}");
    CHECK(has(p, "option 'case_sensitive' must be true or false (got a string)"));
    free(p);
    p = problems(CONTAINS, "{\"value\":{}}"); /* Lua's {} may be an empty list */
    CHECK(has(p, "option 'value' must not be empty"));
    free(p);
    p = problems(CONTAINS, NULL);
    CHECK(has(p, "option 'value' is required"));
    free(p);
    p = problems("{\"zzz\":{\"type\":\"any\"}}", "{\"pattern\":1}");
    CHECK_STR(p, "unknown option 'pattern' (known: zzz)\n"); /* no suggestion when nothing is close */
    free(p);
}

static void test_numbers(void)
{
    const char *d = "{\"threshold\":{\"type\":\"number\",\"min\":0,\"max\":1},\"max_ms\":{\"type\":\"number\",\"above\":0},"
                    "\"max_tokens\":{\"type\":\"integer\",\"min\":1}}";
    char *p = problems(d, "{\"threshold\":0.8,\"max_ms\":0.5,\"max_tokens\":300}");
    CHECK_STR(p, "");
    free(p);
    p = problems(d, "{\"threshold\":1.8}");
    CHECK(has(p, "option 'threshold' must be at most 1 (got 1.8)")); /* 1.8, never 1.8000000000000000444 */
    free(p);
    p = problems(d, "{\"max_ms\":0}");
    CHECK(has(p, "option 'max_ms' must be more than 0 (got 0)"));
    free(p);
    p = problems(d, "{\"max_tokens\":2.5}");
    CHECK(has(p, "option 'max_tokens' must be an integer (got 2.5)"));
    free(p);
    p = problems(d, "{\"max_tokens\":3.0}"); /* an integral number is an integer */
    CHECK_STR(p, "");
    free(p);
    p = problems(d, "{\"threshold\":-0.1}");
    CHECK(has(p, "option 'threshold' must be at least 0 (got -0.1)"));
    free(p);
}

static void test_objects(void)
{
    const char *d = "{\"tools\":{\"type\":\"object\",\"items\":[\"object\",\"boolean\"],\"required\":true},"
                    "\"headers\":{\"type\":\"object\",\"items\":\"string\"},\"anything\":\"a description only\"}";
    char *p = problems(d, "{\"tools\":{\"a\":true,\"b\":{\"type\":\"object\"}},\"headers\":{\"X\":\"1\"},\"anything\":[1]}");
    CHECK_STR(p, "");
    free(p);
    p = problems(d, "{\"tools\":{\"a\":3},\"headers\":{\"X\":1}}");
    CHECK(has(p, "option 'tools': the value of 'a' must be true or false or a table of named values (got a number)"));
    CHECK(has(p, "option 'headers': the value of 'X' must be a string (got a number)"));
    free(p);
    p = problems(d, "{\"tools\":[1]}");
    CHECK(has(p, "option 'tools' must be a table of named values (got a list)"));
    free(p);
}

static void test_declarations(void)
{
    char *p = problems("{\"x\":{\"tpye\":\"string\"}}", NULL);
    CHECK(has(p, "options.x: unknown declaration key 'tpye'; did you mean 'type'?"));
    free(p);
    p = problems("{\"x\":{\"type\":\"text\"}}", NULL);
    CHECK(has(p, "options.x: type must be one of string"));
    free(p);
    p = problems("{\"x\":{\"type\":\"string\",\"allowed\":[\"a\"],\"default\":\"b\"}}", NULL);
    CHECK(has(p, "options.x: the default does not fit the declaration: option 'x' must be one of \"a\" (got \"b\")"));
    free(p);
    p = problems("{\"x\":{\"type\":\"string\",\"required\":true,\"default\":\"b\"}}", NULL);
    CHECK(has(p, "options.x: a required option has no default"));
    free(p);
    p = problems("{\"x\":{\"type\":\"string\",\"min\":1}}", NULL);
    CHECK(has(p, "options.x: min must be a number, on an option of type number or integer"));
    free(p);
    p = problems("{\"x\":{\"type\":\"string\",\"items\":\"string\"}}", NULL);
    CHECK(has(p, "options.x: items names the type"));
    free(p);
    p = problems("{\"x\":42}", NULL);
    CHECK(has(p, "options.x: a declaration is a table"));
    free(p);
    p = problems("[1]", NULL);
    CHECK(has(p, "options must be a table"));
    free(p);
}

static void test_settings(void)
{
    json_t *settings = J("{\"steps\":[5,25,50],\"alpha\":0.05,\"min_step_samples\":100,\"name\":\"x\",\"on\":true,"
                         "\"extra\":{}}");
    json_t *own = J("{\"alpha\":{\"type\":\"number\",\"above\":0,\"max\":0.5},\"new_one\":{\"type\":\"integer\"}}");
    json_t *d = optdecl_from_settings(settings, own);
    char err[700];
    CHECK(optdecl_check(d, err, sizeof err) == 0);
    buf_t b;
    buf_init(&b);
    json_t *o = J("{\"steps\":[10,\"x\"],\"alpha\":0.7,\"min_step_samples\":\"100\",\"on\":1,\"stpes\":[1],"
                  "\"new_one\":2,\"extra\":[1]}");
    optdecl_validate(d, o, collect, &b);
    buf_puts(&b, "");
    CHECK(has(b.data, "option 'steps': item 2 must be a number (got a string)"));
    CHECK(has(b.data, "option 'alpha' must be at most 0.5 (got 0.7)"));
    CHECK(has(b.data, "option 'min_step_samples' must be a number (got a string)"));
    CHECK(has(b.data, "option 'on' must be true or false (got a number)"));
    CHECK(has(b.data, "unknown option 'stpes'; did you mean 'steps'?"));
    /* declared without a default, and {} (a table of anything): both fine */
    CHECK(!strstr(b.data, "option 'new_one'") && !strstr(b.data, "option 'extra'"));
    buf_free(&b);
    json_decref(o);
    json_decref(d);
    CHECK(optdecl_from_settings(NULL, NULL) == NULL);
    d = optdecl_from_settings(settings, NULL);
    CHECK(optdecl_check(d, err, sizeof err) == 0);
    json_decref(d);
    json_decref(settings);
    json_decref(own);
}

int main(void)
{
    test_validate();
    test_numbers();
    test_objects();
    test_declarations();
    test_settings();
    return check_done();
}
