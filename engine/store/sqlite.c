/* sqlite.c — the store on SQLite: schema migrations, the group-commit writer thread,
 * the checkpointer thread and the read-connection pool. Nothing here runs SQL
 * on the loop thread.
 *
 * Checkpoints (copying the WAL back into the database file, and its fsync) run
 * on their own thread and connection, so a commit never waits for one: the
 * writer's commit hook wakes the checkpointer once the WAL holds
 * CHECKPOINT_PAGES, and again each time it has grown by CHECKPOINT_STEP (one
 * pass per commit would double the fsyncs of small commits). The WAL restarts
 * from its beginning only when a transaction finds it all copied back, which
 * under steady writes the checkpointer rarely achieves; so past WAL_MAX_PAGES
 * the writer checkpoints itself: it waits for the pass in progress and copies
 * the few pages left, and its next transaction restarts the WAL. */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/jtree.h"
#include "base/log.h"
#include "base/metrics.h"
#include "store/sqlite_private.h"
#include "base/jtree.h"

struct sqlite_store {
    store base; /* first: the seam (store/backend.h) */
    uv_loop_t *loop;
    char *path;
    sqlite3 *wdb;
    sqlite3_stmt *ins_trace, *ins_feedback, *trace_exists, *mark_negative, *del_scores, *ins_score, *set_verdict;
    sqlite3_stmt *ins_llm_call;
    sqlite3_stmt *ins_tag;
    sqlite3_stmt *add_minute;
    sqlite3_stmt *trace_minute, *add_score_minute;
    struct {
        const char *sql;
        sqlite3_stmt *st;
    } op_stmts[64]; /* the statements of store_op writes, prepared on first use */
    int nop_stmts;
    pthread_t writer;
    /* the checkpointer: its connection, and a wake-up under ckpt_mu */
    pthread_t checkpointer;
    sqlite3 *cdb;
    pthread_mutex_t ckpt_mu;
    pthread_cond_t ckpt_cond;       /* wakes the checkpointer */
    pthread_cond_t ckpt_idle_cond;  /* the checkpointer finished a pass */
    bool ckpt_wanted, ckpt_running, ckpt_stop;
    uint64_t checkpoints, writer_checkpoints; /* under ckpt_mu */
    int wal_pages;                            /* after the last commit, under ckpt_mu */
    int ckpt_mark;                            /* wal_pages when the checkpointer was last woken */
    store_wqueue q; /* the writer's queue; q.mu guards the fields below marked "under mu" */
    bool healthy;   /* under mu */
    /* for /metrics, under mu */
    uint64_t commits, commit_failures, writes_committed, items_committed;
    metrics_hist commit_seconds;
    uv_async_t done_async;
    /* read connections, borrowed by thread-pool work */
    pthread_mutex_t read_mu;
    sqlite3 *read_pool[READ_POOL_MAX];
    int read_free;
};

#define CHECKPOINT_PAGES 1000 /* SQLite's own auto-checkpoint point */
#define CHECKPOINT_STEP 256   /* and again each time it has grown by this many */
#define WAL_MAX_PAGES 8000    /* 32 MB of 4 KiB pages */

/* Each entry brings the schema from version i to i+1. Never edit one that has
 * shipped; append a new one. */
