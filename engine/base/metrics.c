/* metrics.c — the Prometheus text format writers, the process figures and
 * the event-loop lag probe. */
#include "base/metrics.h"

#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

const double metrics_buckets[METRICS_NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                  0.5,    1,     2.5,    5,     10,   20,    30,   60};

void metrics_observe(metrics_hist *h, double seconds)
{
    if (!(seconds >= 0))
        seconds = 0;
    for (int i = 0; i < METRICS_NBUCKETS; i++)
        if (seconds <= metrics_buckets[i]) {
            h->bucket[i]++;
            break;
        }
    h->count++;
    h->sum += seconds;
}

void metrics_family(buf_t *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_value(buf_t *b, double v)
{
    if (isnan(v))
        buf_puts(b, "NaN");
    else if (isinf(v))
        buf_puts(b, v > 0 ? "+Inf" : "-Inf");
    else {
        /* the shortest of 15 or 17 digits that reads back the same */
        char t[40];
        snprintf(t, sizeof t, "%.15g", v);
        if (strtod(t, NULL) != v)
            snprintf(t, sizeof t, "%.17g", v);
        buf_puts(b, t);
    }
}

static void put_escaped(buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            buf_puts(b, "\\\\");
        else if (*s == '"')
            buf_puts(b, "\\\"");
        else if (*s == '\n')
            buf_puts(b, "\\n");
        else
            buf_append(b, s, 1);
    }
}

/* {k="v",...} from the pairs in ap plus an optional last pair; nothing when
 * there are no labels at all. */
static void put_labels(buf_t *b, va_list ap, const char *last_k, const char *last_v)
{
    bool any = false;
    const char *k;
    while ((k = va_arg(ap, const char *))) {
        const char *v = va_arg(ap, const char *);
        buf_puts(b, any ? "," : "{");
        buf_printf(b, "%s=\"", k);
        put_escaped(b, v ? v : "");
        buf_puts(b, "\"");
        any = true;
    }
    if (last_k) {
        buf_puts(b, any ? "," : "{");
        buf_printf(b, "%s=\"%s\"", last_k, last_v);
        any = true;
    }
    if (any)
        buf_puts(b, "}");
}

void metrics_sample(buf_t *b, const char *name, double value, ...)
{
    va_list ap;
    buf_puts(b, name);
    va_start(ap, value);
    put_labels(b, ap, NULL, NULL);
    va_end(ap);
    buf_puts(b, " ");
    put_value(b, value);
    buf_puts(b, "\n");
}

void metrics_one(buf_t *b, const char *name, const char *type, const char *help, double value)
{
    metrics_family(b, name, type, help);
    metrics_sample(b, name, value, NULL);
}

void metrics_histogram(buf_t *b, const char *name, const metrics_hist *h, ...)
{
    va_list ap;
    uint64_t cumulative = 0;
    for (int i = 0; i <= METRICS_NBUCKETS; i++) {
        char le[32];
        if (i < METRICS_NBUCKETS) {
            cumulative += h->bucket[i];
            snprintf(le, sizeof le, "%g", metrics_buckets[i]);
        } else {
            cumulative = h->count;
            snprintf(le, sizeof le, "+Inf");
        }
        buf_printf(b, "%s_bucket", name);
        va_start(ap, h);
        put_labels(b, ap, "le", le);
        va_end(ap);
        buf_printf(b, " %llu\n", (unsigned long long)cumulative);
    }
    buf_printf(b, "%s_sum", name);
    va_start(ap, h);
    put_labels(b, ap, NULL, NULL);
    va_end(ap);
    buf_puts(b, " ");
    put_value(b, h->sum);
    buf_printf(b, "\n%s_count", name);
    va_start(ap, h);
    put_labels(b, ap, NULL, NULL);
    va_end(ap);
    buf_printf(b, " %llu\n", (unsigned long long)h->count);
}

/* ---- the process ---- */

void metrics_process(buf_t *b, int64_t started_ms)
{
    unsigned long utime = 0, stime = 0;
    long rss_pages = 0;
    unsigned long vsize = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        char line[1024];
        if (fgets(line, sizeof line, f)) {
            /* the command name may hold spaces and parentheses: skip to the last ')' */
            char *p = strrchr(line, ')');
            if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d "
                                   "%*u %lu %ld", &utime, &stime, &vsize, &rss_pages) != 4)
                utime = stime = vsize = 0, rss_pages = 0;
        }
        fclose(f);
    }
    long ticks = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    int fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
        fds--; /* the directory's own descriptor */
    }
    struct rlimit rl = {0, 0};
    getrlimit(RLIMIT_NOFILE, &rl);

    metrics_one(b, "process_cpu_seconds_total", "counter",
                "User and system CPU time spent, in seconds.", ticks > 0 ? (double)(utime + stime) / (double)ticks : 0);
    metrics_one(b, "process_resident_memory_bytes", "gauge",
                "Resident memory size in bytes.", (double)rss_pages * (double)page);
    metrics_one(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", (double)vsize);
    metrics_one(b, "process_open_fds", "gauge", "Open file descriptors.", fds);
    metrics_one(b, "process_max_fds", "gauge",
                "The limit on open file descriptors.", rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
    metrics_one(b, "process_start_time_seconds", "gauge",
                "Start time of the process since the Unix epoch, in seconds.", (double)started_ms / 1000.0);
}

/* ---- event-loop lag ---- */

struct metrics_lag {
    uv_timer_t timer;
    uint64_t interval_ns;
    uint64_t last_ns;     /* when the timer fired last */
    double max_s;         /* the worst lag seen */
    metrics_hist hist;
};

static void on_lag_timer(uv_timer_t *t)
{
    metrics_lag *l = t->data;
    uint64_t now = uv_hrtime();
    double lag = now > l->last_ns + l->interval_ns ? (double)(now - l->last_ns - l->interval_ns) / 1e9 : 0;
    metrics_observe(&l->hist, lag);
    if (lag > l->max_s)
        l->max_s = lag;
    l->last_ns = now;
}

metrics_lag *metrics_lag_start(uv_loop_t *loop, int interval_ms)
{
    metrics_lag *l = xcalloc(1, sizeof *l);
    l->interval_ns = (uint64_t)interval_ms * 1000000u;
    l->last_ns = uv_hrtime();
    uv_timer_init(loop, &l->timer);
    l->timer.data = l;
    uv_timer_start(&l->timer, on_lag_timer, (uint64_t)interval_ms, (uint64_t)interval_ms);
    uv_unref((uv_handle_t *)&l->timer); /* never what keeps the loop alive */
    return l;
}

void metrics_lag_write(const metrics_lag *l, buf_t *b)
{
    metrics_family(b, "ratchet_event_loop_lag_seconds", "histogram",
                   "How late the event loop ran a timer due every 100 ms: time the loop spent blocked.");
    metrics_histogram(b, "ratchet_event_loop_lag_seconds", &l->hist, NULL);
    metrics_one(b, "ratchet_event_loop_lag_max_seconds", "gauge",
                "The worst event-loop lag since the start.", l->max_s);
}

static void on_lag_closed(uv_handle_t *h)
{
    free(h->data);
}

void metrics_lag_stop(metrics_lag *l)
{
    if (l)
        uv_close((uv_handle_t *)&l->timer, on_lag_closed);
}
