#!/usr/bin/env bash
# Bounded fuzzing for CI (run by .ci/run): builds the cargo-fuzz targets in
# fuzz/ and runs each for SSECHAT_FUZZ_SECONDS (default 60) from its
# committed corpus, two at a time (a 2-core CI machine: one core each).
# New inputs go to a scratch directory, not into the clone. A crash, a
# timeout or an out-of-memory fails the run; the input that caused it is
# printed in base64 (and kept under fuzz/artifacts/<target>/) so the log
# alone is enough to reproduce it (after this script has built the targets):
#   base64 -d > crash && fuzz/target/x86_64-unknown-linux-gnu/release/TARGET crash
# or, with cargo-fuzz: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a TARGET crash
#
#   scripts/fuzz-ci.sh          build, then run
#   scripts/fuzz-ci.sh build    build only (.ci/run builds in the background
#                               while the suite runs)
#   scripts/fuzz-ci.sh run      run what was built
#
# Environment:
#   SSECHAT_FUZZ_SECONDS=60   per target (0: skip the build and the run)
#   SSECHAT_FUZZ_PARALLEL=2   targets run at once
#   SSECHAT_FUZZ_TARGETS="request form sse store"
#   SSECHAT_FUZZ_CODEGEN_UNITS=16
#   SSECHAT_FUZZ_OPT_LEVEL=1  (3 builds half again as long and, measured,
#                             runs the targets no faster)
# Builds with plain cargo and the flags `cargo fuzz build -s none -a` passes
# (cargo-fuzz 0.13): they are all stable rustc flags, so neither cargo-fuzz
# nor RUSTC_BOOTSTRAP is needed here. cargo-fuzz (docs/testing.md) runs the
# same targets from the same directories for longer sessions.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-all}
case $mode in all | build | run) ;; *)
    echo "usage: scripts/fuzz-ci.sh [build|run]" >&2
    exit 2
    ;;
esac
seconds=${SSECHAT_FUZZ_SECONDS:-60}
parallel=${SSECHAT_FUZZ_PARALLEL:-2}
read -r -a targets <<<"${SSECHAT_FUZZ_TARGETS:-request form sse store}"

if [ "$seconds" = 0 ]; then
    echo "fuzz-ci.sh: SSECHAT_FUZZ_SECONDS=0: not built, not run" >&2
    exit 0
fi
# Coverage for libFuzzer (SanitizerCoverage: 8-bit counters, the PC table,
# comparisons, stack depth), `cfg(fuzzing)`, and debug assertions and
# overflow checks on. No sanitizer: the product forbids unsafe code, and
# without ASan the targets run several times faster and build faster.
# --target: the flags reach the targets' code, not build scripts and
# proc-macros.
triple=$(rustc -vV | sed -n 's/^host: //p')
rustflags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Cdebug-assertions"
# The build, not the run, is what costs in CI. fuzz/Cargo.toml builds the
# product without its optional parts (HTTPS, Redis, the client: none is on
# a target's path); opt-level 1 (measured on this code: 24 % less build CPU
# than 3, and as many executions per second); 16 codegen units let both
# cores work inside the big crates; no debug info (a crash still names its
# functions; build with cargo-fuzz for lines) saves code generation and
# linking.
bin_dir=fuzz/target/$triple/release
if [ "$mode" != run ]; then
    start=$(date +%s)
    RUSTFLAGS="$rustflags" cargo build --manifest-path fuzz/Cargo.toml --target "$triple" \
        --release --bins --config profile.release.debug=false \
        --config "profile.release.opt-level=${SSECHAT_FUZZ_OPT_LEVEL:-1}" \
        --config "profile.release.codegen-units=${SSECHAT_FUZZ_CODEGEN_UNITS:-16}"
    echo "fuzz-ci.sh: built in $(($(date +%s) - start)) s" >&2
    [ "$mode" = build ] && exit 0
fi
for t in "${targets[@]}"; do
    [ -x "$bin_dir/$t" ] || {
        echo "fuzz-ci.sh: $bin_dir/$t is not built (scripts/fuzz-ci.sh build)" >&2
        exit 1
    }
done
scratch=$(mktemp -d /tmp/ssechat-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

run_one() {
    local target=$1
    local dict=()
    [ -f "fuzz/$target.dict" ] && dict=("-dict=fuzz/$target.dict")
    mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
    "$bin_dir/$target" "$scratch/$target" "fuzz/corpus/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/" "${dict[@]}" \
        >"$scratch/$target.log" 2>&1
}

# The end of a target's log, its figures, and on failure every input it
# saved.
report() {
    local target=$1 status=$2
    echo "=== fuzz $target: exit $status"
    grep -E '^#[0-9]+ +(INITED|DONE)|^stat::number_of_executed_units|^stat::peak_rss_mb|^Done ' \
        "$scratch/$target.log" || true
    if [ "$status" != 0 ]; then
        echo "--- fuzz $target: the last 60 lines of its log"
        tail -n 60 "$scratch/$target.log"
        for f in "fuzz/artifacts/$target"/*; do
            [ -f "$f" ] || continue
            echo "--- fuzz $target: $f ($(wc -c <"$f") bytes), base64:"
            head -c 65536 "$f" | base64
        done
    fi
}

start=$(date +%s)
status=0
pending=("${targets[@]}")
while [ ${#pending[@]} -gt 0 ]; do
    batch=("${pending[@]:0:$parallel}")
    pending=("${pending[@]:$parallel}")
    pids=()
    for t in "${batch[@]}"; do
        run_one "$t" &
        pids+=($!)
    done
    for i in "${!batch[@]}"; do
        s=0
        wait "${pids[$i]}" || s=$?
        report "${batch[$i]}" "$s"
        [ "$s" = 0 ] || status=1
    done
done
echo "fuzz-ci.sh: ${#targets[@]} targets, ${seconds} s each, $parallel at a time; done in $(($(date +%s) - start)) s" >&2
exit $status
