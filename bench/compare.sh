#!/usr/bin/env bash
# Peer comparison: muxgate against HAProxy and nghttpx (and the origin reached directly), side by
# side in one invocation, on loopback.
#
#   origin   nginx (Debian package), TLS with a test CA, ALPN h2 + http/1.1,
#            http2_max_concurrent_streams 128, /1k.bin and /100k.bin, and a second port that
#            offers only http/1.1; its access log records $connection, $ssl_session_reused and
#            $server_protocol, rotated after every run.
#   muxgate  release build, HTTP/1.1 listener, one [[origins]] entry (tls_ca, tls_server_name).
#   haproxy  `server ... ssl verify required alpn h2,http/1.1` + `http-reuse always`.
#   nghttpx  backend `proto=h2;tls` (no HTTP/1.1 fallback: it sits out fallback-c200).
#   direct   wrk speaking HTTP/1.1 over TLS straight to the origin (a reference, not a peer).
#   nginx    (opt-in, GATEWAYS=... nginx) `upstream` + `keepalive 32` + proxy_ssl_session_reuse.
# Every gateway forwards the same request fields: muxgate always adds X-Forwarded-For and
# X-Forwarded-Proto, so HAProxy (`option forwardfor`, `set-header X-Forwarded-Proto`), nghttpx
# (`add-x-forwarded-for`; it adds X-Forwarded-Proto by default) and nginx (`proxy_set_header`)
# are configured to add them too, and none adds Via.
#
# Cases (wrk, HTTP/1.1 clients):
#   ka-c50, ka-c200, ka-c1000  N keep-alive clients, GET 1 KiB
#   close-c50                  50 clients sending `Connection: close` (a client connection per request)
#   ka-c200-100k               200 keep-alive clients, GET 100 KiB
#   fallback-c200              200 keep-alive clients, GET 1 KiB from the http/1.1-only origin port
#   hit-c200                   200 keep-alive clients, GET a cacheable 1 KiB object (the origin
#                              sends Cache-Control: max-age=3600 under /c/) with each gateway's
#                              cache on: muxgate [cache], nginx proxy_cache, HAProxy's cache
#                              section; nghttpx has no cache and sits out. Add nginx with
#                              GATEWAYS="muxgate haproxy nginx direct" to compare with proxy_cache.
#
# Every gateway is started fresh for every run (so "full handshakes" counts the cold start) and
# stopped after it; within a repetition each case runs every gateway in turn (the order rotates
# from one repetition to the next). Reported per gateway and case, medians over repetitions:
# req/s, its ratio to the best peer (HAProxy, nghttpx, nginx if run) and to direct, p50/p99,
# errors (non-2xx + socket errors, summed over repetitions), origin requests/connections/full/
# resumed TLS handshakes (from the origin's log), peak RSS of the gateway's processes (summed,
# sampled every 100 ms) and their CPU (utime+stime) per 1,000 requests during the run, and the
# nginx origin's CPU per 1,000 requests in the same run (what each gateway costs the origin:
# connections, handshakes, how it batches its writes).
#
# Installs nginx, haproxy, nghttp2-proxy and wrk from Debian packages if missing (their service
# units are kept from starting; the binaries run here with their own configs in a temp dir).
# Prints a Markdown report on stdout and writes it to bench/results/compare-<date>.md.
# Progress goes to stderr. Loopback only; every process it starts is stopped on exit.
#
# Usage: bench/compare.sh
#   DUR=10 REPS=3        seconds per run, repetitions (DUR=5 REPS=1 for a quick look)
#   CASES="ka-c200 ..."  subset of cases            GATEWAYS="muxgate haproxy ..." subset/order
#   THREADS=$(nproc)     wrk threads
#   GW_THREADS=$THREADS  gateway threads: HAProxy nbthread, nghttpx workers, muxgate `workers`
#   ORIGIN_WORKERS=auto  nginx origin worker_processes
#   EXTRA_MUXGATE='min_connections = 2'   extra TOML lines for muxgate's [[origins]] table
#   EXTRA_MUXGATE_TOP='runtime = "thread-per-core"'  extra top-level TOML lines for muxgate (and
#                        muxgate-b, unless EXTRA_MUXGATE_B sets the same key)
#   BIN_B=path/to/muxgate  adds gateway "muxgate-b": another build (or, with EXTRA_MUXGATE_B,
#                        other settings) beside this one in the same run, for A/B comparisons:
#                        GATEWAYS="muxgate muxgate-b haproxy" BIN_B=/tmp/muxgate-old
#   PGO=1                muxgate is the profile-guided build (bench/pgo.sh, 8–12 minutes more on
#                        2 cores); with BIN_B=target/release/muxgate the plain build runs beside it
#   EXTRA_MUXGATE_B=...  extra top-level TOML lines for muxgate-b only (e.g. 'workers = 1')
#   EXTRA_MUXGATE_B_ORIGIN=...  extra [[origins]] lines for muxgate-b only
#                        (e.g. 'stream_window = "256KiB"')
#   EXTRA_MUXGATE_CLIENT=... / EXTRA_MUXGATE_B_CLIENT=...  extra [client] lines for both / for
#                        muxgate-b only (e.g. 'abort_on_close = false')
#   PROCS_B=N            run muxgate-b as N processes on one port (with EXTRA_MUXGATE_B='workers = 1':
#                        one single-threaded process per core)
#   OUT=path.md          where to write the report (default bench/results/compare-<date>.md)
#   WRK_SYSCALLS=1       with perf: count wrk's read, write, epoll_wait and epoll_ctl calls per
#                        request and list them under the report's notes (how often each gateway
#                        makes its clients wake). Diagnosis only: the tracepoints slow wrk's
#                        system calls, so its CPU column is then not comparable with other runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD

