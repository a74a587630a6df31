/* pg_partitions.c — the daily range partitions of `traces` on PostgreSQL (docs/scale-out.md,
 * "Retention and partitioning"): which days have one (a cache kept by the writer thread), the
 * partitions a batch of traces needs created before its transaction, the leader's upkeep
 * (partitions created ahead, those wholly past store.retention_days dropped) and the batched
 * delete of what belonged to dropped days (the id table, scores, feedback). Every function but
 * pg_parts_status/pg_parts_metrics runs on the writer thread, on the writer's connection. */
#include "store/pg_private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/metrics.h"

#define DAY_MS 86400000LL
/* partitions made on demand per batch at most: a batch with traces of many days puts the
 * others in the default partition (moved out when their day gets its partition) */
#define CREATE_PER_BATCH 4
/* DDL takes the parent's lock: wait this long at most (every engine's inserts queue behind the
 * wait), and after a failure try no DDL for DDL_BACKOFF_MS (a long read holding the table would
 * otherwise cost every batch that wait) */
#define DDL_LOCK_TIMEOUT "200ms"
#define DDL_BACKOFF_MS 10000

static int64_t day_of(int64_t ts_ms)
{
    return ts_ms >= 0 ? ts_ms / DAY_MS : -((-ts_ms + DAY_MS - 1) / DAY_MS);
}

/* traces_pYYYYMMDD of a day number (days since 1970-01-01, UTC) */
static void part_name(int64_t day, char *out, size_t len)
{
    time_t t = (time_t)(day * 86400);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, len, "traces_p%04d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

/* the day of a partition's name, or INT64_MIN */
static int64_t name_day(const char *name)
{
    int y, m, d;
    char tail;
    if (sscanf(name, "traces_p%4d%2d%2d%c", &y, &m, &d, &tail) != 3)
        return INT64_MIN;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    return (int64_t)timegm(&tm) / 86400;
}

static bool has_day(const pg_parts *p, int64_t day)
{
    size_t lo = 0, hi = p->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->days[mid] < day)
            lo = mid + 1;
        else if (p->days[mid] > day)
            hi = mid;
        else
            return true;
    }
    return false;
}

