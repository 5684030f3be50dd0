#!/usr/bin/env bash
# System calls and context switches per proxied request in the gateway process (perf stat on
# the raw_syscalls:sys_enter tracepoint and the context-switches software event: counted in
# the kernel, no hardware counters needed, negligible overhead, so the batching behaviour
# measured is the real one), plus its CPU time per 1,000 requests (utime + stime from
# /proc/PID/stat, split into user and system). Origin: `muxgate origin` (TLS,
# ALPN h2); load: `muxgate load` (keep-alive HTTP/1.1), both in their own processes.
#
# Usage: bench/syscalls.sh [REQUESTS] [CONNECTIONS] [PATH]   (default 100000 200 /bytes/1024)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
c=${2:-200}
path=${3:-/bytes/1024}
source bench/lib.sh
port=$(free_port)
gateway_config "$port"
RUST_LOG=warn "$bin" run -c "$dir/gw.toml" 2>"$dir/gw.err" &
gw=$!
pids+=($gw)
wait_gateway "$port" "$path"
"$bin" load --target "127.0.0.1:$port" --path "$path" --connections "$c" --requests 5000 >/dev/null
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
cpu() { awk '{print $14 "," $15}' /proc/$gw/stat; }
t0=$(cpu)
perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$gw" -o "$dir/perf.txt" &
perf_pid=$!
sleep 0.3
out=$("$bin" load --target "127.0.0.1:$port" --path "$path" --connections "$c" --requests "$n")
kill -INT "$perf_pid"
wait "$perf_pid" 2>/dev/null || true
t1=$(cpu)
hz=$(getconf CLK_TCK)
sys=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$dir/perf.txt")
cs=$(awk -F, '/context-switches/ {print $1}' "$dir/perf.txt")
echo "# syscalls: $n requests of $path over $c keep-alive connections ($(git rev-parse --short HEAD))"
echo "load: $out"
python3 - "$n" "$sys" "$cs" "$t0" "$t1" "$hz" <<'PY'
import sys
n, sysc, cs, hz = (float(sys.argv[i]) for i in (1, 2, 3, 6))
(u0, s0), (u1, s1) = ([float(x) for x in a.split(",")] for a in sys.argv[4:6])
per_k = lambda ticks: ticks / hz * 1000 / (n / 1000)
print(f"per request: {sysc/n:.2f} system calls, {cs/n:.2f} context switches")
print(f"gateway CPU: {per_k(u1 - u0 + s1 - s0):.1f} ms per 1,000 requests"
      f" (user {per_k(u1 - u0):.1f}, system {per_k(s1 - s0):.1f})")
PY
