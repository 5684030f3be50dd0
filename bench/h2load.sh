#!/usr/bin/env bash
# HTTP/2 clients through muxgate, driven by h2load (Debian's nghttp2-client): the release gateway
# in its own process with a TLS listener (ALPN h2) and a plain listener with `h2c = true`, in
# front of the test-kit origin (TLS, ALPN h2, 128 streams) in another process. Runs h2load
# against the TLS listener and then against the h2c listener and prints a short Markdown result:
# req/s, failed/errored requests, status codes, and the origin connections and TLS handshakes
# the gateway opened (from its /metrics).
#
# Installs nghttp2-client with apt-get if h2load is missing. Loopback only; stops what it starts.
# Usage: bench/h2load.sh            C=50 M=10 N=100000 (h2load -c/-m/-n)
set -euo pipefail
cd "$(dirname "$0")/.."
C=${C:-50}
M=${M:-10}
N=${N:-100000}
# muxgate reads MUXGATE_* variables as configuration: keep the caller's out of the measurement.
for v in $(compgen -e | grep '^MUXGATE_' || true); do unset "$v"; done
command -v h2load >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
}
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
cargo build --release --quiet
bin=$PWD/target/release/muxgate
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$bin" origin --dir "$work/pki" >"$work/origin.out" 2>"$work/origin.err" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/origin.out" 2>/dev/null && break; sleep 0.05; done
oport=$(awk '/listening/ {split($2,a,":"); print a[2]}' "$work/origin.out")
gport=$(free_port)
tport=$(free_port)
aport=$(free_port)
# The gateway's listener reuses the origin's localhost certificate (h2load does not verify).
cat >"$work/gw.toml" <<TOML
listen = ["127.0.0.1:$gport"]
[admin]
listen = "127.0.0.1:$aport"
[client]
h2c = true
[[listen_tls]]
listen = "127.0.0.1:$tport"
cert = "$work/pki/cert.pem"
key = "$work/pki/key.pem"
[[origins]]
name = "bench"
hosts = ["*"]
url = "https://localhost:$oport"
tls_ca = "$work/pki/ca.pem"
TOML
RUST_LOG=warn "$bin" -c "$work/gw.toml" 2>"$work/gw.err" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$aport/healthz" && break; sleep 0.05; done

metric() { curl -s "http://127.0.0.1:$aport/metrics" | awk -v s="$1" '$1 == s {print $2}'; }
# One h2load run; prints a Markdown table row.
run() {
  local label=$1 url=$2 out
  out=$(h2load -c "$C" -m "$M" -n "$N" "$url" 2>&1) || true
  echo "$out" >"$work/h2load-$label.txt"
  local rps reqline codes
  rps=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
  reqline=$(echo "$out" | awk '/^requests:/ {print $8, $10, $12}')
  codes=$(echo "$out" | awk '/^status codes:/ {sub("status codes: ", ""); print}')
  read -r ok failed errored <<<"$reqline"
  echo "| $label | ${rps:-?} | ${ok:-?} | ${failed:-?} | ${errored:-?} | ${codes:-?} |"
}

echo "# muxgate HTTP/2 clients (h2load) — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
echo
echo "h2load -c $C -m $M -n $N, GET / (1 KiB), test-kit origin (TLS, h2, 128 streams) in its own process."
echo
echo "| listener | req/s | succeeded | failed | errored | status codes |"
echo "| --- | --- | --- | --- | --- | --- |"
run "TLS, ALPN h2" "https://localhost:$tport/"
run "plain, h2c prior knowledge" "http://127.0.0.1:$gport/"
echo
conns=$(metric 'muxgate_upstream_connections_total{origin="bench",protocol="h2"}')
full=$(metric 'muxgate_upstream_tls_handshakes_total{origin="bench",resumed="false"}')
resumed=$(metric 'muxgate_upstream_tls_handshakes_total{origin="bench",resumed="true"}')
h2c=$(metric 'muxgate_downstream_connections_total{protocol="h2"}')
h2cc=$(metric 'muxgate_downstream_connections_total{protocol="h2c"}')
closed=$(curl -s "http://127.0.0.1:$aport/metrics" | grep '^muxgate_downstream_connections_closed_total' || true)
echo "Client connections: ${h2c:-0} h2 + ${h2cc:-0} h2c. Origin connections opened by the gateway over both runs: ${conns:-0}" \
  "(TLS handshakes: ${full:-0} full, ${resumed:-0} resumed). Client connections closed by a flood limit: ${closed:-none}."
