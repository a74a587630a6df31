/* pg.c — the store on PostgreSQL: schema migrations, the group-commit writer thread, the
 * read-connection pool, and the reads of traces and the ledger. Nothing here runs SQL on the
 * loop thread: the writer thread owns one blocking connection (BEGIN, every pending write,
 * COMMIT with synchronous_commit on, then the acks), and reads run on thread-pool threads on
 * connections of the pool. A lost connection fails the batch in flight (its acks say so) and
 * the writer reconnects with backoff; until it has, the store reports itself down. */
#include "store/store.h"

#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/jtree.h"
#include "base/log.h"
#include "base/metrics.h"
#include "store/pg_private.h"

#define PG_POOL_MAX 64
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000
#define IDLE_PING_S 1
#define CONNECT_TIMEOUT_MS 10000 /* the coordinator's connect (the DSN's connect_timeout is for blocking ones) */
/* Leases (docs/scale-out.md, "Leases"). Each side reads only its own clock: an engine's
 * heartbeat stores the database's now(), and the claims of other engines compare with the
 * database's now(); the owner measures its lease on its monotonic clock from the moment it sent
 * the last heartbeat that committed. The owner stops starting LLM calls for the work it owns at
 * LEASE_MS - LEASE_MARGIN_MS, the others claim that work only at LEASE_MS: the margin covers the
 * rate difference of the two clocks over one lease (5 s in 15 s: a third) and nothing else is
 * assumed (no synchronized clocks; a database clock stepped forward by more than the margin
 * would break it). */
#define COORD_MS 500          /* the coordinator's beat: leader lock tries, heartbeats */
#define ENGINE_STALE_MS 15000 /* LEASE_MS: no heartbeat for this long (database clock): the engine is gone */
#define LEASE_MARGIN_MS 5000  /* the owner stops this much earlier (its monotonic clock) */
#define LEADER_LOCK 0x72617464 /* pg_try_advisory_lock key of the loop leader */
/* retention on PostgreSQL: ids (and their scores, feedback) of dropped days deleted per pass,
 * as a multiple of the rows SQLite deletes (the traces themselves go a day at a time) */
#define PG_RETENTION_ID_FACTOR 10
#define CLAIM_LOCK 0x72617465  /* pg_advisory_xact_lock key: claims and re-claims of owned work, one at a time */
/* the database's clock in ms, as heartbeats store it and claims compare with it */
#define DB_NOW_MS "(extract(epoch from now()) * 1000)::bigint"

struct pg_store {
    store base; /* first: the seam (store/backend.h) */
    uv_loop_t *loop;
    char *dsn;
    PGconn *wconn;
    bool prepared;             /* ins_trace is prepared on wconn */
    pthread_t writer;
    store_wqueue q;          /* the writer's queue; q.mu guards the fields marked "under mu" */
    bool healthy;            /* the writer's connection is up and its last commit succeeded */
    char last_error[256];    /* why not, under mu */
    uint64_t commits, commit_failures, writes_committed, items_committed, reconnects;
    metrics_hist commit_seconds;
    uv_async_t done_async;
    pthread_mutex_t read_mu;
    PGconn *read_pool[PG_POOL_MAX];
    int read_free, read_max;
    int read_timeout_ms;       /* each read's deadline (store.read_timeout_ms); 0: none */
    /* the coordinator's session on the loop thread: the leader lock, heartbeats, LISTEN */
    char engine_id[96];
    int64_t started_ms;
    PGconn *cconn;
    uv_poll_t *co_poll;        /* on PQsocket(cconn); a new one after a reconnect */
    uv_timer_t co_timer;       /* the beat */
    int co_state, co_step, co_next;
    int co_backoff_ms;
    uint64_t co_retry_at;      /* uv_now() of the next connect when down */
    uint64_t co_connect_at;    /* uv_now() when the connect under way started */
    int co_fd;                 /* the socket co_poll watches */
    uint64_t co_sent;          /* mono_ns() when the heartbeat in flight was sent */
    char co_vals[4][128];
    char *co_scripts;
    const char *co_params[4];
    bool leader;               /* under mu */
    uint64_t lease_ns;         /* under mu: mono_ns() when the last committed heartbeat was sent; 0: none */
    uint64_t lease_gen;        /* under mu: lapses so far (store_lease_generation) */
    int64_t epoch;             /* under mu: the leadership epoch held */
    bool tell_leadership, tell_registry; /* under mu: for the loop thread */
    uv_async_t cluster_async;
    store_cluster_cb cluster_fn;
    void *cluster_data;
    char *scripts;             /* under mu: JSON of this engine's scripts */
    json_t *engines;           /* under mu: the heartbeat table as last read */
    pg_parts parts;            /* the daily partitions of traces (pg_partitions.c) */
};

/* Each entry brings the schema from version i to i+1. Never edit one that has shipped;
 * append a new one. The same tables as SQLite's migrations 1-5, in PostgreSQL's types:
 * bodies of traces and feedback are json (kept as sent, queried with -> and #>). */