DUR=${DUR:-10}
REPS=${REPS:-3}
CASES=${CASES:-"ka-c50 ka-c200 ka-c1000 close-c50 ka-c200-100k fallback-c200 hit-c200"}
GATEWAYS=${GATEWAYS:-"muxgate haproxy nghttpx direct"}
THREADS=${THREADS:-$(nproc)}
GW_THREADS=${GW_THREADS:-$THREADS}
ORIGIN_WORKERS=${ORIGIN_WORKERS:-auto}
EXTRA_MUXGATE=${EXTRA_MUXGATE:-}
EXTRA_MUXGATE_TOP=${EXTRA_MUXGATE_TOP:-}
SNI=origin.test
# muxgate reads MUXGATE_* variables as configuration: keep the caller's out of the measurement.
for v in $(compgen -e | grep '^MUXGATE_' || true); do unset "$v"; done

log() { echo "[compare $(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- packages ---------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nghttpx >/dev/null || need+=(nghttp2-proxy)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  log "installing ${need[*]} (apt-get)"
  apt-get update -qq
  # Keep the packages' service units (nginx on :80, haproxy) from being started by the install.
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null || rc=$?
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install ${need[*]} failed"
fi
for c in nginx haproxy nghttpx wrk openssl ss python3; do
  command -v "$c" >/dev/null || die "$c not found"
done

if [[ ${PGO:-} == 1 ]]; then
  log "building muxgate (release, profile-guided: bench/pgo.sh)"
  bench/pgo.sh >/dev/null
  bin=$root_dir/target/pgo/release/muxgate
else
  log "building muxgate (release)"
  cargo build --release --quiet
  bin=$root_dir/target/release/muxgate
fi
bin_b=$(realpath "${BIN_B:-$bin}")

# Open files: 1,000 clients plus the gateways' and origin's own sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
((NOFILE >= 4096)) || die "open-file limit is $NOFILE; 1,000 clients need more"

work=$(mktemp -d /tmp/muxgate-compare.XXXXXX)
chmod 755 "$work"
roots=() # processes this script started (each stopped with its descendants)

# --- helpers: process trees, RSS/CPU sampling ---------------------------------------------------
cat >"$work/procs.py" <<'PY'
import json, os, signal, sys, time

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def stat(path):
    """The fields of a /proc stat file after comm (state ppid ... utime(14) stime(15) ...
    rss(24) counted from pid), or None if it has gone."""
    try:
        with open(path) as f:
            s = f.read()
        return s[s.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def table():
    t = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (f := stat(f"/proc/{d}/stat")):
            t[int(d)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[21]), int(f[12]))
    return t


def tree(root, t):
    kids = {}
    for p, (pp, *_) in t.items():
        kids.setdefault(pp, []).append(p)
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        if p in t:
            out.append(p)
            stack.extend(kids.get(p, []))
    return out


def threads(root):
    """tid -> utime+stime of every thread of ROOT and its descendants."""
    out = {}
    for p in tree(root, table()):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            if f := stat(f"/proc/{p}/task/{tid}/stat"):
                out[tid] = int(f[11]) + int(f[12])
    return out


if sys.argv[1] == "tree":
    print(" ".join(map(str, tree(int(sys.argv[2]), table()))))
elif sys.argv[1] == "threads":
    # threads ROOT: "@SECONDS" (CLOCK_MONOTONIC), then "tid:ticks" for every thread of ROOT
    # and its descendants ("-" if there are none)
    ts = threads(int(sys.argv[2]))
    print(" ".join([f"@{time.monotonic()}"] + [f"{t}:{n}" for t, n in ts.items()]) if ts else "-")
elif sys.argv[1] == "cpu":
    # cpu ROOT: utime+stime of ROOT and its descendants so far, in milliseconds
    t = table()
    print(round(sum(t[p][1] for p in tree(int(sys.argv[2]), t)) * 1000 / os.sysconf("SC_CLK_TCK")))
elif sys.argv[1] == "sample":
    # sample ROOT OUT READY: every 100 ms sum the RSS of ROOT and its descendants (peak kept) and
    # remember each process's utime+stime; on SIGTERM take a last sample and write the peak and
    # the CPU used since the first sample (a process that appeared later counts in full).
    root, out, ready = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    start, last, peak, first = {}, {}, 0, True
    sys_start, sys_last = {}, {}
    parent = os.getppid()
    while True:
        t = table()
        ps = tree(root, t)
        peak = max(peak, sum(t[p][2] for p in ps) * PAGE_KIB)
        for p in ps:
            start.setdefault(p, t[p][1] if first else 0)
            last[p] = t[p][1]
            sys_start.setdefault(p, t[p][3] if first else 0)
            sys_last[p] = t[p][3]
        if first:
            open(ready, "w").close()
            first = False
        # stop on SIGTERM, or when the gateway or this script (our parent) has gone
        if stop or not ps or os.getppid() != parent:
            break
        time.sleep(0.1)
    cpu = sum(last[p] - start[p] for p in last)
    sys_cpu = sum(sys_last[p] - sys_start[p] for p in sys_last)
    tck = os.sysconf("SC_CLK_TCK")
    with open(out, "w") as f:
        json.dump({"peak_rss_kib": peak, "cpu_ms": cpu * 1000.0 / tck,
                   "sys_ms": sys_cpu * 1000.0 / tck}, f)
PY

tree_of() { python3 "$work/procs.py" tree "$1" 2>/dev/null || true; }

# Stops ROOT and every descendant: SIGTERM to the root, up to 5 s, then SIGKILL to what is left.
stop_tree() {
  local root=$1 all p alive
  all=$(tree_of "$root")
  [[ -n $all ]] || { wait "$root" 2>/dev/null || true; return 0; }
  kill -TERM "$root" 2>/dev/null || true
  for _ in $(seq 50); do
    alive=0
    for p in $all; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$root" 2>/dev/null || true
}

cleanup() {
  local r
  for r in "${roots[@]}"; do stop_tree "$r"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (up to 10 s) until PORT is listening, without connecting to it; fails if PID died.
wait_listen() {
  local port=$1 pid=$2
  for _ in $(seq 200); do
    [[ -n $(ss -Hltn "sport = :$port") ]] && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# --- test CA, certificate, origin files ---------------------------------------------------------
pki=$work/pki
mkdir -p "$pki" "$work/www" "$work/origin"
source bench/pki.sh
test_pki "$pki" "$SNI" "DNS:$SNI,DNS:localhost,IP:127.0.0.1"
CA=$pki/ca.pem
head -c 1024 /dev/urandom >"$work/www/1k.bin"
head -c 102400 /dev/urandom >"$work/www/100k.bin"

oport=$(free_port)
h1port=$(free_port)
cat >"$work/origin/nginx.conf" <<NGINX
user root;
worker_processes $ORIGIN_WORKERS;
worker_rlimit_nofile $NOFILE;
pid $work/origin/nginx.pid;
error_log $work/origin/error.log warn;
events { worker_connections 8192; }
http {
  default_type application/octet-stream;
  client_body_temp_path $work/origin/tmp_body;
  proxy_temp_path $work/origin/tmp_proxy;
  fastcgi_temp_path $work/origin/tmp_fastcgi;
  uwsgi_temp_path $work/origin/tmp_uwsgi;
  scgi_temp_path $work/origin/tmp_scgi;
  log_format bench '\$connection \$ssl_session_reused \$server_protocol \$status \$http_x_forwarded_proto \$http_x_forwarded_for';
  access_log $work/origin/access.log bench buffer=64k flush=1s;
  open_file_cache max=16 inactive=600s;
  open_file_cache_valid 600s;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 128;
  ssl_certificate $pki/cert.pem;
  ssl_certificate_key $pki/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_timeout 1h;
  server {
    listen 127.0.0.1:$oport ssl http2;
    root $work/www;
    location /c/ { alias $work/www/; add_header Cache-Control "public, max-age=3600"; }
  }
  server { listen 127.0.0.1:$h1port ssl; root $work/www; }
}
NGINX
nginx -t -q -e "$work/origin/error.log" -p "$work/origin/" -c "$work/origin/nginx.conf" \
  || die "origin nginx config rejected: $(cat "$work/origin/error.log")"
nginx -e "$work/origin/error.log" -p "$work/origin/" -c "$work/origin/nginx.conf" \
  -g 'daemon off;' 2>>"$work/origin/error.log" &
origin_pid=$!
roots+=("$origin_pid")
wait_listen "$oport" "$origin_pid" && wait_listen "$h1port" "$origin_pid" \
  || die "origin nginx did not start: $(cat "$work/origin/error.log")"

# Moves the origin's access log to $1 and makes nginx reopen (and flush into the moved file).
rotate_origin_log() {
  local dest=$1
  [[ -f $work/origin/access.log ]] || : >"$work/origin/access.log"
  mv "$work/origin/access.log" "$dest"
  kill -USR1 "$origin_pid"
  for _ in $(seq 40); do [[ -f $work/origin/access.log ]] && break; sleep 0.05; done
  sleep 0.5 # workers reopen (flushing their buffers) after the master
}
rotate_origin_log "$work/origin/warmup.log"

# Origin access log of one run → "requests connections full resumed protocols".
origin_stats() {
  awk '{ n++; if (!($1 in seen)) { seen[$1] = 1; c++; if ($2 == "r") r++; else f++ }
         p = ($3 == "HTTP/2.0") ? "h2" : ($3 == "HTTP/1.1") ? "h1" : $3; proto[p] = 1 }
       END { s = ""; for (k in proto) s = s (s ? "+" : "") k
             printf "%d %d %d %d %s\n", n, c, f, r, (s ? s : "-") }' "$1"
}

# --- gateway configs ---------------------------------------------------------------------------
declare -A gport
for g in $GATEWAYS; do
  case $g in
    muxgate | haproxy | nghttpx | nginx | direct) ;;
    muxgate-b) [[ -x ${BIN_B:-$root_dir/target/release/muxgate} ]] || die "BIN_B is not an executable" ;;
    *) die "unknown gateway '$g' (muxgate muxgate-b haproxy nghttpx nginx direct)" ;;
  esac
  gport[$g]=$(free_port)
