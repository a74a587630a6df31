/* Unit tests for http.c helpers: loopback classification, query parsing. */
#include <stdlib.h>

#include "check.h"
#include "net/http.h"

static bool loopback4(const char *ip)
{
    struct sockaddr_in a;
    uv_ip4_addr(ip, 80, &a);
    return http_addr_is_loopback((struct sockaddr *)&a);
}

static bool loopback6(const char *ip)
{
    struct sockaddr_in6 a;
    uv_ip6_addr(ip, 80, &a);
    return http_addr_is_loopback((struct sockaddr *)&a);
}

static void test_loopback(void)
{
    CHECK(loopback4("127.0.0.1"));
    CHECK(loopback4("127.45.6.7"));
    CHECK(!loopback4("10.0.0.1"));
    CHECK(!loopback4("192.0.2.2"));
    CHECK(!loopback4("128.0.0.1"));
    CHECK(loopback6("::1"));
    CHECK(loopback6("::ffff:127.0.0.1"));
    CHECK(!loopback6("::ffff:10.0.0.1"));
    CHECK(!loopback6("fd00::2"));
    CHECK(!loopback6("::2"));
}

static void test_query(void)
{
    http_request r = {0};
    char q[] = "prompt=ticket%20triage&limit=10&flag&plus=a+b&bad=%zz&nul=%00";
    r.query = q;
    char out[64];
    CHECK(http_query_get(&r, "prompt", out, sizeof out) == 1);
    CHECK_STR(out, "ticket triage");
    CHECK(http_query_get(&r, "limit", out, sizeof out) == 1);
    CHECK_STR(out, "10");
    CHECK(http_query_get(&r, "flag", out, sizeof out) == 1);
    CHECK_STR(out, "");
    CHECK(http_query_get(&r, "plus", out, sizeof out) == 1);
    CHECK_STR(out, "a b");
    CHECK(http_query_get(&r, "missing", out, sizeof out) == 0);
    CHECK(http_query_get(&r, "bad", out, sizeof out) == -1);
    CHECK(http_query_get(&r, "nul", out, sizeof out) == -1);
    CHECK(http_query_get(&r, "prompt", out, 4) == -1); /* too long for the buffer */
}

int main(void)
{
    test_loopback();
    test_query();
    return check_done();
}