static const char *const migrations[] = {
    "CREATE TABLE traces ("
    "  seq BIGSERIAL PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  prompt TEXT NOT NULL,"
    "  version BIGINT,"
    "  ts BIGINT NOT NULL,"
    "  received_at BIGINT NOT NULL,"
    "  retry_of TEXT,"
    "  body JSON NOT NULL,"
    "  verdict BIGINT,"
    "  negative BIGINT NOT NULL DEFAULT 0"
    ");"
    "CREATE INDEX traces_by_prompt ON traces(prompt, ts, seq);"
    "CREATE INDEX traces_by_ts ON traces(ts, seq);"
    "CREATE INDEX traces_failed_by_prompt ON traces(prompt, ts, seq) WHERE verdict = 1 OR negative = 1;"
    "CREATE INDEX traces_failed_by_ts ON traces(ts, seq) WHERE verdict = 1 OR negative = 1;"
    "CREATE TABLE feedback ("
    "  seq BIGSERIAL PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  trace_id TEXT NOT NULL,"
    "  source TEXT NOT NULL,"
    "  thumbs BIGINT,"
    "  ts BIGINT NOT NULL,"
    "  body JSON NOT NULL"
    ");"
    "CREATE INDEX feedback_by_trace ON feedback(trace_id);"
    "CREATE TABLE scores ("
    "  trace_id TEXT NOT NULL,"
    "  evaluator TEXT NOT NULL,"
    "  script TEXT NOT NULL,"
    "  version TEXT NOT NULL,"
    "  required BIGINT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  pass BIGINT NOT NULL,"
    "  score DOUBLE PRECISION NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  ts BIGINT NOT NULL,"
    "  PRIMARY KEY (trace_id, evaluator)"
    ");"
    "CREATE TABLE llm_calls ("
    "  seq BIGSERIAL PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  ts BIGINT NOT NULL,"
    "  caller_kind TEXT NOT NULL,"
    "  caller TEXT NOT NULL,"
    "  run_id TEXT,"
    "  provider TEXT NOT NULL,"
    "  model TEXT NOT NULL,"
    "  input_tokens BIGINT NOT NULL,"
    "  output_tokens BIGINT NOT NULL,"
    "  cost DOUBLE PRECISION NOT NULL,"
    "  attempts BIGINT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  error TEXT,"
    "  latency_ms DOUBLE PRECISION NOT NULL,"
    "  request_id TEXT"
    ");"
    "CREATE INDEX llm_calls_by_ts ON llm_calls(ts);"
    "CREATE INDEX llm_calls_by_run ON llm_calls(run_id, ts) WHERE run_id IS NOT NULL;"
    "CREATE TABLE prompts ("
    "  name TEXT PRIMARY KEY,"
    "  description TEXT NOT NULL,"
    "  created_at BIGINT NOT NULL,"
    "  pinned BIGINT NOT NULL,"
    "  pin_reason TEXT,"
    "  canary_share DOUBLE PRECISION NOT NULL"
    ");"
    "CREATE TABLE prompt_versions ("
    "  prompt TEXT NOT NULL,"
    "  version BIGINT NOT NULL,"
    "  messages TEXT NOT NULL,"
    "  model TEXT NOT NULL,"
    "  parent BIGINT,"
    "  author TEXT NOT NULL,"
    "  note TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  created_at BIGINT NOT NULL,"
    "  PRIMARY KEY (prompt, version)"
    ");"
    "CREATE TABLE prompt_labels ("
    "  prompt TEXT NOT NULL, label TEXT NOT NULL, version BIGINT NOT NULL,"
    "  PRIMARY KEY (prompt, label)"
    ");"
    "CREATE TABLE transitions ("
    "  seq BIGSERIAL PRIMARY KEY,"
    "  prompt TEXT NOT NULL,"
    "  version BIGINT,"
    "  from_status TEXT,"
    "  to_status TEXT NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  actor TEXT NOT NULL,"
    "  ts BIGINT NOT NULL"
    ");"
    "CREATE INDEX transitions_by_prompt ON transitions(prompt, seq);"
    "CREATE TABLE datasets ("
    "  name TEXT PRIMARY KEY,"
    "  description TEXT NOT NULL,"
    "  version BIGINT NOT NULL,"
    "  cases BIGINT NOT NULL,"
    "  created_at BIGINT NOT NULL,"
    "  updated_at BIGINT NOT NULL"
    ");"
    "CREATE TABLE dataset_cases ("
    "  dataset TEXT NOT NULL,"
    "  id TEXT NOT NULL,"
    "  added BIGINT NOT NULL,"
    "  removed BIGINT,"
    "  body TEXT NOT NULL,"
    "  PRIMARY KEY (dataset, id, added)"
    ");"
    "CREATE TABLE runs ("
    "  id TEXT PRIMARY KEY,"
    "  kind TEXT NOT NULL,"
    "  prompt TEXT NOT NULL,"
    "  spec TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  verdict TEXT,"
    "  report TEXT,"
    "  error TEXT,"
    "  created_at BIGINT NOT NULL,"
    "  finished_at BIGINT"
    ");"
    "CREATE INDEX runs_by_prompt ON runs(prompt, created_at);"
    "CREATE TABLE run_cases ("
    "  run_id TEXT NOT NULL,"
    "  idx BIGINT NOT NULL,"
    "  body TEXT NOT NULL,"
    "  PRIMARY KEY (run_id, idx)"
    ");"
    "CREATE TABLE run_results ("
    "  run_id TEXT NOT NULL,"
    "  case_idx BIGINT NOT NULL,"
    "  version BIGINT NOT NULL,"
    "  sample BIGINT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  output TEXT,"
    "  error TEXT,"
    "  verdicts TEXT,"
    "  input_tokens BIGINT NOT NULL,"
    "  output_tokens BIGINT NOT NULL,"
    "  cost DOUBLE PRECISION NOT NULL,"
    "  latency_ms DOUBLE PRECISION NOT NULL,"
    "  cached BIGINT NOT NULL,"
    "  PRIMARY KEY (run_id, case_idx, version, sample)"
    ");"
    "CREATE TABLE result_cache ("
    "  key TEXT PRIMARY KEY,"
    "  result TEXT NOT NULL,"
    "  created_at BIGINT NOT NULL"
    ");"
    "CREATE TABLE loop_state ("
    "  prompt TEXT PRIMARY KEY,"
    "  state TEXT NOT NULL,"
    "  cycle TEXT,"
    "  run_id TEXT,"
    "  version BIGINT,"
    "  step BIGINT NOT NULL,"
    "  step_started BIGINT,"
    "  canary_started BIGINT,"
    "  last_cycle_at BIGINT,"
    "  updated_at BIGINT NOT NULL,"
    "  detail TEXT"
    ");"
    "CREATE TABLE loop_events ("
    "  seq BIGSERIAL PRIMARY KEY,"
    "  prompt TEXT NOT NULL,"
    "  ts BIGINT NOT NULL,"
    "  cycle TEXT,"
    "  kind TEXT NOT NULL,"
    "  message TEXT NOT NULL,"
    "  detail TEXT"
    ");"
    "CREATE INDEX loop_events_by_prompt ON loop_events(prompt, seq);",

    /* 2: several engines: the leadership epoch (fencing) and the engines' heartbeats */
    "CREATE TABLE ratchet_leader ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  epoch BIGINT NOT NULL,"
    "  engine TEXT,"
    "  since BIGINT"
    ");"
    "INSERT INTO ratchet_leader VALUES (1, 0, NULL, NULL);"
    "CREATE TABLE ratchet_engines ("
    "  id TEXT PRIMARY KEY,"
    "  role TEXT NOT NULL,"
    "  scripts TEXT,"
    "  started_at BIGINT NOT NULL,"
    "  last_seen BIGINT NOT NULL"
    ");",

    /* 3: the daily LLM budgets every engine claims from before a call */
    "CREATE TABLE ratchet_budget ("
    "  day TEXT PRIMARY KEY,"
    "  calls DOUBLE PRECISION NOT NULL,"
    "  tokens DOUBLE PRECISION NOT NULL,"
    "  cost DOUBLE PRECISION NOT NULL"
    ");",

    /* 4: parts of traces that arrived before their trace (SQLite's migration 6) */
    "CREATE TABLE trace_parts ("
    "  id TEXT PRIMARY KEY,"
    "  ts BIGINT NOT NULL,"
    "  body TEXT NOT NULL"
    ");"
    "CREATE INDEX trace_parts_by_ts ON trace_parts(ts);",

    /* 5: the engine that executes a run (ratchet_engines.id): the writer's session says who
     * it is (ratchet.engine, set at connect), so the shared INSERT of a run records it; runs
     * from before stay NULL, i.e. owned by no live engine (docs/scale-out.md, "Runs") */
    "ALTER TABLE runs ADD COLUMN owner TEXT;"
    "ALTER TABLE runs ALTER COLUMN owner SET DEFAULT current_setting('ratchet.engine', true);",

    /* 6: the engine that evaluates a trace online (the one that took it, or the leader that
     * claimed it after that one was gone); traces from before: NULL, claimed once */
    "ALTER TABLE traces ADD COLUMN engine TEXT;"
    "ALTER TABLE traces ALTER COLUMN engine SET DEFAULT current_setting('ratchet.engine', true);"
    "CREATE INDEX traces_unevaluated ON traces(prompt, seq) WHERE verdict IS NULL;",

    /* 7: traces in daily range partitions by ts (dropped whole by store.retention_days), and the
     * id table that keeps the dedup exact across them (a partitioned table's unique keys must
     * hold the partition key). The rows move in this transaction: partitions for the days of
     * the last PG_PARTS_PAST_DAYS and PG_PARTS_AHEAD_DAYS ahead that have rows, yesterday's to
     * PG_PARTS_AHEAD_DAYS ahead, every other ts in traces_default (docs/scale-out.md) */
    "CREATE TABLE trace_ids (id TEXT PRIMARY KEY, ts BIGINT NOT NULL);"
    "INSERT INTO trace_ids(id, ts) SELECT id, ts FROM traces;"
    "CREATE INDEX trace_ids_by_ts ON trace_ids(ts, id);"
    "ALTER SEQUENCE traces_seq_seq OWNED BY NONE;"
    "ALTER TABLE traces RENAME TO traces_unpartitioned;"
    "CREATE TABLE traces_partitioned ("
    "  seq BIGINT NOT NULL DEFAULT nextval('traces_seq_seq'),"
    "  id TEXT NOT NULL,"
    "  prompt TEXT NOT NULL,"
    "  version BIGINT,"
    "  ts BIGINT NOT NULL,"
    "  received_at BIGINT NOT NULL,"
    "  retry_of TEXT,"
    "  body JSON NOT NULL,"
    "  verdict BIGINT,"
    "  negative BIGINT NOT NULL DEFAULT 0,"
    "  engine TEXT DEFAULT current_setting('ratchet.engine', true)"
    ") PARTITION BY RANGE (ts);"
    "CREATE TABLE traces_default PARTITION OF traces_partitioned DEFAULT;"
    "DO $$ DECLARE today BIGINT := floor(extract(epoch FROM now()) / 86400)::bigint; d BIGINT; BEGIN"
    "  FOR d IN SELECT DISTINCT floor(ts / 86400000.0)::bigint FROM traces_unpartitioned"
    "           WHERE ts >= (today - 366) * 86400000 AND ts < (today + 4) * 86400000"
    "           UNION SELECT generate_series(today - 1, today + 3) LOOP"
    "    EXECUTE format('CREATE TABLE %I PARTITION OF traces_partitioned FOR VALUES FROM (%s) TO (%s)',"
    "                   'traces_p' || to_char(date '1970-01-01' + d::int, 'YYYYMMDD'), d * 86400000, (d + 1) * 86400000);"
    "  END LOOP; END $$;"
    "INSERT INTO traces_partitioned SELECT seq, id, prompt, version, ts, received_at, retry_of, body, verdict, negative,"
    "  engine FROM traces_unpartitioned;"
    "DROP TABLE traces_unpartitioned;"
    "ALTER TABLE traces_partitioned RENAME TO traces;"
    "ALTER SEQUENCE traces_seq_seq OWNED BY traces.seq;"
    "CREATE INDEX traces_by_prompt ON traces(prompt, ts, seq);"
    "CREATE INDEX traces_by_ts ON traces(ts, seq);"
    "CREATE INDEX traces_failed_by_prompt ON traces(prompt, ts, seq) WHERE verdict = 1 OR negative = 1;"
    "CREATE INDEX traces_failed_by_ts ON traces(ts, seq) WHERE verdict = 1 OR negative = 1;"
    "CREATE INDEX traces_unevaluated ON traces(prompt, seq) WHERE verdict IS NULL;",

    /* 8: per-minute rollups of the online figures (SQLite's migration 7; pg_loop.c reads them):
     * trace_minutes per (prompt, version, minute), score_minutes per evaluator too, the same
     * columns and meaning. Several engines write the same minute rows at once, so nothing
     * updates them during a transaction: what changes them (the writer's batch of new traces,
     * the row triggers on traces and scores for verdicts, negative feedback, scores replaced,
     * trace parts joined, deletions) goes to the *_changes tables, rows no other transaction
     * sees, and a deferred trigger folds them at COMMIT into the rollups in one upsert per
     * table, ordered by key. Every transaction thus takes its rollup row locks last and in
     * one order: two engines wait for each other's commit, never in a cycle, and the
     * increments are applied to the row as committed (ON CONFLICT DO UPDATE re-reads it).
     * The migration fills them from what is stored. version 0: a trace that names none. */
    "CREATE TABLE trace_minutes ("
    "  prompt TEXT NOT NULL,"
    "  version BIGINT NOT NULL,"
    "  minute BIGINT NOT NULL,"     /* ts / 60000 */
    "  traces BIGINT NOT NULL,"
    "  evaluated BIGINT NOT NULL,"
    "  passed BIGINT NOT NULL,"     /* verdict pass and no negative feedback */
    "  failures BIGINT NOT NULL,"   /* verdict fail or negative feedback */
    "  errors BIGINT NOT NULL,"
    "  negative BIGINT NOT NULL,"
    "  retries BIGINT NOT NULL,"
    "  latency_sum DOUBLE PRECISION NOT NULL, latency_n BIGINT NOT NULL,"
    "  cost_sum DOUBLE PRECISION NOT NULL, cost_n BIGINT NOT NULL,"
    "  tokens_sum DOUBLE PRECISION NOT NULL, tokens_n BIGINT NOT NULL,"
    "  PRIMARY KEY (prompt, version, minute)"
    ");"
    "CREATE TABLE score_minutes ("
    "  prompt TEXT NOT NULL,"
    "  version BIGINT NOT NULL,"
    "  minute BIGINT NOT NULL,"
    "  evaluator TEXT NOT NULL,"
    "  n BIGINT NOT NULL,"
    "  passed BIGINT NOT NULL,"
    "  failures BIGINT NOT NULL,"
    "  errors BIGINT NOT NULL,"
    "  required BIGINT NOT NULL,"   /* how many of the n were required */
    "  PRIMARY KEY (prompt, version, minute, evaluator)"
    ");"
    "CREATE INDEX trace_minutes_by_minute ON trace_minutes(prompt, minute);"
    "CREATE INDEX score_minutes_by_minute ON score_minutes(prompt, minute);"
    /* a transaction's changes until its commit: never kept past it, so not logged */
    "CREATE UNLOGGED TABLE trace_minute_changes (LIKE trace_minutes);"
    "CREATE UNLOGGED TABLE score_minute_changes (LIKE score_minutes);"
#define NUM(R, PATH) "(CASE WHEN json_typeof(" R " #> '" PATH "') = 'number' THEN (" R " #>> '" PATH "')::float8 END)"
#define TOKENS(R) "(" NUM(R, "{usage,input_tokens}") " + " NUM(R, "{usage,output_tokens}") ")"
#define IS(COND) "coalesce(" COND ", false)::int"
    /* a trace's contribution, added (a_sign 1) or taken away (-1) */
    "CREATE FUNCTION ratchet_trace_minute(a_prompt text, a_version bigint, a_ts bigint, a_verdict bigint, "
    "  a_negative bigint, a_retry_of text, a_body json, a_sign int) RETURNS void LANGUAGE sql AS $f$ "
    "INSERT INTO trace_minute_changes VALUES (a_prompt, coalesce(a_version, 0), a_ts / 60000, a_sign, "
    "  a_sign * (a_verdict IS NOT NULL)::int, a_sign * " IS("a_verdict = 0 AND a_negative = 0") ", "
    "  a_sign * " IS("a_verdict = 1 OR a_negative = 1") ", a_sign * " IS("a_verdict = 2") ", a_sign * a_negative, "
    "  a_sign * (a_retry_of IS NOT NULL)::int, "
    "  a_sign * coalesce(" NUM("a_body", "{latency_ms}") ", 0), a_sign * (" NUM("a_body", "{latency_ms}") " IS NOT NULL)::int, "
    "  a_sign * coalesce(" NUM("a_body", "{usage,cost_usd}") ", 0), "
    "  a_sign * (" NUM("a_body", "{usage,cost_usd}") " IS NOT NULL)::int, "
    "  a_sign * coalesce(" TOKENS("a_body") ", 0), a_sign * (" TOKENS("a_body") " IS NOT NULL)::int) $f$;"
    /* the scores of a trace, counted under its prompt, version and minute */
    "CREATE FUNCTION ratchet_trace_scores(a_id text, a_prompt text, a_version bigint, a_ts bigint, a_sign int) "
    "  RETURNS void LANGUAGE sql AS $f$ "
    "INSERT INTO score_minute_changes SELECT a_prompt, coalesce(a_version, 0), a_ts / 60000, s.evaluator, "
    "  a_sign * count(*), a_sign * count(*) FILTER (WHERE s.status = 'ok' AND s.pass = 1), "
    "  a_sign * count(*) FILTER (WHERE s.status = 'ok' AND s.pass = 0), "
    "  a_sign * count(*) FILTER (WHERE s.status <> 'ok'), a_sign * count(*) FILTER (WHERE s.required <> 0) "
    "FROM scores s WHERE s.trace_id = a_id GROUP BY s.evaluator $f$;"
    /* a verdict or negative feedback on a trace that stays in its minute changes the counts
     * only: no body is parsed on an evaluation's write. (A trace stored: the writer adds its
     * batch's traces, one row per minute, not a trigger per trace.) */
    /* (ratchet.days set in a transaction: pg_partitions.c moves a day's rows between partitions
     * or drops a day with its rollups; its row changes are not the figures') */
    "CREATE FUNCTION ratchet_traces_changed() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
    "IF current_setting('ratchet.days', true) = 'on' THEN RETURN NULL; END IF; "
    "IF TG_OP = 'UPDATE' AND NEW.prompt = OLD.prompt AND NEW.version IS NOT DISTINCT FROM OLD.version "
    "   AND NEW.ts / 60000 = OLD.ts / 60000 AND NEW.body::text = OLD.body::text THEN "
    "  IF NEW.verdict IS NOT DISTINCT FROM OLD.verdict AND NEW.negative = OLD.negative "
    "     AND (NEW.retry_of IS NULL) = (OLD.retry_of IS NULL) THEN RETURN NULL; END IF; "
    "  INSERT INTO trace_minute_changes VALUES (NEW.prompt, coalesce(NEW.version, 0), NEW.ts / 60000, 0, "
    "    (NEW.verdict IS NOT NULL)::int - (OLD.verdict IS NOT NULL)::int, "
    "    " IS("NEW.verdict = 0 AND NEW.negative = 0") " - " IS("OLD.verdict = 0 AND OLD.negative = 0") ", "
    "    " IS("NEW.verdict = 1 OR NEW.negative = 1") " - " IS("OLD.verdict = 1 OR OLD.negative = 1") ", "
    "    " IS("NEW.verdict = 2") " - " IS("OLD.verdict = 2") ", NEW.negative - OLD.negative, "
    "    (NEW.retry_of IS NOT NULL)::int - (OLD.retry_of IS NOT NULL)::int, 0, 0, 0, 0, 0, 0); "
    "  RETURN NULL; "
    "END IF; "
    "PERFORM ratchet_trace_minute(OLD.prompt, OLD.version, OLD.ts, OLD.verdict, OLD.negative, OLD.retry_of, OLD.body, -1); "
    "IF TG_OP = 'UPDATE' THEN "
    "  PERFORM ratchet_trace_minute(NEW.prompt, NEW.version, NEW.ts, NEW.verdict, NEW.negative, NEW.retry_of, NEW.body, 1); "
    "END IF; "
    /* scores count through their trace: a trace moved or deleted takes its scores' figures */
    "IF TG_OP = 'DELETE' OR NOT (NEW.prompt = OLD.prompt AND NEW.version IS NOT DISTINCT FROM OLD.version "
    "   AND NEW.ts / 60000 = OLD.ts / 60000 AND NEW.id = OLD.id) THEN "
    "  PERFORM ratchet_trace_scores(OLD.id, OLD.prompt, OLD.version, OLD.ts, -1); "
    "  IF TG_OP = 'UPDATE' THEN PERFORM ratchet_trace_scores(NEW.id, NEW.prompt, NEW.version, NEW.ts, 1); END IF; "
    "END IF; "
    "RETURN NULL; END $f$;"
    "CREATE TRIGGER traces_rollups AFTER UPDATE OF id, prompt, version, ts, body, verdict, negative, retry_of "
    "  OR DELETE ON traces FOR EACH ROW EXECUTE FUNCTION ratchet_traces_changed();"
    /* a score stored, replaced or deleted, counted under its trace (none: nowhere, as the reads
     * join them) */
    "CREATE FUNCTION ratchet_score_minute(a_trace text, a_evaluator text, a_status text, a_pass bigint, "
    "  a_required bigint, a_sign int) RETURNS void LANGUAGE sql AS $f$ "
    "INSERT INTO score_minute_changes SELECT t.prompt, coalesce(t.version, 0), t.ts / 60000, a_evaluator, a_sign, "
    "  a_sign * (a_status = 'ok' AND a_pass = 1)::int, a_sign * (a_status = 'ok' AND a_pass = 0)::int, "
    "  a_sign * (a_status <> 'ok')::int, a_sign * (a_required <> 0)::int FROM traces t "
    /* one partition: the trace's day from the id table (traces has no index on id) */
    "  WHERE t.id = a_trace AND t.ts = (SELECT i.ts FROM trace_ids i WHERE i.id = a_trace) $f$;"
    "CREATE FUNCTION ratchet_scores_changed() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
    "IF TG_OP <> 'INSERT' THEN "
    "  PERFORM ratchet_score_minute(OLD.trace_id, OLD.evaluator, OLD.status, OLD.pass, OLD.required, -1); "
    "END IF; "
    "IF TG_OP <> 'DELETE' THEN "
    "  PERFORM ratchet_score_minute(NEW.trace_id, NEW.evaluator, NEW.status, NEW.pass, NEW.required, 1); "
    "END IF; "
    "RETURN NULL; END $f$;"
    "CREATE TRIGGER scores_rollups AFTER INSERT OR UPDATE OR DELETE ON scores "
    "  FOR EACH ROW EXECUTE FUNCTION ratchet_scores_changed();"
    /* the fold at COMMIT: the first deferred firing folds every change of the transaction
     * (the flag, local to it, says some are pending), the others find the flag off */
    "CREATE FUNCTION ratchet_rollups_pending() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
    "PERFORM set_config('ratchet.rollups_pending', 'on', true); RETURN NULL; END $f$;"
    "CREATE FUNCTION ratchet_rollups_fold() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
    "IF current_setting('ratchet.rollups_pending', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF; "
    "PERFORM set_config('ratchet.rollups_pending', 'off', true); "
    "WITH d AS (DELETE FROM trace_minute_changes RETURNING *) "
    "INSERT INTO trace_minutes AS m SELECT prompt, version, minute, sum(traces), sum(evaluated), sum(passed), "
    "  sum(failures), sum(errors), sum(negative), sum(retries), sum(latency_sum), sum(latency_n), sum(cost_sum), "
    "  sum(cost_n), sum(tokens_sum), sum(tokens_n) FROM d GROUP BY prompt, version, minute "
    "  ORDER BY prompt, version, minute "
    "ON CONFLICT (prompt, version, minute) DO UPDATE SET traces = m.traces + excluded.traces, "
    "  evaluated = m.evaluated + excluded.evaluated, passed = m.passed + excluded.passed, "
    "  failures = m.failures + excluded.failures, errors = m.errors + excluded.errors, "
    "  negative = m.negative + excluded.negative, retries = m.retries + excluded.retries, "
    "  latency_sum = m.latency_sum + excluded.latency_sum, latency_n = m.latency_n + excluded.latency_n, "
    "  cost_sum = m.cost_sum + excluded.cost_sum, cost_n = m.cost_n + excluded.cost_n, "
    "  tokens_sum = m.tokens_sum + excluded.tokens_sum, tokens_n = m.tokens_n + excluded.tokens_n; "
    "WITH d AS (DELETE FROM score_minute_changes RETURNING *) "
    "INSERT INTO score_minutes AS m SELECT prompt, version, minute, evaluator, sum(n), sum(passed), sum(failures), "
    "  sum(errors), sum(required) FROM d GROUP BY prompt, version, minute, evaluator "
    "  ORDER BY prompt, version, minute, evaluator "
    "ON CONFLICT (prompt, version, minute, evaluator) DO UPDATE SET n = m.n + excluded.n, "
    "  passed = m.passed + excluded.passed, failures = m.failures + excluded.failures, "
    "  errors = m.errors + excluded.errors, required = m.required + excluded.required; "
    "RETURN NULL; END $f$;"
    "CREATE TRIGGER trace_minute_changes_pending AFTER INSERT ON trace_minute_changes "
    "  FOR EACH STATEMENT EXECUTE FUNCTION ratchet_rollups_pending();"
    "CREATE TRIGGER score_minute_changes_pending AFTER INSERT ON score_minute_changes "
    "  FOR EACH STATEMENT EXECUTE FUNCTION ratchet_rollups_pending();"
    "CREATE CONSTRAINT TRIGGER trace_minute_changes_fold AFTER INSERT ON trace_minute_changes "
    "  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ratchet_rollups_fold();"
    "CREATE CONSTRAINT TRIGGER score_minute_changes_fold AFTER INSERT ON score_minute_changes "
    "  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ratchet_rollups_fold();"
    "INSERT INTO trace_minutes SELECT prompt, coalesce(version, 0), ts / 60000, count(*), "
    "  count(*) FILTER (WHERE verdict IS NOT NULL), count(*) FILTER (WHERE verdict = 0 AND negative = 0), "
    "  count(*) FILTER (WHERE verdict = 1 OR negative = 1), count(*) FILTER (WHERE verdict = 2), "
    "  coalesce(sum(negative), 0), count(retry_of), "
    "  coalesce(sum(" NUM("body", "{latency_ms}") "), 0), count(" NUM("body", "{latency_ms}") "), "
    "  coalesce(sum(" NUM("body", "{usage,cost_usd}") "), 0), count(" NUM("body", "{usage,cost_usd}") "), "
    "  coalesce(sum(" TOKENS("body") "), 0), count(" TOKENS("body") ") "
    "FROM traces GROUP BY 1, 2, 3;"
    "INSERT INTO score_minutes SELECT t.prompt, coalesce(t.version, 0), t.ts / 60000, s.evaluator, count(*), "
    "  count(*) FILTER (WHERE s.status = 'ok' AND s.pass = 1), count(*) FILTER (WHERE s.status = 'ok' AND s.pass = 0), "
    "  count(*) FILTER (WHERE s.status <> 'ok'), count(*) FILTER (WHERE s.required <> 0) "
    "FROM scores s JOIN traces t ON t.id = s.trace_id GROUP BY 1, 2, 3, 4;",

    /* 9: trace tags, one row each, keyed for the tag filter of a trace search (SQLite's
     * migrations 8 and 9): newest first by (tag, prompt) or by tag alone; the writer adds a
     * trace's tags with it, a trace's deletion takes them. Filled from the stored bodies. */
    "CREATE TABLE trace_tags ("
    "  tag TEXT NOT NULL,"
    "  tag_prompt TEXT NOT NULL,"
    "  tag_ts BIGINT NOT NULL,"
    "  tag_seq BIGINT NOT NULL," /* traces.seq */
    "  PRIMARY KEY (tag, tag_prompt, tag_ts, tag_seq)"
    ");"
    "CREATE INDEX trace_tags_by_ts ON trace_tags(tag, tag_ts, tag_seq);"
    "CREATE INDEX trace_tags_by_seq ON trace_tags(tag_seq);"
    "CREATE INDEX trace_tags_by_day ON trace_tags(tag_ts);" /* a day dropped takes its tags */
    "CREATE FUNCTION ratchet_trace_tags_delete() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
    "IF current_setting('ratchet.days', true) = 'on' THEN RETURN NULL; END IF; "
    "DELETE FROM trace_tags WHERE tag_seq = OLD.seq; RETURN NULL; END $f$;"
    "CREATE TRIGGER traces_tags_delete AFTER DELETE ON traces FOR EACH ROW EXECUTE FUNCTION ratchet_trace_tags_delete();"
    "INSERT INTO trace_tags SELECT DISTINCT g #>> '{}', prompt, ts, seq FROM traces, "
    "  json_array_elements(CASE WHEN json_typeof(body -> 'tags') = 'array' THEN body -> 'tags' ELSE '[]' END) g "
    "WHERE json_typeof(g) = 'string';",
#undef NUM
#undef TOKENS
#undef IS
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))
/* the advisory lock key that serializes migrations of engines starting together */
#define MIGRATION_LOCK 0x72617463 /* "ratc" */