static const char *const migrations[] = {
    "CREATE TABLE traces ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  prompt TEXT NOT NULL,"
    "  version INTEGER,"
    "  ts INTEGER NOT NULL,"
    "  received_at INTEGER NOT NULL,"
    "  retry_of TEXT,"
    "  body TEXT NOT NULL"
    ") STRICT;"
    "CREATE INDEX traces_by_prompt ON traces(prompt, ts, seq);"
    "CREATE INDEX traces_by_ts ON traces(ts, seq);"
    "CREATE TABLE feedback ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  trace_id TEXT NOT NULL,"
    "  source TEXT NOT NULL,"
    "  thumbs INTEGER,"
    "  ts INTEGER NOT NULL,"
    "  body TEXT NOT NULL"
    ") STRICT;"
    "CREATE INDEX feedback_by_trace ON feedback(trace_id);",

    /* 2: online evaluation. verdict: NULL not evaluated, 0 pass, 1 a required
     * evaluator failed, 2 a required evaluator could not judge. negative: the
     * trace has negative feedback (thumbs down, a low score, a retry). */
    "ALTER TABLE traces ADD COLUMN verdict INTEGER;"
    "ALTER TABLE traces ADD COLUMN negative INTEGER NOT NULL DEFAULT 0;"
    "UPDATE traces SET negative = 1 WHERE id IN "
    "  (SELECT trace_id FROM feedback WHERE thumbs = -1 OR source = 'retry'"
    "   OR json_extract(body, '$.score') < 0.5);"
    "CREATE INDEX traces_failed_by_prompt ON traces(prompt, ts, seq) WHERE verdict = 1 OR negative = 1;"
    "CREATE INDEX traces_failed_by_ts ON traces(ts, seq) WHERE verdict = 1 OR negative = 1;"
    "CREATE TABLE scores ("
    "  trace_id TEXT NOT NULL,"
    "  evaluator TEXT NOT NULL,"  /* the name it is attached under */
    "  script TEXT NOT NULL,"     /* the evaluator file's name */
    "  version TEXT NOT NULL,"    /* hash of the file's text */
    "  required INTEGER NOT NULL,"
    "  status TEXT NOT NULL,"     /* ok, error, killed, out_of_memory */
    "  pass INTEGER NOT NULL,"
    "  score REAL NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  ts INTEGER NOT NULL,"
    "  PRIMARY KEY (trace_id, evaluator)"
    ") STRICT, WITHOUT ROWID;",

    /* 3: the LLM ledger: one row per call (all its attempts), whoever asked. */
    "CREATE TABLE llm_calls ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  ts INTEGER NOT NULL,"
    "  caller_kind TEXT NOT NULL," /* evaluator, run, template, policy, other */
    "  caller TEXT NOT NULL,"
    "  run_id TEXT,"
    "  provider TEXT NOT NULL,"
    "  model TEXT NOT NULL,"
    "  input_tokens INTEGER NOT NULL,"
    "  output_tokens INTEGER NOT NULL,"
    "  cost REAL NOT NULL,"
    "  attempts INTEGER NOT NULL,"
    "  status TEXT NOT NULL,"      /* ok, or the error kind */
    "  error TEXT,"
    "  latency_ms REAL NOT NULL,"
    "  request_id TEXT"
    ") STRICT;"
    "CREATE INDEX llm_calls_by_ts ON llm_calls(ts);"
    "CREATE INDEX llm_calls_by_run ON llm_calls(run_id, ts) WHERE run_id IS NOT NULL;",

    /* 4: the prompt registry, datasets and regression runs. A dataset case
     * row belongs to the versions added <= v < removed. */
    "CREATE TABLE prompts ("
    "  name TEXT PRIMARY KEY,"
    "  description TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  pinned INTEGER NOT NULL,"
    "  pin_reason TEXT,"
    "  canary_share REAL NOT NULL"
    ") STRICT;"
    "CREATE TABLE prompt_versions ("
    "  prompt TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  messages TEXT NOT NULL,"
    "  model TEXT NOT NULL,"
    "  parent INTEGER,"
    "  author TEXT NOT NULL,"
    "  note TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (prompt, version)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE prompt_labels ("
    "  prompt TEXT NOT NULL, label TEXT NOT NULL, version INTEGER NOT NULL,"
    "  PRIMARY KEY (prompt, label)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE transitions ("
    "  seq INTEGER PRIMARY KEY,"
    "  prompt TEXT NOT NULL,"
    "  version INTEGER,"
    "  from_status TEXT,"
    "  to_status TEXT NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  actor TEXT NOT NULL,"
    "  ts INTEGER NOT NULL"
    ") STRICT;"
    "CREATE INDEX transitions_by_prompt ON transitions(prompt, seq);"
    "CREATE TABLE datasets ("
    "  name TEXT PRIMARY KEY,"
    "  description TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  cases INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL"
    ") STRICT;"
    "CREATE TABLE dataset_cases ("
    "  dataset TEXT NOT NULL,"
    "  id TEXT NOT NULL,"
    "  added INTEGER NOT NULL,"
    "  removed INTEGER,"
    "  body TEXT NOT NULL," /* {id, variables, expected?, tags, source_trace?} */
    "  PRIMARY KEY (dataset, id, added)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE runs ("
    "  id TEXT PRIMARY KEY,"
    "  kind TEXT NOT NULL,"
    "  prompt TEXT NOT NULL,"
    "  spec TEXT NOT NULL,"
    "  state TEXT NOT NULL,"   /* preparing, running, finished, incomplete, failed */
    "  verdict TEXT,"
    "  report TEXT,"
    "  error TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  finished_at INTEGER"
    ") STRICT;"
    "CREATE INDEX runs_by_prompt ON runs(prompt, created_at);"
    "CREATE TABLE run_cases ("
    "  run_id TEXT NOT NULL,"
    "  idx INTEGER NOT NULL,"
    "  body TEXT NOT NULL," /* {id, source, variables, expected?, tags, trace_id?} */
    "  PRIMARY KEY (run_id, idx)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE run_results ("
    "  run_id TEXT NOT NULL,"
    "  case_idx INTEGER NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  sample INTEGER NOT NULL,"
    "  status TEXT NOT NULL,"  /* pass, fail, error */
    "  output TEXT,"
    "  error TEXT,"
    "  verdicts TEXT,"
    "  input_tokens INTEGER NOT NULL,"
    "  output_tokens INTEGER NOT NULL,"
    "  cost REAL NOT NULL,"
    "  latency_ms REAL NOT NULL,"
    "  cached INTEGER NOT NULL,"
    "  PRIMARY KEY (run_id, case_idx, version, sample)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE result_cache ("
    "  key TEXT PRIMARY KEY,"
    "  result TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL"
    ") STRICT, WITHOUT ROWID;",

    /* 5: the self-improvement loop: one state row per prompt, and its events. */
    "CREATE TABLE loop_state ("
    "  prompt TEXT PRIMARY KEY,"
    "  state TEXT NOT NULL,"        /* idle, optimizing, gating, awaiting_approval, canary */
    "  cycle TEXT,"                 /* the optimization cycle's id */
    "  run_id TEXT,"                /* its gate run */
    "  version INTEGER,"            /* the approved or canary version */
    "  step INTEGER NOT NULL,"      /* the canary's traffic step (0-based) */
    "  step_started INTEGER,"
    "  canary_started INTEGER,"
    "  last_cycle_at INTEGER,"      /* when the last cycle started (cooldown) */
    "  updated_at INTEGER NOT NULL,"
    "  detail TEXT"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE loop_events ("
    "  seq INTEGER PRIMARY KEY,"
    "  prompt TEXT NOT NULL,"
    "  ts INTEGER NOT NULL,"
    "  cycle TEXT,"
    "  kind TEXT NOT NULL,"
    "  message TEXT NOT NULL,"
    "  detail TEXT"
    ") STRICT;"
    "CREATE INDEX loop_events_by_prompt ON loop_events(prompt, seq);",

    /* 6: parts of traces that arrived before their trace (OTLP: a span's
     * model, usage and latency before the log records with its content) */
    "CREATE TABLE trace_parts ("
    "  id TEXT PRIMARY KEY,"
    "  ts INTEGER NOT NULL,"        /* when it arrived: parts no trace claims expire */
    "  body TEXT NOT NULL"
    ") STRICT, WITHOUT ROWID;"
    "CREATE INDEX trace_parts_by_ts ON trace_parts(ts);",

    /* 7: per-minute rollups of the online figures (sqlite_loop.c reads
     * them): trace_minutes per (prompt, version, minute), score_minutes per
     * evaluator too, kept in the transaction of the rows they sum: the
     * writer adds the traces of each write (add_trace_minutes), and triggers
     * count what changes after (a verdict, negative feedback, scores
     * replaced) as the difference of the row's contribution before and
     * after; this migration fills them from what is already stored. version
     * 0 is a trace that names none. */
    "CREATE TABLE trace_minutes ("
    "  prompt TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  minute INTEGER NOT NULL,"     /* ts / 60000 */
    "  traces INTEGER NOT NULL,"
    "  evaluated INTEGER NOT NULL,"
    "  passed INTEGER NOT NULL,"     /* verdict pass and no negative feedback */
    "  failures INTEGER NOT NULL,"   /* verdict fail or negative feedback */
    "  errors INTEGER NOT NULL,"
    "  negative INTEGER NOT NULL,"
    "  retries INTEGER NOT NULL,"
    "  latency_sum REAL NOT NULL, latency_n INTEGER NOT NULL,"
    "  cost_sum REAL NOT NULL, cost_n INTEGER NOT NULL,"
    "  tokens_sum REAL NOT NULL, tokens_n INTEGER NOT NULL,"
    "  PRIMARY KEY (prompt, version, minute)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE score_minutes ("
    "  prompt TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  minute INTEGER NOT NULL,"
    "  evaluator TEXT NOT NULL,"
    "  n INTEGER NOT NULL,"
    "  passed INTEGER NOT NULL,"
    "  failures INTEGER NOT NULL,"
    "  errors INTEGER NOT NULL,"
    "  required INTEGER NOT NULL,"   /* how many of the n were required */
    "  PRIMARY KEY (prompt, version, minute, evaluator)"
    ") STRICT, WITHOUT ROWID;"
    /* a window of every version reads by minute */
    "CREATE INDEX trace_minutes_by_minute ON trace_minutes(prompt, minute);"
    "CREATE INDEX score_minutes_by_minute ON score_minutes(prompt, minute);"
    /* a trace's contribution, added (SIGN 1) or taken away (SIGN -1) */
#define TRACE_MINUTE(R, SIGN)                                                                                       \
    "INSERT INTO trace_minutes VALUES (" R ".prompt, coalesce(" R ".version, 0), " R ".ts / 60000, " SIGN ", "       \
    SIGN " * (" R ".verdict IS NOT NULL), " SIGN " * (" R ".verdict IS 0 AND " R ".negative = 0), "                 \
    SIGN " * (" R ".verdict IS 1 OR " R ".negative = 1), " SIGN " * (" R ".verdict IS 2), " SIGN " * " R            \
    ".negative, " SIGN " * (" R ".retry_of IS NOT NULL), "                                                          \
    SIGN " * coalesce(json_extract(" R ".body, '$.latency_ms') + 0.0, 0.0), "                                        \
    SIGN " * (json_extract(" R ".body, '$.latency_ms') IS NOT NULL), "                                              \
    SIGN " * coalesce(json_extract(" R ".body, '$.usage.cost_usd') + 0.0, 0.0), "                                    \
    SIGN " * (json_extract(" R ".body, '$.usage.cost_usd') IS NOT NULL), "                                          \
    SIGN " * coalesce(json_extract(" R ".body, '$.usage.input_tokens') + json_extract(" R                           \
    ".body, '$.usage.output_tokens') + 0.0, 0.0), "                                                                 \
    SIGN " * (json_extract(" R ".body, '$.usage.input_tokens') + json_extract(" R                                   \
    ".body, '$.usage.output_tokens') IS NOT NULL)) " MINUTE_UPSERT
#define MINUTE_UPSERT                                                                                               \
    "ON CONFLICT(prompt, version, minute) DO UPDATE SET traces = traces + excluded.traces, "                         \
    "evaluated = evaluated + excluded.evaluated, passed = passed + excluded.passed, "                                \
    "failures = failures + excluded.failures, errors = errors + excluded.errors, "                                  \
    "negative = negative + excluded.negative, retries = retries + excluded.retries, "                               \
    "latency_sum = latency_sum + excluded.latency_sum, latency_n = latency_n + excluded.latency_n, "                \
    "cost_sum = cost_sum + excluded.cost_sum, cost_n = cost_n + excluded.cost_n, "                                  \
    "tokens_sum = tokens_sum + excluded.tokens_sum, tokens_n = tokens_n + excluded.tokens_n;"
    /* a verdict or negative feedback set on a trace that stays in its minute
     * changes the counts only (its body's figures are unchanged): no body is
     * parsed on the evaluation's write */
#define SAME_MINUTE(A, B)                                                                                           \
    A ".prompt = " B ".prompt AND " A ".version IS " B ".version AND " A ".ts / 60000 = " B ".ts / 60000 AND " A   \
    ".body = " B ".body"
    /* a trace stored: the writer adds its batch's traces, one row per minute
     * (add_trace_minutes), not a trigger per trace */
    "CREATE TRIGGER trace_minutes_counts AFTER UPDATE ON traces WHEN " SAME_MINUTE("NEW", "OLD") " BEGIN "
    "INSERT INTO trace_minutes VALUES (NEW.prompt, coalesce(NEW.version, 0), NEW.ts / 60000, 0, "
    "  (NEW.verdict IS NOT NULL) - (OLD.verdict IS NOT NULL), "
    "  (NEW.verdict IS 0 AND NEW.negative = 0) - (OLD.verdict IS 0 AND OLD.negative = 0), "
    "  (NEW.verdict IS 1 OR NEW.negative = 1) - (OLD.verdict IS 1 OR OLD.negative = 1), "
    "  (NEW.verdict IS 2) - (OLD.verdict IS 2), NEW.negative - OLD.negative, "
    "  (NEW.retry_of IS NOT NULL) - (OLD.retry_of IS NOT NULL), 0.0, 0, 0.0, 0, 0.0, 0) " MINUTE_UPSERT " END;"
    "CREATE TRIGGER trace_minutes_moved AFTER UPDATE ON traces WHEN NOT (" SAME_MINUTE("NEW", "OLD") ") BEGIN "
    TRACE_MINUTE("OLD", "-1") TRACE_MINUTE("NEW", "1") " END;"
    "CREATE TRIGGER trace_minutes_delete AFTER DELETE ON traces BEGIN " TRACE_MINUTE("OLD", "-1") " END;"
#define SCORE_MINUTE(R, SIGN)                                                                                       \
    "INSERT INTO score_minutes SELECT t.prompt, coalesce(t.version, 0), t.ts / 60000, " R ".evaluator, " SIGN ", "  \
    SIGN " * (" R ".status = 'ok' AND " R ".pass = 1), " SIGN " * (" R ".status = 'ok' AND " R ".pass = 0), "        \
    SIGN " * (" R ".status <> 'ok'), " SIGN " * (" R ".required <> 0) FROM traces t WHERE t.id = " R ".trace_id "    \
    SCORE_UPSERT
#define SCORE_UPSERT                                                                                                \
    "ON CONFLICT(prompt, version, minute, evaluator) DO UPDATE SET n = n + excluded.n, "                            \
    "passed = passed + excluded.passed, failures = failures + excluded.failures, "                                  \
    "errors = errors + excluded.errors, required = required + excluded.required;"
    /* a score stored: the writer adds it (apply_evaluation), knowing its trace */
    "CREATE TRIGGER score_minutes_update AFTER UPDATE ON scores BEGIN "
    SCORE_MINUTE("OLD", "-1") SCORE_MINUTE("NEW", "1") " END;"
    "CREATE TRIGGER score_minutes_delete AFTER DELETE ON scores BEGIN " SCORE_MINUTE("OLD", "-1") " END;"
    /* scores count through their trace (the reads join them): a trace
     * stored, moved or deleted brings or takes its scores' figures */
#define SCORES_OF_TRACE(R, SIGN)                                                                                    \
    "INSERT INTO score_minutes SELECT " R ".prompt, coalesce(" R ".version, 0), " R ".ts / 60000, s.evaluator, "     \
    SIGN " * count(*), " SIGN " * sum(s.status = 'ok' AND s.pass = 1), " SIGN                                       \
    " * sum(s.status = 'ok' AND s.pass = 0), " SIGN " * sum(s.status <> 'ok'), " SIGN " * sum(s.required <> 0) "     \
    "FROM scores s WHERE s.trace_id = " R ".id GROUP BY s.evaluator " SCORE_UPSERT
    /* (a trace stored has no scores yet: the writer stores scores only for
     * a trace it has) */
    "CREATE TRIGGER score_minutes_trace_moved AFTER UPDATE ON traces WHEN NOT ("
    "  NEW.prompt = OLD.prompt AND NEW.version IS OLD.version AND NEW.ts / 60000 = OLD.ts / 60000 AND NEW.id = OLD.id"
    ") BEGIN " SCORES_OF_TRACE("OLD", "-1") SCORES_OF_TRACE("NEW", "1") " END;"
    "CREATE TRIGGER score_minutes_trace_delete AFTER DELETE ON traces BEGIN " SCORES_OF_TRACE("OLD", "-1") " END;"
    "INSERT INTO trace_minutes SELECT prompt, coalesce(version, 0), ts / 60000, count(*), "
    "  sum(verdict IS NOT NULL), sum(verdict IS 0 AND negative = 0), sum(verdict IS 1 OR negative = 1), "
    "  sum(verdict IS 2), sum(negative), sum(retry_of IS NOT NULL), "
    "  total(json_extract(body, '$.latency_ms')), count(json_extract(body, '$.latency_ms')), "
    "  total(json_extract(body, '$.usage.cost_usd')), count(json_extract(body, '$.usage.cost_usd')), "
    "  total(json_extract(body, '$.usage.input_tokens') + json_extract(body, '$.usage.output_tokens')), "
    "  count(json_extract(body, '$.usage.input_tokens') + json_extract(body, '$.usage.output_tokens')) "
    "FROM traces GROUP BY 1, 2, 3;"
    "INSERT INTO score_minutes SELECT t.prompt, coalesce(t.version, 0), t.ts / 60000, s.evaluator, count(*), "
    "  sum(s.status = 'ok' AND s.pass = 1), sum(s.status = 'ok' AND s.pass = 0), sum(s.status <> 'ok'), "
    "  sum(s.required <> 0) "
    "FROM scores s JOIN traces t ON t.id = s.trace_id GROUP BY 1, 2, 3, 4;",

    /* 8: trace tags, one row each, keyed for the tag filter of a trace
     * search: newest first by (tag, prompt) or by tag alone. */
    "CREATE TABLE trace_tags ("
    "  tag TEXT NOT NULL,"
    "  tag_prompt TEXT NOT NULL,"
    "  tag_ts INTEGER NOT NULL,"
    "  tag_seq INTEGER NOT NULL," /* traces.seq */
    "  PRIMARY KEY (tag, tag_prompt, tag_ts, tag_seq)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE INDEX trace_tags_by_ts ON trace_tags(tag, tag_ts, tag_seq);",

    /* 9: a trace's tags go with it (store.retention_days deletes traces) */
    "CREATE INDEX trace_tags_by_seq ON trace_tags(tag_seq);"
    "CREATE TRIGGER trace_tags_delete AFTER DELETE ON traces BEGIN "
    "DELETE FROM trace_tags WHERE tag_seq = OLD.seq; END;",
#undef TRACE_MINUTE
#undef SAME_MINUTE
#undef SCORE_MINUTE
#undef SCORES_OF_TRACE
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

static const store_backend sqlite_backend;
static void *writer_main(void *arg);
static void *checkpointer_main(void *arg);
static int apply_ops(sqlite_store *s, const store_op *op);
static void on_done_async(uv_async_t *h);

static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
    }
    return rc;
}

