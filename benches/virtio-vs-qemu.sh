#!/usr/bin/env bash
# virtio-blk and virtio-net throughput, this VMM vs QEMU microvm (benches/virtio_bench.py), run
# where KVM can boot Linux: directly on a host with hardware virtualization (as root: it makes a
# network namespace and a tap device), inside ../shared/testhost on a PVM host (TESTHOST unset:
# the script re-runs itself there).
#   benches/virtio-vs-qemu.sh [virtio_bench.py options: -n 3 --mib 256 --peers vmm,qemu ...]
# Builds what it needs first, outside the test host: target/x86_64-unknown-linux-gnu/release/vmm (only when --peers
# includes vmm) and target/test-guest/initramfs.cpio.gz (scripts/build-test-initramfs.sh).
# Slow in the test host: one QEMU boot with the default 256 MiB took ~530 s there (net tx
# ~0.8 MiB/s, rx ~1.6 MiB/s: busybox nc moves 1 KiB per system call, under nested KVM), so the
# default 3 runs x 2 VMMs take about an hour; --mib 32 for a quick check. Nothing waits a
# fixed time: each boot ends when the guest powers off after its tests, and the figures are
# the guest's own. Upper bounds only, each ending in an error that says so: virtio_bench.py
# --timeout (default 1800 s per boot; also the guest's per-direction netbench bound) and
# TESTHOST_TIMEOUT (default 14400 s) for the whole test-host run; raise both on a slower host.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TESTHOST:-}" ]; then
    peers=vmm,qemu
    prev=
    for a in "$@"; do
        case "$a" in --peers=*) peers=${a#--peers=} ;; esac
        [ "$prev" = --peers ] && peers=$a
        prev=$a
    done
    case ",$peers," in *,vmm,*) cargo build --release -p vmm-cli ;; esac
    scripts/build-test-initramfs.sh >/dev/null
    if [ -e /sys/module/kvm_pvm ]; then
        exec "${TESTHOST_DIR:-$(cd .. && pwd)/shared/testhost}/run.sh" -m 3G -c 2 -t "${TESTHOST_TIMEOUT:-14400}" -- \
            benches/virtio-vs-qemu.sh "$@"
    fi
fi
exec python3 benches/virtio_bench.py "$@"
