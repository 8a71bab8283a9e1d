#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS seconds each (default 30) and fails on any crash.
#
#   fuzz/run.sh [SECONDS]
#
# Works from any directory. Each target grows its corpus in fuzz/corpus/<target>/ (only the
# seed-* files are tracked); crashes land in fuzz/artifacts/<target>/. One line per target is
# printed; the exit status is non-zero when any target failed to build or found a crash.
set -euo pipefail

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS]  (a positive whole number, default 30)" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."

# cargo-fuzz drives libFuzzer with nightly-only flags; let the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

if ! list="$(cargo fuzz list)"; then
    echo "cargo fuzz list failed in $PWD" >&2
    exit 1
fi
mapfile -t targets <<<"$list"
if [ -z "$list" ]; then
    echo "no fuzz targets found in $fuzz_dir" >&2
    exit 1
fi

log_dir="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-run.XXXXXX")"
failed=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus"
    log="$log_dir/$t.log"
    if cargo fuzz run "$t" "$corpus" -- -max_total_time="$seconds" >"$log" 2>&1; then
        # libFuzzer ends with "Done <N> runs in <S> second(s)".
        runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n1 | grep -Eo '[0-9]+' || true)"
        units="$(find "$corpus" -type f | wc -l)"
        echo "$t: ok (${runs:-?} execs in ${seconds}s, corpus ${units} inputs)"
    else
        rc=$?
        failed+=("$t")
        artifact="$(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -n1 | sed 's/Test unit written to //' || true)"
        if [ -n "$artifact" ]; then
            echo "$t: CRASH (exit $rc): $artifact; log $log"
        elif grep -q 'error: could not compile\|error\[E' "$log"; then
            echo "$t: BUILD FAILED (exit $rc); log $log"
        else
            echo "$t: FAILED (exit $rc); log $log"
        fi
        tail -n 20 "$log" | sed "s/^/    $t| /" >&2
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s without a crash (logs in $log_dir)"
