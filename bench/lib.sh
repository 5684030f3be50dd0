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
source "$(dirname "${BASH_SOURCE[0]}")/scratch.sh"

source "$(dirname "${BASH_SOURCE[0]}")/nginx_origin.sh"

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
