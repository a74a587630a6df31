#!/usr/bin/env bash
# bench/pg_partitions.sh — what partitioning traces by day costs and saves on PostgreSQL
# (docs/scale-out.md, "Retention and partitioning"), against a build without it, in one run:
#   (A) durable ingest, one engine: BASE_BIN (unpartitioned traces, dedup on traces.id) and
#       this build (daily partitions, the id table trace_ids written in the same statement),
#       RUNS rounds alternating which goes first; engine on CPU 0, wrk and the server on CPU 1
#       (as bench/pg.sh (2)); traces/s and CPU per trace of engine and server
#   (B) retention of one day of N traces (1 KB bodies, one score each), 40 days old, past a
#       retention of 30: the base build's path (batches of 1,000: scores, feedback and traces
#       deleted by rows, what it runs every second) and then VACUUM of the table it leaves,
#       against this build's (DROP TABLE of the day's partition, then the ids, scores and
#       feedback deleted 10,000 at a time), both as the exact SQL the engines run, timed
#       back to back in psql; and the migration of those N rows to the partitioned table
#       (this build's first start on the base build's database).
# Usage: BASE_BIN=/path/to/unpartitioned/ratchet bench/pg_partitions.sh [seconds] [runs] [N]
#        (make bench-pg-partitions builds BASE_REF, the commit before partitioning, as BASE_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
RUNS=${2:-3}
N=${3:-200000}
BIN=${RATCHET_BIN:-build/ratchet}
BASE=${BASE_BIN:?BASE_BIN: a ratchet built without partitioning (e.g. git archive of main, make build/ratchet)}
OUT=$(mktemp -d)
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL's initdb is not installed (make deps)" >&2; exit 1; }
AS=""
[ "$(id -u)" = 0 ] && AS="runuser -u postgres --" && chown postgres "$OUT"
PGPORT=$((20000 + RANDOM % 20000))
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    $AS "$PGBIN/pg_ctl" -D "$OUT/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$OUT"
}
trap cleanup EXIT
. bench/lib.sh

