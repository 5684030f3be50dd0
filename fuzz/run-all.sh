#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 30) on stable Rust without a
# sanitizer (`-s none`), starting from the committed seeds in fuzz/seeds/<target>/ plus the local
# corpus in fuzz/corpus/<target>/ (gitignored; new inputs go there, never into seeds/).
# Exits non-zero if any target crashes, hangs (-timeout) or runs out of memory; the input is
# then in fuzz/artifacts/<target>/ (see fuzz/README.md, "Triage").
#
#   fuzz/run-all.sh [SECONDS]        e.g. fuzz/run-all.sh 180
#   TARGETS="fuzz_config" fuzz/run-all.sh 60     only some targets
set -uo pipefail

secs="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

targets="${TARGETS:-$(cargo fuzz list)}"
cargo fuzz build -s none || exit 2

mkdir -p fuzz/logs
status=0
summary=""
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    echo "== $t: ${secs}s"
    cargo fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        >"fuzz/logs/$t.log" 2>&1
    rc=$?
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "fuzz/logs/$t.log" | grep -Eo '[0-9]+$' | tail -1)
    last=$(grep -E '^#[0-9]+' "fuzz/logs/$t.log" | tail -1 | grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+')
    if [ "$rc" -ne 0 ]; then
        status=1
        artifact=$(grep -Eo 'fuzz/artifacts/[^ ]+' "fuzz/logs/$t.log" | tail -1)
        line="$t: FAILED (exit $rc) after ${execs:-?} execs; ${last:-no stats}; input: ${artifact:-see fuzz/logs/$t.log}"
        grep -E 'panicked at|ERROR: libFuzzer' -A2 "fuzz/logs/$t.log" | head -6
    else
        line="$t: ok, ${execs:-?} execs; ${last:-no stats}"
    fi
    echo "$line"
    summary+="$line"$'\n'
done
echo
echo "== summary (${secs}s per target; logs in fuzz/logs/)"
printf '%s' "$summary"
exit $status
