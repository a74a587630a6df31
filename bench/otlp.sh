#!/usr/bin/env bash
# bench/otlp.sh — OTLP/HTTP ingest against ratchet's own JSON ingest of the
# same content, measured in the same run: LLM calls per second into durable
# storage (every 200 means fsync'd), batches of 512 calls with GenAI
# content (bench/otlp_bodies.lua), one core for the engine (CPU 0), the
# clients on CPU 1 (curl, 4 requests in flight). Each form gets a fresh
# store and the same number of distinct calls. Reported: calls/s, the ratio
# to the native path, and the OTLP receiver's decode + mapping time per span
# (ratchet_otlp_decode_seconds_total, CPU time, over the spans sent), then the
# CPU of each stage per span without HTTP or disk (build/otlp_decode). Also
# the engine's own CPU time (user + system, all its threads, from
# /proc/PID/stat) per call over the run: steadier than calls/s on a shared
# machine, and the ratio that decides the end-to-end one when the engine's
# core is the bottleneck.
# Targets (issue 25): protobuf >= 1.0x native, JSON >= 0.8x native.
# Usage: bench/otlp.sh [batches]   (default 40, i.e. 20,480 calls per form)
set -euo pipefail
cd "$(dirname "$0")/.."
BATCHES=${1:-40}
PER=512
BIN=${RATCHET_BIN:-build/ratchet}
OUT=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
. bench/lib.sh

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r)"
echo "$BATCHES batches of $PER calls per form; engine on CPU 0, curl on CPU 1 (4 in flight)"
mkdir -p "$OUT/bodies"
lua5.4 bench/otlp_bodies.lua "$OUT/bodies" "$BATCHES" "$PER"
CONF='otlp = { listen = "127.0.0.1:0" }
limits = { max_batch_items = 1000 }'

now_s() { date +%s.%N; }
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run FORM URL-PATH CONTENT-TYPE PORT-KIND -> sets RATE, prints a line
run() {
    local form=$1 ctype=$2 kind=$3 target
    start_engine "$CONF"
    if [ "$kind" = otlp ]; then
        target=$(curl -s "http://$ADDR/v1/status" | grep -o '"otlp":{"listen":"[^"]*"' | sed 's/.*"listen":"//; s/"$//')
    else
        target=$ADDR
    fi
    local t0 t1 c0 c1
    c0=$(cpu_ticks "$PID")
    t0=$(now_s)
    ls "$OUT/bodies/$form-"* | taskset -c 1 xargs -P 4 -I{} curl -s -o /dev/null -w '%{http_code}\n' \
        -H "Content-Type: $ctype" --data-binary @{} "http://$target/v1/traces" > "$OUT/codes"
    t1=$(now_s)
    c1=$(cpu_ticks "$PID")
    CPU=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v n="$((BATCHES * PER))" 'BEGIN{printf "%.1f", (b-a)/t*1e6/n}')
    local metrics stored bad decode
    metrics=$(curl -s "http://$ADDR/metrics")
    decode=$(echo "$metrics" | sed -n 's/^ratchet_otlp_decode_seconds_total{signal="traces"} //p')
    stored=$(sqlite3 "$OUT/data/ratchet.db" "select count(*) from traces" 2>/dev/null || echo "?")
    bad=$(grep -vc '^200$' "$OUT/codes" || true)
    local rss
    rss=$(peak_rss_mb "$PID")
    stop_engine
    stored=$(sqlite3 "$OUT/data/ratchet.db" "select count(*) from traces")
    RATE=$(awk -v n="$((BATCHES * PER))" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
    local per_span=""
    if [ "$kind" = otlp ]; then
        per_span=$(awk -v s="$decode" -v n="$((BATCHES * PER))" 'BEGIN{printf "  decode+map %.1f us/span", s*1e6/n}')
    fi
    printf '%-28s %7s calls/s  engine CPU %5s us/call  non-200 %s  stored %s  peak RSS %s MB%s\n' "$4" "$RATE" "$CPU" "$bad" \
        "$stored" "$rss" "$per_span"
}

run native application/json api "native JSON (POST /v1/traces)"
native=$RATE native_cpu=$CPU
run proto application/x-protobuf otlp "OTLP protobuf"
proto=$RATE proto_cpu=$CPU
run json application/json otlp "OTLP JSON"
json=$RATE json_cpu=$CPU
echo "ratio protobuf/native: $(awk -v a="$proto" -v b="$native" 'BEGIN{printf "%.2f", a/b}') (target >= 1.0)"
echo "ratio JSON/native:     $(awk -v a="$json" -v b="$native" 'BEGIN{printf "%.2f", a/b}') (target >= 0.8)"
echo "engine CPU per call, native/OTLP (the calls/s ratio a saturated core would give): protobuf $(awk -v a="$proto_cpu" -v b="$native_cpu" 'BEGIN{printf "%.2f", b/a}'), JSON $(awk -v a="$json_cpu" -v b="$native_cpu" 'BEGIN{printf "%.2f", b/a}')"
echo "CPU per span, one batch of $PER, no HTTP or disk (build/otlp_decode, on CPU 0):"
taskset -c 0 "${DECODE_BIN:-build/otlp_decode}" "$OUT/bodies/native-0001" "$OUT/bodies/proto-0001" "$OUT/bodies/json-0001" 20 | sed 's/^/  /'
