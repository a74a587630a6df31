/* plain_insert.c — the storage baseline for bench/ingest.sh: inserts the same
 * 1 KB trace rows into the same schema (a store ratchet created) with the same
 * durability (WAL, synchronous=FULL, one fsync per commit), with no HTTP and
 * no JSON work. Usage: plain_insert DB ROWS ROWS_PER_COMMIT */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: plain_insert DB ROWS ROWS_PER_COMMIT\n");
        return 2;
    }
    long rows = atol(argv[2]), per = atol(argv[3]);
    sqlite3 *db;
    if (sqlite3_open(argv[1], &db) != SQLITE_OK) {
        fprintf(stderr, "open: %s\n", sqlite3_errmsg(db));
        return 1;
    }
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL, NULL);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO traces(id, prompt, version, ts, received_at, retry_of, body) "
                           "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(id) DO NOTHING",
                           -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "prepare: %s (is DB a ratchet store?)\n", sqlite3_errmsg(db));
        return 1;
    }
    char pad[641];
    memset(pad, 'x', 640);
    pad[640] = '\0';
    char body[2048], id[64];
    double t0 = now_s();
    for (long i = 0; i < rows; i++) {
        if (i % per == 0)
            sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        snprintf(id, sizeof id, "plain-%ld", i);
        int n = snprintf(body, sizeof body,
                         "{\"id\":\"%s\",\"prompt\":{\"name\":\"ticket-triage\",\"version\":3},\"input\":{\"variables\":"
                         "{\"ticket\":\"I was charged twice this month and want a refund\"}},\"output\":\"{\\\"category\\\":"
                         "\\\"billing\\\",\\\"urgency\\\":\\\"high\\\"}\",\"model\":\"gpt-4o-mini\",\"latency_ms\":812,"
                         "\"usage\":{\"input_tokens\":412,\"output_tokens\":31},\"metadata\":{\"pad\":\"%s\"},"
                         "\"timestamp\":\"2026-11-24T08:00:00.000Z\"}",
                         id, pad);
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, "ticket-triage", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, 3);
        sqlite3_bind_int64(st, 4, 1795507200000LL + i);
        sqlite3_bind_int64(st, 5, 1795507200000LL + i);
        sqlite3_bind_null(st, 6);
        sqlite3_bind_text(st, 7, body, n, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) {
            fprintf(stderr, "insert: %s\n", sqlite3_errmsg(db));
            return 1;
        }
        sqlite3_reset(st);
        if (i % per == per - 1 || i == rows - 1)
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    double dt = now_s() - t0;
    printf("RESULT rows=%ld seconds=%.3f rows_per_s=%.0f\n", rows, dt, (double)rows / dt);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}
