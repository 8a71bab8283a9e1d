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
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TESTHOST:-}" ]; then
    cargo build --release -p vmm-cli
    if [ -e /sys/module/kvm_pvm ]; then
        exec "${TESTHOST_DIR:-$(cd .. && pwd)/shared/testhost}/run.sh" -m 3G -c 2 -t 1800 -- benches/fleet-policies.sh "$@"
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
vmm=target/release/vmm
for policy in fcfs sjf srtf rr; do
    q=(); [ "$policy" = rr ] && q=(--quantum 2s)
    echo "== $policy ${q[*]}"
    "$vmm" fleet simulate "$work/jobs.json" --policy "$policy" "${q[@]}" --host-cpus 1 --host-memory 1G \
        2>/dev/null | grep -E 'average waiting' | sed 's/^/simulated /'
    "$vmm" fleet run "$work/jobs.json" --policy "$policy" "${q[@]}" --host-cpus 1 --host-memory 1G \
        --work-dir "$work/$policy" 2>/dev/null | grep -E 'average waiting|from decision' | sed 's/^/real      /'
done