static const store_backend pg_backend;
static void *writer_main(void *arg);
enum { CO_DOWN, CO_CONNECTING, CO_READY, CO_BUSY }; /* the coordinator's states (below) */
static int coord_open_beat(pg_store *s);
static void on_coord_timer(uv_timer_t *t);
static void coord_unwatch(pg_store *s);
static void coord_watch(pg_store *s, int events);
static bool lease_fresh_locked(const pg_store *s);
static void on_done_async(uv_async_t *h);
static void on_cluster_async(uv_async_t *h);

/* A connect under the calling thread's read deadline (pg_deadline_set): started without
 * blocking, its socket polled until it is made or the deadline passes. */
static PGconn *connect_deadline(const char *const *keys, const char *const *values, char *err, size_t errlen)
{
    PGconn *c = PQconnectStartParams(keys, values, 1);
    if (!c || PQstatus(c) == CONNECTION_BAD)
        return c;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int w = pg_wait_socket(c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT);
        if (w == 0) {
            char why[200];
            pg_deadline_error(why, sizeof why);
            snprintf(err, errlen, "cannot connect to PostgreSQL: %s", why);
            PQfinish(c);
            return NULL;
        }
        st = w < 0 ? PGRES_POLLING_FAILED : PQconnectPoll(c);
    }
    return c;
}

/* Connects with libpq's blocking call (at open, on the writer and coordinator threads), or
 * under the read deadline on pool threads; a read connection's statements also end on the
 * server at the deadline (statement_timeout). */
