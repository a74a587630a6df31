#!/usr/bin/env bash
# bench/gateway_ab.sh — what a gateway change buys: the same managed-prompt
# load (bench/gateway.lua, MODE=managed, trace captured) on two engine
# binaries, alternated run by run so both see the same machine, against one
# zero-latency upstream (nginx `return 200`, fixed chat-completion body).
# BASE_BIN is the baseline (e.g. built from the commit before the change:
#   git archive C | tar -x -C /tmp/base && make -C /tmp/base build/ratchet);
# RATCHET_BIN (default build/ratchet) is the one under test.
# Each line: c=64 req/s, c=1 p50 (plain and streamed), and the engine's CPU time per request:
# all threads, and the loop thread alone (its share is what limits c=64
# throughput when the loop has a core to itself).
# PIN=loop (default): the engine's loop thread on CPU 0, its other threads
#   (store writer, capture thread, thread pool) free on both CPUs, as
#   bench/gateway.sh runs it; PIN=all: every thread of the engine on CPU 0.
# wrk and the upstream on CPU 1.
# Usage: BASE_BIN=/tmp/base/build/ratchet bench/gateway_ab.sh [seconds] [pairs]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-3}
RUNS=${2:-3}
NEW_BIN=${RATCHET_BIN:-build/ratchet}
PIN=${PIN:-loop}
: "${BASE_BIN:?set BASE_BIN to the baseline engine binary}"
OUT=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
. bench/lib.sh

UP=127.0.0.1:18980
SSE='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":"billing"},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
BODY='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"{\"category\":\"billing\",\"urgency\":\"high\"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":12,"total_tokens":42}}'
mkdir -p "$OUT/nginx"
esc() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
cat > "$OUT/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
master_process off;
error_log $OUT/nginx/error.log;
pid $OUT/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx;
  server { listen $UP; keepalive_requests 10000000;
    location / {
      if (\$request_body ~ '"stream":true') { return 200 "$(esc "$SSE")"; }
      default_type application/json; return 200 "$(esc "$BODY")"; } }
}
NGX
taskset -c 1 nginx -c "$OUT/nginx/nginx.conf" &
sleep 0.5

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "duration per run: ${DUR}s; PIN=$PIN; base $BASE_BIN, new $NEW_BIN"

ticks() { awk '{print $14 + $15}' "$1"; } # user + system of a /proc stat file
one() { # label bin
    BIN=$2
    start_engine "provider \"up\" { kind = \"openai\", base_url = \"http://$UP/v1\", default_model = \"gpt-4o-mini\", max_retries = 0 }
gateway = { }"
    curl -sf "http://$ADDR/v1/prompts" -H 'Content-Type: application/json' -d '{"name":"bench","canary_share":0.1}' > /dev/null
    local v='{"messages":[{"role":"system","content":"Classify the ticket."},{"role":"user","content":"{{ticket}}"}],"model":{"provider":"up","model":"gpt-4o-mini"}}'
    curl -sf "http://$ADDR/v1/prompts/bench/versions" -H 'Content-Type: application/json' -d "$v" > /dev/null
    curl -sf "http://$ADDR/v1/prompts/bench/versions" -H 'Content-Type: application/json' -d "$v" > /dev/null
    curl -sf "http://$ADDR/v1/prompts/bench/promote" -H 'Content-Type: application/json' -d '{"version":1}' > /dev/null
    curl -sf "http://$ADDR/v1/prompts/bench/canary" -H 'Content-Type: application/json' -d '{"version":2,"share":0.1}' > /dev/null
    # a first call starts the threads made on demand, then the pinning
    curl -sf "http://$ADDR/v1/chat/completions" -H 'Content-Type: application/json' \
        -d '{"model":"ratchet:bench","ratchet_variables":{"ticket":"x"},"messages":[]}' > /dev/null
    if [ "$PIN" = loop ]; then
        for t in /proc/$PID/task/*; do taskset -p -c 0,1 "${t##*/}" > /dev/null; done
        taskset -p -c 0 "$PID" > /dev/null
    fi
    local hz all0 loop0 all1 loop1
    hz=$(getconf CLK_TCK)
    all0=$(ticks "/proc/$PID/stat"); loop0=$(ticks "/proc/$PID/task/$PID/stat")
    MODE=managed taskset -c 1 wrk -t1 -c64 -d"${DUR}s" --latency -s bench/gateway.lua "http://$ADDR/" 2>&1 | grep RESULT > "$OUT/c64.res" || true
    all1=$(ticks "/proc/$PID/stat"); loop1=$(ticks "/proc/$PID/task/$PID/stat")
    MODE=managed taskset -c 1 wrk -t1 -c1 -d"${DUR}s" --latency -s bench/gateway.lua "http://$ADDR/" 2>&1 | grep RESULT > "$OUT/c1.res" || true
    MODE=managed STREAM=1 taskset -c 1 wrk -t1 -c1 -d"${DUR}s" --latency -s bench/gateway.lua "http://$ADDR/" 2>&1 | grep RESULT > "$OUT/s1.res" || true
    stop_engine
    local n
    n=$(field requests "$OUT/c64.res")
    awk -v l="$1" -v r="$(rate "$OUT/c64.res")" -v p="$(field p50_us "$OUT/c1.res")" -v sp="$(field p50_us "$OUT/s1.res")" -v n="$n" -v hz="$hz" \
        -v a="$((all1 - all0))" -v o="$((loop1 - loop0))" -v bad="$(field non200 "$OUT/c64.res")" \
        'BEGIN{printf "%s c=64 %6d req/s, CPU/request all threads %5.1f us, loop thread %5.1f us; c=1 p50 %4d us, stream %4d us; non-200 %s\n",
               l, r, a * 1e6 / hz / n, o * 1e6 / hz / n, p, sp, bad}'
}

for r in $(seq "$RUNS"); do
    one "pair $r base:" "$BASE_BIN"
    one "pair $r new: " "$NEW_BIN"
done