done

# write_configs NAME ORIGIN_PORT [cache]: configs for every gateway pointing at that origin
# port; with "cache", each gateway's response cache is on.
write_configs() {
  local name=$1 op=$2 d=$work/cfg-$1 cache=${3:-}
  mkdir -p "$d"
  cat >"$d/muxgate.toml" <<TOML
listen = ["127.0.0.1:${gport[muxgate]:-0}"]
workers = $GW_THREADS
$EXTRA_MUXGATE_TOP
[admin]
listen = ""
[client]
max_connections = $(((NOFILE - 2048) / 2))
drain_timeout = "2s"
${EXTRA_MUXGATE_CLIENT:-}
[[origins]]
name = "origin"
hosts = ["*"]
url = "https://127.0.0.1:$op"
tls_server_name = "$SNI"
tls_ca = "$CA"
$EXTRA_MUXGATE
TOML
  local hap_cache="" hap_cache_use="" ngx_cache_path="" ngx_cache=""
  # muxgate-b: the same file on its own port, with its extra top-level and origin lines (a
  # key they set is dropped from the copy).
  local drop=() k
  for k in $(sed -n 's/^\([a-z_]*\) *=.*/\1/p' <<<"${EXTRA_MUXGATE_B:-}"$'\n'"${EXTRA_MUXGATE_B_ORIGIN:-}"$'\n'"${EXTRA_MUXGATE_B_CLIENT:-}"); do
    drop+=(-e "/^$k *=/d")
  done
  { printf '%s\n' "${EXTRA_MUXGATE_B:-}"
    sed "${drop[@]}" -e "s/127.0.0.1:${gport[muxgate]:-0}\"/127.0.0.1:${gport[muxgate-b]:-0}\"/" "$d/muxgate.toml" |
      EXTRA="${EXTRA_MUXGATE_B_CLIENT:-}" awk '{ print } /^\[client\]$/ && ENVIRON["EXTRA"] != "" { print ENVIRON["EXTRA"] }'
    printf '%s\n' "${EXTRA_MUXGATE_B_ORIGIN:-}"; } >"$d/muxgate-b.toml"
  if [[ $cache == cache ]]; then
    printf '[cache]\nenabled = true\n' | tee -a "$d/muxgate-b.toml" >>"$d/muxgate.toml"
    hap_cache=$'cache c\n  total-max-size 64\n  max-object-size 1048576\n  max-age 3600'
    hap_cache_use=$'  http-request cache-use c\n  http-response cache-store c'
    ngx_cache_path="proxy_cache_path $d/nginx/cache levels=1:2 keys_zone=c:10m max_size=100m inactive=1h use_temp_path=off;"
    ngx_cache="proxy_cache c;"
  fi
  cat >"$d/haproxy.cfg" <<HAP
global
  nbthread $GW_THREADS
  maxconn $((NOFILE / 2 - 200))
  ssl-server-verify required
defaults
  mode http
  maxconn $((NOFILE / 2 - 200))
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:${gport[haproxy]:-0}
  default_backend be
backend be
  http-reuse always
  option forwardfor
  http-request set-header X-Forwarded-Proto http
$hap_cache_use
  server origin 127.0.0.1:$op ssl verify required ca-file $CA sni str($SNI) verifyhost $SNI alpn h2,http/1.1
$hap_cache
HAP
  cat >"$d/nghttpx.conf" <<NGX
frontend=127.0.0.1,${gport[nghttpx]:-0};no-tls
backend=127.0.0.1,$op;;proto=h2;tls;sni=$SNI
cacert=$CA
workers=$GW_THREADS
rlimit-nofile=$NOFILE
log-level=WARN
no-via=yes
add-x-forwarded-for=yes
NGX
  mkdir -p "$d/nginx"
  cat >"$d/nginx/nginx.conf" <<NGINX
user root;
worker_processes $GW_THREADS;
worker_rlimit_nofile $NOFILE;
pid $d/nginx/nginx.pid;
error_log stderr warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $d/nginx/tmp_body;
  proxy_temp_path $d/nginx/tmp_proxy;
  fastcgi_temp_path $d/nginx/tmp_fastcgi;
  uwsgi_temp_path $d/nginx/tmp_uwsgi;
  scgi_temp_path $d/nginx/tmp_scgi;
  keepalive_requests 100000000;
  upstream origin { server 127.0.0.1:$op; keepalive 32; }
  $ngx_cache_path
  server {
    listen 127.0.0.1:${gport[nginx]:-0};
    location / {
      proxy_pass https://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_ssl_server_name on;
      proxy_ssl_name $SNI;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $CA;
      proxy_ssl_session_reuse on;
      $ngx_cache
    }
  }
}
NGINX
  [[ -z ${gport[muxgate]:-} ]] || "$bin" check -c "$d/muxgate.toml" >/dev/null \
    || die "muxgate rejected $d/muxgate.toml"
  [[ -z ${gport[muxgate-b]:-} ]] || "$bin_b" check -c "$d/muxgate-b.toml" >/dev/null \
    || die "muxgate-b rejected $d/muxgate-b.toml"
  [[ -z ${gport[haproxy]:-} ]] || haproxy -c -q -f "$d/haproxy.cfg" \
    || die "haproxy rejected $d/haproxy.cfg"
  [[ -z ${gport[nginx]:-} ]] || nginx -t -q -e stderr -p "$d/nginx/" -c "$d/nginx/nginx.conf" \
    || die "nginx (gateway) rejected its config"
}
write_configs h2 "$oport"
write_configs h1 "$h1port"
write_configs cache "$oport" cache