static int migrate(sqlite3 *db, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    int have = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            have = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    if (have > SCHEMA_VERSION) {
        snprintf(err, errlen, "the store has schema version %d, newer than this engine's %d; "
                 "run a newer ratchet", have, SCHEMA_VERSION);
        return -1;
    }
    for (int v = have; v < SCHEMA_VERSION; v++) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v + 1);
        if (exec_sql(db, "BEGIN IMMEDIATE", err, errlen) != SQLITE_OK)
            return -1;
        if (exec_sql(db, migrations[v], err, errlen) != SQLITE_OK ||
            exec_sql(db, sql, err, errlen) != SQLITE_OK) {
            exec_sql(db, "ROLLBACK", err + strlen(err), 0);
            return -1;
        }
        if (exec_sql(db, "COMMIT", err, errlen) != SQLITE_OK)
            return -1;
        log_info("store", "migrated schema to version %d", v + 1);
    }
    return 0;
}

static void finalize_statements(sqlite_store *s)
{
    sqlite3_stmt **all[] = {&s->ins_trace, &s->ins_feedback, &s->trace_exists, &s->mark_negative,
                            &s->del_scores, &s->ins_score, &s->set_verdict, &s->ins_llm_call,
                            &s->ins_tag, &s->add_minute, &s->trace_minute, &s->add_score_minute};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        sqlite3_finalize(*all[i]);
        *all[i] = NULL;
    }
    for (int i = 0; i < s->nop_stmts; i++)
        sqlite3_finalize(s->op_stmts[i].st);
    s->nop_stmts = 0;
}

/* The writer connection's commit hook (in place of SQLite's auto-checkpoint). */
static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages)
{
    sqlite_store *s = arg;
    pthread_mutex_lock(&s->ckpt_mu);
    s->wal_pages = pages;
    if (pages < WAL_MAX_PAGES) {
        if (pages < s->ckpt_mark)
            s->ckpt_mark = 0; /* the WAL restarted */
        if (pages >= CHECKPOINT_PAGES && pages - s->ckpt_mark >= CHECKPOINT_STEP) {
            s->ckpt_mark = pages;
            s->ckpt_wanted = true;
            pthread_cond_signal(&s->ckpt_cond);
        }
        pthread_mutex_unlock(&s->ckpt_mu);
        return SQLITE_OK;
    }
    /* The checkpointer's pass in progress copies most of it; wait for that
     * and copy the rest here, with no other checkpoint running, so the next
     * transaction finds the WAL all copied and restarts it. */
    while (s->ckpt_running)
        pthread_cond_wait(&s->ckpt_idle_cond, &s->ckpt_mu);
    s->ckpt_wanted = false;
    pthread_mutex_unlock(&s->ckpt_mu);
    if (sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) == SQLITE_OK) {
        pthread_mutex_lock(&s->ckpt_mu);
        s->writer_checkpoints++;
        pthread_mutex_unlock(&s->ckpt_mu);
    }
    return SQLITE_OK;
}

