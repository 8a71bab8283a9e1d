#!/usr/bin/env bash
# A fuzzing campaign: every target (or the ones named) for DURATION each, over the persistent
# corpora in fuzz/corpus/<target>/, then corpus minimization, line coverage and a table.
#
#   fuzz/campaign.sh [-j N] [--fresh DIR] [--label NAME] [--no-cmin] [--no-coverage] DURATION [TARGET...]
#   fuzz/campaign.sh --table            (rewrite fuzz/README.md's tables from fuzz/campaign/*.tsv)
#
# DURATION per target: 600, 90s, 10m or 1h. Options:
#   -j N          run N targets at once (default 1; `-j "$(nproc)"` uses every core)
#   --fresh DIR   start every target from an empty corpus under DIR instead of fuzz/corpus (the
#                 "before" measurement); DIR is kept for the coverage step and not minimized
#   --label NAME  the results file fuzz/campaign/NAME.tsv (default: campaign; --fresh: fresh)
#   --no-cmin     keep the corpora as the run left them
#   --no-coverage skip the coverage build and report (edges from libFuzzer are still recorded)
#
# Per target it records: seconds fuzzed, executions, exec/s, corpus inputs and bytes, edges
# (libFuzzer's `cov:` at the end), and, through `cargo fuzz coverage` merged by Debian's
# llvm-profdata-22 and reported by llvm-cov-22, the line coverage of the crate under test and of
# the code the target is for (fuzz/targets.tsv says which). Dictionaries are taken from
# fuzz/dict/<target>.dict when present. A crash does not stop the campaign: its input is
# minimized (`cargo fuzz tmin`), named in the results, and the target goes on for the rest of
# its time; the exit status is non-zero when anything crashed or failed to build.
set -euo pipefail
# One brace group, parsed whole before it runs: editing this file mid-campaign cannot derail it.
{

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$fuzz_dir/.." && pwd)"
cd "$root"
export RUSTC_BOOTSTRAP=1 # cargo-fuzz passes nightly-only flags; let the stable toolchain take them

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

jobs=1
fresh=""
label=""
cmin=1
coverage=1
table_only=0
while [ $# -gt 0 ]; do
    case "$1" in
    -j) jobs="${2:-}"; shift 2 ;;
    -j*) jobs="${1#-j}"; shift ;;
    --fresh) fresh="${2:-}"; shift 2 ;;
    --label) label="${2:-}"; shift 2 ;;
    --no-cmin) cmin=0; shift ;;
    --no-coverage) coverage=0; shift ;;
    --table) table_only=1; shift ;;
    -h | --help) usage ;;
    -*) echo "campaign: unknown option $1" >&2; usage ;;
    *) break ;;
    esac
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "campaign: -j wants a positive number, not '$jobs'" >&2; exit 2; }

write_tables() { python3 "$fuzz_dir/campaign_table.py" "$fuzz_dir"; }
if [ "$table_only" = 1 ]; then
    write_tables
    exit 0
fi

[ $# -ge 1 ] || usage
[[ "$1" =~ ^[0-9]+[smh]?$ ]] || { echo "campaign: DURATION '$1' is not 600, 90s, 10m or 1h" >&2; exit 2; }
case "$1" in
[0-9]*h) seconds=$((10#${1%h} * 3600)) ;;
[0-9]*m) seconds=$((10#${1%m} * 60)) ;;
*s) seconds="${1%s}" ;;
*) seconds="$1" ;;
esac
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "campaign: DURATION '$1' is not 600, 90s, 10m or 1h" >&2; exit 2; }
shift

if [ -n "$fresh" ]; then
    mkdir -p "$fresh"
    fresh="$(cd "$fresh" && pwd)"
    label="${label:-fresh}"
    cmin=0