# start_gateway NAME CFGSET LOGFILE → sets gw_pid (empty for direct); returns 1 if it did not start.
start_gateway() {
  local g=$1 d=$work/cfg-$2 errf=$3
  gw_pid=
  case $g in
    direct) return 0 ;;
    muxgate) RUST_LOG=warn "$bin" -c "$d/muxgate.toml" 2>"$errf" & ;;
    # PROCS_B copies of muxgate-b share its port (SO_REUSEPORT, the kernel spreads the
    # connections): N single-threaded processes, measured as one gateway (RSS and CPU summed).
    muxgate-b) RUST_LOG=warn bash -c 'trap "kill \$(jobs -p) 2>/dev/null; wait" TERM INT
      for _ in $(seq "$2"); do "$0" -c "$1" & done; wait' "$bin_b" "$d/muxgate-b.toml" "${PROCS_B:-1}" 2>"$errf" & ;;
    haproxy) haproxy -db -f "$d/haproxy.cfg" >"$errf" 2>&1 & ;;
    nghttpx) nghttpx --conf="$d/nghttpx.conf" >"$errf" 2>&1 & ;;
    nginx) nginx -e stderr -p "$d/nginx/" -c "$d/nginx/nginx.conf" -g 'daemon off;' 2>"$errf" & ;;
  esac
  gw_pid=$!
  roots+=("$gw_pid")
  wait_listen "${gport[$g]}" "$gw_pid"
}

forget() { # drops PID from roots (it has been stopped)
  local keep=() r
  for r in "${roots[@]}"; do [[ $r == "$1" ]] || keep+=("$r"); done
  roots=("${keep[@]}")
}

stop_gateway() {
  [[ -n ${gw_pid:-} ]] || return 0
  stop_tree "$gw_pid"
  forget "$gw_pid"
  gw_pid=
}

cat >"$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
LUA

