/* Unit tests for util.c: timestamps, ids, buffers, constant-time compare. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "base/util.h"

static void test_rfc3339(void)
{
    int64_t ms;
    CHECK(rfc3339_parse("2026-11-24T08:00:00Z", &ms) && ms == 1795507200000LL);
    CHECK(rfc3339_parse("2026-11-24T08:00:00.123Z", &ms) && ms == 1795507200123LL);
    CHECK(rfc3339_parse("2026-11-24T08:00:00.1Z", &ms) && ms == 1795507200100LL);
    CHECK(rfc3339_parse("2026-11-24T09:30:00+01:30", &ms) && ms == 1795507200000LL);
    CHECK(rfc3339_parse("2026-11-24T06:00:00-02:00", &ms) && ms == 1795507200000LL);
    CHECK(rfc3339_parse("2024-02-29T00:00:00Z", &ms));
    CHECK(!rfc3339_parse("2023-02-29T00:00:00Z", &ms));
    CHECK(!rfc3339_parse("2026-13-01T00:00:00Z", &ms));
    CHECK(!rfc3339_parse("2026-11-24T08:00:00", &ms));
    CHECK(!rfc3339_parse("2026-11-24T08:00:00Zjunk", &ms));
    CHECK(!rfc3339_parse("2026-11-24", &ms));
    CHECK(!rfc3339_parse("2026-11-24T08:00:00.Z", &ms));
    CHECK(!rfc3339_parse("", &ms));
    char out[32];
    rfc3339_format(1795507200123LL, out);
    CHECK_STR(out, "2026-11-24T08:00:00.123Z");
    rfc3339_format(0, out);
    CHECK_STR(out, "1970-01-01T00:00:00.000Z");
}

static void test_num_text(void)
{
    char t[32];
    num_text(0.8, t);
    CHECK_STR(t, "0.8");
    num_text(0.1 + 0.2, t); /* 0.30000000000000004: the shortest that reads back, not rounded to 0.3 */
    CHECK_STR(t, "0.30000000000000004");
    num_text(0.05, t);
    CHECK_STR(t, "0.05");
    num_text(3.0, t);
    CHECK_STR(t, "3");
    num_text(1234567.0, t);
    CHECK_STR(t, "1234567");
    num_text(1e300, t);
    CHECK_STR(t, "1e+300");
    num_text(-2.5e-7, t);
    CHECK_STR(t, "-2.5e-07");
    num_text(1.0 / 3, t);
    CHECK_STR(t, "0.3333333333333333"); /* 16 digits suffice here */
    /* every text reads back as the same double */
    double samples[] = {0.7, 1e-310, 123456789.123456789, 5e-324, 1.7976931348623157e308, 2.0 / 3};
    int exact = 1;
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        num_text(samples[i], t);
        if (strtod(t, NULL) != samples[i])
            exact = 0;
    }
    CHECK(exact);
}

static void test_edit_distance(void)
{
    CHECK(edit_distance("value", "value") == 0);
    CHECK(edit_distance("valeu", "value") == 1); /* a swap counts once */
    CHECK(edit_distance("vaule", "value") == 1);
    CHECK(edit_distance("valu", "value") == 1);
    CHECK(edit_distance("", "abc") == 3);
    CHECK(edit_distance("kitten", "sitting") == 3);
    const char *const names[] = {"value", "mode", "case_sensitive", NULL};
    CHECK(closest_name("valeu", names, 0) == names[0]);
    CHECK(closest_name("case_sensitve", names, 0) == names[2]);
    CHECK(closest_name("mdoe", names, 3) == names[1]);
    CHECK(closest_name("pattern", names, 0) == NULL);
    CHECK(closest_name("x", names, 0) == NULL);
}

static void test_ids(void)
{
    char a[37], b[37];
    id_uuid7(a);
    CHECK(strlen(a) == 36 && a[14] == '7' && a[8] == '-' && a[13] == '-');
    CHECK(strchr("89ab", a[19]) != NULL);
    int ordered = 1;
    for (int i = 0; i < 10000; i++) {
        id_uuid7(b);
        if (strcmp(a, b) >= 0)
            ordered = 0;
        memcpy(a, b, sizeof a);
    }
    CHECK(ordered); /* time-ordered and strictly increasing within a process */
    char h1[17], h2[17];
    id_hex16(h1);
    id_hex16(h2);
    CHECK(strlen(h1) == 16 && strcmp(h1, h2) != 0);
}

static void test_buf(void)
{
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "abc");
    buf_printf(&b, "%d-%s", 42, "x");
    CHECK_STR(b.data, "abc42-x");
    char big[1000];
    memset(big, 'y', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    buf_printf(&b, "%s", big);
    CHECK(b.len == 7 + 999);
    char *s = buf_steal(&b);
    CHECK(b.data == NULL && b.len == 0);
    free(s);
}

static void test_secret_equal(void)
{
    CHECK(secret_equal("0123456789abcdef", 16, "0123456789abcdef", 16));
    CHECK(!secret_equal("0123456789abcdeX", 16, "0123456789abcdef", 16));
    CHECK(!secret_equal("0123456789abcde", 15, "0123456789abcdef", 16));
    CHECK(!secret_equal("0123456789abcdef0", 17, "0123456789abcdef", 16));
    CHECK(!secret_equal("", 0, "0123456789abcdef", 16));
}

static void test_utf8_clean(void)
{
    char out[16];
    CHECK(utf8_clean(out, sizeof out, "caf\xc3\xa9", 5) == 5 && !strcmp(out, "caf\xc3\xa9"));
    /* a stray byte, an overlong '/', a surrogate: each becomes U+FFFD */
    CHECK(utf8_clean(out, sizeof out, "a\xff" "b", 3) == 5 && !strcmp(out, "a\xef\xbf\xbd" "b"));
    CHECK(utf8_clean(out, sizeof out, "\xc0\xaf", 2) >= 3 && !strncmp(out, "\xef\xbf\xbd", 3));
    CHECK(utf8_clean(out, sizeof out, "\xed\xa0\x80", 3) >= 3 && !strncmp(out, "\xef\xbf\xbd", 3));
    /* a real U+FFFD stays one */
    CHECK(utf8_clean(out, sizeof out, "\xef\xbf\xbd", 3) == 3);
    /* cut to fit at a character boundary, never inside one */
    CHECK(utf8_clean(out, 5, "ab\xc3\xa9\xc3\xa9", 6) == 4 && !strcmp(out, "ab\xc3\xa9"));
    CHECK(utf8_clean(out, 4, "ab\xc3\xa9", 4) == 2 && !strcmp(out, "ab"));
    /* a character cut off at the end of the input */
    CHECK(utf8_clean(out, sizeof out, "ab\xc3", 3) == 5 && !strcmp(out, "ab\xef\xbf\xbd"));
    CHECK(utf8_clean(out, 1, "abc", 3) == 0 && out[0] == 0);
    /* a NUL would end the C string early: it is replaced too */
    CHECK(utf8_clean(out, sizeof out, "a\0b", 3) == 5 && !strcmp(out, "a\xef\xbf\xbd" "b"));
}

int main(void)
{
    test_rfc3339();
    test_ids();
    test_num_text();
    test_edit_distance();
    test_buf();
    test_secret_equal();
    test_utf8_clean();
    return check_done();
}
