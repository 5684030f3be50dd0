#!/usr/bin/env bash
# Large bodies through muxgate, gateway in its own process:
#  1. 1 GiB download and 1 GiB upload (chunked) through the gateway: peak RSS of the gateway
#     process vs idle (streaming with backpressure means it should stay within a few MiB).
#  2. 100 MiB download over the gateway's single h2 origin connection vs the same download
#     straight from the origin over HTTP/2 + TLS (curl --http2), same run.
# Needs curl (installed with apt-get if missing). Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
cargo build --release --quiet
bin=$PWD/target/release/muxgate
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin" origin --dir "$work/pki" >"$work/origin.out" 2>"$work/origin.err" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/origin.out" 2>/dev/null && break; sleep 0.05; done
oport=$(awk '/listening/ {split($2,a,":"); print a[2]}' "$work/origin.out")
gport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/gw.toml" <<TOML
listen = ["127.0.0.1:$gport"]
[admin]
listen = ""
[[origins]]
name = "bench"
hosts = ["*"]
url = "https://localhost:$oport"
tls_ca = "$work/pki/ca.pem"
${EXTRA:-}
TOML
RUST_LOG=warn ${GW_ENV:-} "$bin" -c "$work/gw.toml" 2>"$work/gw.err" &
gpid=$!
pids+=($gpid)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$gport/" && break; sleep 0.05; done

rss() { awk '/VmRSS/ {print $2}' "/proc/$gpid/status"; }
# Samples the gateway's RSS every 50 ms while "$@" runs; prints the command's output and the peak.
peak_during() {
  local peak=0 out
  "$@" >"$work/cmd.out" &
  local cp=$!
  while kill -0 "$cp" 2>/dev/null; do r=$(rss); ((r > peak)) && peak=$r; sleep 0.05; done
  wait "$cp"
  echo "$(cat "$work/cmd.out") peak_rss_kib=$peak"
}

curl -s -o /dev/null "http://127.0.0.1:$gport/bytes/1048576"
idle=$(rss)
echo "# muxgate large bodies — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
echo "gateway idle RSS (after warm-up): ${idle} KiB"
gib=$((1 << 30))
echo "1 GiB download via gateway: $(peak_during curl -s -o /dev/null -w 'bytes=%{size_download} speed=%{speed_download}B/s' "http://127.0.0.1:$gport/bytes/$gib")"
echo "1 GiB upload (chunked) via gateway: $(peak_during sh -c "head -c $gib /dev/zero | curl -s -T - -H 'Content-Type: application/octet-stream' -w ' speed=%{speed_upload}B/s' http://127.0.0.1:$gport/sink")"
echo "RSS growth over idle is the peak minus ${idle} KiB."
mib100=$((100 << 20))
for i in 1 2 3; do
  d=$(curl -s --http2 --cacert "$work/pki/ca.pem" -o /dev/null -w '%{speed_download}' "https://localhost:$oport/bytes/$mib100")
  g=$(curl -s -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$gport/bytes/$mib100")
  python3 -c "d=$d; g=$g; print(f'100 MiB run $i: direct h2 {d/2**20:.0f} MiB/s, via gateway (one h2 conn) {g/2**20:.0f} MiB/s, ratio {g/d:.2f}')"
done