static PGconn *connect_db(const char *dsn, const char *engine_id, char *err, size_t errlen)
{
    /* defaults the DSN may override (later keywords win): a connect that cannot finish, and a
     * network that stops acknowledging, fail in bounded time instead of holding a thread */
    static const char *const keys[] = {"connect_timeout", "keepalives_idle", "keepalives_interval",
                                       "keepalives_count", "tcp_user_timeout", "dbname", NULL};
    const char *values[] = {"10", "10", "5", "3", "30000", dsn, NULL};
    err[0] = 0;
    PGconn *c = pg_deadline_on() ? connect_deadline(keys, values, err, errlen) : PQconnectdbParams(keys, values, 1);
    if (!c && err[0])
        return NULL;
    if (!c || PQstatus(c) != CONNECTION_OK) {
        /* libpq's message names host and reason, never the password */
        snprintf(err, errlen, "cannot connect to PostgreSQL: %s", c ? PQerrorMessage(c) : "out of memory");
        err[strcspn(err, "\n")] = 0;
        PQfinish(c);
        return NULL;
    }
    char ignored[128];
    /* an ack waits for the WAL flush (the server's default, made sure of here) */
    pg_exec(c, "SET synchronous_commit = on; SET client_min_messages = warning", ignored, sizeof ignored);
    /* who this session writes for: the default of runs.owner */
    pgq *q = pgq_new(c, "SELECT set_config('ratchet.engine', ?1, false)");
    pgq_text(q, 1, engine_id);
    int rc = pgq_step(q);
    pgq_free(q);
    if (rc == PGQ_ERROR && pg_deadline_on()) { /* the deadline passed, or the connection broke */
        snprintf(err, errlen, "cannot set up a PostgreSQL connection: %s", PQstatus(c) == CONNECTION_OK ?
                 "the read deadline passed (store.read_timeout_ms)" : "the connection broke");
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Deletes an engine's heartbeat, so what it owned (runs, traces to evaluate) is the leader's
 * to claim at once rather than after ENGINE_STALE_MS. */
static void forget_engine(PGconn *c, const char *id)
{
    const char *p[1] = {id};
    PQclear(PQexecParams(c, "DELETE FROM ratchet_engines WHERE id = $1", 1, NULL, p, NULL, NULL, 0));
}

/* The engine id the last process on this data directory had (the caller holds the directory's
 * lock, so that process is gone): its heartbeat is forgotten at once. Then this one's is kept. */
static void take_over_predecessor(pg_store *s, const char *dir)
{
    if (!dir)
        return;
    char path[4096], tmp[4200], prev[96] = "";
    snprintf(path, sizeof path, "%s/pg_engine_id", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        if (fgets(prev, sizeof prev, f))
            prev[strcspn(prev, "\n")] = 0;
        fclose(f);
    }
    if (prev[0])
        forget_engine(s->wconn, prev);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f)
        return;
    bool ok = fprintf(f, "%s\n", s->engine_id) > 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        log_warn("store", "cannot keep this engine's id in %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

static int migrate(PGconn *c, char *err, size_t errlen)
{
    char sql[128];
    if (pg_exec(c, "BEGIN", err, errlen))
        return -1;
    snprintf(sql, sizeof sql, "SELECT pg_advisory_xact_lock(%d)", MIGRATION_LOCK);
    if (pg_exec(c, sql, err, errlen) ||
        pg_exec(c, "CREATE TABLE IF NOT EXISTS ratchet_schema (version BIGINT NOT NULL)", err, errlen))
        goto fail;
    PGresult *r = PQexec(c, "SELECT version FROM ratchet_schema");
    int have = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) ? atoi(PQgetvalue(r, 0, 0)) : 0;
    bool row = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
    PQclear(r);
    if (have > SCHEMA_VERSION) {
        snprintf(err, errlen, "the database has schema version %d, newer than this engine's %d; run a newer ratchet",
                 have, SCHEMA_VERSION);
        goto fail;
    }
    for (int v = have; v < SCHEMA_VERSION; v++) {
        if (pg_exec(c, migrations[v], err, errlen))
            goto fail;
        snprintf(sql, sizeof sql, row ? "UPDATE ratchet_schema SET version = %d" : "INSERT INTO ratchet_schema VALUES (%d)",
                 v + 1);
        row = true;
        if (pg_exec(c, sql, err, errlen))
            goto fail;
        log_info("store", "migrated the PostgreSQL schema to version %d", v + 1);
    }
    return pg_exec(c, "COMMIT", err, errlen);
fail:;
    char ignored[64];
    pg_exec(c, "ROLLBACK", ignored, sizeof ignored);
    return -1;
}

int pg_open(store **out, uv_loop_t *loop, const store_options *o, char *err, size_t errlen)
{
    if (!o->dsn) {
        snprintf(err, errlen, "store.dsn: a PostgreSQL store needs a connection string");
        return -1;
    }
    pg_store *s = xcalloc(1, sizeof *s);
    s->base.be = &pg_backend;
    s->loop = loop;
    s->dsn = xstrdup(o->dsn);
    s->read_max = o->read_pool > 0 ? (o->read_pool < PG_POOL_MAX ? o->read_pool : PG_POOL_MAX) : 4;
    pg_parts_init(&s->parts, o->retention_days);
    s->read_timeout_ms = o->read_timeout_ms;
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    s->started_ms = now_ms();
    snprintf(s->engine_id, sizeof s->engine_id, "%s:%d:%llx", host, (int)getpid(),
             (unsigned long long)(mono_ns() & 0xffffff));
    /* at start, before the engine serves: the one blocking connect on the loop thread */
    s->wconn = connect_db(s->dsn, s->engine_id, err, errlen);
    if (!s->wconn || migrate(s->wconn, err, errlen) != 0) {
        if (s->wconn) {
            char why[512];
            snprintf(why, sizeof why, "%s", err);
            snprintf(err, errlen, "the PostgreSQL store: %s", why);
        }
        PQfinish(s->wconn);
        pg_parts_free(&s->parts);
        free(s->dsn);
        free(s);
        return -1;
    }
    take_over_predecessor(s, o->dir);
    pg_parts_for_batch(&s->parts, s->wconn, NULL, 0, now_ms()); /* reads the partitions there are */
    store_wqueue_init(&s->q, (size_t)o->max_pending);
    pthread_mutex_init(&s->read_mu, NULL);
    s->healthy = true;
    /* the coordinator's session: the first try for the lock and the first heartbeat happen
     * here, at start, so one engine alone leads from its first tick */
    s->cconn = connect_db(s->dsn, s->engine_id, err, errlen);
    if (!s->cconn) {
        PQfinish(s->wconn);
        pg_parts_free(&s->parts);
        free(s->dsn);
        free(s);
        return -1;
    }
    if (coord_open_beat(s) != 0 || PQsetnonblocking(s->cconn, 1) != 0) {
        /* a first beat that fails: the session is dropped and the loop reconnects it */
        PQfinish(s->cconn);
        s->cconn = NULL;
        s->co_state = CO_DOWN;
    } else {
        s->co_state = CO_READY;
    }
    s->tell_leadership = false; /* the caller asks store_leader at start */
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the writer thread");
        goto fail_threads;
    }
    uv_timer_init(loop, &s->co_timer);
    s->co_timer.data = s;
    uv_timer_start(&s->co_timer, on_coord_timer, COORD_MS, COORD_MS);
    if (s->cconn)
        coord_watch(s, UV_READABLE); /* no statement in flight: readable means notifications */
    uv_async_init(loop, &s->done_async, on_done_async);
    s->done_async.data = s;
    uv_async_init(loop, &s->cluster_async, on_cluster_async);
    s->cluster_async.data = s;
    *out = &s->base;
    return 0;

fail_threads:
    PQfinish(s->cconn);
    PQfinish(s->wconn);
    json_decref(s->engines);
    pg_parts_free(&s->parts);
    free(s->dsn);
    free(s);
    return -1;
}

static void pg_metrics(store *base, buf_t *b)
{
    pg_store *s = (pg_store *)base;
    pthread_mutex_lock(&s->q.mu);
    uint64_t commits = s->commits, failures = s->commit_failures, writes = s->writes_committed,
             items = s->items_committed, reconnects = s->reconnects;
    metrics_hist h = s->commit_seconds;
    size_t queued = s->q.queued_items;
    bool healthy = s->healthy;
    pthread_mutex_unlock(&s->q.mu);
    metrics_one(b, "ratchet_store_commits_total", "counter",
                "Group commits: one transaction for every write pending.", (double)commits);
    metrics_one(b, "ratchet_store_commit_failures_total", "counter",
                "Transactions that failed (nothing of them stored).", (double)failures);
    metrics_one(b, "ratchet_store_writes_total", "counter",
                "Writes (an ingest request, a batch of verdicts, ...) committed.", (double)writes);
    metrics_one(b, "ratchet_store_items_total", "counter",
                "Items (traces, feedback, scores, ...) committed.", (double)items);
    metrics_family(b, "ratchet_store_commit_duration_seconds", "histogram",
                   "Time of one group commit, the WAL flush included.");
    metrics_histogram(b, "ratchet_store_commit_duration_seconds", &h, NULL);
    metrics_one(b, "ratchet_store_pending_items", "gauge",
                "Items queued for the writer (limits.max_pending_writes).", (double)queued);
    metrics_one(b, "ratchet_store_healthy", "gauge", "1 when the store's connection is up and its last commit succeeded.",
                healthy);
    metrics_one(b, "ratchet_store_reconnects_total", "counter",
                "Times the writer connected to PostgreSQL again after losing it.", (double)reconnects);
    pg_parts_metrics(&s->parts, b);
}

static void pg_status(store *base, json_t *out)
{
    pg_store *s = (pg_store *)base;
    pthread_mutex_lock(&s->q.mu);
    if (!s->healthy && s->last_error[0])
        json_object_set_new(out, "error", json_string(s->last_error));
    json_object_set_new(out, "engine_id", json_string(s->engine_id));
    json_object_set_new(out, "role", json_string(s->leader && lease_fresh_locked(s) ? "leader" : "follower"));
    json_object_set_new(out, "lease_fresh", json_boolean(lease_fresh_locked(s)));
    json_object_set_new(out, "epoch", json_integer((json_int_t)s->epoch));
    json_t *engines = s->engines ? json_deep_copy(s->engines) : json_array();
    pthread_mutex_unlock(&s->q.mu);
    /* engines whose scripts differ from the first's are flagged */
    const char *first = NULL;
    bool differ = false;
    size_t i;
    json_t *e;
    /* an engine that has not told its scripts yet (its first beat) is compared with none */
    json_array_foreach(engines, i, e) {
        const char *sc = json_string_value(json_object_get(e, "scripts"));
        if (!sc)
            continue;
        if (!first)
            first = sc;
        else if (strcmp(first, sc))
            differ = true;
    }
    /* first points into the first engine's object: flag every engine before replacing any text */
    json_array_foreach(engines, i, e) {
        const char *sc = json_string_value(json_object_get(e, "scripts"));
        json_object_set_new(e, "scripts_differ", json_boolean(differ && sc && strcmp(first, sc)));
    }
    json_array_foreach(engines, i, e) {
        const char *sc = json_string_value(json_object_get(e, "scripts"));
        json_t *parsed = sc ? json_loads(sc, 0, NULL) : NULL;
        json_object_set_new(e, "scripts", parsed ? parsed : json_null());
    }
    json_object_set_new(out, "engines", engines);
    json_object_set_new(out, "scripts_differ", json_boolean(differ));
    pg_parts_status(&s->parts, out);
}

/* Under mu: whether this engine's lease is fresh (its work may start LLM calls). */
static bool lease_fresh_locked(const pg_store *s)
{
    return s->lease_ns && mono_ns() - s->lease_ns < (uint64_t)(ENGINE_STALE_MS - LEASE_MARGIN_MS) * 1000000u;
}

static bool pg_leader(store *base)
{
    pg_store *s = (pg_store *)base;
    pthread_mutex_lock(&s->q.mu);
    bool l = s->leader && lease_fresh_locked(s);
    pthread_mutex_unlock(&s->q.mu);
    return l;
}

static uint64_t pg_lease_generation(store *base)
{
    pg_store *s = (pg_store *)base;
    pthread_mutex_lock(&s->q.mu);
    uint64_t g = s->lease_gen + (s->lease_ns && !lease_fresh_locked(s)); /* a lapse under way counts */
    pthread_mutex_unlock(&s->q.mu);
    return g;
}

static int pg_live_engines(store *base)
{
    pg_store *s = (pg_store *)base;
    pthread_mutex_lock(&s->q.mu);
    int n = s->engines ? (int)json_array_size(s->engines) : 1;
    pthread_mutex_unlock(&s->q.mu);
    return n;
}

static bool pg_lease_fresh(store *base)
{
    pg_store *s = (pg_store *)base;
    pthread_mutex_lock(&s->q.mu);
    bool fresh = lease_fresh_locked(s);
    pthread_mutex_unlock(&s->q.mu);
    return fresh;
}

static void pg_on_cluster(store *base, store_cluster_cb fn, void *data)
{
    pg_store *s = (pg_store *)base;
    s->cluster_fn = fn;
    s->cluster_data = data;
}

static void pg_set_scripts(store *base, const json_t *scripts)
{
    pg_store *s = (pg_store *)base;
    char *text = json_dumps(scripts, JSON_COMPACT | JSON_SORT_KEYS);
    pthread_mutex_lock(&s->q.mu);
    free(s->scripts);
    s->scripts = text;
    pthread_mutex_unlock(&s->q.mu);
}

static void on_cluster_async(uv_async_t *h)
{
    pg_store *s = h->data;
    pthread_mutex_lock(&s->q.mu);
    bool lead = s->tell_leadership, reg = s->tell_registry;
    s->tell_leadership = s->tell_registry = false;
    pthread_mutex_unlock(&s->q.mu);
    if ((lead || reg) && s->cluster_fn)
        s->cluster_fn(s->cluster_data, lead, reg);
}

/* ---- the coordinator ----
 *
 * One session per engine for the leader lock, the heartbeats and LISTEN, driven on the loop
 * thread: libpq in non-blocking mode, its socket on a uv_poll, a uv_timer for the beat. One
 * state machine: DOWN (waiting out the reconnect backoff) -> CONNECTING (PQconnectPoll) ->
 * READY (idle between beats) <-> BUSY (one statement of the beat in flight: PQsendQueryParams,
 * PQflush while the socket takes it, PQconsumeInput / PQisBusy / PQgetResult as it answers).
 * A beat is a chain of steps (coord_step_*), the same at start, where pg_open runs them with
 * blocking calls before the loop runs, and on the loop. Nothing here waits: a stalled
 * database leaves a statement in flight, the beats that fall due meanwhile are skipped, and
 * the lease lapses on its own (lease_fresh_locked). */

enum { STEP_LISTEN, STEP_UNLOCK, STEP_TRY_LOCK, STEP_BUMP, STEP_UNBUMP, STEP_HEARTBEAT, STEP_ENGINES, STEP_DONE };

/* Loses the leadership (the session that held the lock is gone, or the lease lapsed). */
static void lose_leadership(pg_store *s, const char *why)
{
    pthread_mutex_lock(&s->q.mu);
    bool was = s->leader;
    s->leader = false;
    if (was)
        s->tell_leadership = true;
    pthread_mutex_unlock(&s->q.mu);
    if (was) {
        log_warn("store", "this engine no longer leads the loop: %s", why);
        if (s->done_async.data)
            uv_async_send(&s->cluster_async);
    }
}

/* The first step of a beat. */
static int coord_first_step(pg_store *s)
{
    pthread_mutex_lock(&s->q.mu);
    bool leader = s->leader, lapsed = s->leader && !lease_fresh_locked(s);
    pthread_mutex_unlock(&s->q.mu);
    if (lapsed) {
        /* it has already stopped leading (pg_leader); it gives the lock up and competes again
         * like any follower, so that winning it again is a takeover */
        lose_leadership(s, "its lease lapsed (no heartbeat committed for 10 s)");
        return STEP_UNLOCK;
    }
    return leader ? STEP_HEARTBEAT : STEP_TRY_LOCK;
}

/* The statement of a step and its parameters (texts in s->co_vals). */
static const char *coord_step_sql(pg_store *s, int step, int *n)
{
    *n = 0;
    switch (step) {
    case STEP_LISTEN:
        return "LISTEN ratchet_registry";
    case STEP_UNLOCK:
    case STEP_UNBUMP:
        return "SELECT pg_advisory_unlock_all()";
    case STEP_TRY_LOCK:
        snprintf(s->co_vals[0], sizeof s->co_vals[0], "%d", LEADER_LOCK);
        *n = 1;
        return "SELECT pg_try_advisory_lock($1::bigint)";
    case STEP_BUMP:
        snprintf(s->co_vals[0], sizeof s->co_vals[0], "%s", s->engine_id);
        snprintf(s->co_vals[1], sizeof s->co_vals[1], "%lld", (long long)now_ms());
        *n = 2;
        return "UPDATE ratchet_leader SET epoch = epoch + 1, engine = $1, since = $2::bigint RETURNING epoch";
    case STEP_HEARTBEAT: {
        pthread_mutex_lock(&s->q.mu);
        snprintf(s->co_vals[1], sizeof s->co_vals[1], "%s", s->leader ? "leader" : "follower");
        free(s->co_scripts);
        s->co_scripts = s->scripts ? xstrdup(s->scripts) : NULL;
        pthread_mutex_unlock(&s->q.mu);
        snprintf(s->co_vals[0], sizeof s->co_vals[0], "%s", s->engine_id);
        snprintf(s->co_vals[3], sizeof s->co_vals[3], "%lld", (long long)s->started_ms);
        *n = 4;
        s->co_sent = mono_ns();
        /* last_seen on the database's clock: the claims of other engines compare it with theirs */
        return "INSERT INTO ratchet_engines(id, role, scripts, started_at, last_seen) VALUES "
               "($1, $2, $3, $4::bigint, " DB_NOW_MS ") ON CONFLICT(id) DO UPDATE SET role = $2, scripts = $3, "
               "last_seen = " DB_NOW_MS;
    }
    case STEP_ENGINES:
        snprintf(s->co_vals[0], sizeof s->co_vals[0], "%d", ENGINE_STALE_MS);
        *n = 1;
        return "SELECT id, role, scripts, started_at, last_seen FROM ratchet_engines WHERE last_seen >= " DB_NOW_MS
               " - $1::bigint ORDER BY id";
    }
    return NULL;
}

static const char *const *coord_step_params(pg_store *s, int step)
{
    for (int i = 0; i < 4; i++)
        s->co_params[i] = s->co_vals[i];
    if (step == STEP_HEARTBEAT)
        s->co_params[2] = s->co_scripts; /* NULL binds NULL */
    return s->co_params;
}

static json_t *col_time(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return json_null();
    char t[32];
    rfc3339_format(strtoll(PQgetvalue(r, row, col), NULL, 10), t);
    return json_string(t);
}

static json_t *col_text(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

/* Takes a step's result; returns the next step, or -1 when the statement failed. */
static int coord_step_done(pg_store *s, int step, PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        const char *m = PQresultErrorMessage(r);
        log_warn("store", "the coordinator's session: %.*s", (int)strcspn(m, "\n"), m);
        return -1;
    }
    switch (step) {
    case STEP_LISTEN:
        return coord_first_step(s);
    case STEP_UNLOCK:
        return STEP_TRY_LOCK;
    case STEP_TRY_LOCK:
        return PQntuples(r) && !strcmp(PQgetvalue(r, 0, 0), "t") ? STEP_BUMP : STEP_HEARTBEAT;
    case STEP_BUMP:
        if (!PQntuples(r))
            return STEP_UNBUMP;
        pthread_mutex_lock(&s->q.mu);
        s->leader = true;
        s->epoch = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        s->tell_leadership = true;
        pthread_mutex_unlock(&s->q.mu);
        log_info("store", "this engine (%s) now leads the loop (epoch %s)", s->engine_id, PQgetvalue(r, 0, 0));
        if (s->done_async.data)
            uv_async_send(&s->cluster_async);
        return STEP_HEARTBEAT;
    case STEP_UNBUMP:
        return STEP_HEARTBEAT;
    case STEP_HEARTBEAT:
        pthread_mutex_lock(&s->q.mu);
        /* the last one was sent longer ago than the owner's share of the lease: it lapsed in between */
        if (s->lease_ns && s->co_sent - s->lease_ns >= (uint64_t)(ENGINE_STALE_MS - LEASE_MARGIN_MS) * 1000000u)
            s->lease_gen++;
        s->lease_ns = s->co_sent; /* committed (autocommit): the lease runs from when it was sent */
        pthread_mutex_unlock(&s->q.mu);
        return STEP_ENGINES;
    case STEP_ENGINES: {
        json_t *engines = json_array();
        for (int i = 0; i < PQntuples(r); i++)
            json_array_append_new(engines,
                                  json_pack("{s:o, s:o, s:o, s:o, s:o, s:b}", "id", col_text(r, i, 0), "role",
                                            col_text(r, i, 1), "scripts", col_text(r, i, 2), "started_at",
                                            col_time(r, i, 3), "last_seen", col_time(r, i, 4), "this",
                                            !strcmp(PQgetvalue(r, i, 0), s->engine_id)));
        pthread_mutex_lock(&s->q.mu);
        json_decref(s->engines);
        s->engines = engines;
        pthread_mutex_unlock(&s->q.mu);
        return STEP_DONE;
    }
    }
    return STEP_DONE;
}

/* The notifications of registry changes that arrived (another engine's: each carries the
 * id of the engine that made the change). */
static void coord_notifies(pg_store *s)
{
    PGnotify *n;
    bool told = false;
    while ((n = PQnotifies(s->cconn)) != NULL) {
        if (strcmp(n->extra, s->engine_id))
            told = true;
        PQfreemem(n);
    }
    if (told) {
        pthread_mutex_lock(&s->q.mu);
        s->tell_registry = true;
        pthread_mutex_unlock(&s->q.mu);
        if (s->done_async.data)
            uv_async_send(&s->cluster_async);
    }
}

/* At open, before the loop runs: the session's first steps with blocking calls, so one engine
 * alone leads from its first tick. */
static int coord_open_beat(pg_store *s)
{
    for (int step = STEP_LISTEN; step != STEP_DONE;) {
        int n;
        const char *sql = coord_step_sql(s, step, &n);
        PGresult *r = PQexecParams(s->cconn, sql, n, NULL, coord_step_params(s, step), NULL, NULL, 0);
        step = coord_step_done(s, step, r);
        PQclear(r);
        if (step < 0)
            return -1;
    }
    return 0;
}

static void coord_poll_closed(uv_handle_t *h)
{
    free(h);
}

/* Stops watching the session's socket (before libpq closes it, or a reconnect opens another). */
static void coord_unwatch(pg_store *s)
{
    if (s->co_poll) {
        uv_close((uv_handle_t *)s->co_poll, coord_poll_closed);
        s->co_poll = NULL;
    }
}

static void on_coord_poll(uv_poll_t *h, int status, int events);

static void coord_watch(pg_store *s, int events)
{
    if (s->co_poll && s->co_fd != PQsocket(s->cconn))
        coord_unwatch(s); /* libpq changed sockets (a connect that tries the next address) */
    if (!s->co_poll) {
        s->co_fd = PQsocket(s->cconn);
        s->co_poll = xmalloc(sizeof *s->co_poll);
        uv_poll_init(s->loop, s->co_poll, PQsocket(s->cconn));
        s->co_poll->data = s;
    }
    uv_poll_start(s->co_poll, events, on_coord_poll);
}

/* The session is gone: leadership lost, reconnect after the backoff (100 ms doubling to 5 s). */
static void coord_down(pg_store *s, const char *why)
{
    lose_leadership(s, why);
    coord_unwatch(s);
    PQfinish(s->cconn);
    s->cconn = NULL;
    s->co_state = CO_DOWN;
    s->co_backoff_ms = s->co_backoff_ms ? s->co_backoff_ms * 2 : RECONNECT_MIN_MS;
    if (s->co_backoff_ms > RECONNECT_MAX_MS)
        s->co_backoff_ms = RECONNECT_MAX_MS;
    s->co_retry_at = uv_now(s->loop) + (uint64_t)s->co_backoff_ms;
}

/* Sends a step's statement; the socket says when it is answered. */
static void coord_send(pg_store *s, int step)
{
    int n;
    const char *sql = coord_step_sql(s, step, &n);
    if (!PQsendQueryParams(s->cconn, sql, n, NULL, coord_step_params(s, step), NULL, NULL, 0)) {
        coord_down(s, "its database session was lost");
        return;
    }
    s->co_step = step;
    s->co_state = CO_BUSY;
    int f = PQflush(s->cconn);
    if (f < 0)
        coord_down(s, "its database session was lost");
    else
        coord_watch(s, f ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

static void coord_connect_poll(pg_store *s)
{
    switch (PQconnectPoll(s->cconn)) {
    case PGRES_POLLING_READING:
        coord_watch(s, UV_READABLE);
        return;
    case PGRES_POLLING_WRITING:
        coord_watch(s, UV_WRITABLE);
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(s->cconn, 1) != 0) {
            coord_down(s, "its database session was lost");
            return;
        }
        s->co_backoff_ms = 0;
        log_info("store", "the coordinator's session is connected again");
        coord_send(s, STEP_LISTEN);
        return;
    default:
        coord_down(s, "its database session was lost");
        return;
    }
}

static void coord_connect(pg_store *s)
{
    static const char *const keys[] = {"connect_timeout", "keepalives_idle", "keepalives_interval",
                                       "keepalives_count", "tcp_user_timeout", "dbname", NULL};
    const char *values[] = {"10", "10", "5", "3", "30000", s->dsn, NULL};
    s->cconn = PQconnectStartParams(keys, values, 1);
    if (!s->cconn || PQstatus(s->cconn) == CONNECTION_BAD || PQsocket(s->cconn) < 0) {
        coord_down(s, "its database session was lost");
        return;
    }
    s->co_state = CO_CONNECTING;
    s->co_connect_at = uv_now(s->loop);
    coord_watch(s, UV_WRITABLE); /* as if PQconnectPoll had said PGRES_POLLING_WRITING */
}

static void on_coord_poll(uv_poll_t *h, int status, int events)
{
    pg_store *s = h->data;
    if (s->co_state == CO_CONNECTING) {
        coord_connect_poll(s);
        return;
    }
    if (status < 0) {
        coord_down(s, "its database session was lost");
        return;
    }
    if (events & UV_WRITABLE) {
        int f = PQflush(s->cconn);
        if (f < 0) {
            coord_down(s, "its database session was lost");
            return;
        }
        if (f == 0)
            coord_watch(s, UV_READABLE);
    }
    if (!(events & UV_READABLE))
        return;
    if (!PQconsumeInput(s->cconn)) {
        coord_down(s, "its database session was lost");
        return;
    }
    while (s->co_state == CO_BUSY && !PQisBusy(s->cconn)) {
        PGresult *r = PQgetResult(s->cconn);
        if (!r) { /* the statement is done: the next step, or idle until the next beat */
            int next = s->co_next;
            if (next == STEP_DONE) {
                s->co_state = CO_READY;
            } else {
                coord_send(s, next);
                if (s->co_state != CO_BUSY)
                    return;
            }
            continue;
        }
        int next = coord_step_done(s, s->co_step, r);
        PQclear(r);
        if (next < 0) {
            /* a statement refused (not a lost session): the beat ends here, the next one tries again */
            if (PQstatus(s->cconn) != CONNECTION_OK) {
                coord_down(s, "its database session was lost");
                return;
            }
            next = STEP_DONE;
        }
        s->co_next = next;
    }
    coord_notifies(s);
}

static void on_coord_timer(uv_timer_t *t)
{
    pg_store *s = t->data;
    switch (s->co_state) {
    case CO_DOWN:
        if (uv_now(s->loop) >= s->co_retry_at)
            coord_connect(s);
        break;
    case CO_READY:
        coord_send(s, coord_first_step(s));
        break;
    case CO_CONNECTING:
        /* libpq's connect_timeout is the caller's to enforce with PQconnectPoll */
        if (uv_now(s->loop) - s->co_connect_at > CONNECT_TIMEOUT_MS)
            coord_down(s, "its database session could not be connected again");
        break;
    default:
        /* a statement still in flight (a slow or stalled database): this beat is
         * skipped; the lease counts from the last heartbeat that committed */
        break;
    }
}

static void on_done_async(uv_async_t *h)
{
    pg_store *s = h->data;
    store_wqueue_drain(&s->q);
}

static void pg_flush(store *base)
{
    store_wqueue_flush(&((pg_store *)base)->q);
}

static void on_done_async_closed(uv_handle_t *h)
{
    pg_store *s = h->data;
    json_decref(s->engines);
    free(s->scripts);
    free(s->co_scripts);
    pg_parts_free(&s->parts);
    free(s->dsn);
    free(s);
}

static void pg_close(store *base)
{
    pg_store *s = (pg_store *)base;
    store_wqueue_stop(&s->q);
    pthread_join(s->writer, NULL);
    /* a clean stop gives the leadership up at once (the lock goes with the session) */
    uv_timer_stop(&s->co_timer);
    coord_unwatch(s);
    PQfinish(s->cconn);
    s->cconn = NULL;
    store_wqueue_drain(&s->q);
    /* every write of this engine is committed: what it leaves unfinished is the leader's now */
    if (s->wconn && PQstatus(s->wconn) == CONNECTION_OK)
        forget_engine(s->wconn, s->engine_id);
    PQfinish(s->wconn);
    for (int i = 0; i < s->read_free; i++)
        PQfinish(s->read_pool[i]);
    store_wqueue_destroy(&s->q);
    pthread_mutex_destroy(&s->read_mu);
    uv_close((uv_handle_t *)&s->co_timer, NULL);
    uv_close((uv_handle_t *)&s->cluster_async, NULL);
    uv_close((uv_handle_t *)&s->done_async, on_done_async_closed);
}

static int pg_submit(store *base, store_write *w)
{
    return store_wqueue_submit(&((pg_store *)base)->q, w);
}

static bool pg_healthy(store *base)
{
    pg_store *s = (pg_store *)base;
    pthread_mutex_lock(&s->q.mu);
    bool h = s->healthy && !s->q.stopping;
    pthread_mutex_unlock(&s->q.mu);
    return h;
}

/* ---- the writer ---- */

/* Runs one statement of the write transaction; -1 with err. */
static int run(pgq *q, char *err, size_t errlen)
{
    int rc = pgq_step(q);
    if (rc == PGQ_ERROR) {
        snprintf(err, errlen, "%s", q->err);
        return -1;
    }
    return 0;
}

static int insert_feedback(pg_store *s, const char *id, const char *trace_id, const char *source, int thumbs,
                           bool negative, int64_t ts, const char *json, size_t json_len, unsigned char *res, char *err,
                           size_t errlen)
{
    pgq *q = pgq_new(s->wconn, "INSERT INTO feedback(id, trace_id, source, thumbs, ts, body) "
                               "VALUES (?1, ?2, ?3, ?4, ?5, ?6::json) ON CONFLICT(id) DO NOTHING");
    pgq_text(q, 1, id);
    pgq_text(q, 2, trace_id);
    pgq_text(q, 3, source);
    if (thumbs)
        pgq_int(q, 4, thumbs);
    else
        pgq_null(q, 4);
    pgq_int(q, 5, ts);
    pgq_textn(q, 6, json, json_len);
    int rc = run(q, err, errlen);
    if (!rc)
        *res = pgq_changes(q) ? STORE_ACCEPTED : STORE_DUPLICATE;
    pgq_free(q);
    if (!rc && *res == STORE_ACCEPTED && negative) {
        q = pgq_new(s->wconn, "UPDATE traces SET negative = 1 WHERE " BY_ID("?1") " AND negative = 0");
        pgq_text(q, 1, trace_id);
        rc = run(q, err, errlen);
        pgq_free(q);
    }
    return rc;
}

static int apply_evaluation(pg_store *s, const store_evaluation *e, char *err, size_t errlen)
{
    pgq *q = pgq_new(s->wconn, "DELETE FROM scores WHERE trace_id = ?1");
    pgq_text(q, 1, e->trace_id);
    int rc = run(q, err, errlen);
    pgq_free(q);
    for (size_t i = 0; !rc && i < e->nscores; i++) {
        const store_score *sc = &e->scores[i];
        q = pgq_new(s->wconn, "INSERT INTO scores(trace_id, evaluator, script, version, required, status, pass, score, "
                              "reason, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) "
                              "ON CONFLICT(trace_id, evaluator) DO NOTHING");
        pgq_text(q, 1, e->trace_id);
        pgq_text(q, 2, sc->evaluator);
        pgq_text(q, 3, sc->script);
        pgq_text(q, 4, sc->version);
        pgq_int(q, 5, sc->required);
        pgq_text(q, 6, sc->status);
        pgq_int(q, 7, sc->pass);
        pgq_double(q, 8, sc->score);
        pgq_text(q, 9, sc->reason);
        pgq_int(q, 10, e->ts_ms);
        rc = run(q, err, errlen);
        pgq_free(q);
    }
    if (rc)
        return rc;
    q = pgq_new(s->wconn, "UPDATE traces SET verdict = ?2 WHERE " BY_ID("?1"));
    pgq_text(q, 1, e->trace_id);
    pgq_int(q, 2, (int)e->verdict);
    rc = run(q, err, errlen);
    pgq_free(q);
    return rc;
}

static int apply_ops(pg_store *s, const store_op *op, char *err, size_t errlen)
{
    for (; op; op = op->next) {
        pgq *q = pgq_new(s->wconn, op->sql);
        for (int i = 0; i < op->n; i++) {
            const store_val *v = &op->v[i];
            if (v->t == 'i')
                pgq_int(q, i + 1, v->i);
            else if (v->t == 'd')
                pgq_double(q, i + 1, v->d);
            else if (v->t == 's')
                pgq_text(q, i + 1, v->s);
            else
                pgq_null(q, i + 1);
        }
        int rc = run(q, err, errlen);
        pgq_free(q);
        if (rc)
            return rc;
    }
    return 0;
}

/* Every trace of the batch's writes (those not fenced out) in one pipeline of one prepared
 * INSERT: one round trip for all of them instead of one each (libpq pipeline mode). Fills
 * trace_results; -1 with err when any failed (the transaction is then rolled back). */
static int insert_traces(pg_store *s, store_write *batch, bool fence_ok, int64_t received, char *err, size_t errlen)
{
    PGconn *c = s->wconn;
    if (!s->prepared) {
        PGresult *r = PQprepare(c, "ins_trace",
                                /* the id table decides (exact dedup across partitions); the
                                 * trace row only for an id it did not have */
                                "WITH n AS (INSERT INTO trace_ids(id, ts) VALUES ($1, $4::bigint) "
                                "ON CONFLICT(id) DO NOTHING RETURNING id) "
                                "INSERT INTO traces(id, prompt, version, ts, received_at, retry_of, body) "
                                "SELECT $1, $2, $3::bigint, $4::bigint, $5::bigint, $6, $7::json FROM n "
                                "RETURNING seq",
                                7, NULL);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            snprintf(err, errlen, "%s", PQresultErrorMessage(r));
        PQclear(r);
        if (!ok)
            return -1;
        s->prepared = true;
    }
    size_t n = 0;
    for (store_write *w = batch; w; w = w->next)
        if (!(w->fenced && !fence_ok))
            n += w->ntraces;
    if (!n)
        return 0;
    if (!PQenterPipelineMode(c)) {
        snprintf(err, errlen, "cannot enter pipeline mode: %s", PQerrorMessage(c));
        return -1;
    }
    int rc = 0;
    for (store_write *w = batch; w && !rc; w = w->next) {
        if (w->fenced && !fence_ok)
            continue;
        for (size_t i = 0; i < w->ntraces && !rc; i++) {
            const store_trace *t = &w->traces[i];
            char version[24], ts[24], recv[24];
            snprintf(version, sizeof version, "%lld", (long long)t->version);
            snprintf(ts, sizeof ts, "%lld", (long long)t->ts_ms);
            snprintf(recv, sizeof recv, "%lld", (long long)received);
            const char *values[7] = {t->id, t->prompt, t->version ? version : NULL, ts, recv, t->retry_of, t->json};
            int lengths[7] = {0, 0, 0, 0, 0, 0, (int)t->json_len};
            int formats[7] = {0};
            if (!PQsendQueryPrepared(c, "ins_trace", 7, values, lengths, formats, 0))
                rc = -1;
        }
    }
    if (!rc && !PQpipelineSync(c))
        rc = -1;
    if (rc) {
        snprintf(err, errlen, "%s", PQerrorMessage(c));
        err[strcspn(err, "\n")] = 0;
    }
    /* one result (and a NULL) per query, then the sync's; an error aborts those after it.
     * A trace stored gives its seq, which its tags' rows carry: [tag, prompt, ts, seq] */
    json_t *tags = json_array();
    for (store_write *w = batch; w; w = w->next) {
        if (w->fenced && !fence_ok)
            continue;
        for (size_t i = 0; i < w->ntraces; i++) {
            PGresult *r = PQgetResult(c);
            if (!r)
                break;
            ExecStatusType st = PQresultStatus(r);
            if (st == PGRES_TUPLES_OK) {
                const store_trace *t = &w->traces[i];
                bool stored = PQntuples(r) == 1;
                w->trace_results[i] = stored ? STORE_ACCEPTED : STORE_DUPLICATE;
                for (size_t k = 0; stored && k < t->ntags; k++)
                    json_array_append_new(tags, json_pack("[s, s, I, I]", t->tags[k], t->prompt, (json_int_t)t->ts_ms,
                                                          (json_int_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10)));
            } else if (!rc) {
                snprintf(err, errlen, "%s", st == PGRES_PIPELINE_ABORTED ? "pipeline aborted" : PQresultErrorMessage(r));
                err[strcspn(err, "\n")] = 0;
                rc = -1;
            }
            PQclear(r);
            while ((r = PQgetResult(c)) != NULL) /* the NULL that ends this query's results */
                PQclear(r);
        }
    }
    PGresult *r;
    while ((r = PQgetResult(c)) != NULL) { /* the sync */
        bool sync = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
        PQclear(r);
        if (sync)
            break;
    }
    if (!PQexitPipelineMode(c) && !rc) {
        snprintf(err, errlen, "cannot leave pipeline mode: %s", PQerrorMessage(c));
        rc = -1;
    }
    if (!rc && json_array_size(tags)) { /* every tag of the batch in one statement */
        char *text = json_dumps(tags, JSON_COMPACT);
        pgq *q = pgq_new(c, "INSERT INTO trace_tags(tag, tag_prompt, tag_ts, tag_seq) "
                            "SELECT g->>0, g->>1, (g->>2)::bigint, (g->>3)::bigint FROM json_array_elements(?1::json) g "
                            "ON CONFLICT DO NOTHING");
        pgq_text(q, 1, text);
        free(text);
        rc = run(q, err, errlen);
        pgq_free(q);
    }
    json_decref(tags);
    return rc;
}

/* The traces the batch stored, summed per (prompt, version, minute) into trace_minute_changes
 * in one statement (migration 7 folds them into trace_minutes at COMMIT). A new trace has no
 * verdict and no negative feedback yet: the triggers on traces count those when they come. */
static int add_trace_minutes(pg_store *s, store_write *batch, bool fence_ok, char *err, size_t errlen)
{
    size_t total = 0, n = 0;
    for (store_write *w = batch; w; w = w->next)
        if (!(w->fenced && !fence_ok))
            total += w->ntraces;
    if (!total)
        return 0;
    store_trace **acc = xmalloc(total * sizeof *acc);
    for (store_write *w = batch; w; w = w->next)
        for (size_t i = 0; !(w->fenced && !fence_ok) && i < w->ntraces; i++)
            if (w->trace_results[i] == STORE_ACCEPTED)
                acc[n++] = &w->traces[i];
    store_minute_sum *sums = xmalloc((n ? n : 1) * sizeof *sums);
    size_t nsums = store_minute_sums(acc, n, sums);
    json_t *rows = json_array();
    for (size_t i = 0; i < nsums; i++) {
        const store_minute_sum *m = &sums[i];
        json_array_append_new(rows, json_pack("[s, I, I, I, I, f, I, f, I, f, I]", m->prompt, (json_int_t)m->version,
                                              (json_int_t)m->minute, (json_int_t)m->traces, (json_int_t)m->retries,
                                              m->lat, (json_int_t)m->lat_n, m->cost, (json_int_t)m->cost_n, m->tok,
                                              (json_int_t)m->tok_n));
    }
    free(sums);
    free(acc);
    int rc = 0;
    if (json_array_size(rows)) {
        char *text = json_dumps(rows, JSON_COMPACT);
        pgq *q = pgq_new(s->wconn,
                         "INSERT INTO trace_minute_changes SELECT r->>0, (r->>1)::bigint, (r->>2)::bigint, "
                         "(r->>3)::bigint, 0, 0, 0, 0, 0, (r->>4)::bigint, (r->>5)::float8, (r->>6)::bigint, "
                         "(r->>7)::float8, (r->>8)::bigint, (r->>9)::float8, (r->>10)::bigint "
                         "FROM json_array_elements(?1::json) AS r");
        pgq_text(q, 1, text);
        free(text);
        rc = run(q, err, errlen);
        pgq_free(q);
    }
    json_decref(rows);
    return rc;
}

/* A budget claim: the row's UPDATE takes its lock, so claims of every engine are serialized and
 * none passes a limit another's claim already reached. */
static int apply_claim(pg_store *s, store_budget_claim *b, char *err, size_t errlen)
{
    pgq *q = pgq_new(s->wconn, "INSERT INTO ratchet_budget(day, calls, tokens, cost) VALUES (?1, 0, 0, 0) "
                               "ON CONFLICT(day) DO NOTHING");
    pgq_text(q, 1, b->day);
    int rc = run(q, err, errlen);
    pgq_free(q);
    if (rc)
        return rc;
    q = pgq_new(s->wconn, "UPDATE ratchet_budget SET calls = calls + ?2, tokens = tokens + ?3, cost = cost + ?4 "
                          "WHERE day = ?1 AND (?5 <= 0 OR calls + ?2 <= ?5) AND (?6 <= 0 OR tokens + ?3 <= ?6) "
                          "AND (?7 <= 0 OR cost + ?4 <= ?7)");
    pgq_text(q, 1, b->day);
    pgq_double(q, 2, b->calls);
    pgq_double(q, 3, b->tokens);
    pgq_double(q, 4, b->cost);
    pgq_double(q, 5, b->max_calls);
    pgq_double(q, 6, b->max_tokens);
    pgq_double(q, 7, b->max_cost);
    rc = run(q, err, errlen);
    b->granted = !rc && pgq_changes(q) > 0;
    pgq_free(q);
    return rc;
}

/* ---- trace parts (store_trace_part): merged as RFC 7396 merge patches ---- */

/* target with patch applied (RFC 7396: objects merge key by key, null removes, anything else
 * replaces); takes both references, returns the result's. */
static json_t *merge_patch(json_t *target, json_t *patch)
{
    if (!json_is_object(patch)) {
        json_decref(target);
        return patch;
    }
    if (!json_is_object(target)) {
        json_decref(target);
        target = json_object();
    }
    const char *k;
    json_t *v;
    json_object_foreach(patch, k, v) {
        if (json_is_null(v))
            json_object_del(target, k);
        else
            json_object_set_new(target, k, merge_patch(json_incref(json_object_get(target, k)), json_incref(v)));
    }
    json_decref(patch);
    return target;
}

/* The JSON text of text1 patched by text2 (both objects), or NULL when either is not JSON;
 * without text2's "prompt" when onto a trace (a part's prompt never reaches a trace). */
static char *patched(const char *text1, size_t len1, const char *text2, size_t len2, bool onto_trace)
{
    json_t *a = json_loadb(text1, len1, 0, NULL), *b = json_loadb(text2, len2, 0, NULL);
    if (!a || !b) {
        json_decref(a);
        json_decref(b);
        return NULL;
    }
    if (onto_trace)
        json_object_del(b, "prompt");
    json_t *m = merge_patch(a, b);
    char *out = jtree_dump_text(m, false);
    json_decref(m);
    return out;
}

/* Patches the stored row's body (table traces or trace_parts) with json (or,
 * under, json patched by the stored body: the stored fields win); *found
 * says whether the row was there. */
static int patch_row(pg_store *s, bool parts, bool under, const char *id, const char *json, size_t len, bool *found,
                     char *err, size_t errlen)
{
    pgq *q = pgq_new(s->wconn, parts ? "SELECT body FROM trace_parts WHERE id = ?1 FOR UPDATE"
                                     : "SELECT body FROM traces WHERE " BY_ID("?1") " FOR UPDATE");
    pgq_text(q, 1, id);
    int rc = pgq_step(q);
    *found = rc == PGQ_ROW;
    char *text = NULL;
    if (rc == PGQ_ROW)
        text = under ? patched(json, len, pgq_col(q, 0), (size_t)pgq_len(q, 0), false)
                     : patched(pgq_col(q, 0), (size_t)pgq_len(q, 0), json, len, !parts);
    else if (rc == PGQ_ERROR)
        snprintf(err, errlen, "%s", q->err);
    pgq_free(q);
    if (rc == PGQ_ERROR)
        return -1;
    if (!*found)
        return 0;
    if (!text) {
        snprintf(err, errlen, "the stored body of '%s' or its part is not JSON", id);
        return -1;
    }
    q = pgq_new(s->wconn, parts ? "UPDATE trace_parts SET body = ?2 WHERE id = ?1"
                                : "UPDATE traces SET body = ?2::json WHERE " BY_ID("?1"));
    pgq_text(q, 1, id);
    pgq_text(q, 2, text);
    free(text);
    rc = run(q, err, errlen);
    pgq_free(q);
    return rc;
}

/* A trace just inserted takes the part that waited for it. */
static int join_waiting_part(pg_store *s, const char *id, char *err, size_t errlen)
{
    pgq *q = pgq_new(s->wconn, "DELETE FROM trace_parts WHERE id = ?1 RETURNING body");
    pgq_text(q, 1, id);
    int rc = pgq_step(q);
    char *part = rc == PGQ_ROW ? xstrdup(pgq_col(q, 0)) : NULL;
    if (rc == PGQ_ERROR)
        snprintf(err, errlen, "%s", q->err);
    pgq_free(q);
    if (rc == PGQ_ERROR)
        return -1;
    if (!part)
        return 0;
    bool found;
    rc = patch_row(s, false, false, id, part, strlen(part), &found, err, errlen);
    free(part);
    return rc;
}

/* A part merges into its trace when the trace is there, else waits (merged with one waiting). */
static int apply_part(pg_store *s, const store_trace_part *p, int64_t received, unsigned char *result, char *err,
                      size_t errlen)
{
    bool found;
    if (p->waits_only) {
        /* the id table: traces has no index on id (its partitions would each be scanned) */
        pgq *q = pgq_new(s->wconn, "SELECT 1 FROM trace_ids WHERE id = ?1");
        pgq_text(q, 1, p->id);
        int rc = pgq_step(q);
        if (rc == PGQ_ERROR)
            snprintf(err, errlen, "%s", q->err);
        pgq_free(q);
        if (rc == PGQ_ERROR)
            return -1;
        if (rc == PGQ_ROW) {
            *result = STORE_PART_DUPLICATE;
            return 0;
        }
    } else if (patch_row(s, false, false, p->id, p->json, p->json_len, &found, err, errlen)) {
        return -1;
    } else if (found) {
        *result = STORE_PART_MERGED;
        return 0;
    }
    *result = STORE_PART_WAITING;
    /* a part that only waits (log records' trace) goes under the one
     * waiting: the span's fields win, in whichever order the two came */
    if (patch_row(s, true, p->waits_only, p->id, p->json, p->json_len, &found, err, errlen))
        return -1;
    if (found)
        return 0;
    pgq *q = pgq_new(s->wconn, "INSERT INTO trace_parts(id, ts, body) VALUES (?1, ?2, ?3)");
    pgq_text(q, 1, p->id);
    pgq_int(q, 2, received);
    pgq_textn(q, 3, p->json, p->json_len);
    int rc = run(q, err, errlen);
    pgq_free(q);
    return rc;
}

/* The rest of a write once insert_traces has put its traces in. */
static int apply_write(pg_store *s, store_write *w, int64_t received, char *err, size_t errlen)
{
    if (w->claim && apply_claim(s, w->claim, err, errlen))
        return -1;
    for (size_t i = 0; i < w->ntraces; i++)
        if (w->trace_results[i] == STORE_ACCEPTED && w->traces[i].join_part &&
            join_waiting_part(s, w->traces[i].id, err, errlen))
            return -1;
    for (size_t i = 0; i < w->nparts; i++)
        if (apply_part(s, &w->parts[i], received, &w->part_results[i], err, errlen))
            return -1;
    if (w->nparts) {
        pgq *q = pgq_new(s->wconn, "DELETE FROM trace_parts WHERE ts < ?1");
        pgq_int(q, 1, received - STORE_PART_TTL_MS);
        int rc = run(q, err, errlen);
        pgq_free(q);
        if (rc)
            return -1;
    }
    for (size_t i = 0; i < w->ntraces; i++) {
        store_trace *t = &w->traces[i];
        if (w->trace_results[i] == STORE_ACCEPTED && t->retry_of) {
            /* Implicit feedback: the earlier trace was retried by this one. */
            char fid[200], body[400];
            unsigned char ignored;
            snprintf(fid, sizeof fid, "retry:%s", t->id);
            json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "id", fid, "trace_id", t->retry_of, "source", "retry",
                                  "retried_by", t->id);
            size_t n = json_dumpb(o, body, sizeof body, JSON_COMPACT);
            json_decref(o);
            if (insert_feedback(s, fid, t->retry_of, "retry", 0, true, t->ts_ms, body, n, &ignored, err, errlen))
                return -1;
        }
    }
    for (size_t i = 0; i < w->nfeedback; i++) {
        store_feedback *f = &w->feedback[i];
        pgq *q = pgq_new(s->wconn, "SELECT prompt, version FROM traces WHERE " BY_ID("?1"));
        pgq_text(q, 1, f->trace_id);
        int rc = pgq_step(q);
        if (rc == PGQ_ROW) {
            free(f->trace_prompt); /* a retried transaction sets it again */
            f->trace_prompt = xstrdup(pgq_col(q, 0));
            f->trace_version = pgq_col_int(q, 1);
        } else if (rc == PGQ_ERROR) {
            snprintf(err, errlen, "%s", q->err);
        }
        pgq_free(q);
        if (rc == PGQ_ERROR)
            return -1;
        if (rc == PGQ_DONE) {
            w->feedback_results[i] = STORE_NOT_FOUND;
            continue;
        }
        if (insert_feedback(s, f->id, f->trace_id, f->source, f->thumbs, f->negative, f->ts_ms, f->json, f->json_len,
                            &w->feedback_results[i], err, errlen))
            return -1;
    }
    for (size_t i = 0; i < w->nevals; i++)
        if (apply_evaluation(s, &w->evals[i], err, errlen))
            return -1;
    for (size_t i = 0; i < w->nllm_calls; i++) {
        const store_llm_call *c = &w->llm_calls[i];
        pgq *q = pgq_new(s->wconn, "INSERT INTO llm_calls(id, ts, caller_kind, caller, run_id, provider, model, "
                                   "input_tokens, output_tokens, cost, attempts, status, error, latency_ms, request_id) "
                                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) "
                                   "ON CONFLICT(id) DO NOTHING");
        pgq_text(q, 1, c->id);
        pgq_int(q, 2, c->ts_ms);
        pgq_text(q, 3, c->caller_kind);
        pgq_text(q, 4, c->caller);
        pgq_text(q, 5, c->run_id);
        pgq_text(q, 6, c->provider);
        pgq_text(q, 7, c->model);
        pgq_int(q, 8, c->input_tokens);
        pgq_int(q, 9, c->output_tokens);
        pgq_double(q, 10, c->cost);
        pgq_int(q, 11, c->attempts);
        pgq_text(q, 12, c->status);
        pgq_text(q, 13, c->error);
        pgq_double(q, 14, c->latency_ms);
        pgq_text(q, 15, c->request_id && *c->request_id ? c->request_id : NULL);
        int rc = run(q, err, errlen);
        pgq_free(q);
        if (rc)
            return rc;
    }
    if (w->upkeep) /* retention: the partitions went before this transaction; their ids now */
        return w->retention_before_ms > 0
                   ? pg_parts_cleanup(s->wconn, w->retention_before_ms, w->retention_limit * PG_RETENTION_ID_FACTOR,
                                      err, errlen)
                   : 0;
    return apply_ops(s, w->ops, err, errlen);
}