static void stop_checkpointer(sqlite_store *s)
{
    pthread_mutex_lock(&s->ckpt_mu);
    s->ckpt_stop = true;
    pthread_cond_signal(&s->ckpt_cond);
    pthread_mutex_unlock(&s->ckpt_mu);
    pthread_join(s->checkpointer, NULL);
}

static void *checkpointer_main(void *arg)
{
    sqlite_store *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->ckpt_mu);
        while (!s->ckpt_wanted && !s->ckpt_stop)
            pthread_cond_wait(&s->ckpt_cond, &s->ckpt_mu);
        bool stop = s->ckpt_stop;
        s->ckpt_wanted = false;
        s->ckpt_running = !stop;
        pthread_mutex_unlock(&s->ckpt_mu);
        if (stop)
            break;
        int rc = sqlite3_wal_checkpoint_v2(s->cdb, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            log_warn("store", "checkpoint failed: %s (the WAL grows until one succeeds)", sqlite3_errmsg(s->cdb));
        pthread_mutex_lock(&s->ckpt_mu);
        s->checkpoints += rc == SQLITE_OK;
        s->ckpt_running = false;
        pthread_cond_broadcast(&s->ckpt_idle_cond);
        pthread_mutex_unlock(&s->ckpt_mu);
    }
    return NULL;
}

int sqlite_open(store **out, uv_loop_t *loop, const char *dir, int max_pending, char *err, size_t errlen)
{
    sqlite_store *s = xcalloc(1, sizeof *s);
    s->base.be = &sqlite_backend;
    s->loop = loop;

    size_t plen = strlen(dir) + 16;
    s->path = xmalloc(plen);
    snprintf(s->path, plen, "%s/ratchet.db", dir);
    int rc = sqlite3_open_v2(s->path, &s->wdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open store '%s': %s", s->path, s->wdb ? sqlite3_errmsg(s->wdb) : sqlite3_errstr(rc));
        goto fail;
    }
    /* synchronous=FULL in WAL mode: every COMMIT fsyncs the WAL, so an ack
     * sent after the commit means the data is on disk. */
    if (exec_sql(s->wdb, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;"
                          "PRAGMA foreign_keys=ON;", err, errlen) != SQLITE_OK)
        goto fail;
    if (migrate(s->wdb, err, errlen) != 0)
        goto fail;
    rc = sqlite3_open_v2(s->path, &s->cdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK || exec_sql(s->cdb, "PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;", err, errlen) != 0) {
        if (rc != SQLITE_OK)
            snprintf(err, errlen, "cannot open store '%s' for checkpoints: %s", s->path,
                     s->cdb ? sqlite3_errmsg(s->cdb) : sqlite3_errstr(rc));
        goto fail;
    }

    const char *ins_trace = "INSERT INTO traces(id, prompt, version, ts, received_at, retry_of, body) "
                            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(id) DO NOTHING";
    const char *ins_fb = "INSERT INTO feedback(id, trace_id, source, thumbs, ts, body) "
                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id) DO NOTHING";
    const char *exists = "SELECT prompt, version FROM traces WHERE id = ?1";
    const char *negative = "UPDATE traces SET negative = 1 WHERE id = ?1 AND negative = 0";
    const char *del_scores = "DELETE FROM scores WHERE trace_id = ?1";
    const char *ins_score = "INSERT INTO scores(trace_id, evaluator, script, version, required, status, pass, score, "
                            "reason, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) "
                            "ON CONFLICT(trace_id, evaluator) DO NOTHING";
    const char *set_verdict = "UPDATE traces SET verdict = ?2 WHERE id = ?1";
    const char *ins_llm_call = "INSERT INTO llm_calls(id, ts, caller_kind, caller, run_id, provider, model, "
                               "input_tokens, output_tokens, cost, attempts, status, error, latency_ms, request_id) "
                               "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) "
                               "ON CONFLICT(id) DO NOTHING";
    const char *add_minute = "INSERT INTO trace_minutes VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0, 0, ?5, ?6, ?7, ?8, ?9, "
                             "?10, ?11) " MINUTE_UPSERT;
    const char *trace_minute = "SELECT prompt, coalesce(version, 0), ts / 60000 FROM traces WHERE id = ?1";
    const char *add_score_minute = "INSERT INTO score_minutes VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8) " SCORE_UPSERT;
    const char *ins_tag = "INSERT INTO trace_tags(tag, tag_prompt, tag_ts, tag_seq) VALUES (?1, ?2, ?3, ?4) "
                          "ON CONFLICT DO NOTHING";
    if (sqlite3_prepare_v2(s->wdb, ins_trace, -1, &s->ins_trace, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, ins_fb, -1, &s->ins_feedback, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, exists, -1, &s->trace_exists, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, negative, -1, &s->mark_negative, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, del_scores, -1, &s->del_scores, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, ins_score, -1, &s->ins_score, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, set_verdict, -1, &s->set_verdict, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, ins_llm_call, -1, &s->ins_llm_call, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, ins_tag, -1, &s->ins_tag, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, add_minute, -1, &s->add_minute, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, trace_minute, -1, &s->trace_minute, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb, add_score_minute, -1, &s->add_score_minute, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare statements: %s", sqlite3_errmsg(s->wdb));
        goto fail;
    }

    store_wqueue_init(&s->q, (size_t)max_pending);
    pthread_mutex_init(&s->read_mu, NULL);
    pthread_mutex_init(&s->ckpt_mu, NULL);
    pthread_cond_init(&s->ckpt_cond, NULL);
    pthread_cond_init(&s->ckpt_idle_cond, NULL);
    if (pthread_create(&s->checkpointer, NULL, checkpointer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the checkpointer thread");
        goto fail;
    }
    sqlite3_wal_hook(s->wdb, on_wal_commit, s); /* replaces the auto-checkpoint */
    s->healthy = true;
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the writer thread");
        stop_checkpointer(s);
        goto fail;
    }
    /* after the thread: nothing can fail past this point, and the writer
     * touches the handle only for a write, which comes after the return */
    uv_async_init(loop, &s->done_async, on_done_async);
    s->done_async.data = s;
    *out = &s->base;
    return 0;

fail:
    if (!strstr(err, s->path)) { /* say which file */
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        snprintf(err, errlen, "the store '%s': %s", s->path, why);
    }
    finalize_statements(s);
    if (s->cdb)
        sqlite3_close(s->cdb);
    if (s->wdb)
        sqlite3_close(s->wdb);
    free(s->path);
    free(s);
    return -1;
}

static void sqlite_metrics(store *base, buf_t *b)
{
    sqlite_store *s = (sqlite_store *)base;
    pthread_mutex_lock(&s->q.mu);
    uint64_t commits = s->commits, failures = s->commit_failures, writes = s->writes_committed,
             items = s->items_committed;
    metrics_hist h = s->commit_seconds;
    size_t queued = s->q.queued_items;
    bool healthy = s->healthy;
    pthread_mutex_unlock(&s->q.mu);
    pthread_mutex_lock(&s->ckpt_mu);
    uint64_t checkpoints = s->checkpoints, writer_checkpoints = s->writer_checkpoints;
    int wal_pages = s->wal_pages;
    pthread_mutex_unlock(&s->ckpt_mu);
    metrics_one(b, "ratchet_store_commits_total", "counter",
                "Group commits: one transaction and one fsync for every write pending.", (double)commits);
    metrics_one(b, "ratchet_store_commit_failures_total", "counter",
                "Transactions that failed (nothing of them stored).", (double)failures);
    metrics_one(b, "ratchet_store_writes_total", "counter",
                "Writes (an ingest request, a batch of verdicts, ...) committed.", (double)writes);
    metrics_one(b, "ratchet_store_items_total", "counter",
                "Items (traces, feedback, scores, ...) committed.", (double)items);
    metrics_family(b, "ratchet_store_commit_duration_seconds", "histogram", "Time of one group commit, fsync included.");
    metrics_histogram(b, "ratchet_store_commit_duration_seconds", &h, NULL);
    metrics_one(b, "ratchet_store_pending_items", "gauge",
                "Items queued for the writer (limits.max_pending_writes).", (double)queued);
    metrics_one(b, "ratchet_store_healthy", "gauge", "1 when the store's last commit succeeded.", healthy);
    metrics_one(b, "ratchet_store_checkpoints_total", "counter",
                "WAL checkpoints by the checkpointer thread (off the commit path).", (double)checkpoints);
    metrics_one(b, "ratchet_store_writer_checkpoints_total", "counter",
                "WAL checkpoints the writer ran itself because the WAL passed 8000 pages.", (double)writer_checkpoints);
    metrics_one(b, "ratchet_store_wal_pages", "gauge", "Pages in the WAL after the last commit.", (double)wal_pages);
}

