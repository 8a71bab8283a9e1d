#!/usr/bin/env bash
# From a fresh Debian machine with KVM (and a Rust toolchain) to a shell in a guest:
# builds the VMM, fetches Debian's cloud kernel and busybox (scripts/get-guest.sh), and boots
# them with the serial console on this terminal. `reboot -f` in the guest ends it (exit 0).
#   scripts/quickstart.sh [extra `vmm run` flags, e.g. --vcpus 2 --memory 512M]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "quickstart: install Rust first (https://rustup.rs)" >&2; exit 1; }
cargo build --release -p vmm-cli
[ -f guest/vmlinuz ] && [ -f guest/initramfs.cpio.gz ] || scripts/get-guest.sh guest
exec target/x86_64-unknown-linux-gnu/release/vmm run --kernel guest/vmlinuz --initrd guest/initramfs.cpio.gz --memory 256M "$@"
