#!/usr/bin/env bash
# Instructions per proxied request in the gateway process, counted by valgrind's callgrind:
# repeatable for the same binary and inputs whatever else the machine is doing, so a change's
# effect on CPU per request shows even on a shared, noisy machine (wall-clock benchmarks are
# bench/compare.sh). The origin (`muxgate origin`: TLS, ALPN h2, 1 KiB at /bytes/1024) and the
# load client (`muxgate load`: keep-alive HTTP/1.1) run in their own processes, uncounted.
# Counters are zeroed after a warm-up, so dialling and TLS setup are not in the figure.
#
# Usage: bench/callgrind.sh [REQUESTS] [CONNECTIONS] [PATH]    (default 20000 50 /bytes/1024)
#   GATEWAY_EXTRA=$'[cache]\nenabled = true' bench/callgrind.sh 20000 50 /cached/1024   cache hits
#   LOAD_ARGS=--close bench/callgrind.sh 20000 50    a new client connection per request
#   ORIGIN_ARGS=--h1-only bench/callgrind.sh 20000 50  HTTP/1.1 keep-alive pool to the origin
#   ORIGIN=nginx bench/callgrind.sh 20000 200   nginx as the origin (installed if missing): a real
#                        origin's response fields, which the test kit's leave out (bench/lib.sh)
# Needs valgrind (apt-get install valgrind). Loopback only; stops everything it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
c=${2:-50}
path=${3:-/bytes/1024}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
source bench/lib.sh
port=$(free_port)
gateway_config "$port" "${GATEWAY_EXTRA:-}"

RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
    "$bin" run -c "$dir/gw.toml" 2>"$dir/gw.err" &
gw=$!
pids+=($gw)
wait_gateway "$port" "$path"
"$bin" load --target "127.0.0.1:$port" --path "$path" --connections "$c" --requests 2000 ${LOAD_ARGS:-} >/dev/null
callgrind_control --zero "$gw" >/dev/null 2>&1
out=$("$bin" load --target "127.0.0.1:$port" --path "$path" --connections "$c" --requests "$n" ${LOAD_ARGS:-})
callgrind_control --dump=measured "$gw" >/dev/null 2>&1
sleep 1
dump=$(ls -t "$dir"/cg.out* | head -1)
cp "$dump" /tmp/callgrind-last.out
ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
echo "# callgrind: $n requests of $path over $c keep-alive connections ($(git rev-parse --short HEAD))"
echo "load: $out"
echo "gateway instructions: $ir total, $((ir / n)) per request"
echo
echo "top functions by self cost (dump kept in /tmp/callgrind-last.out):"
python3 bench/callgrind_top.py "$dump" 25