static void on_done_async(uv_async_t *h)
{
    sqlite_store *s = h->data;
    store_wqueue_drain(&s->q);
}

static void sqlite_flush(store *base)
{
    store_wqueue_flush(&((sqlite_store *)base)->q);
}

/* The last of the store: its memory holds the async handle, so it is freed
 * only once libuv has closed that. */
static void on_done_async_closed(uv_handle_t *h)
{
    sqlite_store *s = h->data;
    free(s->path);
    free(s);
}

static void sqlite_close(store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    store_wqueue_stop(&s->q);
    pthread_join(s->writer, NULL);
    stop_checkpointer(s);
    store_wqueue_drain(&s->q); /* the last commits' callbacks, on this (the loop) thread */

    finalize_statements(s);
    for (int i = 0; i < s->read_free; i++)
        sqlite3_close(s->read_pool[i]);
    sqlite3_close(s->cdb);
    /* the last connection, and a writable one: it copies the WAL back and removes it */
    sqlite3_close(s->wdb);
    store_wqueue_destroy(&s->q);
    pthread_mutex_destroy(&s->read_mu);
    pthread_mutex_destroy(&s->ckpt_mu);
    pthread_cond_destroy(&s->ckpt_cond);
    pthread_cond_destroy(&s->ckpt_idle_cond);
    uv_close((uv_handle_t *)&s->done_async, on_done_async_closed);
}

static int sqlite_submit(store *base, store_write *w)
{
    return store_wqueue_submit(&((sqlite_store *)base)->q, w);
}

static bool sqlite_healthy(store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    pthread_mutex_lock(&s->q.mu);
    bool h = s->healthy && !s->q.stopping;
    pthread_mutex_unlock(&s->q.mu);
    return h;
}

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int mark_negative(sqlite_store *s, const char *trace_id)
{
    sqlite3_bind_text(s->mark_negative, 1, trace_id, -1, SQLITE_STATIC);
    return step_done(s->mark_negative);
}

/* An evaluation replaces the trace's scores and sets its verdict; its
 * scores are added to score_minutes here, under the trace's prompt, version
 * and minute (the scores it replaces are taken away by a trigger, the
 * verdict counted by one). A trace the store does not have gets nothing:
 * its scores would count nowhere. */
