#!/usr/bin/env bash
# bench/ingest_ab.sh — what a store change costs ingest: the same load on two
# engine binaries, alternated run by run so both see the same machine.
#   NDJSON batches of 100 ~1 KB traces (bench/trace.lua), 50 connections, a
#   fresh store each run; then, with json_valid attached, the same load and
#   the evaluation backlog drained (the verdict writes).
# BASE_BIN is the baseline (e.g. built from the commit before the change:
#   git archive C | tar -x -C /tmp/base && make -C /tmp/base build/ratchet);
# RATCHET_BIN (default build/ratchet) is the one under test.
# Each line: traces/s and the engine's CPU time per stored trace (steadier
# than the rate when other work shares the machine). Server on CPU 0, wrk on CPU 1.
# Usage: BASE_BIN=/tmp/base/build/ratchet bench/ingest_ab.sh [seconds] [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
RUNS=${2:-3}
NEW_BIN=${RATCHET_BIN:-build/ratchet}
: "${BASE_BIN:?set BASE_BIN to the baseline engine binary}"
OUT=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
. bench/lib.sh

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r)"
echo "duration per run: ${DUR}s; server on CPU 0, wrk on CPU 1; base $BASE_BIN, new $NEW_BIN"

one() { # label bin config -> prints traces/s and, with evaluators, the drain time
    BIN=$2
    start_engine "$3"
    run_wrk 50 bench/trace.lua "http://$ADDR/" 100 > "$OUT/run.res"
    local tps drain=""
    tps=$(traces_per_s "$OUT/run.res" 100)
    if [ -n "$3" ]; then
        local t0
        t0=$(date +%s.%N)
        while [ "$(curl -s "http://$ADDR/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["evaluation"]["backlog"])')" != 0 ]; do
            sleep 0.2
        done
        drain=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf " backlog drained in %.1f s", b-a}')
    fi
    # the engine's CPU time (all threads, user + system) per stored trace:
    # steadier than the rate on a shared machine
    local ticks stored
    ticks=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    stop_engine
    stored=$(sqlite3 "$OUT/data/ratchet.db" "select count(*) from traces")
    local cpu
    cpu=$(awk -v t="$ticks" -v n="$stored" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", t / hz * 1e6 / n}')
    echo "$1 $tps traces/s, engine CPU $cpu us/trace (non-200 $(field non200 "$OUT/run.res"), stored $stored)$drain"
}

EVAL='scripts = { dirs = { "'$PWD'" } }
prompt "ticket-triage" { evaluators = { "json_valid" } }'
for r in $(seq "$RUNS"); do
    one "run $r ingest only, base:" "$BASE_BIN" ""
    one "run $r ingest only, new: " "$NEW_BIN" ""
    one "run $r with json_valid, base:" "$BASE_BIN" "$EVAL"
    one "run $r with json_valid, new: " "$NEW_BIN" "$EVAL"
done
