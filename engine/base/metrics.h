/* metrics.h — GET /metrics in the Prometheus text exposition format
 * (version 0.0.4): latency histograms with fixed buckets, and writers that
 * put out a family's HELP and TYPE lines and its samples with escaped label
 * values. Each subsystem keeps its own counters (on the loop thread) and
 * writes its families with these; docs/operations.md lists them all. */
#ifndef RATCHET_METRICS_H
#define RATCHET_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "base/util.h"

/* Upper bounds in seconds, from 0.5 ms to 60 s: one set for every latency
 * (an evaluator takes microseconds, an LLM call seconds). */
#define METRICS_NBUCKETS 17
extern const double metrics_buckets[METRICS_NBUCKETS];

typedef struct {
    uint64_t bucket[METRICS_NBUCKETS]; /* observations <= metrics_buckets[i] (not cumulative) */
    uint64_t count;
    double sum;
} metrics_hist;

void metrics_observe(metrics_hist *h, double seconds);

/* "# HELP name help" and "# TYPE name type" (counter, gauge, histogram). */
void metrics_family(buf_t *b, const char *name, const char *type, const char *help);
/* One sample: name{k="v",...} value. The labels are name, value pairs ending
 * with NULL; values are escaped (\\, \", \n). */
void metrics_sample(buf_t *b, const char *name, double value, ...) __attribute__((sentinel));
/* A family of one unlabelled sample: HELP, TYPE and the value. */
void metrics_one(buf_t *b, const char *name, const char *type, const char *help, double value);
/* The _bucket (cumulative, with le="+Inf"), _sum and _count samples. */
void metrics_histogram(buf_t *b, const char *name, const metrics_hist *h, ...) __attribute__((sentinel));

/* A counter family whose values are uint64_t fields of a stats struct: a
 * subsystem lists its counters once, as a table of these, and writes each with
 * metrics_field(stats, off) for every stats struct it keeps. */
typedef struct {
    const char *name, *help;
    size_t off; /* offsetof the field */
} metrics_counter;

static inline double metrics_field(const void *stats, size_t off)
{
    return (double)*(const uint64_t *)((const char *)stats + off);
}

/* The engine's process: resident memory, CPU time, open and allowed file
 * descriptors, start time (the names of Prometheus' process collector). */
void metrics_process(buf_t *b, int64_t started_ms);

/* Event-loop lag: a timer that fires every interval_ms measures how late it
 * runs; a loop blocked by a slow callback shows here before anywhere else. */
typedef struct metrics_lag metrics_lag;
struct uv_loop_s;
metrics_lag *metrics_lag_start(struct uv_loop_s *loop, int interval_ms);
void metrics_lag_write(const metrics_lag *l, buf_t *b);
void metrics_lag_stop(metrics_lag *l); /* frees it once the timer has closed */

#endif
