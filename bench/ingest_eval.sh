#!/usr/bin/env bash
# bench/ingest_eval.sh — what online evaluation costs ingest, same run.
#   (c) NDJSON batches of 100 ~1 KB traces, 50 connections: evaluation off
#       (no evaluators attached) against on (json_valid, json_schema and
#       contains attached to the traces' prompt). Target: on >= 0.8 x off.
#       After the "on" run the engine is left to drain its evaluation backlog;
#       the figures say how many traces were evaluated and dropped.
#   (d) one trace per request, 50 connections: ingest p99 with an evaluator
#       that spins until it is killed at its budget (100 ms) on every trace,
#       against the same load with no evaluator. Target: p99 rises <= 10 ms.
# The server under test runs on CPU 0, wrk on CPU 1.
# Usage: bench/ingest_eval.sh [seconds]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
BIN=${RATCHET_BIN:-build/ratchet}
OUT=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
. bench/lib.sh

status() { curl -s "http://$ADDR/v1/status"; }
eval_field() { status | python3 -c "import json,sys; print(json.load(sys.stdin)['evaluation']['$1'])"; }

mkdir -p "$OUT/scripts/evaluators"
cat > "$OUT/scripts/evaluators/spin.lua" <<'LUA'
return { name = "spin", description = "spins until it is killed at its budget",
  evaluate = function() while true do end end }
LUA
EVAL_ON='prompt "ticket-triage" { evaluators = {
  "json_valid",
  { "json_schema", options = { schema = { type = "object", required = { "category", "urgency" },
      additionalProperties = false,
      properties = { category = { enum = { "billing", "bug", "account", "other" } },
                     urgency = { enum = { "low", "medium", "high" } } } } } },
  { "contains", options = { value = "billing" }, required = false },
} }'
DIRS="scripts = { dirs = { \"$OUT/scripts\", \"$PWD\" } }"
EVAL_ON="$DIRS
$EVAL_ON"
SPIN="$DIRS
prompt \"ticket-triage\" { evaluators = { { \"spin\", required = false } } }"

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r)"
echo "duration per run: ${DUR}s; server on CPU 0, wrk on CPU 1"

# (c) throughput, evaluation off against on
start_engine "$DIRS"
run_wrk 50 bench/trace.lua "http://$ADDR/" 100 > "$OUT/off.res"
stop_engine
off=$(traces_per_s "$OUT/off.res" 100)
echo "(c) evaluation off: ${off} traces/s  p99 $(field p99_us "$OUT/off.res") us  errors $(field errors "$OUT/off.res") non-200 $(field non200 "$OUT/off.res")"

start_engine "$EVAL_ON"
run_wrk 50 bench/trace.lua "http://$ADDR/" 100 > "$OUT/on.res"
t0=$(date +%s.%N)
for _ in $(seq 600); do
    [ "$(eval_field backlog)" = 0 ] && [ "$(eval_field running)" = 0 ] && break
    sleep 0.1
done
drain=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
evaluated=$(eval_field evaluated); dropped=$(eval_field dropped)
stored=$(sqlite3 "$OUT/data/ratchet.db" "select count(*) from traces")
stop_engine
on=$(traces_per_s "$OUT/on.res" 100)
echo "(c) evaluation on:  ${on} traces/s  p99 $(field p99_us "$OUT/on.res") us  errors $(field errors "$OUT/on.res") non-200 $(field non200 "$OUT/on.res")"
echo "    stored ${stored}, evaluated ${evaluated}, dropped from evaluation ${dropped}, backlog drained ${drain}s after the load"
echo "    ratio on/off: $(awk -v a="$on" -v b="$off" 'BEGIN{printf "%.2f", a/b}') (target >= 0.8)"

# (d) ingest p99 while an evaluator spins
start_engine "$DIRS"
run_wrk 50 bench/trace.lua "http://$ADDR/" 1 > "$OUT/quiet.res"
stop_engine
echo "(d) no evaluator:   $(traces_per_s "$OUT/quiet.res" 1) traces/s  p50 $(field p50_us "$OUT/quiet.res") us  p99 $(field p99_us "$OUT/quiet.res") us"
start_engine "$SPIN"
run_wrk 50 bench/trace.lua "http://$ADDR/" 1 > "$OUT/spin.res"
killed=$(eval_field killed)
stop_engine
echo "(d) spinning:       $(traces_per_s "$OUT/spin.res" 1) traces/s  p50 $(field p50_us "$OUT/spin.res") us  p99 $(field p99_us "$OUT/spin.res") us  (${killed} invocations killed)"
echo "    p99 rise: $(awk -v a="$(field p99_us "$OUT/spin.res")" -v b="$(field p99_us "$OUT/quiet.res")" 'BEGIN{printf "%.2f ms", (a-b)/1000}') (target <= 10 ms)"
