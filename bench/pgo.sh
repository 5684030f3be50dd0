#!/usr/bin/env bash
# A profile-guided (PGO) release build of muxgate: an instrumented build serves a training load
# on loopback, LLVM merges the counts, and a second build uses them to lay out and inline the
# hot paths. The binary lands in target/pgo/release/muxgate; the plain `cargo build --release`
# is untouched (CI, `cargo run --release -- demo` and the tests never need this).
#
# Training load (test-kit origins from the plain release build, the load client too, so only
# the gateway's counts are recorded): keep-alive HTTP/1.1 clients through an HTTP/2 origin
# connection (50 and 200 clients, 1 KiB; 200 clients, 100 KiB), a new client connection per
# request (50), the HTTP/1.1 keep-alive pool (200 clients, an origin that offers only
# http/1.1), cache hits (200), and nginx as the HTTP/2 origin (200 and 50 clients). These
# are bench/compare.sh's cases; paths the training does not run (errors, upgrades, HTTP/2
# clients) are laid out as cold code, still correct.
#
# Needs llvm-profdata of the LLVM major version rustc uses (`rustc -vV`): rustup's llvm-tools
# component, or Debian's llvm-N package (installed if neither is there). nginx for the
# training (Debian's nginx-light, installed if missing). Loopback only; stops every process
# it starts.
#
# Usage: bench/pgo.sh            then e.g. BIN_B=target/pgo/release/muxgate bench/compare.sh
#        (or PGO=1 bench/compare.sh)
#        PGO_REQUESTS=50000      requests per training case (default 40000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${PGO_REQUESTS:-40000}
major=$(rustc -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')
# rustup's llvm-tools component if it is there, else Debian's llvm-N (an older llvm-profdata
# cannot read the newer compiler's raw profiles).
profdata=
for f in "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata; do
    [[ -x $f ]] && profdata=$f
done
[[ -n $profdata ]] || profdata=$(command -v "llvm-profdata-$major" || true)
if [[ -z $profdata ]]; then
    { apt-get update -qq && apt-get install -y -qq "llvm-$major" >/dev/null; } ||
        { echo "bench/pgo.sh: needs llvm-profdata from LLVM $major (rustup component add llvm-tools, or Debian's llvm-$major)" >&2; exit 1; }
    profdata=$(command -v "llvm-profdata-$major")
fi
source bench/scratch.sh
work=$dir

echo "[pgo] plain release build (origins and load client)" >&2
cargo build --release --quiet
plain=$PWD/target/release/muxgate
echo "[pgo] instrumented build (target/pgo-gen)" >&2
# The same flags every time, so an unchanged source is not built again; where the counts go
# is set when it runs (LLVM_PROFILE_FILE). The flags instrument the build scripts and proc
# macros too: their counts go aside, not into the profile or the current directory.
LLVM_PROFILE_FILE="$work/build/%p-%m.profraw" RUSTFLAGS="-Cprofile-generate" \
    cargo build --release --quiet --target-dir target/pgo-gen
gen=$PWD/target/pgo-gen/release/muxgate

# origin NAME [ARGS]: starts a test-kit origin and sets port. Not in a $(...) subshell: its
# pid must reach the list that cleanup stops.
origin() {
    mkdir -p "$work/$1"
    "$plain" origin --dir "$work/$1" "${@:2}" >"$work/$1/out" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do grep -q listening "$work/$1/out" 2>/dev/null && break; sleep 0.1; done
    port=$(awk '/listening/ {n = split($2, a, ":"); print a[n]}' "$work/$1/out")
}
origin h2
h2port=$port
origin h1 --h1-only
h1port=$port
# nginx too (installed if missing): its responses' fields come as HPACK literals that the
# gateway decodes every time, where the test kit's are table references after the first.
source bench/nginx_origin.sh
mkdir -p "$work/ng"
dir=$work/ng nginx_origin
gport=$(free_port)
cat >"$work/gw.toml" <<TOML
listen = ["127.0.0.1:$gport"]
[admin]
listen = ""
[cache]
enabled = true
[[origins]]
name = "legacy"
hosts = ["legacy"]
url = "https://localhost:$h1port"
tls_ca = "$work/h1/ca.pem"
[[origins]]
name = "nginx"
hosts = ["nginx"]
url = "https://localhost:$oport"
tls_ca = "$work/ng/ca.pem"
# Its files carry Last-Modified: the cache's heuristic would answer the training itself.
cache = false
[[origins]]
name = "app"
hosts = ["*"]
url = "https://localhost:$h2port"
tls_ca = "$work/h2/ca.pem"
TOML
LLVM_PROFILE_FILE="$work/raw/%p-%m.profraw" RUST_LOG=warn "$gen" run -c "$work/gw.toml" 2>"$work/gw.err" &
gw=$!
pids+=($gw)
for _ in $(seq 300); do
    "$plain" load --target "127.0.0.1:$gport" --path /bytes/1024 --connections 1 --requests 1 >/dev/null 2>&1 && break
    sleep 0.2
done
load() { # load CONNECTIONS PATH [ARGS]
    echo "[pgo] training: $1 connections, $2 ${*:3}" >&2
    timeout 300 "$plain" load --target "127.0.0.1:$gport" --connections "$1" --path "$2" \
        --requests "$n" "${@:3}" | sed 's/^/[pgo]   /' >&2
}
load 200 /bytes/1024
load 50 /bytes/1024
load 50 /bytes/1024 --close
load 200 /bytes/102400
load 200 /bytes/1024 --host legacy
load 200 /cached/1024
load 200 /bytes/1024 --host nginx
load 50 /bytes/1024 --host nginx
kill -TERM "$gw"
wait "$gw" || true
ls "$work"/raw/*.profraw >/dev/null
"$profdata" merge -o "$work/merged.profdata" "$work"/raw/*.profraw
echo "[pgo] optimised build (target/pgo)" >&2
RUSTFLAGS="-Cprofile-use=$work/merged.profdata" cargo build --release --quiet --target-dir target/pgo
echo "target/pgo/release/muxgate"
