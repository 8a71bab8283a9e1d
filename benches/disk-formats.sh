#!/usr/bin/env bash
# Disk formats under a real guest (benches/disk_bench.py): raw, qcow2 and layered in this VMM,
# and QEMU on the same qcow2 overlay, run where KVM can boot Linux: directly on a host with
# hardware virtualization, inside ../shared/testhost on a PVM host (the script re-runs itself
# there). Only the ratios carry over from the nested test host.
#   benches/disk-formats.sh [disk_bench.py options: -n 3 --mib 32 --peers raw,qcow2,...]
# Builds target/x86_64-unknown-linux-gnu/release/vmm and the test initramfs first. Upper bounds
# only: disk_bench.py --timeout per boot, TESTHOST_TIMEOUT (default 7200 s) for the test host.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TESTHOST:-}" ]; then
    cargo build --release -p vmm-cli
    scripts/build-test-initramfs.sh >/dev/null
    if [ -e /sys/module/kvm_pvm ]; then
        exec "${TESTHOST_DIR:-$(cd .. && pwd)/shared/testhost}/run.sh" -m 2G -c 2 -t "${TESTHOST_TIMEOUT:-7200}" -- \
            benches/disk-formats.sh "$@"
    fi
fi
exec python3 benches/disk_bench.py "$@"