# case → "clients path origin-set extra-header"
case_spec() {
  case $1 in
    ka-c50) echo "50 /1k.bin h2 -" ;;
    ka-c200) echo "200 /1k.bin h2 -" ;;
    ka-c1000) echo "1000 /1k.bin h2 -" ;;
    close-c50) echo "50 /1k.bin h2 close" ;;
    ka-c200-100k) echo "200 /100k.bin h2 -" ;;
    fallback-c200) echo "200 /1k.bin h1 -" ;;
    hit-c200) echo "200 /c/1k.bin cache -" ;;
    *) die "unknown case '$1'" ;;
  esac
}
for c in $CASES; do case_spec "$c" >/dev/null; done

raw=$work/runs.tsv
printf 'rep\tcase\tgateway\tstatus\trequests\tseconds\trps\tp50_ms\tp99_ms\terrors\terr_detail\torigin_requests\tconns\tfull\tresumed\tproto\tpeak_rss_kib\tcpu_ms\tcpu_ms_per_1k\tsys_pct\torigin_cpu_ms_per_1k\twrk_cpu_ms_per_1k\tidle_pct\tsyscalls_per_req\tgw_top_threads_pct\torigin_top_threads_pct\n' >"$raw"
notes=$work/notes.txt
: >"$notes"

