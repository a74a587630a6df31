#!/usr/bin/env bash
# demo/run.sh — `make demo`: the whole loop end to end in about a minute.
# Starts the fake LLM server (unless RATCHET_DEMO_API_KEY names a real
# provider) and the engine in a temporary directory, then runs demo/run.lua.
#   RATCHET_DEMO_API_KEY          a real OpenAI-compatible provider's key (optional)
#   RATCHET_DEMO_BASE_URL         its base URL (default https://api.openai.com/v1)
#   RATCHET_DEMO_MODEL            the target model (default gpt-4o-mini)
#   RATCHET_DEMO_OPTIMIZER_MODEL  the optimizer model (default gpt-4o)
#   RATCHET_DEMO_GATEWAY          set: the traffic goes through the gateway (make demo-gateway)
# Flags: --template T  the loop's meta-prompt template (default critique_rewrite;
#                      gepa runs the search over a Pareto pool, docs/loop.md)
set -euo pipefail
while [ $# -gt 0 ]; do
    case "$1" in
    --template) [ $# -ge 2 ] || { echo "demo: --template needs a name" >&2; exit 2; }
        export RATCHET_DEMO_TEMPLATE=$2; shift 2 ;;
    *) echo "demo: unknown flag $1 (known: --template T)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
BIN=${RATCHET_BIN:-$PWD/build/ratchet}
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_file() { for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "demo: $2 did not start" >&2; cat "$3" >&2; exit 1; }

export RATCHET_DEMO_ROOT=$PWD
if [ -n "${RATCHET_DEMO_API_KEY:-}" ]; then
    simulated=0
    export RATCHET_DEMO_BASE_URL=${RATCHET_DEMO_BASE_URL:-https://api.openai.com/v1}
    export RATCHET_DEMO_MODEL=${RATCHET_DEMO_MODEL:-gpt-4o-mini}
    export RATCHET_DEMO_OPTIMIZER_MODEL=${RATCHET_DEMO_OPTIMIZER_MODEL:-gpt-4o}
else
    simulated=1
    unset RATCHET_DEMO_API_KEY
    "$BIN" fake-llm --model demo/model.lua --address-file "$tmp/fake.addr" > "$tmp/fake.log" 2>&1 &
    pids+=($!)
    wait_file "$tmp/fake.addr" "the fake LLM server" "$tmp/fake.log"
    export RATCHET_DEMO_BASE_URL="http://$(cat "$tmp/fake.addr")/v1"
    export RATCHET_DEMO_MODEL=target RATCHET_DEMO_OPTIMIZER_MODEL=optimizer
fi
"$BIN" serve -c demo/ratchet.conf --listen 127.0.0.1:0 --data-dir "$tmp/data" --address-file "$tmp/addr" \
    > "$tmp/engine.log" 2>&1 &
pids+=($!)
wait_file "$tmp/addr" "the engine" "$tmp/engine.log"
status=0
echo "console: http://$(cat "$tmp/addr")/console/  (the web console: watch the loop below happen there)"
lua5.4 demo/run.lua "http://$(cat "$tmp/addr")" "$simulated" ${RATCHET_DEMO_GATEWAY:+gateway} || status=$?
if [ "$status" -ne 0 ]; then echo "--- engine log"; tail -30 "$tmp/engine.log"; fi
# on a terminal (or with RATCHET_DEMO_KEEP=1) the engine stays up so the run can be browsed
if [ "${RATCHET_DEMO_KEEP:-}" = 1 ] || { [ -t 0 ] && [ -t 1 ] && [ "${RATCHET_DEMO_KEEP:-}" != 0 ]; }; then
    echo ""
    echo "the engine keeps running: open http://$(cat "$tmp/addr")/console/ (no token: loopback). Ctrl-C ends the demo."
    wait "${pids[-1]}" || true
fi
exit "$status"
