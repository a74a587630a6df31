/* log.c — writes one line per event to stderr. When stderr is connected to the
 * journal (JOURNAL_STREAM names it) each line carries the <N> syslog priority
 * prefix and no timestamp, since journald adds its own. */

#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "base/util.h"

static enum log_level min_level = LOG_INFO;
static int to_journal = -1;
static bool as_json;

static const char *level_names[] = {"debug", "info", "warn", "error"};
static const int syslog_prio[] = {7, 6, 4, 3};

void log_set_level(enum log_level level)
{
    min_level = level;
}

void log_set_json(bool json)
{
    as_json = json;
}

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

bool log_enabled(enum log_level level)
{
    return level >= min_level;
}

static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    struct stat st;
    unsigned long dev, ino;
    if (!js || sscanf(js, "%lu:%lu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) != 0)
        return false;
    return (unsigned long)st.st_dev == dev && (unsigned long)st.st_ino == ino;
}

void log_msg(enum log_level level, const char *subsystem, const char *fmt, ...)
{
    if (level < min_level)
        return;
    if (to_journal < 0)
        to_journal = stderr_is_journal();
    char line[4096];
    va_list ap;
    if (as_json) {
        char raw[3072], msg[3072], ts[32];
        va_start(ap, fmt);
        vsnprintf(raw, sizeof raw, fmt, ap);
        va_end(ap);
        utf8_clean(msg, sizeof msg, raw, strlen(raw)); /* a message may quote a client's bytes */
        rfc3339_format(now_ms(), ts);
        json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "time", ts, "level", level_names[level], "subsystem",
                              subsystem, "message", msg);
        /* a message cut inside a UTF-8 sequence is not a string jansson takes */
        size_t n = o ? json_dumpb(o, line, sizeof line - 1, JSON_COMPACT) : 0;
        json_decref(o);
        if (n == 0 || n >= sizeof line - 1)
            n = (size_t)snprintf(line, sizeof line - 1, "{\"level\":\"%s\",\"message\":\"(unprintable)\"}",
                                 level_names[level]);
        line[n++] = '\n';
        (void)!write(STDERR_FILENO, line, n);
        return;
    }
    int n;
    if (to_journal) {
        n = snprintf(line, sizeof line, "<%d>%s: ", syslog_prio[level], subsystem);
    } else {
        char ts[32];
        rfc3339_format(now_ms(), ts);
        n = snprintf(line, sizeof line, "%s %-5s %s: ", ts, level_names[level], subsystem);
    }
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    /* One event is one line: newlines inside a message would split it. */
    for (size_t i = (size_t)n; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[len++] = '\n';
    (void)!write(STDERR_FILENO, line, len);
}