# run_one REP CASE GATEWAY: one wrk run against a freshly started gateway; appends a row to $raw.
run_one() {
  local rep=$1 cs=$2 g=$3 clients path set hdr url errf out smp k v
  read -r clients path set hdr <<<"$(case_spec "$cs")"
  errf=$work/gw-$g-$cs-$rep.err
  local status=ok
  if ! start_gateway "$g" "$set" "$errf"; then
    status=start-failed
    echo "- rep $rep $cs $g: did not start: $(tail -c 600 "$errf" 2>/dev/null | tr '\n' ' ')" >>"$notes"
    stop_gateway
    rotate_origin_log "$work/origin/discard.log"
    printf '%s\t%s\t%s\t%s\n' "$rep" "$cs" "$g" "$status" >>"$raw"
    return 0
  fi
  rotate_origin_log "$work/origin/discard.log" # anything before this run's load
  if [[ $g == direct ]]; then
    [[ $set == h1 ]] && url="https://127.0.0.1:$h1port$path" || url="https://127.0.0.1:$oport$path"
  else
    url="http://127.0.0.1:${gport[$g]}$path"
  fi
  local hargs=()
  [[ $hdr == close ]] && hargs=(-H 'Connection: close')
  smp=$work/sample.json
  rm -f "$smp" "$work/sample.ready"
  if [[ -n $gw_pid ]]; then
    python3 "$work/procs.py" sample "$gw_pid" "$smp" "$work/sample.ready" &
    local spid=$!
    roots+=("$spid")
    for _ in $(seq 100); do [[ -f $work/sample.ready ]] && break; sleep 0.02; done
  fi
  local ocpu0 ocpu1 stat0 stat1 perf_pid=
  # The gateway's system calls during the load (perf's raw_syscalls tracepoint, counted in the
  # kernel): the work it asks of the kernel per request, which does not change when the
  # machine's speed does (see the README on this case's fast and slow runs).
  if [[ -n $gw_pid ]] && command -v perf >/dev/null; then
    perf stat -x, -e raw_syscalls:sys_enter -p "$(tree_of "$gw_pid" | tr ' \n' ',,' | sed 's/,*$//')" \
      -o "$work/perf.txt" 2>/dev/null &
    perf_pid=$!
    roots+=("$perf_pid")
  fi
  ocpu0=$(python3 "$work/procs.py" cpu "$origin_pid" 2>/dev/null || echo -)
  # Per-thread CPU of the gateway and the origin: how evenly each spreads its work (a thread
  # near 100 % of a core is where the pipeline queues).
  local gth0=- gth1=- oth0 oth1
  [[ -z $gw_pid ]] || gth0=$(python3 "$work/procs.py" threads "$gw_pid" 2>/dev/null || echo -)
  oth0=$(python3 "$work/procs.py" threads "$origin_pid" 2>/dev/null || echo -)
  stat0=$(head -1 /proc/stat)
  # wrk under a shell whose `times` reports wrk's own CPU (the children's line, printed last).
  local wrap=()
  if [[ ${WRK_SYSCALLS:-} == 1 ]] && command -v perf >/dev/null; then
    rm -f "$work/wrkperf.txt"
    wrap=(perf stat -x, -o "$work/wrkperf.txt" -e "syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl" --)
  fi
  out=$(timeout -k 5 $((DUR + 60)) bash -c '"$@" 2>&1; rc=$?; times; exit $rc' wrk \
    "${wrap[@]}" wrk -t"$THREADS" -c"$clients" -d"${DUR}s" --timeout 10s --latency \
    -s "$work/report.lua" "${hargs[@]}" "$url" 2>&1) || status=wrk-failed
  # Right after wrk, like the first snapshot right before it (each is stamped with its time).
  [[ -z $gw_pid ]] || gth1=$(python3 "$work/procs.py" threads "$gw_pid" 2>/dev/null || echo -)
  oth1=$(python3 "$work/procs.py" threads "$origin_pid" 2>/dev/null || echo -)
  stat1=$(head -1 /proc/stat)
  local calls=-
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    forget "$perf_pid"
    calls=$(awk -F, '/raw_syscalls:sys_enter/ && $1 ~ /^[0-9]+$/ {print $1}' "$work/perf.txt" 2>/dev/null)
    calls=${calls:--}
  fi
  ocpu1=$(python3 "$work/procs.py" cpu "$origin_pid" 2>/dev/null || echo -)
  # The machine's idle share during the load (all cores; idle + iowait jiffies).
  local idle
  idle=$(awk -v a="$stat0" -v b="$stat1" 'BEGIN { n = split(a, x, " "); split(b, y, " ")
    for (i = 2; i <= n; i++) { t += y[i] - x[i]; if (i == 5 || i == 6) d += y[i] - x[i] }
    printf "%.0f", t ? 100 * d / t : 0 }')
  # wrk's CPU in ms: the last line of `times` ("0m1.230s 0m0.450s").
  local wcpu
  wcpu=$(tail -1 <<<"$out" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); s += p[1] * 60 + p[2] }
    printf "%.0f", s * 1000 }')
  local ocpu=-
  [[ $ocpu0 == - || $ocpu1 == - ]] || ocpu=$((ocpu1 - ocpu0))
  local peak=- cpu=- sys=- errsz=0
  [[ -f $errf ]] && errsz=$(stat -c %s "$errf") # what it logged up to here (not its shutdown)
  if [[ -n $gw_pid ]]; then
    kill -TERM "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    forget "$spid"
    if [[ -f $smp ]]; then
      read -r peak cpu sys < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["peak_rss_kib"], round(d["cpu_ms"]), round(d["sys_ms"]))' "$smp")
    fi
    kill -0 "$gw_pid" 2>/dev/null || { status=gateway-died; echo "- rep $rep $cs $g: gateway process exited during the run: $(tail -c 600 "$errf" | tr '\n' ' ')" >>"$notes"; }
  fi
  stop_gateway
  rotate_origin_log "$work/origin/run.log"
  local ostats
  ostats=$(origin_stats "$work/origin/run.log")
  # Every gateway is set up to add X-Forwarded-For and -Proto (the same work as muxgate's).
  local unfwd
  unfwd=$(awk '$5 == "-" || $6 == "-" || NF < 6 { u++ } END { print u + 0 }' "$work/origin/run.log")
  [[ $g == direct || $unfwd == 0 ]] || echo "- rep $rep $cs $g: $unfwd origin requests lacked X-Forwarded-For or X-Forwarded-Proto" >>"$notes"
  local requests=0 duration_us=1 connect=0 read=0 write=0 status_e=0 timeout_e=0 p50_us=0 p99_us=0 line
  line=$(grep -m1 '^WRKRESULT' <<<"$out" || true)
  if [[ -z $line ]]; then
    status=wrk-failed
    echo "- rep $rep $cs $g: wrk printed no result: $(tail -c 400 <<<"$out" | tr '\n' ' ')" >>"$notes"
  else
    for kv in ${line#WRKRESULT }; do
      k=${kv%%=*} v=${kv#*=}
      case $k in
        requests) requests=$v ;; duration_us) duration_us=$v ;; connect) connect=$v ;;
        read) read=$v ;; write) write=$v ;; status) status_e=$v ;; timeout) timeout_e=$v ;;
        p50_us) p50_us=$v ;; p99_us) p99_us=$v ;;
      esac
    done
  fi
  if [[ ${#wrap[@]} -gt 0 && -s $work/wrkperf.txt && $requests -gt 0 ]]; then
    echo "- rep $rep $cs $g: wrk's system calls per request: $(awk -F, -v n="$requests" \
      '$1 ~ /^[0-9]+$/ { sub(/^syscalls:sys_enter_/, "", $3); printf "%s%s %.3f", sep, $3, $1 / n; sep = ", " }' \
      "$work/wrkperf.txt")" >>"$notes"
  fi
  # Warnings and errors the gateway logged from its start to the end of the load (not while
  # stopping); the first lines are kept for the report.
  local pat='warn|error|alert|fatal|panic' logged
  logged=$(head -c "$errsz" "$errf" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -iE "$pat" || true)
  if [[ -n $logged ]]; then
    echo "- rep $rep $cs $g logged $(wc -l <<<"$logged") warning/error lines, e.g.: $(head -3 <<<"$logged" | cut -c1-300 | tr '\n' ' ')" >>"$notes"
  fi
  python3 - "$raw" "$rep" "$cs" "$g" "$status" "$requests" "$duration_us" "$p50_us" "$p99_us" \
    "$connect" "$read" "$write" "$status_e" "$timeout_e" "$peak" "$cpu" "$sys" "$ocpu" "$wcpu" "$idle" "$calls" "$gth0" "$gth1" "$oth0" "$oth1" $ostats <<'PY'
import os, sys
(raw, rep, cs, g, status, req, dur, p50, p99, ec, er, ew, es, et, peak, cpu, sys_ms, ocpu, wcpu,
 idle, calls, gth0, gth1, oth0, oth1, oreq, conns, full, res, proto) = sys.argv[1:]
req, dur = int(req), int(dur) / 1e6
errs = sum(map(int, (ec, er, ew, es, et)))
detail = f"connect {ec}, read {er}, write {ew}, status {es}, timeout {et}"
cpu1k = "-" if cpu == "-" or req == 0 else f"{float(cpu) / (req / 1000):.2f}"
sys_pct = "-" if cpu in ("-", "0") or sys_ms == "-" else f"{100 * float(sys_ms) / float(cpu):.0f}"
ocpu1k = "-" if ocpu == "-" or req == 0 else f"{float(ocpu) / (req / 1000):.2f}"
wcpu1k = "-" if wcpu in ("-", "") or req == 0 else f"{float(wcpu) / (req / 1000):.2f}"
calls1 = "-" if calls in ("-", "") or req == 0 else f"{int(calls) / req:.2f}"


def busiest(a, b):
    """The two busiest threads between snapshots a and b, in % of one core ("60/27"), over
    the time between the snapshots."""
    if "-" in (a, b):
        return "-"
    (t0, *a), (t1, *b) = a.split(), b.split()
    span = float(t1[1:]) - float(t0[1:])
    if span <= 0:
        return "-"
    before = dict(kv.split(":") for kv in a)
    used = sorted((int(n) - int(before.get(t, 0)) for t, n in (kv.split(":") for kv in b)),
                  reverse=True)
    tck = os.sysconf("SC_CLK_TCK")
    return "/".join(f"{100 * u / tck / span:.0f}" for u in used[:2])


gtop, otop = busiest(gth0, gth1), busiest(oth0, oth1)
row = [rep, cs, g, status, req, f"{dur:.2f}", f"{req / dur:.0f}", f"{int(p50) / 1000:.2f}",
       f"{int(p99) / 1000:.2f}", errs, detail, oreq, conns, full, res, proto, peak, cpu, cpu1k, sys_pct,
       ocpu1k, wcpu1k, idle, calls1, gtop, otop]
with open(raw, "a") as f:
    f.write("\t".join(map(str, row)) + "\n")
print(f"{cs} {g}: {req / dur:.0f} req/s, p99 {int(p99) / 1000:.1f} ms, errors {errs}, "
      f"origin conns {conns} (full {full}, resumed {res}, {proto}), peak RSS {peak} KiB, "
      f"CPU {cpu1k} ms/1k req ({sys_pct}% sys, {calls1} syscalls/req), origin CPU {ocpu1k} ms/1k req, wrk CPU {wcpu1k} ms/1k req, machine idle {idle}%, busiest threads % of a core: gateway {gtop}, origin {otop} [{status}]",
      file=sys.stderr)
PY
}

# --- the matrix ---------------------------------------------------------------------------------
read -ra gws <<<"$GATEWAYS"
ng=${#gws[@]}
started=$(date -u +%Y-%m-%dT%H:%MZ)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "origin on 127.0.0.1:$oport (h2+h1) and :$h1port (h1 only); DUR=${DUR}s REPS=$REPS; gateways: $GATEWAYS"
for rep in $(seq "$REPS"); do
  for cs in $CASES; do
    for i in $(seq 0 $((ng - 1))); do
      g=${gws[$(((i + rep - 1) % ng))]}
      [[ $cs == fallback-* && $g == nghttpx ]] && continue # no HTTP/1.1 fallback in nghttpx
      [[ $cs == hit-* && $g == nghttpx ]] && continue      # no cache in nghttpx
      log "rep $rep/$REPS $cs $g"
      run_one "$rep" "$cs" "$g"
    done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
if grep -qvE '\[notice\]|^$' "$work/origin/error.log" 2>/dev/null; then
  echo "- origin error log: $(grep -vE '\[notice\]' "$work/origin/error.log" | sort | uniq -c | sort -rn | head -5 | cut -c1-300 | tr '\n' ' ')" >>"$notes"
fi

# --- report -------------------------------------------------------------------------------------
mkdir -p bench/results
out_md=${OUT:-bench/results/compare-$(date -u +%Y-%m-%d).md}
[[ -n ${OUT:-} || ! -e $out_md ]] || out_md=bench/results/compare-$(date -u +%Y-%m-%d-%H%M).md
{
  echo "# muxgate peer comparison — $started"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); load average before/after: $load_before / $load_after."
  echo "Versions: muxgate $("$bin" --version | awk '{print $2}') ($(git -C "$root_dir" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root_dir" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ', modified')), $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), $(nghttpx --version | head -1), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}')."
  [[ ${PGO:-} != 1 ]] || echo "muxgate: the profile-guided build (bench/pgo.sh, target/pgo/release/muxgate)."
  [[ -z ${gport[muxgate-b]:-} ]] || echo "muxgate-b: $bin_b ($("$bin_b" --version | awk '{print $2}'))${EXTRA_MUXGATE_B:+, extra top-level settings: \`$(tr '\n' ' ' <<<"$EXTRA_MUXGATE_B")\`}${EXTRA_MUXGATE_B_ORIGIN:+, extra origin settings: \`$(tr '\n' ' ' <<<"$EXTRA_MUXGATE_B_ORIGIN")\`}${EXTRA_MUXGATE_B_CLIENT:+, extra client settings: \`$(tr '\n' ' ' <<<"$EXTRA_MUXGATE_B_CLIENT")\`}${PROCS_B:+, $PROCS_B processes on one port}."
  echo "Runs: ${DUR} s each, $REPS repetitions, gateways alternating within each repetition, each started fresh per run; wrk -t$THREADS; HAProxy nbthread $GW_THREADS, nghttpx workers $GW_THREADS, muxgate workers $GW_THREADS; origin nginx worker_processes $ORIGIN_WORKERS.${EXTRA_MUXGATE_TOP:+ muxgate extra top-level settings: \`$(tr '\n' ' ' <<<"$EXTRA_MUXGATE_TOP")\`.}${EXTRA_MUXGATE:+ muxgate extra origin settings: \`$(tr '\n' ' ' <<<"$EXTRA_MUXGATE")\`.}${EXTRA_MUXGATE_CLIENT:+ muxgate extra client settings: \`$(tr '\n' ' ' <<<"$EXTRA_MUXGATE_CLIENT")\`.}"
  echo
  python3 - "$raw" "$GATEWAYS" "$CASES" <<'PY'