static void set_health(pg_store *s, bool healthy, const char *why)
{
    pthread_mutex_lock(&s->q.mu);
    s->healthy = healthy;
    snprintf(s->last_error, sizeof s->last_error, "%s", healthy ? "" : why);
    pthread_mutex_unlock(&s->q.mu);
}

/* With s->q.mu held: answers every queued write as failed (nothing of it stored), so no
 * request waits on a database that is away. */
static void fail_queued_locked(pg_store *s, const char *why)
{
    if (!s->q.queue_head)
        return;
    size_t items;
    store_write *batch = store_wqueue_take_locked(&s->q, &items);
    for (store_write *w = batch; w; w = w->next) {
        store_write_fail(w, -1);
        s->commit_failures++;
    }
    log_error("store", "writes not stored, the database is away: %s", why);
    store_wqueue_done_locked(&s->q, batch);
    uv_async_send(&s->done_async);
}

/* Reconnects the writer's connection, waiting between tries (backoff, up to
 * RECONNECT_MAX_MS) until it is up or the store stops; writes queued meanwhile
 * fail at once. Returns false when stopping. */
static bool reconnect(pg_store *s)
{
    int wait_ms = RECONNECT_MIN_MS;
    for (;;) {
        char err[256];
        PQfinish(s->wconn);
        s->prepared = false;
        pg_parts_forget(&s->parts);
        s->wconn = connect_db(s->dsn, s->engine_id, err, sizeof err);
        if (s->wconn) {
            pthread_mutex_lock(&s->q.mu);
            s->reconnects++;
            pthread_mutex_unlock(&s->q.mu);
            log_info("store", "connected to PostgreSQL again");
            return true;
        }
        set_health(s, false, err);
        pthread_mutex_lock(&s->q.mu);
        fail_queued_locked(s, err);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += wait_ms / 1000;
        until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!s->q.stopping && !s->q.queue_head &&
               pthread_cond_timedwait(&s->q.cond, &s->q.mu, &until) == 0)
            ;
        fail_queued_locked(s, err);
        bool stop = s->q.stopping;
        pthread_mutex_unlock(&s->q.mu);
        if (stop)
            return false;
        wait_ms = wait_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : wait_ms * 2;
    }
}

