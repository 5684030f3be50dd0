#!/usr/bin/env bash
# Where the gateway's heap goes at its peak under N busy keep-alive HTTP/1.1 clients: valgrind's
# massif on a build with the system allocator (`--features system-alloc`; mimalloc's own
# allocations are invisible to massif), the test-kit origin (TLS, ALPN h2) in its own process,
# and `muxgate load` sending GET /bytes/1024. Prints the peak heap, bytes per connection and
# a table of allocation sites (bench/massif_top.py). Heap bytes, not RSS: the allocator's
# slack and the binary's pages are not in it.
#
# Usage: bench/heap.sh [CONNECTIONS] [REQUESTS]     (default 1000 30000)
# Needs valgrind (installed with apt-get if missing). Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
c=${1:-1000}
n=${2:-30000}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
cargo build --release --quiet --features system-alloc --target-dir target/system-alloc
BIN=target/system-alloc/release/muxgate
source bench/lib.sh
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) > 2 * c + 100 )) || { echo "open-file limit $(ulimit -n) too low for $c connections" >&2; exit 1; }
port=$(free_port)
gateway_config "$port" "${GATEWAY_EXTRA:-}"
RUST_LOG=warn valgrind --tool=massif --massif-out-file="$dir/massif.out" --depth=60 --threshold=0.2 \
    "$bin" run -c "$dir/gw.toml" 2>"$dir/gw.err" &
gw=$!
pids+=($gw)
wait_gateway "$port" /bytes/1024
out=$("$bin" load --target "127.0.0.1:$port" --path /bytes/1024 --connections "$c" --requests "$n")
kill -TERM "$gw"
wait "$gw" || true
cp "$dir/massif.out" /tmp/massif-last.out
echo "# heap at its peak: $c keep-alive clients, GET /bytes/1024 ($(git rev-parse --short HEAD))"
echo "load (under valgrind, slow): $out"
python3 bench/massif_top.py "$dir/massif.out" "$c" 15
echo
echo "(dump kept in /tmp/massif-last.out; ms_print shows the full trees)"
