#!/usr/bin/env bash
# Linux boot time, this VMM vs QEMU microvm (benches/boot.py), run where KVM can boot Linux:
# directly on a host with hardware virtualization, inside ../shared/testhost on a PVM host.
#   benches/boot-vs-qemu.sh [boot.py options, e.g. -n 10 --kernel bzImage --irqchip-compare]
# Env: FIRECRACKER, CLOUD_HYPERVISOR: optional peers' binaries (see boot.py).
# Timed to events only (boot.py: the marker line, the process's exit). Upper bounds: boot.py
# --timeout per boot (default 300 s) and TESTHOST_TIMEOUT (default 3000 s) for the whole
# test-host run; either ends with an error that says so.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/x86_64-unknown-linux-gnu/release/vmm ] || cargo build --release -p vmm-cli
if [ -e /sys/module/kvm_pvm ] && [ -z "${TESTHOST:-}" ]; then
    # The optional peers' paths (boot.py) go in with the command: the test host has no environment
    # of ours. Their binaries must be under the working directory, which the test host shares.
    exec "${TESTHOST_DIR:-$(cd .. && pwd)/shared/testhost}/run.sh" -m 2G -c 2 -t "${TESTHOST_TIMEOUT:-3000}" -- \
        env ${FIRECRACKER:+FIRECRACKER=$FIRECRACKER} ${CLOUD_HYPERVISOR:+CLOUD_HYPERVISOR=$CLOUD_HYPERVISOR} \
        python3 benches/boot.py "$@"
fi
exec python3 benches/boot.py "$@"