static int apply_evaluation(sqlite_store *s, const store_evaluation *e)
{
    sqlite3_stmt *tr = s->trace_minute;
    sqlite3_bind_text(tr, 1, e->trace_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(tr);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(tr);
        return rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    char prompt[512];
    snprintf(prompt, sizeof prompt, "%s", (const char *)sqlite3_column_text(tr, 0));
    int64_t version = sqlite3_column_int64(tr, 1), minute = sqlite3_column_int64(tr, 2);
    sqlite3_reset(tr);
    sqlite3_bind_text(s->del_scores, 1, e->trace_id, -1, SQLITE_STATIC);
    rc = step_done(s->del_scores);
    for (size_t i = 0; rc == SQLITE_OK && i < e->nscores; i++) {
        const store_score *sc = &e->scores[i];
        sqlite3_stmt *st = s->ins_score;
        sqlite3_bind_text(st, 1, e->trace_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, sc->evaluator, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, sc->script, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, sc->version, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 5, sc->required);
        sqlite3_bind_text(st, 6, sc->status, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 7, sc->pass);
        sqlite3_bind_double(st, 8, sc->score);
        sqlite3_bind_text(st, 9, sc->reason, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 10, e->ts_ms);
        rc = step_done(st);
        if (rc != SQLITE_OK || !sqlite3_changes(s->wdb)) /* an evaluator named twice counts once */
            continue;
        bool ok = !strcmp(sc->status, "ok");
        st = s->add_score_minute;
        sqlite3_bind_text(st, 1, prompt, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, version);
        sqlite3_bind_int64(st, 3, minute);
        sqlite3_bind_text(st, 4, sc->evaluator, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 5, ok && sc->pass);
        sqlite3_bind_int(st, 6, ok && !sc->pass);
        sqlite3_bind_int(st, 7, !ok);
        sqlite3_bind_int(st, 8, sc->required);
        rc = step_done(st);
    }
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_text(s->set_verdict, 1, e->trace_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s->set_verdict, 2, (int)e->verdict);
    return step_done(s->set_verdict);
}

/* Inserts one feedback row; returns a SQLite code, result in *res. A new
 * negative item marks its trace. */
static int insert_feedback(sqlite_store *s, const char *id, const char *trace_id, const char *source, int thumbs,
                           bool negative, int64_t ts, const char *json, size_t json_len, unsigned char *res)
{
    sqlite3_stmt *st = s->ins_feedback;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, trace_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, source, -1, SQLITE_STATIC);
    if (thumbs)
        sqlite3_bind_int(st, 4, thumbs);
    else
        sqlite3_bind_null(st, 4);
    sqlite3_bind_int64(st, 5, ts);
    sqlite3_bind_text(st, 6, json, (int)json_len, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return rc;
    *res = sqlite3_changes(s->wdb) ? STORE_ACCEPTED : STORE_DUPLICATE;
    if (*res == STORE_ACCEPTED && negative)
        return mark_negative(s, trace_id);
    return SQLITE_OK;
}

/* The traces this write stored, summed into trace_minutes: one upsert per
 * (prompt, version, minute), in the write's transaction. A new trace has no
 * verdict and no negative feedback yet (the triggers on traces count those
 * when they come). */
static int add_trace_minutes(sqlite_store *s, store_write *w)
{
    store_trace **acc = xmalloc(w->ntraces * sizeof *acc);
    size_t n = 0;
    for (size_t i = 0; i < w->ntraces; i++)
        if (w->trace_results[i] == STORE_ACCEPTED)
            acc[n++] = &w->traces[i];
    store_minute_sum *sums = xmalloc((n ? n : 1) * sizeof *sums);
    size_t nsums = store_minute_sums(acc, n, sums);
    int rc = SQLITE_OK;
    for (size_t i = 0; i < nsums && rc == SQLITE_OK; i++) {
        const store_minute_sum *m = &sums[i];
        sqlite3_stmt *st = s->add_minute;
        sqlite3_bind_text(st, 1, m->prompt, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, m->version);
        sqlite3_bind_int64(st, 3, m->minute);
        sqlite3_bind_int64(st, 4, m->traces);
        sqlite3_bind_int64(st, 5, m->retries);
        sqlite3_bind_double(st, 6, m->lat);
        sqlite3_bind_int64(st, 7, m->lat_n);
        sqlite3_bind_double(st, 8, m->cost);
        sqlite3_bind_int64(st, 9, m->cost_n);
        sqlite3_bind_double(st, 10, m->tok);
        sqlite3_bind_int64(st, 11, m->tok_n);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    free(sums);
    free(acc);
    return rc;
}

static sqlite3_stmt *op_statement(sqlite_store *s, const char *sql);

/* Trace parts (store_trace_part): merged with SQLite's json_patch. */
static const char join_part_sql[] =
    "UPDATE traces SET body = json_patch(traces.body, json_remove(p.body, '$.prompt')) "
    "FROM (SELECT body FROM trace_parts WHERE id = ?1) AS p "
    "WHERE traces.id = ?1";
static const char drop_part_sql[] = "DELETE FROM trace_parts WHERE id = ?1";
static const char patch_trace_sql[] = "UPDATE traces SET body = json_patch(body, json_remove(?2, '$.prompt')) WHERE id = ?1";
static const char keep_part_sql[] =
    "INSERT INTO trace_parts(id, ts, body) VALUES (?1, ?2, ?3) "
    "ON CONFLICT(id) DO UPDATE SET body = json_patch(trace_parts.body, excluded.body)";
/* a part that only waits (log records' trace) goes under the one waiting:
 * the span's fields win, in whichever order the two were stored */
static const char keep_under_sql[] =
    "INSERT INTO trace_parts(id, ts, body) VALUES (?1, ?2, ?3) "
    "ON CONFLICT(id) DO UPDATE SET body = json_patch(excluded.body, trace_parts.body)";
static const char expire_parts_sql[] = "DELETE FROM trace_parts WHERE ts < ?1";

/* A trace just inserted takes the part that waited for it. */
static int join_waiting_part(sqlite_store *s, const char *id)
{
    sqlite3_stmt *st = op_statement(s, join_part_sql);
    if (!st)
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = step_done(st);
    if (rc != SQLITE_OK || sqlite3_changes(s->wdb) == 0)
        return rc;
    if (!(st = op_statement(s, drop_part_sql)))
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    return step_done(st);
}

/* A part merges into its trace when the trace is there, else waits. */
static int apply_part(sqlite_store *s, const store_trace_part *p, int64_t received, unsigned char *result)
{
    if (p->waits_only) {
        sqlite3_stmt *ex = s->trace_exists;
        sqlite3_bind_text(ex, 1, p->id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(ex);
        sqlite3_reset(ex);
        sqlite3_clear_bindings(ex);
        if (rc == SQLITE_ROW) {
            *result = STORE_PART_DUPLICATE;
            return SQLITE_OK;
        }
        if (rc != SQLITE_DONE)
            return rc;
    }
    sqlite3_stmt *st = op_statement(s, patch_trace_sql);
    if (!st)
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, p->json, (int)p->json_len, SQLITE_STATIC);
    int rc = step_done(st);
    if (rc != SQLITE_OK)
        return rc;
    if (sqlite3_changes(s->wdb)) {
        *result = STORE_PART_MERGED;
        return SQLITE_OK;
    }
    if (!(st = op_statement(s, p->waits_only ? keep_under_sql : keep_part_sql)))
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, received);
    sqlite3_bind_text(st, 3, p->json, (int)p->json_len, SQLITE_STATIC);
    *result = STORE_PART_WAITING;
    return step_done(st);
}

static int apply_write(sqlite_store *s, store_write *w, int64_t received)
{
    if (w->claim) /* one engine: its own count of its calls is the whole count */
        w->claim->granted = true;
    for (size_t i = 0; i < w->ntraces; i++) {
        store_trace *t = &w->traces[i];
        sqlite3_stmt *st = s->ins_trace;
        sqlite3_bind_text(st, 1, t->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, t->prompt, -1, SQLITE_STATIC);
        if (t->version)
            sqlite3_bind_int64(st, 3, t->version);
        else
            sqlite3_bind_null(st, 3);
        sqlite3_bind_int64(st, 4, t->ts_ms);
        sqlite3_bind_int64(st, 5, received);
        if (t->retry_of)
            sqlite3_bind_text(st, 6, t->retry_of, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 6);
        sqlite3_bind_text(st, 7, t->json, (int)t->json_len, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_DONE)
            return rc;
        w->trace_results[i] = sqlite3_changes(s->wdb) ? STORE_ACCEPTED : STORE_DUPLICATE;
        if (w->trace_results[i] == STORE_ACCEPTED && t->ntags) {
            int64_t seq = sqlite3_last_insert_rowid(s->wdb);
            for (size_t k = 0; k < t->ntags; k++) {
                st = s->ins_tag;
                sqlite3_bind_text(st, 1, t->tags[k], -1, SQLITE_STATIC);
                sqlite3_bind_text(st, 2, t->prompt, -1, SQLITE_STATIC);
                sqlite3_bind_int64(st, 3, t->ts_ms);
                sqlite3_bind_int64(st, 4, seq);
                rc = sqlite3_step(st);
                sqlite3_reset(st);
                sqlite3_clear_bindings(st);
                if (rc != SQLITE_DONE)
                    return rc;
            }
        }
        if (w->trace_results[i] == STORE_ACCEPTED && t->join_part) {
            rc = join_waiting_part(s, t->id);
            if (rc != SQLITE_OK)
                return rc;
        }
        if (w->trace_results[i] == STORE_ACCEPTED && t->retry_of) {
            /* Implicit feedback: the earlier trace was retried by this one. */
            char fid[200], body[400];
            unsigned char ignored;
            snprintf(fid, sizeof fid, "retry:%s", t->id);
            json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "id", fid, "trace_id", t->retry_of,
                                  "source", "retry", "retried_by", t->id);
            size_t n = json_dumpb(o, body, sizeof body, JSON_COMPACT);
            json_decref(o);
            rc = insert_feedback(s, fid, t->retry_of, "retry", 0, true, t->ts_ms, body, n, &ignored);
            if (rc != SQLITE_OK)
                return rc;
        }
    }
    if (w->ntraces) {
        int rc = add_trace_minutes(s, w);
        if (rc != SQLITE_OK)
            return rc;
    }
    for (size_t i = 0; i < w->nparts; i++) {
        int rc = apply_part(s, &w->parts[i], received, &w->part_results[i]);
        if (rc != SQLITE_OK)
            return rc;
    }
    if (w->nparts) {
        sqlite3_stmt *st = op_statement(s, expire_parts_sql);
        if (!st)
            return SQLITE_ERROR;
        sqlite3_bind_int64(st, 1, received - STORE_PART_TTL_MS);
        int rc = step_done(st);
        if (rc != SQLITE_OK)
            return rc;
    }
    for (size_t i = 0; i < w->nfeedback; i++) {
        store_feedback *f = &w->feedback[i];
        sqlite3_stmt *st = s->trace_exists;
        sqlite3_bind_text(st, 1, f->trace_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            free(f->trace_prompt); /* a retried transaction sets it again */
            f->trace_prompt = xstrdup((const char *)sqlite3_column_text(st, 0));
            f->trace_version = sqlite3_column_int64(st, 1);
        }
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return rc;
        if (rc == SQLITE_DONE) {
            w->feedback_results[i] = STORE_NOT_FOUND;
            continue;
        }
        rc = insert_feedback(s, f->id, f->trace_id, f->source, f->thumbs, f->negative, f->ts_ms, f->json,
                             f->json_len, &w->feedback_results[i]);
        if (rc != SQLITE_OK)
            return rc;
    }
    for (size_t i = 0; i < w->nevals; i++) {
        int rc = apply_evaluation(s, &w->evals[i]);
        if (rc != SQLITE_OK)
            return rc;
    }
    for (size_t i = 0; i < w->nllm_calls; i++) {
        const store_llm_call *c = &w->llm_calls[i];
        sqlite3_stmt *st = s->ins_llm_call;
        sqlite3_bind_text(st, 1, c->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, c->ts_ms);
        sqlite3_bind_text(st, 3, c->caller_kind, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, c->caller, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, c->run_id, -1, SQLITE_STATIC); /* NULL binds NULL */
        sqlite3_bind_text(st, 6, c->provider, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 7, c->model, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 8, c->input_tokens);
        sqlite3_bind_int64(st, 9, c->output_tokens);
        sqlite3_bind_double(st, 10, c->cost);
        sqlite3_bind_int(st, 11, c->attempts);
        sqlite3_bind_text(st, 12, c->status, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 13, c->error, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 14, c->latency_ms);
        sqlite3_bind_text(st, 15, c->request_id && *c->request_id ? c->request_id : NULL, -1, SQLITE_STATIC);
        int rc = step_done(st);
        if (rc != SQLITE_OK)
            return rc;
    }
    return apply_ops(s, w->ops);
}

