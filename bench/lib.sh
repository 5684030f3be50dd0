# Shared by the single-gateway benchmarks (callgrind.sh, syscalls.sh, idle_conns.sh): a release
# build, a scratch directory and process list cleaned up on exit, the test-kit origin in its own
# process, and a gateway config in front of it. Source it; it sets bin, dir, pids, oport.

# BIN=path/to/muxgate runs another build instead (an A/B comparison of two commits: build
# each, copy the binaries aside, run the benchmark with each in turn). ORIGIN_BIN=path runs the
# test-kit origin from another build (by default the same binary), so that an A/B of the
# gateway keeps one origin.
if [[ -n ${BIN:-} ]]; then
    bin=$(realpath "$BIN")
else
    cargo build --release --quiet
    bin=$PWD/target/release/muxgate
fi
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx as the origin (ORIGIN=nginx): TLS, ALPN h2 + http/1.1 (http/1.1 only with
# ORIGIN_ARGS=--h1-only), the same paths as the test kit's for 1 KiB (/bytes/1024, and
# /cached/1024 with max-age=3600). Its responses carry what a real origin's do (Server, Date,
# Content-Type, Last-Modified, ETag, Accept-Ranges; over h2 as literals that nginx adds to the
# HPACK table but never refers back to, so the gateway decodes every one and inserts each in
# its table), where the test kit's carry three fields that HPACK sends as table references
# after the first response. Writes ca.pem into $dir; sets oport.
nginx_origin() {
    command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
    command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
    mkdir -p "$dir/www/bytes" "$dir/www/cached" "$dir/nginx"
    head -c 1024 /dev/urandom >"$dir/www/bytes/1024"
    cp "$dir/www/bytes/1024" "$dir/www/cached/1024"
    source "$(dirname "${BASH_SOURCE[0]}")/pki.sh"
    test_pki "$dir" localhost "DNS:localhost,IP:127.0.0.1"
    oport=$(free_port)
    local h2=http2
    [[ ${ORIGIN_ARGS:-} == *--h1-only* ]] && h2=
    local n=$dir/nginx
    cat >"$n/nginx.conf" <<NGINX
$([[ $(id -u) == 0 ]] && echo "user root;")
worker_processes 1;
pid $n/nginx.pid;
error_log $n/error.log warn;
events { worker_connections 4096; }
http {
  default_type application/octet-stream;
  client_body_temp_path $n/tb; proxy_temp_path $n/tp; fastcgi_temp_path $n/tf;
  uwsgi_temp_path $n/tu; scgi_temp_path $n/ts;
  access_log off;
  open_file_cache max=16 inactive=600s;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 128;
  ssl_certificate $dir/cert.pem;
  ssl_certificate_key $dir/key.pem;
  ssl_session_cache shared:SSL:10m;
  server {
    listen 127.0.0.1:$oport ssl $h2;
    root $dir/www;
    location /cached/ { add_header Cache-Control "max-age=3600"; }
  }
}
NGINX
    nginx -e "$n/error.log" -p "$n/" -c "$n/nginx.conf" -g 'daemon off;' 2>>"$n/error.log" &
    pids+=($!)
    for _ in $(seq 100); do
        [[ -n $(ss -Hltn "sport = :$oport" 2>/dev/null) ]] && return 0
        sleep 0.1
    done
    echo "nginx origin did not start: $(cat "$n/error.log")" >&2
    return 1
}

if [[ ${ORIGIN:-testkit} == nginx ]]; then
    nginx_origin
else
    # The test-kit origin (TLS, ALPN h2 + http/1.1; writes ca.pem into $dir); sets oport.
    "${ORIGIN_BIN:-$bin}" origin --dir "$dir" ${ORIGIN_ARGS:-} >"$dir/origin.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do grep -q listening "$dir/origin.out" 2>/dev/null && break; sleep 0.1; done
    oport=$(awk '/listening/ {print $2}' "$dir/origin.out")
    oport=${oport##*:}
fi

# gateway_config PORT [EXTRA_TOP_LEVEL_TABLES]: writes $dir/gw.toml, one origin for every host.
# GATEWAY_TOP=$'runtime = "work-stealing"' adds top-level keys (before the first table).
gateway_config() {
    cat >"$dir/gw.toml" <<TOML
listen = ["127.0.0.1:$1"]
${GATEWAY_TOP:-}
[admin]
listen = ""
${2:-}
[[origins]]
name = "app"
hosts = ["*"]
url = "https://localhost:$oport"
tls_ca = "$dir/ca.pem"
TOML
}

# wait_gateway PORT PATH: until one request through the gateway succeeds (up to 2 minutes).
wait_gateway() {
    for _ in $(seq 600); do
        "$bin" load --target "127.0.0.1:$1" --path "$2" --connections 1 --requests 1 >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "gateway on port $1 never answered" >&2
    return 1
}