/* Before a batch's transaction, in transactions of their own (DDL takes the parent's lock,
 * which a group commit must not hold or wait for): the partitions the batch's traces need, and
 * the leader's upkeep (partitions ahead, those past the retention dropped). A failure is logged:
 * the traces then go to traces_default, the upkeep is tried again at the next. */
static void partitions_before(pg_store *s, store_write *batch, int64_t now)
{
    size_t n = 0;
    for (store_write *w = batch; w; w = w->next)
        n += w->ntraces;
    if (n) {
        int64_t *ts = xcalloc(n, sizeof *ts);
        size_t k = 0;
        for (store_write *w = batch; w; w = w->next)
            for (size_t i = 0; i < w->ntraces; i++)
                ts[k++] = w->traces[i].ts_ms;
        pg_parts_for_batch(&s->parts, s->wconn, ts, n, now);
        free(ts);
    }
    for (store_write *w = batch; w; w = w->next) {
        char err[256];
        if (w->upkeep && pg_parts_upkeep(&s->parts, s->wconn, now, w->retention_before_ms, err, sizeof err))
            log_warn("store", "the upkeep of the partitions of traces failed (tried again in a second): %s", err);
    }
}

static void *writer_main(void *arg)
{
    pg_store *s = arg;
    for (;;) {
        if (PQstatus(s->wconn) != CONNECTION_OK && !reconnect(s)) {
            /* stopping with the database away: what is queued fails below */
        }
        pthread_mutex_lock(&s->q.mu);
        /* idle for a second: ask the server, so a database gone while nothing is written
         * shows in /readyz before the next write fails */
        while (!s->q.queue_head && !s->q.stopping) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += IDLE_PING_S;
            if (pthread_cond_timedwait(&s->q.cond, &s->q.mu, &until) == 0 || s->q.queue_head || s->q.stopping)
                continue;
            pthread_mutex_unlock(&s->q.mu);
            char err[256] = "";
            bool up = PQstatus(s->wconn) == CONNECTION_OK && pg_exec(s->wconn, "SELECT 1", err, sizeof err) == 0;
            if (!up) {
                if (!err[0])
                    snprintf(err, sizeof err, "no connection to PostgreSQL");
                log_warn("store", "PostgreSQL is not answering: %s; reconnecting", err);
                set_health(s, false, err);
                if (!reconnect(s)) {
                    pthread_mutex_lock(&s->q.mu);
                    break;
                }
            }
            pthread_mutex_lock(&s->q.mu);
            if (up || PQstatus(s->wconn) == CONNECTION_OK) {
                s->healthy = true;
                s->last_error[0] = 0;
            }
        }
        size_t items;
        store_write *batch = store_wqueue_take_locked(&s->q, &items);
        bool stop = s->q.stopping && !batch;
        pthread_mutex_unlock(&s->q.mu);
        if (stop)
            break;

        int64_t received = now_ms();
        if (PQstatus(s->wconn) == CONNECTION_OK)
            partitions_before(s, batch, received);
        uint64_t began = mono_ns();
        char err[256] = "";
        int rc = PQstatus(s->wconn) == CONNECTION_OK ? pg_exec(s->wconn, "BEGIN", err, sizeof err) : -1;
        if (rc && !err[0])
            snprintf(err, sizeof err, "no connection to PostgreSQL");
        /* fencing: the loop leader's decisions commit only while its epoch is the current one;
         * FOR SHARE holds the row, so a new leader's bump waits for this commit or comes first */
        bool any_fenced = false, fence_ok = true, any_ops = false;
        for (store_write *w = batch; w; w = w->next) {
            any_fenced |= w->fenced;
            any_ops |= w->nops > 0 && !w->fenced && !w->upkeep;
        }
        if (!rc && any_fenced) {
            pthread_mutex_lock(&s->q.mu);
            int64_t epoch = s->leader ? s->epoch : -1;
            pthread_mutex_unlock(&s->q.mu);
            pgq *q = pgq_new(s->wconn, "SELECT 1 FROM ratchet_leader WHERE epoch = ?1 AND engine = ?2 FOR SHARE");
            pgq_int(q, 1, epoch);
            pgq_text(q, 2, s->engine_id);
            int frc = pgq_step(q);
            if (frc == PGQ_ERROR) {
                snprintf(err, sizeof err, "%s", q->err);
                rc = -1;
            }
            fence_ok = frc == PGQ_ROW;
            pgq_free(q);
            if (!rc && !fence_ok)
                log_warn("store", "a loop decision was refused: this engine no longer leads (epoch %lld)",
                         (long long)epoch);
        }
        if (!rc)
            rc = insert_traces(s, batch, fence_ok, received, err, sizeof err);
        if (!rc)
            rc = add_trace_minutes(s, batch, fence_ok, err, sizeof err);
        for (store_write *w = batch; !rc && w; w = w->next) {
            if (w->fenced && !fence_ok) {
                w->status = -2; /* fenced: nothing of it stored; the rest of the batch commits */
                continue;
            }
            any_ops |= w->nops > 0 && !w->upkeep;
            rc = apply_write(s, w, received, err, sizeof err);
        }
        /* the other engines reload their registry once this commits (NOTIFY is transactional) */
        if (!rc && any_ops) {
            pgq *q = pgq_new(s->wconn, "SELECT pg_notify('ratchet_registry', ?1)");
            pgq_text(q, 1, s->engine_id);
            rc = run(q, err, sizeof err);
            pgq_free(q);
        }
        /* the ack waits for COMMIT, which with synchronous_commit on returns once the WAL is flushed */
        if (!rc)
            rc = pg_exec(s->wconn, "COMMIT", err, sizeof err);
        if (rc) {
            log_error("store", "commit failed, %zu writes not stored: %s", items, err);
            if (PQstatus(s->wconn) == CONNECTION_OK) {
                char ignored[64];
                pg_exec(s->wconn, "ROLLBACK", ignored, sizeof ignored);
            }
            for (store_write *w = batch; w; w = w->next)
                store_write_fail(w, -1);
        }
        bool connected = PQstatus(s->wconn) == CONNECTION_OK;

        size_t nwrites = 0;
        for (store_write *w = batch; w; w = w->next)
            nwrites++;
        pthread_mutex_lock(&s->q.mu);
        s->healthy = rc == 0;
        snprintf(s->last_error, sizeof s->last_error, "%s", rc ? err : "");
        if (rc == 0) {
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
        if (!connected)
            log_warn("store", "lost the connection to PostgreSQL; reconnecting");
    }
    return NULL;
}

