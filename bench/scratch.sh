# Sourced by the single-gateway benchmarks (bench/lib.sh) and bench/pgo.sh: a scratch directory
# ($dir) and a list of processes ($pids), both cleaned up on exit, and free_port.
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
