# nginx_origin: the nginx origin of the single-gateway benchmarks (sourced by bench/lib.sh and
# bench/pgo.sh). Needs dir (scratch directory), pids (processes to stop) and free_port.
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