/* ---- reads ---- */

/* A read's deadline starts here (store.read_timeout_ms), for the connect too, and ends at its
 * release; a connection still busy then (its deadline passed mid-query) is closed, not pooled. */
PGconn *pg_read_acquire(pg_store *s, char *err, size_t errlen)
{
    pg_deadline_set(s->read_timeout_ms);
    pthread_mutex_lock(&s->read_mu);
    PGconn *c = s->read_free ? s->read_pool[--s->read_free] : NULL;
    pthread_mutex_unlock(&s->read_mu);
    if (c && PQstatus(c) == CONNECTION_OK)
        return c;
    PQfinish(c);
    c = connect_db(s->dsn, s->engine_id, err, errlen);
    if (c && s->read_timeout_ms > 0) {
        /* the server ends a read's statement at the deadline too (the client stops waiting then) */
        char sql[64];
        snprintf(sql, sizeof sql, "SET statement_timeout = %d", s->read_timeout_ms);
        if (pg_exec(c, sql, err, errlen)) {
            PQfinish(c);
            c = NULL;
        }
    }
    if (!c)
        pg_deadline_set(0);
    return c;
}

void pg_read_release(pg_store *s, PGconn *c)
{
    pg_deadline_set(0);
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE) {
        pthread_mutex_lock(&s->read_mu);
        if (s->read_free < s->read_max) {
            s->read_pool[s->read_free++] = c;
            c = NULL;
        }
        pthread_mutex_unlock(&s->read_mu);
    }
    PQfinish(c);
}

/* Claims (and re-claims) of owned work run one at a time across the engines, each in its own
 * transaction under CLAIM_LOCK, each statement with a snapshot taken after the lock: a claim
 * that found an owner's heartbeat stale has committed before that owner's re-claim reads the
 * rows, or the re-claim has committed before the claim reads the heartbeat (which is then
 * fresh). Without it a claim whose snapshot predates the owner's new heartbeat could commit
 * after the owner re-claimed, and both would work. */
static int claim_begin(pg_store *s, const char *sql, pgq **q, char *err, size_t errlen)
{
    PGconn *c = pg_read_acquire(s, err, errlen);
    *q = NULL;
    if (!c)
        return -1;
    char lock[96];
    snprintf(lock, sizeof lock, "BEGIN; SELECT pg_advisory_xact_lock(%d)", CLAIM_LOCK);
    if (pg_exec(c, lock, err, errlen)) {
        char why[256];
        snprintf(why, sizeof why, "%s", err);
        snprintf(err, errlen, "store read failed: %s", why);
        pg_read_release(s, c); /* not idle: closed, never pooled */
        return -1;
    }
    *q = pgq_new(c, sql);
    return 0;
}

static int claim_end(pg_store *s, pgq *q, int rc, char *err, size_t errlen)
{
    int out = 0;
    PGconn *c = q->conn;
    if (rc == PGQ_ERROR) {
        snprintf(err, errlen, "store read failed: %s", q->err);
        out = -1;
    }
    pgq_free(q);
    char why[256];
    if (pg_exec(c, out ? "ROLLBACK" : "COMMIT", why, sizeof why) && !out) {
        snprintf(err, errlen, "store read failed: %s", why);
        out = -1;
    }
    pg_read_release(s, c);
    return out;
}

/* The unfinished runs whose owner is gone (no heartbeat for ENGINE_STALE_MS on the database's
 * clock, or none recorded), claimed for this engine in one statement: the row lock makes it a
 * compare-and-set, an engine that waits on another's claim re-checks the row and finds its new
 * owner alive. */
int pg_unfinished_runs(store *base, json_t **ids, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    pgq *q;
    *ids = json_array();
    if (claim_begin(s,
                    "WITH claimed AS (UPDATE runs SET owner = ?1 WHERE state IN ('preparing', 'running') AND "
                    "(owner IS NULL OR (owner <> ?1 AND NOT EXISTS (SELECT 1 FROM ratchet_engines e "
                    "WHERE e.id = runs.owner AND e.last_seen >= " DB_NOW_MS " - ?2))) RETURNING id, created_at) "
                    "SELECT id FROM claimed ORDER BY created_at, id",
                    &q, err, errlen))
        return -1;
    pgq_text(q, 1, s->engine_id);
    pgq_int(q, 2, ENGINE_STALE_MS);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*ids, pgq_col_text(q, 0));
    return claim_end(s, q, rc, err, errlen);
}

/* Of the runs this engine set aside when its lease lapsed, those still its own and unfinished
 * (no other engine claimed them meanwhile), re-claimed under CLAIM_LOCK. */
static int pg_reclaim_runs(store *base, const json_t *ids, json_t **kept, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    pgq *q;
    *kept = json_array();
    char *list = json_dumps(ids, JSON_COMPACT);
    if (claim_begin(s,
                    "UPDATE runs SET owner = ?1 WHERE id IN (SELECT json_array_elements_text(?2::json)) AND "
                    "owner = ?1 AND state IN ('preparing', 'running') RETURNING id",
                    &q, err, errlen)) {
        free(list);
        return -1;
    }
    pgq_text(q, 1, s->engine_id);
    pgq_text(q, 2, list);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(*kept, pgq_col_text(q, 0));
    free(list);
    return claim_end(s, q, rc, err, errlen);
}

/* The same for online evaluation: unevaluated traces of a prompt whose engine is gone. */
static int pg_claim_unevaluated(store *base, const char *prompt, int limit, char ***ids, size_t *n, char *err,
                                size_t errlen)
{
    pg_store *s = (pg_store *)base;
    pgq *q;
    if (claim_begin(s,
                    "UPDATE traces SET engine = ?1 WHERE prompt = ?3 AND (ts, seq) IN (SELECT ts, seq FROM traces t "
                    "WHERE t.prompt = ?3 AND "
                    "t.verdict IS NULL AND (t.engine IS NULL OR (t.engine <> ?1 AND NOT EXISTS (SELECT 1 FROM "
                    "ratchet_engines e WHERE e.id = t.engine AND e.last_seen >= " DB_NOW_MS " - ?2))) ORDER BY "
                    "t.seq LIMIT ?4) AND verdict IS NULL AND (engine IS NULL OR (engine <> ?1 AND NOT EXISTS "
                    "(SELECT 1 FROM ratchet_engines e WHERE e.id = traces.engine AND e.last_seen >= " DB_NOW_MS
                    " - ?2))) RETURNING id",
                    &q, err, errlen))
        return -1;
    pgq_text(q, 1, s->engine_id);
    pgq_int(q, 2, ENGINE_STALE_MS);
    pgq_text(q, 3, prompt);
    pgq_int(q, 4, limit);
    *ids = xcalloc((size_t)(limit > 0 ? limit : 1), sizeof **ids);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW && *n < (size_t)limit)
        (*ids)[(*n)++] = xstrdup(pgq_col(q, 0));
    return claim_end(s, q, rc, err, errlen);
}

/* Of the traces this engine held back when its lease lapsed, those still its own and
 * unevaluated; keep[i] says which. */
static int pg_reclaim_traces(store *base, char *const *ids, size_t n, bool *keep, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        keep[i] = false;
        json_array_append_new(arr, json_string(ids[i]));
    }
    char *list = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    pgq *q;
    if (claim_begin(s,
                    "UPDATE traces SET engine = ?1 WHERE id IN (SELECT json_array_elements_text(?2::json)) AND "
                    "engine = ?1 AND verdict IS NULL RETURNING id",
                    &q, err, errlen)) {
        free(list);
        return -1;
    }
    pgq_text(q, 1, s->engine_id);
    pgq_text(q, 2, list);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        for (size_t i = 0; i < n; i++)
            if (!keep[i] && !strcmp(ids[i], pgq_col(q, 0))) {
                keep[i] = true;
                break;
            }
    free(list);
    return claim_end(s, q, rc, err, errlen);
}

int pg_read_begin(pg_store *s, const char *sql, pgq **q, char *err, size_t errlen)
{
    PGconn *c = pg_read_acquire(s, err, errlen);
    if (!c) {
        *q = NULL;
        return -1;
    }
    *q = pgq_new(c, sql);
    return 0;
}

int pg_read_end(pg_store *s, pgq *q, int rc, char *err, size_t errlen)
{
    int out = 0;
    if (rc == PGQ_ERROR) {
        snprintf(err, errlen, "store read failed: %s", q->err);
        out = -1;
    }
    PGconn *c = q->conn;
    pgq_free(q);
    pg_read_release(s, c);
    return out;
}

static const char *verdict_name(const pgq *q, int verdict_col, int negative_col)
{
    if (pgq_col_int(q, negative_col) == 1 || (!pgq_isnull(q, verdict_col) && pgq_col_int(q, verdict_col) == 1))
        return "fail";
    if (pgq_isnull(q, verdict_col))
        return "unevaluated";
    int64_t v = pgq_col_int(q, verdict_col);
    return v == 0 ? "pass" : v == 2 ? "error" : "unevaluated";
}

/* A trace as the API gives it: the body with the canonical id, timestamp and verdict put in
 * and inline feedback taken out. Columns: body, id, ts, verdict, negative. */
static json_t *trace_object(const pgq *q, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *t = json_loadb(pgq_col(q, 0), (size_t)pgq_len(q, 0), 0, &jerr);
    if (!t || !json_is_object(t)) {
        snprintf(err, errlen, "stored trace '%s' is not a JSON object: %s", pgq_col(q, 1), t ? "" : jerr.text);
        json_decref(t);
        return NULL;
    }
    char when[32];
    rfc3339_format(pgq_col_int(q, 2), when);
    json_object_set_new(t, "id", json_string(pgq_col(q, 1)));
    json_object_set_new(t, "timestamp", json_string(when));
    json_object_set_new(t, "verdict", json_string(verdict_name(q, 3, 4)));
    json_object_del(t, "feedback");
    return t;
}

#define TRACE_COLUMNS "body, id, ts, verdict, negative"

static int add_scores(PGconn *c, const char *id, json_t *trace, char *err, size_t errlen)
{
    pgq *q = pgq_new(c, "SELECT evaluator, script, version, required, status, pass, score, reason, ts "
                        "FROM scores WHERE trace_id = ?1 ORDER BY evaluator");
    pgq_text(q, 1, id);
    json_t *arr = json_array();
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        char when[32];
        rfc3339_format(pgq_col_int(q, 8), when);
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:b, s:s, s:b, s:f, s:s, s:s}", "evaluator",
                                             pgq_col(q, 0), "script", pgq_col(q, 1), "version", pgq_col(q, 2),
                                             "required", (int)pgq_col_int(q, 3), "status", pgq_col(q, 4), "pass",
                                             (int)pgq_col_int(q, 5), "score", pgq_col_double(q, 6), "reason",
                                             pgq_col(q, 7), "evaluated_at", when));
    }
    json_object_set_new(trace, "scores", arr);
    if (rc == PGQ_ERROR)
        snprintf(err, errlen, "store read failed: %s", q->err);
    pgq_free(q);
    return rc == PGQ_ERROR ? -1 : 0;
}

