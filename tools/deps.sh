#!/bin/sh
# Installs the Debian packages ratchet builds, tests and runs with, when any is
# missing. Idempotent and quiet when everything is present. Needs root (or
# sudo) only when it has something to install.
set -eu

PACKAGES="gcc make pkg-config libc6-dev git
libuv1-dev libcurl4-openssl-dev liblua5.4-dev lua5.4 lua-cjson lua-cjson-dev
libsqlite3-dev sqlite3 libgit2-dev libhttp-parser-dev libsystemd-dev libjansson-dev libyajl-dev libunistring-dev libssl-dev libmimalloc-dev zlib1g-dev libjs-chart.js
libprotobuf-c-dev protobuf-c-compiler
libpq-dev postgresql
lua-busted lua-socket lua-rex-pcre2 curl iproute2 systemd
clang-14 libclang-rt-14-dev chromium ${RATCHET_DEPS_EXTRA:-}"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0

echo "deps: installing missing Debian packages:$missing"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "deps: installing packages needs root. Run 'sudo make deps' (or as root: apt-get install$missing)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps: done"
