#!/usr/bin/env bash
# Gateway vs direct, measured in the same run: an in-process TLS h2 origin (ALPN h2 +
# http/1.1), muxgate in front of it, and N keep-alive HTTP/1.1 clients; the same load is also
# sent straight at the origin over HTTP/1.1+TLS. Prints req/s, p50/p99, upstream connections
# and full/resumed handshakes for each case, and the gateway/direct ratio.
#
# Needs only the Rust toolchain. Loopback only; every process it starts ends with it.
# Usage: bench/gateway_vs_direct.sh [REQUESTS_PER_CLIENT]   (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
per=${1:-100}
cargo build --release --quiet
bin=target/release/muxgate
echo "# muxgate gateway vs direct — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -m)"
for clients in 200 1000; do
  for min in 1 2; do
    echo
    echo "## clients=$clients min_connections=$min"
    timeout 300 "$bin" demo --direct --clients "$clients" --requests $((clients * per)) \
      --min-connections "$min"
  done
done
echo
echo "## 100 KiB bodies, clients=200"
timeout 300 "$bin" demo --direct --clients 200 --requests $((200 * per / 2)) --body-size 102400