/* [feedback bodies] of a trace, oldest first; NULL with err. */
static json_t *feedback_of(PGconn *c, const char *id, char *err, size_t errlen)
{
    pgq *q = pgq_new(c, "SELECT body FROM feedback WHERE trace_id = ?1 ORDER BY seq");
    pgq_text(q, 1, id);
    json_t *fb = json_array();
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        json_t *f = json_loadb(pgq_col(q, 0), (size_t)pgq_len(q, 0), 0, NULL);
        if (f)
            json_array_append_new(fb, f);
    }
    if (rc == PGQ_ERROR) {
        snprintf(err, errlen, "store read failed: %s", q->err);
        json_decref(fb);
        fb = NULL;
    }
    pgq_free(q);
    return fb;
}

static int pg_get_trace_json(store *base, const char *id, buf_t *out, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    pgq *q;
    if (pg_read_begin(s, "SELECT " TRACE_COLUMNS ", received_at FROM traces WHERE " BY_ID("?1"), &q, err, errlen))
        return -1;
    pgq_text(q, 1, id);
    int rc = pgq_step(q), ret = -1;
    json_t *trace = NULL;
    if (rc == PGQ_DONE)
        ret = 1;
    if (rc != PGQ_ROW || !(trace = trace_object(q, err, errlen)))
        goto done;
    char when[32];
    rfc3339_format(pgq_col_int(q, 5), when);
    json_object_set_new(trace, "received_at", json_string(when));
    json_t *fb = feedback_of(q->conn, id, err, errlen);
    if (!fb)
        goto done;
    json_object_set_new(trace, "feedback", fb);
    if (add_scores(q->conn, id, trace, err, errlen) != 0)
        goto done;
    char *text = jtree_dump_text(trace, false);
    buf_puts(out, text);
    free(text);
    ret = 0;
done:
    json_decref(trace);
    if (pg_read_end(s, q, rc, err, errlen))
        return -1;
    return ret;
}

static int pg_list_traces_json(store *base, const store_trace_query *qr, buf_t *out, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    buf_t sql;
    buf_init(&sql);
    if (qr->tag) {
        /* along the tag's rows (migration 8), newest first: (tag, prompt, ts, seq) or (tag, ts, seq),
         * each trace found by seq. Joined on seq alone: with "AND traces.ts = tag_ts" too the
         * planner multiplies the two conditions' selectivities, expects one row, and at a common
         * tag hashes both tables whole (2.7 s at a million traces, bench/RESULTS.md). Since the
         * partitioning traces has no index on seq alone: each tag row takes its trace by (ts, seq)
         * in a LATERAL subquery (its LIMIT keeps the planner from flattening it into a join), an
         * index probe of one partition per row, and the tags' order stops the scan at the page */
        buf_puts(&sql, "SELECT " TRACE_COLUMNS ", seq FROM trace_tags CROSS JOIN LATERAL (SELECT " TRACE_COLUMNS
                       ", seq, prompt, version FROM traces WHERE traces.ts = tag_ts AND traces.seq = tag_seq "
                       "LIMIT 1) traces WHERE tag = ?10 AND tag_ts >= ?1 AND tag_ts < ?2");
        if (qr->prompt)
            buf_puts(&sql, " AND tag_prompt = ?3");
        if (qr->has_cursor)
            buf_puts(&sql, " AND (tag_ts, tag_seq) < (?5, ?6)");
    } else {
        buf_puts(&sql, "SELECT " TRACE_COLUMNS ", seq FROM traces WHERE ts >= ?1 AND ts < ?2");
        if (qr->prompt)
            buf_puts(&sql, " AND prompt = ?3");
        if (qr->has_cursor)
            buf_puts(&sql, " AND (ts, seq) < (?5, ?6)");
    }
    if (qr->version)
        buf_puts(&sql, " AND version = ?4");
    if (qr->failed == 1)
        buf_puts(&sql, " AND (verdict = 1 OR negative = 1)");
    else if (qr->failed == 0)
        buf_puts(&sql, " AND NOT (verdict = 1 OR negative = 1)");
    if (qr->evaluator)
        buf_puts(&sql, " AND EXISTS (SELECT 1 FROM scores sc WHERE sc.trace_id = traces.id AND sc.evaluator = ?8"
                       " AND sc.pass = 0)");
    if (qr->feedback == 1)
        buf_puts(&sql, " AND negative = 1");
    else if (qr->feedback == 2)
        buf_puts(&sql, " AND EXISTS (SELECT 1 FROM feedback f WHERE f.trace_id = traces.id)");
    if (qr->text)
        buf_puts(&sql, " AND strpos(body::text, ?9) > 0");
    buf_puts(&sql, qr->tag ? " ORDER BY tag_ts DESC, tag_seq DESC LIMIT ?7" : " ORDER BY ts DESC, seq DESC LIMIT ?7");
    pgq *q;
    int bad = pg_read_begin(s, sql.data, &q, err, errlen);
    buf_free(&sql);
    if (bad)
        return -1;
    pgq_int(q, 1, qr->since_ms);
    pgq_int(q, 2, qr->until_ms);
    pgq_text(q, 3, qr->prompt);
    pgq_int(q, 4, qr->version);
    pgq_int(q, 5, qr->has_cursor ? qr->cursor_ts : 0);
    pgq_int(q, 6, qr->has_cursor ? qr->cursor_seq : 0);
    pgq_int(q, 7, qr->limit + 1); /* one more tells whether a next page exists */
    pgq_text(q, 8, qr->evaluator);
    pgq_text(q, 9, qr->text);
    pgq_text(q, 10, qr->tag);
    buf_puts(out, "{\"items\":[");
    int n = 0, rc;
    int64_t last_ts = 0, last_seq = 0;
    bool failed = false;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        if (n == qr->limit) {
            n++;
            break;
        }
        json_t *t = trace_object(q, err, errlen);
        if (!t) {
            failed = true;
            break;
        }
        char *text = jtree_dump_text(t, false);
        json_decref(t);
        if (n)
            buf_puts(out, ",");
        buf_puts(out, text);
        free(text);
        last_ts = pgq_col_int(q, 2);
        last_seq = pgq_col_int(q, 5);
        n++;
    }
    if (pg_read_end(s, q, rc, err, errlen) || failed)
        return -1;
    if (n > qr->limit)
        buf_printf(out, "],\"next_cursor\":\"%llx.%llx\"}", (unsigned long long)last_ts, (unsigned long long)last_seq);
    else
        buf_puts(out, "],\"next_cursor\":null}");
    return 0;
}

static int pg_get_trace_parts(store *base, char *const *ids, size_t n, char **bodies, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    for (size_t i = 0; i < n; i++)
        bodies[i] = NULL;
    PGconn *c = pg_read_acquire(s, err, errlen);
    if (!c)
        return -1;
    int ret = 0;
    for (size_t i = 0; i < n && !ret; i++) {
        pgq *q = pgq_new(c, "SELECT body FROM trace_parts WHERE id = ?1");
        pgq_text(q, 1, ids[i]);
        int rc = pgq_step(q);
        if (rc == PGQ_ERROR) {
            snprintf(err, errlen, "store read failed: %s", q->err);
            ret = -1;
        } else if (rc == PGQ_ROW) {
            bodies[i] = xstrdup(pgq_col(q, 0));
        }
        pgq_free(q);
    }
    pg_read_release(s, c);
    if (ret)
        for (size_t k = 0; k < n; k++) {
            free(bodies[k]);
            bodies[k] = NULL;
        }
    return ret;
}

static int pg_get_traces_for_eval(store *base, char *const *ids, size_t n, char **json, char **prompt,
                                  int64_t *version, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    for (size_t i = 0; i < n; i++) {
        json[i] = prompt[i] = NULL;
        version[i] = 0;
    }
    PGconn *c = pg_read_acquire(s, err, errlen);
    if (!c)
        return -1;
    int ret = 0;
    for (size_t i = 0; i < n && !ret; i++) {
        pgq *q = pgq_new(c, "SELECT " TRACE_COLUMNS ", prompt, version FROM traces WHERE " BY_ID("?1"));
        pgq_text(q, 1, ids[i]);
        int rc = pgq_step(q);
        if (rc == PGQ_ERROR) {
            snprintf(err, errlen, "store read failed: %s", q->err);
            ret = -1;
        } else if (rc == PGQ_ROW) {
            json_t *t = trace_object(q, err, errlen);
            json_t *fb = t ? feedback_of(c, ids[i], err, errlen) : NULL;
            if (!t || !fb) {
                json_decref(t);
                ret = -1;
            } else {
                json_object_set_new(t, "feedback", fb);
                json[i] = jtree_dump_text(t, false);
                prompt[i] = xstrdup(pgq_col(q, 5));
                version[i] = pgq_col_int(q, 6);
                json_decref(t);
            }
        }
        pgq_free(q);
    }
    pg_read_release(s, c);
    if (ret)
        for (size_t k = 0; k < n; k++) {
            free(json[k]);
            free(prompt[k]);
            json[k] = prompt[k] = NULL;
        }
    return ret;
}

static int pg_list_trace_ids(store *base, const char *prompt, int64_t since_ms, int64_t until_ms,
                             bool only_unevaluated, int64_t *cur_ts, int64_t *cur_seq, int limit, char ***ids,
                             size_t *n, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    *ids = NULL;
    *n = 0;
    pgq *q;
    if (pg_read_begin(s,
                      "SELECT ts, seq, id FROM traces WHERE prompt = ?1 AND ts >= ?2 AND ts < ?3 AND "
                      "(ts, seq) > (?4, ?6) AND (?7 = 0 OR verdict IS NULL) ORDER BY ts, seq LIMIT ?5",
                      &q, err, errlen))
        return -1;
    pgq_text(q, 1, prompt);
    pgq_int(q, 2, since_ms);
    pgq_int(q, 3, until_ms);
    pgq_int(q, 4, *cur_ts);
    pgq_int(q, 5, limit);
    pgq_int(q, 6, *cur_seq);
    pgq_int(q, 7, only_unevaluated);
    *ids = xcalloc((size_t)limit, sizeof **ids);
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW) {
        *cur_ts = pgq_col_int(q, 0);
        *cur_seq = pgq_col_int(q, 1);
        (*ids)[(*n)++] = xstrdup(pgq_col(q, 2));
    }
    return pg_read_end(s, q, rc, err, errlen);
}

static int pg_llm_totals(store *base, int64_t since_ms, const char *run_id, int64_t *calls, int64_t *tokens,
                         double *cost, char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    pgq *q;
    if (pg_read_begin(s,
                      "SELECT count(*), coalesce(sum(input_tokens + output_tokens), 0), coalesce(sum(cost), 0) "
                      "FROM llm_calls WHERE ts >= ?1 AND (?2::text IS NULL OR run_id = ?2)",
                      &q, err, errlen))
        return -1;
    pgq_int(q, 1, since_ms);
    pgq_text(q, 2, run_id);
    int rc = pgq_step(q);
    if (rc == PGQ_ROW) {
        *calls = pgq_col_int(q, 0);
        *tokens = (int64_t)pgq_col_double(q, 1);
        *cost = pgq_col_double(q, 2);
    }
    return pg_read_end(s, q, rc, err, errlen);
}

static int pg_list_llm_calls_json(store *base, int64_t since_ms, const char *caller_kind, int limit, buf_t *out,
                                  char *err, size_t errlen)
{
    pg_store *s = (pg_store *)base;
    pgq *q;
    if (pg_read_begin(s,
                      "SELECT id, ts, caller_kind, caller, run_id, provider, model, input_tokens, output_tokens, cost, "
                      "attempts, status, error, latency_ms, request_id FROM llm_calls "
                      "WHERE ts >= ?1 AND (?2::text IS NULL OR caller_kind = ?2) ORDER BY seq DESC LIMIT ?3",
                      &q, err, errlen))
        return -1;
    pgq_int(q, 1, since_ms);
    pgq_text(q, 2, caller_kind);
    pgq_int(q, 3, limit);
    json_t *items = json_array();
    int rc;
    while ((rc = pgq_step(q)) == PGQ_ROW)
        json_array_append_new(
            items, json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:f, s:I, s:o, s:o, s:f, s:o}", "id",
                             pgq_col_text(q, 0), "ts", pgq_col_time(q, 1), "caller_kind", pgq_col_text(q, 2), "caller",
                             pgq_col_text(q, 3), "run_id", pgq_col_text(q, 4), "provider", pgq_col_text(q, 5), "model",
                             pgq_col_text(q, 6), "input_tokens", (json_int_t)pgq_col_int(q, 7), "output_tokens",
                             (json_int_t)pgq_col_int(q, 8), "cost", pgq_col_double(q, 9), "attempts",
                             (json_int_t)pgq_col_int(q, 10), "status", pgq_col_text(q, 11), "error",
                             pgq_col_text(q, 12), "latency_ms", pgq_col_double(q, 13), "request_id",
                             pgq_col_text(q, 14)));
    int r = pg_read_end(s, q, rc, err, errlen);
    if (!r) {
        json_t *root = json_pack("{s:o}", "items", items);
        char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
        buf_puts(out, text);
        free(text);
        json_decref(root);
    } else {
        json_decref(items);
    }
    return r;
}

static const store_backend pg_backend = {
    .name = "postgres",
    .shared = true,
    .upkeep = true,
    .metrics = pg_metrics,
    .flush = pg_flush,
    .close = pg_close,
    .submit = pg_submit,
    .healthy = pg_healthy,
    .status = pg_status,
    .leader = pg_leader,
    .lease_fresh = pg_lease_fresh,
    .lease_generation = pg_lease_generation,
    .live_engines = pg_live_engines,
    .reclaim_runs = pg_reclaim_runs,
    .reclaim_traces = pg_reclaim_traces,
    .on_cluster = pg_on_cluster,
    .set_scripts = pg_set_scripts,
    .get_trace_json = pg_get_trace_json,
    .list_traces_json = pg_list_traces_json,
    .get_traces_for_eval = pg_get_traces_for_eval,
    .get_trace_parts = pg_get_trace_parts,
    .list_trace_ids = pg_list_trace_ids,
    .llm_totals = pg_llm_totals,
    .list_llm_calls_json = pg_list_llm_calls_json,
    .load_registry = pg_load_registry,
    .list_transitions_json = pg_list_transitions_json,
    .dataset_cases = pg_dataset_cases,
    .select_traces = pg_select_traces,
    .dataset_versions = pg_dataset_versions,
    .failed_trace_cases = pg_failed_trace_cases,
    .passed_trace_cases = pg_passed_trace_cases,
    .cache_get = pg_cache_get,
    .get_run = pg_get_run,
    .list_runs = pg_list_runs,
    .unfinished_runs = pg_unfinished_runs,
    .claim_unevaluated = pg_claim_unevaluated,
    .run_cases = pg_run_cases,
    .run_result_keys = pg_run_result_keys,
    .run_results = pg_run_results,
    .load_loop_states = pg_load_loop_states,
    .list_loop_events = pg_list_loop_events,
    .prompt_metrics_sliced = pg_prompt_metrics_sliced,
    .prompt_series = pg_prompt_series,
};
