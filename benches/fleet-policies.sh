#!/usr/bin/env bash
# Per-policy average waiting and turnaround for one standard workload, real and simulated:
# three guests doing a fixed amount of CPU work (`guest.test=busy`: long = 12 units, short = 3,
# medium = 6, arriving at 0, 1 and 2 s, estimated at 5, 2.5 and 3.5 s: about what a nested
# boot plus the work takes) on a host of 1 CPU, through `vmm fleet run` (real VMs,
# one vmm process each, driven over their API sockets) and `vmm fleet simulate` (the same
# policy code on a discrete-event clock, run times = the estimates). Prints each summary line
# and the mean decision-to-pause/resume latency of the real runs.
#   benches/fleet-policies.sh
# Real guests need a KVM that boots Linux: on a PVM host this re-runs itself in
# ../shared/testhost (nested KVM under TCG: real times are that emulation's).
# Nothing here waits a fixed time or checks a duration: the arrivals and estimates are the
# workload's inputs and the times are what it reports. Upper bounds only, each ending in an
# error that says so: TESTHOST_TIMEOUT (default 1800 s) for the whole test-host run, and
# MAX_RUN (default 600s; the longest job needs ~5 s of running in the test host) per job
# through `vmm fleet run --max-run`. A failed simulate or run prints its output and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TESTHOST:-}" ]; then
    cargo build --release -p vmm-cli
    if [ -e /sys/module/kvm_pvm ]; then
        exec "${TESTHOST_DIR:-$(cd .. && pwd)/shared/testhost}/run.sh" -m 3G -c 2 -t "${TESTHOST_TIMEOUT:-1800}" -- \
            benches/fleet-policies.sh "$@"
    fi
fi
guest="${VMM_GUEST_DIR:-$(cd .. && pwd)/shared/guest}"
work=$(mktemp -d /tmp/fleet-policies.XXXXXX)
trap 'rm -rf "$work"' EXIT
job() { # name arrival_ms estimate_ms work
    printf '{"name": "%s", "arrival_ms": %s, "estimate_ms": %s, "vm": {"kernel": "%s", "initrd": "%s", "memory": "64M", "vcpus": 1, "append": "quiet noxsave guest.test=busy guest.work=%s"}}' \
        "$1" "$2" "$3" "$guest/vmlinux" "$guest/initramfs.cpio.gz" "$4"
}
printf '{"jobs": [%s, %s, %s]}\n' "$(job long 0 5000 12)" "$(job short 1000 2500 3)" \
    "$(job medium 2000 3500 6)" > "$work/jobs.json"
vmm=target/x86_64-unknown-linux-gnu/release/vmm
fleet() { # label pattern vmm-fleet-args...: prints the summary lines; on failure, the output
    local label=$1 pattern=$2
    shift 2
    if ! "$vmm" fleet "$@" >"$work/out" 2>"$work/err" || ! grep -qE "$pattern" "$work/out"; then
        echo "fleet-policies.sh: vmm fleet $* failed or printed no summary; its output:" >&2
        tail -n 30 "$work/out" "$work/err" >&2
        trap - EXIT
        echo "fleet-policies.sh: kept $work (serial logs per job)" >&2
        exit 1
    fi
    grep -E "$pattern" "$work/out" | sed "s/^/$label /"
}
for policy in fcfs sjf srtf rr; do
    q=(); [ "$policy" = rr ] && q=(--quantum 2s)
    echo "== $policy ${q[*]}"
    fleet "simulated" 'average waiting' simulate "$work/jobs.json" --policy "$policy" "${q[@]}" \
        --host-cpus 1 --host-memory 1G
    fleet "real     " 'average waiting|from decision' run "$work/jobs.json" --policy "$policy" "${q[@]}" \
        --host-cpus 1 --host-memory 1G --max-run "${MAX_RUN:-600s}" --work-dir "$work/$policy"
done
