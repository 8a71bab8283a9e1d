#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS seconds each (default 30) and fails on any crash: the
# short run CI does. Each target first replays its whole committed corpus (fuzz/corpus/<target>/,
# the minimized result of fuzz/campaign.sh) and its regression inputs (fuzz/regressions/<target>/,
# inputs that once crashed), then fuzzes on from there.
#
#   fuzz/run.sh [SECONDS]
#
# Works from any directory. The committed corpora are only read: new inputs go to a scratch
# directory (fuzz/campaign.sh is what grows and minimizes the corpora); crashes land in
# fuzz/artifacts/<target>/. One line per target is printed; the exit status is non-zero when any
# target failed to build or found a crash.
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
    scratch="$log_dir/corpus-$t"
    mkdir -p "$scratch"
    # libFuzzer writes new inputs to the first directory only.
    corpora=("$scratch")
    for d in "fuzz/corpus/$t" "fuzz/regressions/$t"; do
        [ -d "$d" ] && corpora+=("$d")
    done
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=fuzz/dict/$t.dict")
    log="$log_dir/$t.log"
    if cargo fuzz run "$t" "${corpora[@]}" -- -max_total_time="$seconds" -timeout=30 "${dict[@]}" >"$log" 2>&1; then
        # libFuzzer ends with "Done <N> runs in <S> second(s)"; "INITED" follows the replay.
        runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n1 | grep -Eo '[0-9]+' || true)"
        inputs=0
        for d in "${corpora[@]:1}"; do inputs=$((inputs + $(find "$d" -type f | wc -l))); done
        echo "$t: ok (replayed ${inputs} committed inputs, ${runs:-?} execs in ${seconds}s)"
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
