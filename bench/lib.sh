# bench/lib.sh — helpers shared by the shell benchmarks (sourced, not run).
# Expects OUT (a scratch folder) and BIN; sets PID and ADDR in start_engine.

field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" "$2" | tail -1; }

# start_engine [config-text]: the engine on CPU 0, a fresh store.
start_engine() {
    rm -rf "$OUT/data" "$OUT/addr"
    printf 'access_log = false\nlog_level = "warn"\n%s\n' "${1:-}" > "$OUT/ratchet.conf"
    taskset -c 0 "$BIN" serve -c "$OUT/ratchet.conf" --listen 127.0.0.1:0 --data-dir "$OUT/data" \
        --address-file "$OUT/addr" 2> "$OUT/engine.log" &
    PID=$!
    for _ in $(seq 100); do [ -s "$OUT/addr" ] && break; sleep 0.05; done
    [ -s "$OUT/addr" ] || { echo "the engine did not start:" >&2; cat "$OUT/engine.log" >&2; exit 1; }
    ADDR=$(cat "$OUT/addr")
}
stop_engine() { kill -TERM "$PID"; wait "$PID" || true; }
peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# run_wrk conns script url batch -> the RESULT line (wrk on CPU 1)
run_wrk() {
    BATCH=$4 taskset -c 1 wrk -t1 -c"$1" -d"${DUR}s" --latency -s "$2" "$3" > "$OUT/wrk.out" 2>&1 || true
    grep RESULT "$OUT/wrk.out"
}

# traces_per_s result-file batch
traces_per_s() {
    awk -v b="$2" -v r="$(field requests "$1")" -v d="$(field duration_us "$1")" 'BEGIN{printf "%.0f", b*r/(d/1e6)}'
}

# nginx_baseline -> writes $OUT/nginx.res: nginx answering 204 (one worker,
# CPU 0) to the engine's load at 50 connections: the same POSTs of one ~1 KB
# trace, or with RESOLVE=NAME in the environment the same GETs (gate.sh).
nginx_baseline() {
    mkdir -p "$OUT/nginx"
    cat > "$OUT/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
master_process off;
error_log $OUT/nginx/error.log;
pid $OUT/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx;
  server { listen 127.0.0.1:18999; keepalive_requests 1000000;
           location / { return 204; } }
}
NGX
    taskset -c 0 nginx -c "$OUT/nginx/nginx.conf" &
    local ngx_pid=$!
    sleep 0.5
    EXPECT=204 run_wrk 50 bench/trace.lua "http://127.0.0.1:18999/" 1 > "$OUT/nginx.res"
    kill "$ngx_pid"; wait "$ngx_pid" 2>/dev/null || true
}

# rate result-file -> requests per second
rate() { awk -v r="$(field requests "$1")" -v d="$(field duration_us "$1")" 'BEGIN{printf "%.0f", r/(d/1e6)}'; }