static sqlite3_stmt *op_statement(sqlite_store *s, const char *sql)
{
    for (int i = 0; i < s->nop_stmts; i++)
        if (s->op_stmts[i].sql == sql)
            return s->op_stmts[i].st;
    sqlite3_stmt *st = NULL;
    if (s->nop_stmts == (int)(sizeof s->op_stmts / sizeof s->op_stmts[0]) ||
        sqlite3_prepare_v3(s->wdb, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        log_error("store", "cannot prepare a statement: %s", sqlite3_errmsg(s->wdb));
        return NULL;
    }
    s->op_stmts[s->nop_stmts].sql = sql;
    s->op_stmts[s->nop_stmts++].st = st;
    return st;
}

static int apply_ops(sqlite_store *s, const store_op *op)
{
    for (; op; op = op->next) {
        sqlite3_stmt *st = op_statement(s, op->sql);
        if (!st)
            return SQLITE_ERROR;
        for (int i = 0; i < op->n; i++) {
            const store_val *v = &op->v[i];
            if (v->t == 'i')
                sqlite3_bind_int64(st, i + 1, v->i);
            else if (v->t == 'd')
                sqlite3_bind_double(st, i + 1, v->d);
            else if (v->t == 's')
                sqlite3_bind_text(st, i + 1, v->s, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, i + 1);
        }
        int rc = step_done(st);
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

int sqlite_llm_totals(store *base, int64_t since_ms, const char *run_id, int64_t *calls, int64_t *tokens, double *cost,
                     char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db = sqlite_read_acquire(s, err, errlen);
    if (!db)
        return -1;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    const char *sql = run_id ? "SELECT count(*), total(input_tokens + output_tokens), total(cost) FROM llm_calls "
                               "WHERE run_id = ?2 AND ts >= ?1"
                             : "SELECT count(*), total(input_tokens + output_tokens), total(cost) FROM llm_calls "
                               "WHERE ts >= ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_int64(st, 1, since_ms);
    if (run_id)
        sqlite3_bind_text(st, 2, run_id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    *calls = sqlite3_column_int64(st, 0);
    *tokens = (int64_t)sqlite3_column_double(st, 1);
    *cost = sqlite3_column_double(st, 2);
    ret = 0;
done:
    sqlite3_finalize(st);
    sqlite_read_release(s, db);
    return ret;
}

int sqlite_list_llm_calls_json(store *base, int64_t since_ms, const char *caller_kind, int limit, buf_t *out, char *err,
                              size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db = sqlite_read_acquire(s, err, errlen);
    if (!db)
        return -1;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    const char *sql =
        "SELECT json_object('id', id, 'ts', strftime('%Y-%m-%dT%H:%M:%fZ', ts / 1000.0, 'unixepoch'), "
        "'caller_kind', caller_kind, 'caller', caller, 'run_id', run_id, 'provider', provider, 'model', model, "
        "'input_tokens', input_tokens, 'output_tokens', output_tokens, 'cost', cost, 'attempts', attempts, "
        "'status', status, 'error', error, 'latency_ms', latency_ms, 'request_id', request_id) "
        "FROM llm_calls WHERE ts >= ?1 AND (?2 IS NULL OR caller_kind = ?2) ORDER BY seq DESC LIMIT ?3";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_int64(st, 1, since_ms);
    sqlite3_bind_text(st, 2, caller_kind, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, limit);
    buf_puts(out, "{\"items\":[");
    int rc, n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n++)
            buf_puts(out, ",");
        buf_append(out, sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0));
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    buf_puts(out, "]}");
    ret = 0;
done:
    sqlite3_finalize(st);
    sqlite_read_release(s, db);
    return ret;
}

static void *writer_main(void *arg)
{
    sqlite_store *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->q.mu);
        while (!s->q.queue_head && !s->q.stopping)
            pthread_cond_wait(&s->q.cond, &s->q.mu);
        size_t items;
        store_write *batch = store_wqueue_take_locked(&s->q, &items);
        bool stop = s->q.stopping && !batch;
        pthread_mutex_unlock(&s->q.mu);
        if (stop)
            break;

        int64_t received = now_ms();
        uint64_t began = mono_ns();
        char err[256] = "";
        int rc = exec_sql(s->wdb, "BEGIN IMMEDIATE", err, sizeof err);
        for (store_write *w = batch; rc == SQLITE_OK && w; w = w->next)
            rc = apply_write(s, w, received);
        if (rc == SQLITE_OK)
            rc = exec_sql(s->wdb, "COMMIT", err, sizeof err);
        if (rc != SQLITE_OK) {
            log_error("store", "commit failed, %zu writes not stored: %s", items,
                      err[0] ? err : sqlite3_errmsg(s->wdb));
            char ignored[64];
            exec_sql(s->wdb, "ROLLBACK", ignored, sizeof ignored);
            for (store_write *w = batch; w; w = w->next)
                store_write_fail(w, rc);
        }

        size_t nwrites = 0;
        for (store_write *w = batch; w; w = w->next)
            nwrites++;
        pthread_mutex_lock(&s->q.mu);
        s->healthy = rc == SQLITE_OK;
        if (rc == SQLITE_OK) {
            s->commits++;
            s->writes_committed += nwrites;
            s->items_committed += items;
            metrics_observe(&s->commit_seconds, (double)(mono_ns() - began) / 1e9);
        } else {
            s->commit_failures++;
        }
        store_wqueue_done_locked(&s->q, batch);
        pthread_mutex_unlock(&s->q.mu);
        uv_async_send(&s->done_async);
    }
    return NULL;
}

/* ---- reads ---- */

/* A stored trace body is the client's JSON as sent (or re-encoded); the
 * canonical id and timestamp are columns. Reads return the body with those
 * put in and any inline feedback (kept as feedback rows) taken out. */
#define VERDICT_SQL                                                                                  \
    "CASE WHEN verdict = 1 OR negative = 1 THEN 'fail' WHEN verdict = 0 THEN 'pass' "                   \
    "WHEN verdict = 2 THEN 'error' ELSE 'unevaluated' END"
#define TRACE_JSON_SQL                                                                               \
    "json_remove(json_set(body, '$.id', id, '$.timestamp', "                                          \
    "printf('%s.%03dZ', strftime('%Y-%m-%dT%H:%M:%S', ts / 1000, 'unixepoch'), ts % 1000), "          \
    "'$.verdict', " VERDICT_SQL "), '$.feedback')"

sqlite3 *sqlite_read_acquire(sqlite_store *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->read_mu);
    sqlite3 *db = s->read_free ? s->read_pool[--s->read_free] : NULL;
    pthread_mutex_unlock(&s->read_mu);
    if (db)
        return db;
    if (sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open a read connection: %s", db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    return db;
}

void sqlite_read_release(sqlite_store *s, sqlite3 *db)
{
    pthread_mutex_lock(&s->read_mu);
    if (s->read_free < READ_POOL_MAX) {
        s->read_pool[s->read_free++] = db;
        db = NULL;
    }
    pthread_mutex_unlock(&s->read_mu);
    if (db)
        sqlite3_close(db);
}

/* trace.scores = [{evaluator, script, version, required, status, pass, score, reason, evaluated_at}] */
static int add_scores(sqlite3 *db, const char *id, json_t *trace, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT evaluator, script, version, required, status, pass, score, reason, ts "
                               "FROM scores WHERE trace_id = ?1 ORDER BY evaluator", -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    json_t *arr = json_array();
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char when[32];
        rfc3339_format(sqlite3_column_int64(st, 8), when);
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:b, s:s, s:b, s:f, s:s, s:s}",
            "evaluator", (const char *)sqlite3_column_text(st, 0), "script", (const char *)sqlite3_column_text(st, 1),
            "version", (const char *)sqlite3_column_text(st, 2), "required", sqlite3_column_int(st, 3),
            "status", (const char *)sqlite3_column_text(st, 4), "pass", sqlite3_column_int(st, 5),
            "score", sqlite3_column_double(st, 6), "reason", (const char *)sqlite3_column_text(st, 7),
            "evaluated_at", when));
    }
    json_object_set_new(trace, "scores", arr);
    if (rc != SQLITE_DONE)
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int sqlite_get_trace_json(store *base, const char *id, buf_t *out, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db = sqlite_read_acquire(s, err, errlen);
    if (!db)
        return -1;
    int ret = -1;
    sqlite3_stmt *st = NULL, *fst = NULL;
    json_t *trace = NULL;
    if (sqlite3_prepare_v2(db, "SELECT " TRACE_JSON_SQL ", received_at FROM traces WHERE id = ?1", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT body FROM feedback WHERE trace_id = ?1 ORDER BY seq", -1, &fst, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        ret = 1;
        goto done;
    }
    if (rc != SQLITE_ROW) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    json_error_t jerr;
    trace = json_loadb((const char *)sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0), 0, &jerr);
    if (!trace) {
        snprintf(err, errlen, "stored trace '%s' is not valid JSON: %s", id, jerr.text);
        goto done;
    }
    char when[32];
    rfc3339_format(sqlite3_column_int64(st, 1), when);
    json_object_set_new(trace, "received_at", json_string(when));

    json_t *fb = json_array();
    sqlite3_bind_text(fst, 1, id, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(fst)) == SQLITE_ROW) {
        json_t *f = json_loadb((const char *)sqlite3_column_text(fst, 0), (size_t)sqlite3_column_bytes(fst, 0), 0, &jerr);
        if (f)
            json_array_append_new(fb, f);
    }
    json_object_set_new(trace, "feedback", fb);
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    if (add_scores(db, id, trace, err, errlen) != 0)
        goto done;
    char *text = jtree_dump_text(trace, false); /* 0.1 as it came in, not 0.10000000000000001 */
    buf_puts(out, text);
    free(text);
    ret = 0;

done:
    json_decref(trace);
    sqlite3_finalize(st);
    sqlite3_finalize(fst);
    sqlite_read_release(s, db);
    return ret;
}

