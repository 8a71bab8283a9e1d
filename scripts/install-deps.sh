#!/usr/bin/env bash
# Installs what the test suite needs beyond a Rust toolchain, on Debian 12 (as root):
# QEMU (the test host for full Linux boots on PVM machines, and the benchmark peer), qemu-utils
# (qemu-img and qemu-io for the qcow2 interop tests), e2fsprogs, cryptsetup-bin (LUKS and verity
# interop),
# util-linux's setpriv (the no-/dev/kvm-access test), python3 (benchmark scripts), gcc,
# libc6-dev and cpio (scripts/build-test-initramfs.sh), llvm-22 (fuzz coverage), rustfmt and clippy, and cargo-fuzz.
# Does nothing for what is already there.
set -euo pipefail
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# qemu-img and qemu-io: vmm-disk's qcow2 interop tests (disk/tests/qcow2_qemu_img.rs)
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || missing+=(qemu-utils)
# e2fsck and debugfs: the end-to-end disk tests check guests' file systems on the host
command -v e2fsck >/dev/null && command -v debugfs >/dev/null || missing+=(e2fsprogs)
# cryptsetup and veritysetup: interop tests of vmm-disk's LUKS and dm-verity layers
command -v cryptsetup >/dev/null && command -v veritysetup >/dev/null || missing+=(cryptsetup-bin)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
# scripts/build-test-initramfs.sh: vsock-tool is built with gcc -static (libc.a is in libc6-dev);
# `vmm` itself is linked static too (crt-static in .cargo/config.toml) and needs the same libc.a
command -v gcc >/dev/null || missing+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
command -v cpio >/dev/null || missing+=(cpio)
# llvm-profdata-22 and llvm-cov-22: fuzz/campaign.sh's line coverage (LLVM 22 matches rustc 1.95's)
command -v llvm-profdata-22 >/dev/null && command -v llvm-cov-22 >/dev/null || missing+=(llvm-22)
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if command -v rustup >/dev/null; then
    for component in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
    done
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "install-deps: cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