import csv, statistics as st, sys
raw, gws, cases = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
rows = list(csv.DictReader(open(raw), delimiter="\t"))
peers = [g for g in gws if g not in ("muxgate", "muxgate-b", "direct")]
def med(vals, fmt):
    v = [float(x) for x in vals if x not in ("", "-", None)]
    return (fmt.format(st.median(v)), st.median(v)) if v else ("–", None)
print("Medians over repetitions. **× best peer**: req/s over the best of "
      + (", ".join(peers) if peers else "(no peers run)")
      + " in this run; **per rep**: the same ratio within each repetition, lowest–highest "
      "(below 1 throughout: behind; spanning 1: within the machine's spread); **× direct**: over wrk → origin over TLS. Errors: non-2xx + socket errors, "
      "summed over repetitions. Origin columns from the origin's access log for each run "
      "(requests it served, distinct connections, full / resumed TLS handshakes, protocols). "
      "RSS: peak of the gateway's processes summed, sampled every 100 ms. CPU: utime+stime of "
      "the gateway's processes during the run, per 1,000 requests; sys %: the kernel's share of it; "
      "syscalls / req: the gateway's system calls per request (perf; '–' without it), the same in a "
      "run where the machine is slow and in one where it is fast; "
      "origin CPU: the same for the nginx origin's processes (what each gateway costs the origin); "
      "wrk CPU: the load generator's, per 1,000 requests (how the gateway's write pattern costs its "
      "clients); idle %: the machine's idle share during the run (near 0: the run was CPU-bound, "
      "so req/s follows the sum of the three CPU columns); busiest threads: the CPU of the gateway's "
      "and the origin's two busiest threads in % of one core (medians; a thread near 100 holds the "
      "pipeline up, one far above the other shows the work is not spread).")