int sqlite_list_traces_json(store *base, const store_trace_query *q, buf_t *out, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db = sqlite_read_acquire(s, err, errlen);
    if (!db)
        return -1;
    buf_t sql;
    buf_init(&sql);
    if (q->tag) {
        /* along the tag's rows, newest first: (tag, prompt, ts, seq) or (tag, ts, seq) */
        buf_puts(&sql, "SELECT " TRACE_JSON_SQL ", ts, seq FROM trace_tags CROSS JOIN traces ON traces.seq = tag_seq "
                       "WHERE tag = ?10 AND tag_ts >= ?1 AND tag_ts < ?2");
        if (q->prompt)
            buf_puts(&sql, " AND tag_prompt = ?3");
        if (q->has_cursor)
            buf_puts(&sql, " AND (tag_ts, tag_seq) < (?5, ?6)");
    } else {
        buf_puts(&sql, "SELECT " TRACE_JSON_SQL ", ts, seq FROM traces WHERE ts >= ?1 AND ts < ?2");
        if (q->prompt)
            buf_puts(&sql, " AND prompt = ?3");
        if (q->has_cursor)
            buf_puts(&sql, " AND (ts, seq) < (?5, ?6)");
    }
    if (q->version)
        buf_puts(&sql, " AND version = ?4");
    if (q->failed == 1)
        buf_puts(&sql, " AND (verdict = 1 OR negative = 1)");
    else if (q->failed == 0)
        buf_puts(&sql, " AND NOT (verdict = 1 OR negative = 1)");
    /* the filters below test each trace the range and index give, newest
     * first, until a page is full: a rare match reads further (docs/api.md) */
    if (q->evaluator)
        buf_puts(&sql, " AND EXISTS (SELECT 1 FROM scores sc WHERE sc.trace_id = traces.id AND sc.evaluator = ?8"
                       " AND sc.pass = 0)");
    if (q->feedback == 1)
        buf_puts(&sql, " AND negative = 1");
    else if (q->feedback == 2)
        buf_puts(&sql, " AND EXISTS (SELECT 1 FROM feedback f WHERE f.trace_id = traces.id)");
    if (q->text)
        buf_puts(&sql, " AND instr(body, ?9) > 0");
    buf_puts(&sql, q->tag ? " ORDER BY tag_ts DESC, tag_seq DESC LIMIT ?7" : " ORDER BY ts DESC, seq DESC LIMIT ?7");
    sqlite3_stmt *st = NULL;
    int ret = -1;
    if (sqlite3_prepare_v2(db, sql.data, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_int64(st, 1, q->since_ms);
    sqlite3_bind_int64(st, 2, q->until_ms);
    if (q->prompt)
        sqlite3_bind_text(st, 3, q->prompt, -1, SQLITE_STATIC);
    if (q->version)
        sqlite3_bind_int64(st, 4, q->version);
    if (q->has_cursor) {
        sqlite3_bind_int64(st, 5, q->cursor_ts);
        sqlite3_bind_int64(st, 6, q->cursor_seq);
    }
    sqlite3_bind_int(st, 7, q->limit + 1); /* one more tells whether a next page exists */
    if (q->evaluator)
        sqlite3_bind_text(st, 8, q->evaluator, -1, SQLITE_STATIC);
    if (q->text)
        sqlite3_bind_text(st, 9, q->text, -1, SQLITE_STATIC);
    if (q->tag)
        sqlite3_bind_text(st, 10, q->tag, -1, SQLITE_STATIC);

    buf_puts(out, "{\"items\":[");
    int n = 0, rc;
    int64_t last_ts = 0, last_seq = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == q->limit) {
            n++;
            break;
        }
        if (n)
            buf_puts(out, ",");
        buf_append(out, sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0));
        last_ts = sqlite3_column_int64(st, 1);
        last_seq = sqlite3_column_int64(st, 2);
        n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    if (n > q->limit)
        buf_printf(out, "],\"next_cursor\":\"%llx.%llx\"}", (unsigned long long)last_ts,
                   (unsigned long long)last_seq);
    else
        buf_puts(out, "],\"next_cursor\":null}");
    ret = 0;
done:
    sqlite3_finalize(st);
    buf_free(&sql);
    sqlite_read_release(s, db);
    return ret;
}

/* The body with feedback as evaluators see it: case.trace. */
int sqlite_get_trace_parts(store *base, char *const *ids, size_t n, char **bodies, char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    for (size_t i = 0; i < n; i++)
        bodies[i] = NULL;
    sqlite3 *db = sqlite_read_acquire(s, err, errlen);
    if (!db)
        return -1;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    if (sqlite3_prepare_v2(db, "SELECT body FROM trace_parts WHERE id = ?1", -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(st, 1, ids[i], -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            bodies[i] = xstrdup((const char *)sqlite3_column_text(st, 0));
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            snprintf(err, errlen, "%s", sqlite3_errmsg(db));
            for (size_t k = 0; k <= i; k++) {
                free(bodies[k]);
                bodies[k] = NULL;
            }
            goto done;
        }
    }
    ret = 0;
done:
    sqlite3_finalize(st);
    sqlite_read_release(s, db);
    return ret;
}

int sqlite_get_traces_for_eval(store *base, char *const *ids, size_t n, char **json, char **prompt, int64_t *version,
                              char *err, size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3 *db = sqlite_read_acquire(s, err, errlen);
    if (!db)
        return -1;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    const char *sql =
        "SELECT json_set(" TRACE_JSON_SQL ", '$.feedback', "
        "  json((SELECT json_group_array(json(f.body)) FROM (SELECT body FROM feedback WHERE trace_id = ?1 "
        "        ORDER BY seq) AS f))), prompt, version "
        "FROM traces WHERE id = ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json[i] = prompt[i] = NULL;
        version[i] = 0;
        sqlite3_bind_text(st, 1, ids[i], -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            json[i] = xstrdup((const char *)sqlite3_column_text(st, 0));
            prompt[i] = xstrdup((const char *)sqlite3_column_text(st, 1));
            version[i] = sqlite3_column_int64(st, 2);
        }
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            snprintf(err, errlen, "%s", sqlite3_errmsg(db));
            for (size_t k = 0; k <= i; k++) {
                free(json[k]);
                free(prompt[k]);
                json[k] = prompt[k] = NULL;
            }
            goto done;
        }
    }
    ret = 0;
done:
    sqlite3_finalize(st);
    sqlite_read_release(s, db);
    return ret;
}

int sqlite_list_trace_ids(store *base, const char *prompt, int64_t since_ms, int64_t until_ms, bool only_unevaluated,
                         int64_t *cur_ts, int64_t *cur_seq, int limit, char ***ids, size_t *n, char *err,
                         size_t errlen)
{
    sqlite_store *s = (sqlite_store *)base;
    *ids = NULL;
    *n = 0;
    sqlite3 *db = sqlite_read_acquire(s, err, errlen);
    if (!db)
        return -1;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    const char *sql = "SELECT ts, seq, id FROM traces WHERE prompt = ?1 AND ts >= ?2 AND ts < ?3 AND "
                      "(ts, seq) > (?4, ?6) AND (?7 = 0 OR verdict IS NULL) ORDER BY ts, seq LIMIT ?5";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_text(st, 1, prompt, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, since_ms);
    sqlite3_bind_int64(st, 3, until_ms);
    sqlite3_bind_int64(st, 4, *cur_ts);
    sqlite3_bind_int(st, 5, limit);
    sqlite3_bind_int64(st, 6, *cur_seq);
    sqlite3_bind_int(st, 7, only_unevaluated);
    *ids = xcalloc((size_t)limit, sizeof **ids);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        *cur_ts = sqlite3_column_int64(st, 0);
        *cur_seq = sqlite3_column_int64(st, 1);
        (*ids)[(*n)++] = xstrdup((const char *)sqlite3_column_text(st, 2));
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    ret = 0;
done:
    sqlite3_finalize(st);
    sqlite_read_release(s, db);
    return ret;
}

static const store_backend sqlite_backend = {
    .name = "sqlite",
    .metrics = sqlite_metrics,
    .flush = sqlite_flush,
    .close = sqlite_close,
    .submit = sqlite_submit,
    .healthy = sqlite_healthy,
    .get_trace_json = sqlite_get_trace_json,
    .list_traces_json = sqlite_list_traces_json,
    .get_traces_for_eval = sqlite_get_traces_for_eval,
    .get_trace_parts = sqlite_get_trace_parts,
    .list_trace_ids = sqlite_list_trace_ids,
    .llm_totals = sqlite_llm_totals,
    .list_llm_calls_json = sqlite_list_llm_calls_json,
    .load_registry = sqlite_load_registry,
    .list_transitions_json = sqlite_list_transitions_json,
    .dataset_cases = sqlite_dataset_cases,
    .select_traces = sqlite_select_traces,
    .dataset_versions = sqlite_dataset_versions,
    .failed_trace_cases = sqlite_failed_trace_cases,
    .passed_trace_cases = sqlite_passed_trace_cases,
    .cache_get = sqlite_cache_get,
    .get_run = sqlite_get_run,
    .list_runs = sqlite_list_runs,
    .unfinished_runs = sqlite_unfinished_runs,
    .run_cases = sqlite_run_cases,
    .run_result_keys = sqlite_run_result_keys,
    .run_results = sqlite_run_results,
    .load_loop_states = sqlite_load_loop_states,
    .list_loop_events = sqlite_list_loop_events,
    .prompt_metrics_sliced = sqlite_prompt_metrics_sliced,
    .prompt_series = sqlite_prompt_series,
};
