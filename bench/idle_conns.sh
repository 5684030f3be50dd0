#!/usr/bin/env bash
# Memory per idle keep-alive client connection: muxgate vs HAProxy, same run, same origin.
# Each gateway gets N client connections that each complete one GET (1 KiB) and then stay
# open and idle; the gateway's RSS is read before and after, and the difference divided by N.
# The origin is `muxgate origin` (TLS, ALPN h2) in its own process; HAProxy uses
# `alpn h2` + `http-reuse always`. The client is a small asyncio script (python3).
#
# Usage: bench/idle_conns.sh [N]   (default 10000)
#   TLS=1 bench/idle_conns.sh 5000   the clients connect over TLS (ALPN http/1.1) to a TLS
#                                    listener of each gateway (certificate of the test-kit origin)
# Installs haproxy from Debian if missing. Loopback only; stops everything it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
ulimit -n "$(ulimit -Hn)"  # the gateways and the client each need N descriptors
command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; systemctl stop haproxy 2>/dev/null || true; }
source bench/lib.sh
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

cat >"$dir/client.py" <<'PY'
import asyncio, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ctx = None
if len(sys.argv) > 3:  # TLS: the CA file
    ctx = ssl.create_default_context(cafile=sys.argv[3])
    ctx.set_alpn_protocols(["http/1.1"])
REQ = b"GET /bytes/1024 HTTP/1.1\r\nHost: localhost\r\n\r\n"
async def one(held):
    if ctx:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    else:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(REQ)
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    await r.readexactly(1024)
    held.append(w)
async def main():
    held = []
    sem = asyncio.Semaphore(500)
    async def guarded():
        async with sem:
            await one(held)
    await asyncio.gather(*(guarded() for _ in range(n)))
    print(f"held {len(held)}", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
PY

measure() {  # name pid port [n]
    local name=$1 pid=$2 port=$3 n=${4:-$n} before after
    python3 "$dir/client.py" "$port" 1 "${tls_args[@]}" >/dev/null 2>&1 &  # warm: first origin connection
    local warm=$!; sleep 1; kill $warm 2>/dev/null || true; wait $warm 2>/dev/null || true
    sleep 0.5
    before=$(rss_kib "$pid")
    python3 "$dir/client.py" "$port" "$n" "${tls_args[@]}" >"$dir/$name.client" 2>&1 &
    local cpid=$!
    for _ in $(seq 600); do grep -q held "$dir/$name.client" 2>/dev/null && break; sleep 0.2; done
    grep -q "held $n" "$dir/$name.client" || { echo "$name: client failed: $(tail -3 "$dir/$name.client")"; kill $cpid; return; }
    # Past client.idle_release_after (1 s) and its timer's next look (up to 1 s more), and past
    # mimalloc's purge, which gives the freed pages back to the system some seconds later
    # (2,000 connections: 14.8 KiB each at 5 s, 4.0 at 10 s).
    sleep 12
    after=$(rss_kib "$pid")
    kill $cpid 2>/dev/null || true; wait $cpid 2>/dev/null || true
    printf '| %s | %d | %.1f | %.1f | %.2f |\n' "$name" "$n" "$(echo "$before/1024" | bc -l)" \
        "$(echo "$after/1024" | bc -l)" "$(echo "($after-$before)/$n" | bc -l)"
}

mport=$(free_port)
tls_args=() mtls="" hbind=""
if [[ ${TLS:-} == 1 ]]; then
    # The clients use TLS listeners; muxgate's plain one gets a port of its own, unused.
    tls_args=("$dir/ca.pem")
    mtls="[[listen_tls]]
listen = \"127.0.0.1:$mport\"
cert = \"$dir/cert.pem\"
key = \"$dir/key.pem\""
    cat "$dir/cert.pem" "$dir/key.pem" >"$dir/both.pem"
    hbind=" ssl crt $dir/both.pem alpn http/1.1"
fi
gateway_config "$( [[ -n $mtls ]] && free_port || echo "$mport")" "[client]
max_connections = $((n + 1000))
header_timeout = \"1h\"
$mtls"
RUST_LOG=warn "$bin" run -c "$dir/gw.toml" 2>"$dir/gw.err" &
mpid=$!; pids+=($mpid)

# HAProxy refuses to start when its file-descriptor limit is below 2 × maxconn + margin (a
# client and a server side per connection); where the hard limit is too low for N it is
# measured at the largest N it can hold, and muxgate at that N too, for a like-for-like figure.
hard=$(ulimit -Hn)
hn=$(( (hard - 300) / 2 - 100 ))
(( hn > n )) && hn=$n
hport=$(free_port)
cat >"$dir/haproxy.cfg" <<HAP
global
  nbthread 2
  maxconn $((hn + 100))
defaults
  mode http
  maxconn $((hn + 100))
  timeout connect 5s
  timeout client 1h
  timeout server 60s
  timeout http-keep-alive 1h
frontend fe
  bind 127.0.0.1:$hport$hbind
  default_backend be
backend be
  http-reuse always
  server origin 127.0.0.1:$oport ssl verify required ca-file $dir/ca.pem sni str(localhost) verifyhost localhost alpn h2
HAP
haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.err" 2>&1 &
hpid=$!; pids+=($hpid)
sleep 1

echo "# idle keep-alive client connections${TLS:+ over TLS}: $n each, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
echo
echo "| gateway | connections | RSS before (MiB) | RSS held (MiB) | KiB per connection |"
echo "| --- | ---: | ---: | ---: | ---: |"
measure muxgate "$mpid" "$mport"
if (( hn < n )); then
    echo "(HAProxy needs 2 descriptors per connection; the hard limit $hard lets it hold $hn)"
    kill "$mpid"; wait "$mpid" 2>/dev/null || true
    RUST_LOG=warn "$bin" run -c "$dir/gw.toml" 2>"$dir/gw.err" &
    mpid=$!; pids+=($mpid); sleep 1
    measure muxgate "$mpid" "$mport" "$hn"
fi
measure haproxy "$hpid" "$hport" "$hn"