print()
print("| case | gateway | req/s | × best peer | per rep | × direct | p50 ms | p99 ms | errors | origin req | origin conns | full hs | resumed hs | proto | peak RSS MiB | CPU ms / 1k req | sys % | syscalls / req | origin CPU ms / 1k req | wrk CPU ms / 1k req | idle % | busiest threads: gateway | busiest threads: origin | runs |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for c in cases:
    by = {}
    for g in gws:
        rs = [r for r in rows if r["case"] == c and r["gateway"] == g]
        if rs:
            by[g] = rs
    rps = {g: med([r["rps"] for r in rs if r["status"] == "ok"], "{:.0f}")[1] for g, rs in by.items()}
    best = max([rps[g] for g in peers if rps.get(g)] or [0]) or None
    direct = rps.get("direct")
    for g in gws:
        if g not in by:
            if g == "nghttpx" and c.startswith("fallback"):
                print(f"| {c} | nghttpx | n/a (no HTTP/1.1 fallback) | | | | | | | | | | | | | | | | | | | | | |")
            continue
        rs = by[g]
        ok = [r for r in rs if r["status"] == "ok"]
        f = lambda k, fmt: med([r[k] for r in ok], fmt)[0]

        def top(k):
            # Thread by thread ("60/27"): the median of each position over the repetitions.
            runs = [[float(x) for x in r[k].split("/")] for r in ok if r.get(k) not in (None, "", "-")]
            n = min(map(len, runs)) if runs else 0
            return "/".join(f"{st.median(x[i] for x in runs):.0f}" for i in range(n)) or "–"
        errs = sum(int(r["errors"]) for r in rs if r.get("errors"))  # failed runs count too
        ratio = f"{rps[g] / best:.2f}×" if best and rps[g] else "–"
        rdir = f"{rps[g] / direct:.2f}×" if direct and rps[g] else "–"
        # The same ratio repetition by repetition (lowest–highest): a shortfall in every
        # repetition is the gateway's; one that changes sign is the machine's spread.
        each = []
        for rep in sorted({r["rep"] for r in ok}):
            mine = [float(r["rps"]) for r in ok if r["rep"] == rep]
            theirs = [float(r["rps"]) for p in peers for r in by.get(p, [])
                      if r["rep"] == rep and r["status"] == "ok"]
            if mine and theirs and max(theirs) > 0:
                each.append(mine[0] / max(theirs))
        span = f"{min(each):.2f}–{max(each):.2f}" if len(each) > 1 else (f"{each[0]:.2f}" if each else "–")
        protos = "/".join(sorted({r["proto"] for r in ok}))
        rss = med([float(r["peak_rss_kib"]) / 1024 for r in ok if r["peak_rss_kib"] not in ("-", "")], "{:.1f}")[0]
        status = f"{len(ok)}/{len(rs)} ok"
        name = f"**{g}**" if g.startswith("muxgate") else g
        print(f"| {c} | {name} | {f('rps', '{:.0f}')} | {ratio} | {span} | {rdir} | {f('p50_ms', '{:.2f}')} "
              f"| {f('p99_ms', '{:.1f}')} | {errs} | {f('origin_requests', '{:.0f}')} | {f('conns', '{:.0f}')} "
              f"| {f('full', '{:.0f}')} | {f('resumed', '{:.0f}')} | {protos} | {rss} | {f('cpu_ms_per_1k', '{:.1f}')} | {f('sys_pct', '{:.0f}')} "
              f"| {f('syscalls_per_req', '{:.2f}')} | {f('origin_cpu_ms_per_1k', '{:.1f}')} | {f('wrk_cpu_ms_per_1k', '{:.1f}')} | {f('idle_pct', '{:.0f}')} | {top('gw_top_threads_pct')} | {top('origin_top_threads_pct')} | {status} |")
PY
  echo
  if [[ -s $notes ]]; then
    echo "## Notes from the runs"
    echo
    cat "$notes"
    echo
  fi
  echo "<details><summary>Every run</summary>"
  echo
  echo "| $(head -1 "$raw" | sed 's/\t/ | /g') |"
  echo "|$(head -1 "$raw" | awk -F'\t' '{for (i = 1; i <= NF; i++) printf " --- |"}')"
  tail -n +2 "$raw" | sed 's/\t/ | /g; s/^/| /; s/$/ |/'
  echo
  echo "</details>"
  echo
  echo "<details><summary>Configurations (origin ports ORIGIN / ORIGIN_H1, gateway port GW, temp dir WORK; fallback-c200 uses ORIGIN_H1)</summary>"
  echo
  sedx=(-e "s#$work#WORK#g" -e "s#\\b$oport\\b#ORIGIN#g" -e "s#\\b$h1port\\b#ORIGIN_H1#g")
  for g in "${!gport[@]}"; do sedx+=(-e "s#\\b${gport[$g]}\\b#GW#g"); done
  for g in $GATEWAYS; do
    case $g in
      muxgate) f=muxgate.toml ;; muxgate-b) f=muxgate-b.toml ;; haproxy) f=haproxy.cfg ;; nghttpx) f=nghttpx.conf ;;
      nginx) f=nginx/nginx.conf ;; *) continue ;;
    esac
    echo "$g (\`$f\`):"
    echo '```'
    sed "${sedx[@]}" "$work/cfg-h2/$f"
    echo '```'
  done
  echo 'origin (nginx):'
  echo '```'
  sed "${sedx[@]}" "$work/origin/nginx.conf"
  echo '```'
  echo
  echo "</details>"
} >"$work/report.md"
cp "$work/report.md" "$out_md"
cat "$work/report.md"
log "report written to $out_md"