static int cmp_day(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void publish(pg_parts *p)
{
    pthread_mutex_lock(&p->mu);
    p->count = (int64_t)p->n;
    p->oldest = p->n ? p->days[0] : INT64_MIN;
    p->newest = p->n ? p->days[p->n - 1] : INT64_MIN;
    pthread_mutex_unlock(&p->mu);
}

/* Reads the partitions there are from the catalog (other engines create and drop them too). */
static int reload(pg_parts *p, PGconn *c, char *err, size_t errlen)
{
    pgq *q = pgq_new(c, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'traces'::regclass");
    p->n = 0;
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        int64_t d = name_day(pgq_col(q, 0));
        if (d == INT64_MIN)
            continue; /* traces_default */
        if (p->n == p->cap) {
            p->cap = p->cap ? p->cap * 2 : 64;
            p->days = xrealloc(p->days, p->cap * sizeof *p->days);
        }
        p->days[p->n++] = d;
    }
    if (rc == PGQ_ERROR)
        snprintf(err, errlen, "%s", q->err);
    pgq_free(q);
    if (rc == PGQ_ERROR)
        return -1;
    qsort(p->days, p->n, sizeof *p->days, cmp_day);
    p->loaded = true;
    publish(p);
    return 0;
}

static int ddl_begin(PGconn *c, char *err, size_t errlen)
{
    return pg_exec(c, "BEGIN; SET LOCAL lock_timeout = '" DDL_LOCK_TIMEOUT "'", err, errlen);
}

static int ddl_end(PGconn *c, int rc, char *err, size_t errlen)
{
    if (!rc)
        return pg_exec(c, "COMMIT", err, errlen);
    char ignored[64];
    if (PQstatus(c) == CONNECTION_OK)
        pg_exec(c, "ROLLBACK", ignored, sizeof ignored);
    return -1;
}

/* Creates the partition of one day in its own transaction; the rows of that day the default
 * partition holds (traces that came while it was missing) move into it. */
static int create_day(pg_parts *p, PGconn *c, int64_t day, int64_t now, char *err, size_t errlen)
{
    char name[64], sql[1024];
    part_name(day, name, sizeof name);
    long long lo = (long long)(day * DAY_MS), hi = (long long)((day + 1) * DAY_MS);
    int rc = ddl_begin(c, err, errlen);
    if (!rc) {
        /* under the parent's lock: another engine may have made it meanwhile */
        snprintf(sql, sizeof sql,
                 "LOCK TABLE traces IN ACCESS EXCLUSIVE MODE;"
                 "CREATE TEMP TABLE ratchet_moved ON COMMIT DROP AS WITH m AS (DELETE FROM traces_default "
                 "WHERE ts >= %lld AND ts < %lld RETURNING *) SELECT * FROM m;"
                 "CREATE TABLE IF NOT EXISTS %s PARTITION OF traces FOR VALUES FROM (%lld) TO (%lld);"
                 "INSERT INTO traces SELECT * FROM ratchet_moved",
                 lo, hi, name, lo, hi);
        rc = pg_exec(c, sql, err, errlen);
    }
    rc = ddl_end(c, rc, err, errlen);
    if (rc)
        p->ddl_after = now + DDL_BACKOFF_MS;
    pthread_mutex_lock(&p->mu);
    if (rc)
        p->create_failures++;
    else
        p->created++;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* The window of days that get a partition: from the oldest day still within the retention (or
 * PG_PARTS_PAST_DAYS back without one) to PG_PARTS_AHEAD_DAYS ahead. */
static void window(const pg_parts *p, int64_t now, int64_t *first, int64_t *last)
{
    int64_t today = day_of(now);
    *first = p->retention_days > 0 ? day_of(now - (int64_t)p->retention_days * DAY_MS)
                                   : today - PG_PARTS_PAST_DAYS;
    *last = today + PG_PARTS_AHEAD_DAYS;
}

void pg_parts_init(pg_parts *p, int retention_days)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    p->retention_days = retention_days;
    p->oldest = p->newest = INT64_MIN;
}

void pg_parts_free(pg_parts *p)
{
    free(p->days);
    pthread_mutex_destroy(&p->mu);
}

void pg_parts_forget(pg_parts *p)
{
    p->loaded = false;
}

void pg_parts_for_batch(pg_parts *p, PGconn *c, const int64_t *ts, size_t n, int64_t now)
{
    char err[256];
    if (!p->loaded && reload(p, c, err, sizeof err)) {
        log_warn("store", "cannot read the partitions of traces: %s", err);
        return;
    }
    if (now < p->ddl_after)
        return;
    int64_t first, last;
    window(p, now, &first, &last);
    int made = 0;
    bool fresh = false;
    for (size_t i = 0; i < n && made < CREATE_PER_BATCH; i++) {
        int64_t d = day_of(ts[i]);
        if (d < first || d > last || has_day(p, d))
            continue;
        /* another engine (the leader, ahead) may have made it: read the catalog once before
         * taking the table's lock */
        if (!fresh) {
            fresh = true;
            if (reload(p, c, err, sizeof err))
                break;
            if (has_day(p, d))
                continue;
        }
        made++;
        if (create_day(p, c, d, now, err, sizeof err)) {
            log_warn("store", "cannot create the partition of traces for day %lld: %s; its traces go to "
                              "traces_default for now", (long long)d, err);
            break;
        }
        if (reload(p, c, err, sizeof err))
            break;
    }
}

int pg_parts_upkeep(pg_parts *p, PGconn *c, int64_t now, int64_t before_ms, char *err, size_t errlen)
{
    if (reload(p, c, err, errlen))
        return -1;
    if (now < p->ddl_after)
        return 0;
    /* the days ahead, and yesterday's for traces of its last moments */
    int64_t today = day_of(now);
    for (int64_t d = today - 1; d <= today + PG_PARTS_AHEAD_DAYS; d++) {
        if (has_day(p, d))
            continue;
        if (create_day(p, c, d, now, err, errlen))
            return -1;
        log_info("store", "created the partition of traces for day %lld", (long long)d);
    }
    if (before_ms > 0) {
        /* whole days only: a partition goes when its last moment is older than before_ms */
        int64_t cut = day_of(before_ms);
        for (size_t i = 0; i < p->n && p->days[i] < cut; i++) {
            char name[64], sql[128];
            part_name(p->days[i], name, sizeof name);
            snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", name);
            int rc = ddl_begin(c, err, errlen);
            if (!rc)
                rc = pg_exec(c, sql, err, errlen);
            if (ddl_end(c, rc, err, errlen)) {
                p->ddl_after = now + DDL_BACKOFF_MS;
                return -1;
            }
            pthread_mutex_lock(&p->mu);
            p->dropped++;
            pthread_mutex_unlock(&p->mu);
            log_info("store", "dropped %s: its day is past store.retention_days", name);
        }
    }
    return reload(p, c, err, errlen);
}

int pg_parts_cleanup(PGconn *c, int64_t before_ms, int64_t limit, char *err, size_t errlen)
{
    /* one statement, one snapshot: the same batch of ids in each delete. Traces of dropped days
     * have no row left; those the default partition kept (ts outside the window) go here. */
    pgq *q = pgq_new(c,
                     "WITH b AS (DELETE FROM trace_ids WHERE id IN (SELECT id FROM trace_ids WHERE ts < ?1 "
                     "ORDER BY ts, id LIMIT ?2) RETURNING id, ts), "
                     "sc AS (DELETE FROM scores WHERE trace_id IN (SELECT id FROM b)), "
                     "fb AS (DELETE FROM feedback WHERE trace_id IN (SELECT id FROM b)), "
                     "tr AS (DELETE FROM traces t USING b WHERE t.ts < ?1 AND t.id = b.id AND t.ts = b.ts) "
                     "SELECT count(*) FROM b");
    pgq_int(q, 1, day_of(before_ms) * DAY_MS);
    pgq_int(q, 2, limit);
    int rc = pgq_step(q);
    if (rc == PGQ_ERROR)
        snprintf(err, errlen, "%s", q->err);
    pgq_free(q);
    if (rc == PGQ_ERROR)
        return -1;
    q = pgq_new(c, "DELETE FROM trace_parts WHERE id IN (SELECT id FROM trace_parts WHERE ts < ?1 ORDER BY ts LIMIT ?2)");
    pgq_int(q, 1, before_ms);
    pgq_int(q, 2, limit);
    rc = pgq_step(q);
    if (rc == PGQ_ERROR)
        snprintf(err, errlen, "%s", q->err);
    pgq_free(q);
    return rc == PGQ_ERROR ? -1 : 0;
}

static json_t *day_text(int64_t day)
{
    if (day == INT64_MIN)
        return json_null();
    time_t t = (time_t)(day * 86400);
    struct tm tm;
    gmtime_r(&t, &tm);
    char s[48];
    snprintf(s, sizeof s, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    return json_string(s);
}

void pg_parts_status(pg_parts *p, json_t *out)
{
    pthread_mutex_lock(&p->mu);
    json_t *o = json_pack("{s:I, s:o, s:o, s:I, s:I, s:I}", "daily", (json_int_t)p->count, "oldest",
                          day_text(p->oldest), "newest", day_text(p->newest), "created", (json_int_t)p->created,
                          "dropped", (json_int_t)p->dropped, "create_failures", (json_int_t)p->create_failures);
    pthread_mutex_unlock(&p->mu);
    json_object_set_new(out, "trace_partitions", o);
}

void pg_parts_metrics(pg_parts *p, buf_t *b)
{
    pthread_mutex_lock(&p->mu);
    double count = (double)p->count, created = (double)p->created, dropped = (double)p->dropped,
           failed = (double)p->create_failures;
    pthread_mutex_unlock(&p->mu);
    metrics_one(b, "ratchet_store_trace_partitions", "gauge",
                "Daily partitions of traces (PostgreSQL), as this engine last read them.", count);
    metrics_one(b, "ratchet_store_trace_partitions_created_total", "counter",
                "Daily partitions of traces this engine created (ahead, or for a trace's day).", created);
    metrics_one(b, "ratchet_store_trace_partitions_dropped_total", "counter",
                "Daily partitions of traces this engine dropped whole (store.retention_days).", dropped);
    metrics_one(b, "ratchet_store_trace_partition_failures_total", "counter",
                "Partitions of traces that could not be created (their traces went to traces_default).", failed);
}
