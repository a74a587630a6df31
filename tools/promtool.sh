#!/bin/sh
# Puts Prometheus' promtool in build/tools/ for the metrics spec, taken from
# Debian's prometheus package without installing it (no server, no service,
# no root): `apt-get download` fetches the .deb and only promtool is kept.
# Best effort: without it the spec checks the exposition format by itself.
set -u
out=build/tools/promtool
[ -x "$out" ] && exit 0
mkdir -p build/tools
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) &&
   dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -O ./usr/bin/promtool > "$tmp/promtool" 2>/dev/null &&
   [ -s "$tmp/promtool" ]; then
    install -m 0755 "$tmp/promtool" "$out"
    echo "promtool: fetched from Debian's prometheus package into $out"
else
    echo "promtool: could not fetch Debian's prometheus package; the metrics spec will check the format itself"
fi
exit 0
