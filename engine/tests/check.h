/* check.h — a tiny TAP-producing test harness for the C unit tests.
 * Each CHECK prints "ok N - expr" or "not ok N - expr (file:line)"; main
 * returns non-zero when any failed. */
#ifndef RATCHET_CHECK_H
#define RATCHET_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_count, check_failed;

#define CHECK(cond) check_report((cond) ? 1 : 0, #cond, __FILE__, __LINE__)
#define CHECK_STR(a, b) check_report(strcmp((a), (b)) == 0, #a " == " #b, __FILE__, __LINE__)

static inline void check_report(int ok, const char *what, const char *file, int line)
{
    check_count++;
    if (ok) {
        printf("ok %d - %s\n", check_count, what);
    } else {
        check_failed++;
        printf("not ok %d - %s (%s:%d)\n", check_count, what, file, line);
    }
}

static inline int check_done(void)
{
    printf("1..%d\n", check_count);
    return check_failed ? 1 : 0;
}

#endif
