#!/usr/bin/env bash
# bench/llm.sh — the LLM client against the fake LLM server, same run:
#   (a) 10,000 calls at concurrency 64, fake latency 0: calls/s and CPU µs
#       per call through llm.c, against httpc.c alone (the libcurl-on-libuv
#       floor) on the same load. Target: >= 10,000 calls/s on one core.
#   (b) 200 ms fake latency at concurrency 256: wall time against the ideal
#       N x latency / concurrency. Target: <= 1.05 x ideal.
#   (c) memory per in-flight call: N calls held open by a stalling fake,
#       through llm.c and through httpc.c alone.
# The client runs on CPU 0, the fake server on CPU 1.
# Usage: bench/llm.sh [calls]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
BIN=${RATCHET_BIN:-build/ratchet}
OUT=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
make -s build/llm_bench >/dev/null

fake() { # latency-ms -> sets FPID, FADDR
    rm -f "$OUT/faddr"
    taskset -c 1 "$BIN" fake-llm --latency-ms "$1" --address-file "$OUT/faddr" 2>> "$OUT/fake.log" &
    FPID=$!
    for _ in $(seq 100); do [ -s "$OUT/faddr" ] && break; sleep 0.05; done
    FADDR=$(cat "$OUT/faddr")
}
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" "$2" | tail -1; }
run() { taskset -c 0 build/llm_bench "$@"; }

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r)"

fake 0
run "$FADDR" raw "$N" 64 | tee "$OUT/raw"
run "$FADDR" llm "$N" 64 | tee "$OUT/llm"
kill "$FPID"; wait "$FPID" 2>/dev/null || true
echo "(a) llm.c: $(field calls_per_s "$OUT/llm") calls/s, $(field cpu_us_per_call "$OUT/llm") CPU us/call;" \
     "httpc.c alone: $(field calls_per_s "$OUT/raw") calls/s, $(field cpu_us_per_call "$OUT/raw") CPU us/call;" \
     "ratio llm/raw calls/s: $(awk -v a="$(field calls_per_s "$OUT/llm")" -v b="$(field calls_per_s "$OUT/raw")" 'BEGIN{printf "%.2f", a/b}')" \
     "(target >= 10000 calls/s)"

NB=$((256 * 10))
fake 200
run "$FADDR" llm "$NB" 256 | tee "$OUT/slow"
kill "$FPID"; wait "$FPID" 2>/dev/null || true
ideal=$(awk -v n="$NB" 'BEGIN{printf "%.3f", n * 0.2 / 256}')
echo "(b) $NB calls, 200 ms each, 256 at once: wall $(field wall_s "$OUT/slow") s, ideal $ideal s," \
     "ratio $(awk -v w="$(field wall_s "$OUT/slow")" -v i="$ideal" 'BEGIN{printf "%.3f", w/i}') (target <= 1.05)"

NH=2000
for m in raw llm; do
    fake 0
    curl -s "http://$FADDR/_fake/faults" -d "{\"stall\":true,\"times\":$NH}" > /dev/null
    run "$FADDR" "hold-$m" "$NH" "$NH" | tee "$OUT/hold-$m"
    kill "$FPID"; wait "$FPID" 2>/dev/null || true
done
echo "(c) memory per in-flight call: llm.c $(field rss_kb_per_call "$OUT/hold-llm") KiB," \
     "httpc.c alone $(field rss_kb_per_call "$OUT/hold-raw") KiB ($NH calls held)"
