#!/usr/bin/env bash
# bench/ingest.sh — ingest throughput against baselines measured in the same run.
#   (a) one ~1 KB trace per request, keep-alive, 50 connections
#   (b) NDJSON batches of 100 such traces
# Baselines: nginx answering 204 to the same wrk load (for a), and a plain C
# program inserting the same rows into the same schema with the same
# durability (for b). The server under test runs on CPU 0, wrk on CPU 1.
# Usage: bench/ingest.sh [seconds]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
BIN=${RATCHET_BIN:-build/ratchet}
OUT=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
mkdir -p build
# the baseline uses the engine's allocator too, so the ratio measures ratchet, not malloc
cc -O2 -o build/plain_insert bench/plain_insert.c ${MALLOC_LIBS--Wl,--no-as-needed -lmimalloc -Wl,--as-needed} -lsqlite3

. bench/lib.sh

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r)"
echo "duration per run: ${DUR}s; server on CPU 0, wrk on CPU 1"

# --- nginx baseline: 204 on the same wrk load ---
nginx_baseline
ngx_rps=$(rate "$OUT/nginx.res")
echo "nginx 204:            ${ngx_rps} req/s  p50 $(field p50_us "$OUT/nginx.res") us  p99 $(field p99_us "$OUT/nginx.res") us"

bench_engine() { # label batch -> prints the line, sets TPS (traces/s)
    start_engine
    run_wrk 50 bench/trace.lua "http://$ADDR/" "$2" > "$OUT/run.res"
    local rss stored
    rss=$(peak_rss_mb "$PID")
    stored=$(sqlite3 "$OUT/data/ratchet.db" "select count(*) from traces")
    stop_engine
    TPS=$(traces_per_s "$OUT/run.res" "$2")
    echo "$1 ${TPS} traces/s  p50 $(field p50_us "$OUT/run.res") us  p99 $(field p99_us "$OUT/run.res") us  errors $(field errors "$OUT/run.res") non-200 $(field non200 "$OUT/run.res")  peak RSS ${rss} MB  stored ${stored}"
}

bench_engine "(a) ratchet 1/req:   " 1
echo "    ratio to nginx: $(awk -v a="$TPS" -v n="$ngx_rps" 'BEGIN{printf "%.2f", a/n}')"
bench_engine "(b) ratchet 100/req: " 100
b_tps=$TPS

# --- plain insert baseline into a fresh store of the same schema ---
start_engine; stop_engine
rows=$(awk -v t="$b_tps" -v d="$DUR" 'BEGIN{n=int(t*d); if (n<100000) n=100000; print n}')
taskset -c 0 build/plain_insert "$OUT/data/ratchet.db" "$rows" 100 > "$OUT/plain.res"
plain=$(field rows_per_s "$OUT/plain.res")
echo "plain C insert, 100 rows/commit: ${plain} rows/s"
echo "    ratio (b)/plain: $(awk -v b="$b_tps" -v p="$plain" 'BEGIN{printf "%.2f", b/p}')"
