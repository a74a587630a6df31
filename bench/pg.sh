#!/usr/bin/env bash
# bench/pg.sh — durable ingest on PostgreSQL against SQLite, measured in the same run
# (issue 27). NDJSON batches of 100 ~1 KB traces at 50 connections (bench/trace.lua):
#   (1) SQLite, one engine               engine on CPU 0, wrk on CPU 1
#   (2) PostgreSQL, one engine           engine on CPU 0, wrk and the server on CPU 1
#   (3) PostgreSQL, two engines          one engine on each CPU, a wrk at each, the server unpinned
# For each: traces/s (rows stored / seconds), and CPU per trace of the engine(s) and of the
# PostgreSQL server (utime+stime from /proc over the run, all its processes), so the scaling
# beyond 2 cores can be projected (docs/scale-out.md). A throwaway cluster (initdb, pg_ctl; as
# the postgres user when root) on a unix socket, synchronous_commit on, removed at the end.
# Usage: bench/pg.sh [seconds]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
BIN=${RATCHET_BIN:-build/ratchet}
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
PSQL() { "$PGBIN/psql" -h "$OUT" -p "$PGPORT" -U postgres -Atq "$@"; }
ticks() { # pids... -> utime+stime in clock ticks, summed
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
pg_pids() { pgrep -u postgres -f "postgres" | tr '\n' ' '; }
HZ=$(getconf CLK_TCK)

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "duration per run: ${DUR}s, NDJSON batches of 100 traces, 50 connections per wrk"

# start_on CPU LABEL CONFIG -> sets PID_<LABEL> ADDR_<LABEL>
start_on() {
    local dir="$OUT/$2"
    mkdir -p "$dir"
    printf 'access_log = false\nlog_level = "warn"\n%s\n' "$3" > "$dir/ratchet.conf"
    taskset -c "$1" "$BIN" serve -c "$dir/ratchet.conf" --listen 127.0.0.1:0 --data-dir "$dir/data" \
        --address-file "$dir/addr" 2> "$dir/engine.log" &
    eval "PID_$2=$!"
    for _ in $(seq 200); do [ -s "$dir/addr" ] && break; sleep 0.05; done
    [ -s "$dir/addr" ] || { echo "engine $2 did not start:" >&2; cat "$dir/engine.log" >&2; exit 1; }
    eval "ADDR_$2=$(cat "$dir/addr")"
}

report() { # label rows seconds engine_ticks pg_ticks -> prints, sets TPS ECPU PCPU
    TPS=$(awk -v r="$2" -v s="$3" 'BEGIN{printf "%.0f", r/s}')
    ECPU=$(awk -v t="$4" -v r="$2" -v hz="$HZ" 'BEGIN{printf "%.1f", r ? t/hz/r*1e6 : 0}')
    PCPU=$(awk -v t="$5" -v r="$2" -v hz="$HZ" 'BEGIN{printf "%.1f", r ? t/hz/r*1e6 : 0}')
    echo "$1 ${TPS} traces/s, engine CPU ${ECPU} us/trace, PostgreSQL CPU ${PCPU} us/trace, ${2} rows in ${3}s"
}

# (1) SQLite
start_on 0 sq ""
t0=$(ticks "$PID_sq"); s0=$(date +%s.%N)
RUN=sq taskset -c 1 env BATCH=100 wrk -t1 -c50 -d"${DUR}s" --latency -s bench/trace.lua "http://$ADDR_sq/" > "$OUT/sq.wrk" 2>&1 || true
s1=$(date +%s.%N); t1=$(ticks "$PID_sq")
kill -TERM "$PID_sq"; wait "$PID_sq" || true
rows=$(sqlite3 "$OUT/sq/data/ratchet.db" "select count(*) from traces")
report "(1) SQLite, 1 engine:    " "$rows" "$(awk -v a="$s0" -v b="$s1" 'BEGIN{print b-a}')" $((t1 - t0)) 0
sq_tps=$TPS; sq_cpu=$ECPU

# (2) PostgreSQL, one engine
PSQL -d postgres -c "CREATE DATABASE b1" >/dev/null
DSN1="host=$OUT port=$PGPORT dbname=b1 user=postgres"
start_on 0 p1 "store = { kind = \"postgres\", dsn = \"$DSN1\" }"
for p in $(pg_pids); do taskset -pc 1 "$p" >/dev/null 2>&1 || true; done
t0=$(ticks "$PID_p1"); pg0=$(ticks $(pg_pids)); s0=$(date +%s.%N)
RUN=p1 taskset -c 1 env BATCH=100 wrk -t1 -c50 -d"${DUR}s" --latency -s bench/trace.lua "http://$ADDR_p1/" > "$OUT/p1.wrk" 2>&1 || true
s1=$(date +%s.%N); t1=$(ticks "$PID_p1"); pg1=$(ticks $(pg_pids))
kill -TERM "$PID_p1"; wait "$PID_p1" || true
rows=$(PSQL -d b1 -c "select count(*) from traces")
report "(2) PostgreSQL, 1 engine:" "$rows" "$(awk -v a="$s0" -v b="$s1" 'BEGIN{print b-a}')" $((t1 - t0)) $((pg1 - pg0))
p1_tps=$TPS; p1_cpu=$ECPU; p1_pg=$PCPU

# (3) PostgreSQL, two engines on one database
PSQL -d postgres -c "CREATE DATABASE b2" >/dev/null
DSN2="host=$OUT port=$PGPORT dbname=b2 user=postgres"
start_on 0 pa "store = { kind = \"postgres\", dsn = \"$DSN2\" }"
start_on 1 pb "store = { kind = \"postgres\", dsn = \"$DSN2\" }"
for p in $(pg_pids); do taskset -pc 0,1 "$p" >/dev/null 2>&1 || true; done
t0=$(ticks "$PID_pa" "$PID_pb"); pg0=$(ticks $(pg_pids)); s0=$(date +%s.%N)
RUN=pa taskset -c 1 env BATCH=100 wrk -t1 -c50 -d"${DUR}s" --latency -s bench/trace.lua "http://$ADDR_pa/" > "$OUT/pa.wrk" 2>&1 &
wa=$!
RUN=pb taskset -c 0 env BATCH=100 wrk -t1 -c50 -d"${DUR}s" --latency -s bench/trace.lua "http://$ADDR_pb/" > "$OUT/pb.wrk" 2>&1 || true
wait "$wa" || true
s1=$(date +%s.%N); t1=$(ticks "$PID_pa" "$PID_pb"); pg1=$(ticks $(pg_pids))
kill -TERM "$PID_pa" "$PID_pb"; wait "$PID_pa" "$PID_pb" || true
rows=$(PSQL -d b2 -c "select count(*) from traces")
report "(3) PostgreSQL, 2 engines:" "$rows" "$(awk -v a="$s0" -v b="$s1" 'BEGIN{print b-a}')" $((t1 - t0)) $((pg1 - pg0))
p2_tps=$TPS

echo "ratios (targets in brackets):"
echo "    PostgreSQL/SQLite traces/s, 1 engine:  $(awk -v a="$p1_tps" -v b="$sq_tps" 'BEGIN{printf "%.2f", a/b}')  [>= 0.5]"
echo "    engine CPU/trace PostgreSQL/SQLite:    $(awk -v a="$p1_cpu" -v b="$sq_cpu" 'BEGIN{printf "%.2f", b ? a/b : 0}')  [<= 1.5]"
echo "    2 engines / 1 engine on PostgreSQL:    $(awk -v a="$p2_tps" -v b="$p1_tps" 'BEGIN{printf "%.2f", a/b}')  [>= 1.3]"