$AS "$PGBIN/initdb" -D "$OUT/pg" -A trust -U postgres -E UTF8 --locale=C > "$OUT/initdb.log" 2>&1
$AS "$PGBIN/pg_ctl" -D "$OUT/pg" -l "$OUT/pg.log" -w -o "-k $OUT -p $PGPORT -c listen_addresses='' -c synchronous_commit=on -c fsync=on -c shared_buffers=128MB -c max_wal_size=2GB" start > /dev/null
PSQL() { "$PGBIN/psql" -h "$OUT" -p "$PGPORT" -U postgres -Atq -v ON_ERROR_STOP=1 "$@"; }
ticks() { # pids... -> utime+stime in clock ticks, summed
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
pg_pids() { pgrep -u postgres -f "postgres" | tr '\n' ' '; }
HZ=$(getconf CLK_TCK)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "base: $BASE ($($BASE --version 2>/dev/null | head -1)); this: $BIN ($($BIN --version 2>/dev/null | head -1))"

# start BIN CPU LABEL CONFIG -> sets PID ADDR
start() {
    local dir="$OUT/$3"
    mkdir -p "$dir"
    printf 'access_log = false\nlog_level = "warn"\n%s\n' "$4" > "$dir/ratchet.conf"
    taskset -c "$2" "$1" serve -c "$dir/ratchet.conf" --listen 127.0.0.1:0 --data-dir "$dir/data" \
        --address-file "$dir/addr" 2> "$dir/engine.log" &
    PID=$!
    for _ in $(seq 1200); do [ -s "$dir/addr" ] && break; sleep 0.05; done
    [ -s "$dir/addr" ] || { echo "engine $3 did not start:" >&2; cat "$dir/engine.log" >&2; exit 1; }
    ADDR=$(cat "$dir/addr")
}
dsn() { echo "host=$OUT port=$PGPORT dbname=$1 user=postgres"; }

# ---- (A) ingest ----
echo "(A) durable ingest, 1 engine, ${DUR}s per run, NDJSON batches of 100 ~1 KB traces, 50 connections"
ingest() { # bin label -> sets TPS ECPU PCPU
    PSQL -d postgres -c "CREATE DATABASE $2" >/dev/null
    start "$1" 0 "$2" "store = { kind = \"postgres\", dsn = \"$(dsn "$2")\" }"
    for p in $(pg_pids); do taskset -pc 1 "$p" >/dev/null 2>&1 || true; done
    local t0 pg0 s0 t1 pg1 secs rows
    t0=$(ticks "$PID"); pg0=$(ticks $(pg_pids)); s0=$(now)
    RUN=$2 taskset -c 1 env BATCH=100 wrk -t1 -c50 -d"${DUR}s" -s bench/trace.lua "http://$ADDR/" > "$OUT/$2.wrk" 2>&1 || true
    secs=$(since "$s0"); t1=$(ticks "$PID"); pg1=$(ticks $(pg_pids))
    kill -TERM "$PID"; wait "$PID" || true
    rows=$(PSQL -d "$2" -c "select count(*) from traces")
    TPS=$(awk -v r="$rows" -v s="$secs" 'BEGIN{printf "%.0f", r/s}')
    ECPU=$(awk -v t="$((t1 - t0))" -v r="$rows" -v hz="$HZ" 'BEGIN{printf "%.1f", r ? t/hz/r*1e6 : 0}')
    PCPU=$(awk -v t="$((pg1 - pg0))" -v r="$rows" -v hz="$HZ" 'BEGIN{printf "%.1f", r ? t/hz/r*1e6 : 0}')
    PSQL -d postgres -c "DROP DATABASE $2" >/dev/null
}
for r in $(seq "$RUNS"); do
    if [ $((r % 2)) = 1 ]; then order="base part"; else order="part base"; fi
    for which in $order; do
        if [ "$which" = base ]; then ingest "$BASE" "ib$r"; b_tps=$TPS; b_e=$ECPU; b_p=$PCPU
        else ingest "$BIN" "ip$r"; p_tps=$TPS; p_e=$ECPU; p_p=$PCPU; fi
    done
    echo "  run $r (first: ${order%% *}): base $b_tps traces/s (engine $b_e us, server $b_p us per trace);" \
         "partitioned $p_tps traces/s (engine $p_e us, server $p_p us); ratio" \
         "$(awk -v a="$p_tps" -v b="$b_tps" 'BEGIN{printf "%.2f", a/b}')," \
         "server CPU/trace $(awk -v a="$p_p" -v b="$b_p" 'BEGIN{printf "%.2f", b ? a/b : 0}')x"
done

# ---- (B) retention of a day of N traces ----
echo "(B) retention of one day of $N traces (1 KB bodies, one score each)"
DAY_MS=86400000
D40=$(( ($(date +%s) / 86400 - 40) * DAY_MS ))
CUT=$(( $(date +%s) * 1000 - 30 * DAY_MS ))
FILL="INSERT INTO traces(id, prompt, version, ts, received_at, body)
  SELECT 'r' || g, 'bench', 1, $D40 + (g * 431) % $DAY_MS, $D40, json_build_object('id', 'r' || g, 'output', repeat('x', 1000))
  FROM generate_series(1, $N) g;
INSERT INTO scores(trace_id, evaluator, script, version, required, status, pass, score, reason, ts)
  SELECT 'r' || g, 'json_schema', 'json_schema', '1', 1, 'ok', 1, 1, 'ok', $D40 FROM generate_series(1, $N) g;"

# two databases of the base build's schema, each with the same day of N traces
for db in rdel rmig; do
    PSQL -d postgres -c "CREATE DATABASE $db" >/dev/null
    start "$BASE" 0 "$db" "store = { kind = \"postgres\", dsn = \"$(dsn $db)\" }"
    kill -TERM "$PID"; wait "$PID" || true
    PSQL -d "$db" -c "$FILL" >/dev/null
    PSQL -d "$db" -c "VACUUM ANALYZE traces" -c "VACUUM ANALYZE scores" >/dev/null
done
size=$(PSQL -d rdel -c "select pg_size_pretty(pg_total_relation_size('traces'))")
echo "  the day: $N traces, traces table $size"

# the base build's path: its statements (engine/store/ops.c store_delete_old_traces), a
# transaction per batch of 1,000 (the engine runs one a second)
s0=$(now)
PSQL -d rdel -c "DO \$\$ DECLARE n bigint; BEGIN LOOP
  DELETE FROM scores WHERE trace_id IN (SELECT id FROM traces WHERE ts < $CUT ORDER BY ts, seq LIMIT 1000);
  DELETE FROM feedback WHERE trace_id IN (SELECT id FROM traces WHERE ts < $CUT ORDER BY ts, seq LIMIT 1000);
  DELETE FROM traces WHERE seq IN (SELECT seq FROM traces WHERE ts < $CUT ORDER BY ts, seq LIMIT 1000);
  GET DIAGNOSTICS n = ROW_COUNT;
  DELETE FROM trace_parts WHERE id IN (SELECT id FROM trace_parts WHERE ts < $CUT ORDER BY ts LIMIT 1000);
  COMMIT; EXIT WHEN n = 0; END LOOP; END \$\$" >/dev/null
del_s=$(since "$s0")
s0=$(now)
PSQL -d rdel -c "VACUUM traces" -c "VACUUM scores" >/dev/null
vac_s=$(since "$s0")
echo "  batched row deletes (base build): ${del_s}s of database time in $(( (N + 999) / 1000 )) batches" \
     "(the engine spreads them over $(( (N + 999) / 1000 ))s, one a second), then VACUUM ${vac_s}s"

# this build's first start on the other: the migration of N rows (+ the start itself)
s0=$(now)
start "$BIN" 0 rmig "store = { kind = \"postgres\", dsn = \"$(dsn rmig)\" }"
mig_s=$(since "$s0")
kill -TERM "$PID"; wait "$PID" || true
part=$(PSQL -d rmig -c "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = 'traces'::regclass and c.relname like 'traces_p%' order by 1 limit 1")
moved=$(PSQL -d rmig -c "select count(*) from $part")
echo "  migration to partitions (this build's first start on that database): ${mig_s}s; $part holds $moved rows"

# this build's path (engine/store/pg_partitions.c): the day dropped, then its ids, scores and
# feedback 10,000 at a time
s0=$(now)
PSQL -d rmig -c "DROP TABLE $part" >/dev/null
drop_s=$(since "$s0")
DAYCUT=$(( (CUT / DAY_MS) * DAY_MS ))
s0=$(now)
PSQL -d rmig -c "DO \$\$ DECLARE n bigint; BEGIN LOOP
  WITH b AS (DELETE FROM trace_ids WHERE id IN (SELECT id FROM trace_ids WHERE ts < $DAYCUT ORDER BY ts, id LIMIT 10000) RETURNING id, ts),
  sc AS (DELETE FROM scores WHERE trace_id IN (SELECT id FROM b)),
  fb AS (DELETE FROM feedback WHERE trace_id IN (SELECT id FROM b)),
  tr AS (DELETE FROM traces t USING b WHERE t.ts < $DAYCUT AND t.id = b.id AND t.ts = b.ts)
  SELECT count(*) INTO n FROM b;
  DELETE FROM trace_parts WHERE id IN (SELECT id FROM trace_parts WHERE ts < $CUT ORDER BY ts LIMIT 10000);
  COMMIT; EXIT WHEN n = 0; END LOOP; END \$\$" >/dev/null
ids_s=$(since "$s0")
echo "  partition dropped (this build): DROP TABLE ${drop_s}s, then ids+scores in batches of 10,000 ${ids_s}s" \
     "($(( (N + 9999) / 10000 )) passes); traces heap back at once, no VACUUM of traces"
echo "ratio, retention database time (drop + ids) / (row deletes + VACUUM):" \
     "$(awk -v a="$drop_s" -v b="$ids_s" -v c="$del_s" -v d="$vac_s" 'BEGIN{printf "%.3f", (a+b)/(c+d)}')"