fi
label="${label:-campaign}"
[[ "$label" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "campaign: --label wants letters, digits, - or _" >&2; exit 2; }

command -v cargo-fuzz >/dev/null || cargo fuzz --version >/dev/null 2>&1 ||
    { echo "campaign: cargo-fuzz is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
if [ "$coverage" = 1 ] && ! { command -v llvm-profdata-22 && command -v llvm-cov-22; } >/dev/null; then
    echo "campaign: llvm-profdata-22 and llvm-cov-22 are missing (scripts/install-deps.sh installs llvm-22), or pass --no-coverage" >&2
    exit 1
fi

known="$(cargo fuzz list)"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets <<<"$known"
fi
for t in "${targets[@]}"; do
    grep -qxF -- "$t" <<<"$known" || { echo "campaign: no fuzz target '$t' (cargo fuzz list)" >&2; exit 2; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-campaign.XXXXXX")"
echo "campaign: ${#targets[@]} targets x ${seconds}s, $jobs at a time; logs in $work"
echo "campaign: building the targets"
cargo fuzz build >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; echo "campaign: build failed" >&2; exit 1; }

corpus_of() { if [ -n "$fresh" ]; then echo "$fresh/$1"; else echo "fuzz/corpus/$1"; fi; }

# Fuzzes one target for $seconds in total, restarting after a crash; writes $work/$t.env.
fuzz_one() {
    local t="$1" corpus log start now left runs=0 execs=0 cov="" crashes=() extra=()
    corpus="$(corpus_of "$t")"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    [ -f "fuzz/dict/$t.dict" ] && extra+=("-dict=fuzz/dict/$t.dict")
    start="$(date +%s)"
    left="$seconds"
    while [ "$left" -gt 0 ] && [ "$runs" -lt 8 ]; do
        runs=$((runs + 1))
        log="$work/$t.$runs.log"
        local rc=0
        cargo fuzz run "$t" "$corpus" -- -max_total_time="$left" -print_final_stats=1 -timeout=30 \
            -artifact_prefix="fuzz/artifacts/$t/" "${extra[@]}" >"$log" 2>&1 || rc=$?
        local e
        e="$(grep -Eo '^stat::number_of_executed_units: [0-9]+' "$log" | grep -Eo '[0-9]+$' || true)"
        [ -z "$e" ] && e="$(grep -Eo '^#[0-9]+' "$log" | tail -n1 | tr -d '#' || true)"
        execs=$((execs + ${e:-0}))
        local c
        c="$(grep -Eo 'cov: [0-9]+' "$log" | tail -n1 | grep -Eo '[0-9]+' || true)"
        [ -n "$c" ] && cov="$c"
        if [ "$rc" -ne 0 ]; then
            local artifact
            artifact="$(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -n1 | sed 's/Test unit written to //' || true)"
            if [ -z "$artifact" ]; then
                echo "campaign: $t failed (exit $rc) without an input; log $log" >&2
                crashes+=("failed:exit-$rc")
                break
            fi
            # Minimized beside the original: fuzz/artifacts/<t>/minimized-from-<hash>.
            cargo fuzz tmin "$t" "$artifact" -- -runs=2000 >"$log.tmin" 2>&1 || true
            local small
            small="$(ls -t "fuzz/artifacts/$t"/minimized-from-* 2>/dev/null | head -n1 || true)"
            crashes+=("${small:-$artifact}")
            echo "campaign: $t CRASHED: ${small:-$artifact} (log $log)" >&2
        fi
        now="$(date +%s)"
        left=$((seconds - (now - start)))
    done
    local took=$(($(date +%s) - start))
    {
        echo "seconds=$took"
        echo "execs=$execs"
        echo "cov=${cov:-0}"
        printf 'crashes=%q\n' "${crashes[*]:-}"
    } >"$work/$t.env"
    echo "campaign: $t: ${took}s, $execs execs, cov ${cov:-?}${crashes:+, crashes: ${crashes[*]}}"
}

running=0
for t in "${targets[@]}"; do
    fuzz_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

if [ "$cmin" = 1 ]; then
    echo "campaign: minimizing the corpora"
    for t in "${targets[@]}"; do
        cargo fuzz cmin "$t" "$(corpus_of "$t")" >"$work/$t.cmin.log" 2>&1 ||
            echo "campaign: cmin of $t failed; log $work/$t.cmin.log" >&2
    done
fi

# Line coverage of a target's crate and focus paths: "covered/count" pairs.
line_coverage() {
    local bin="$1" profdata="$2"
    shift 2
    llvm-cov-22 export -summary-only "$bin" -instr-profile="$profdata" "$@" 2>/dev/null |
        python3 -c 'import json,sys; t=json.load(sys.stdin)["data"][0]["totals"]["lines"]; print("%d/%d" % (t["covered"], t["count"]))'
}

for t in "${targets[@]}"; do
    corpus="$(corpus_of "$t")"
    crate_cov="" focus_cov=""
    if [ "$coverage" = 1 ]; then
        rm -rf "fuzz/coverage/$t"
        # cargo-fuzz merges with rustup's llvm-tools, which this toolchain lacks; its raw
        # profiles are merged here with Debian's llvm-profdata-22 instead.
        cargo fuzz coverage "$t" "$corpus" >"$work/$t.coverage.log" 2>&1 || true
        profdata="$work/$t.profdata"
        bin="$(ls -t {target,fuzz/target}/*/coverage/*/release/"$t" 2>/dev/null | head -n1 || true)"
        if [ -n "$bin" ] && llvm-profdata-22 merge -sparse "fuzz/coverage/$t/raw/"*.profraw -o "$profdata" 2>>"$work/$t.coverage.log"; then
            read -r _ crate focus < <(awk -F'\t' -v t="$t" '$1 == t { print $1, $2, $3 }' fuzz/targets.tsv)
            if [ -n "${crate:-}" ]; then
                crate_cov="$(line_coverage "$bin" "$profdata" "$root/$crate/src")"
                focus_paths=()
                for p in $focus; do focus_paths+=("$root/$p"); done
                focus_cov="$(line_coverage "$bin" "$profdata" "${focus_paths[@]}")"
                # Per-file lines of the focus code, for finding what stays unreached.
                mkdir -p fuzz/campaign/coverage
                llvm-cov-22 report "$bin" -instr-profile="$profdata" "${focus_paths[@]}" 2>/dev/null |
                    awk 'BEGIN { print "file lines missed covered" } NR > 2 && !/^-/ { print $1, $8, $9, $10 }' |
                    column -t >"fuzz/campaign/coverage/$t.$label.txt" || true
            else
                echo "campaign: $t has no line in fuzz/targets.tsv: no line coverage" >&2
            fi
        else
            echo "campaign: coverage of $t failed; log $work/$t.coverage.log" >&2
        fi
    fi
    files="$(find "$corpus" -type f | wc -l)"
    bytes="$(find "$corpus" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')"
    # shellcheck disable=SC1090
    . "$work/$t.env"
    mkdir -p fuzz/campaign
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$(date -u +%Y-%m-%d)" "$seconds" "$execs" \
        "$files" "$bytes" "$cov" "${crate_cov:--}" "${focus_cov:--}" "${crashes:--}" "$(nproc)x$jobs" \
        >>"$work/rows.tsv"
done

# Results: one row per target, the newest run replacing an older one of the same label.
results="fuzz/campaign/$label.tsv"
header=$'target\tdate\tseconds\texecs\tcorpus_files\tcorpus_bytes\tedges\tcrate_lines\tfocus_lines\tcrashes\tcores_x_jobs'
{
    echo "$header"
    { [ -f "$results" ] && tail -n +2 "$results" | awk -F'\t' 'NR == FNR { new[$1] = 1; next } !($1 in new)' "$work/rows.tsv" -; cat "$work/rows.tsv"; } |
        sort -t$'\t' -k1,1
} >"$results.new"
mv "$results.new" "$results"
write_tables
echo "campaign: results in $results, tables in fuzz/README.md"
if awk -F'\t' '$10 != "-"' "$work/rows.tsv" | grep -q .; then
    echo "campaign: something crashed or failed; see the crashes column" >&2
    exit 1
fi
exit 0
}
