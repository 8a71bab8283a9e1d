#!/usr/bin/env bash
# Writes seed inputs made from real files into fuzz/corpus/<target>/seed-real-*: the shared
# guest's kernels and command lines, and disk image headers written by qemu-img, cryptsetup,
# veritysetup and `vmm disk`. Run it when the formats or the guest change; commit what it writes.
#
#   fuzz/seeds.sh [VMM]      VMM: the vmm binary (default: target/x86_64-unknown-linux-gnu/debug/vmm)
#
# Env: VMM_GUEST_DIR (default ../shared/guest). Each seed stays under 64 KiB: libFuzzer mutates
# small inputs far faster, and header parsers only look at the first blocks anyway.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
vmm="${1:-target/x86_64-unknown-linux-gnu/debug/vmm}"
guest="${VMM_GUEST_DIR:-../shared/guest}"
[ -x "$vmm" ] || { echo "seeds: no vmm binary at $vmm (cargo build -p vmm-cli)" >&2; exit 1; }
[ -f "$guest/bzImage" ] || { echo "seeds: no guest images in $guest (set VMM_GUEST_DIR)" >&2; exit 1; }
for tool in qemu-img cryptsetup veritysetup; do
    command -v "$tool" >/dev/null || { echo "seeds: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

seed() { # seed TARGET NAME FILE [BYTES]: the first BYTES (default 64 KiB) of FILE
    mkdir -p "fuzz/corpus/$1"
    head -c "${4:-65536}" "$3" >"fuzz/corpus/$1/seed-real-$2"
}

# Kernels: whole tiny guest, the heads of the bzImage, vmlinux (ELF) and Debian's kernel.
seed loader_kernel tiny-pvh "$guest/tiny-pvh.elf"
seed loader_kernel bzimage-head "$guest/bzImage"
seed loader_kernel vmlinux-head "$guest/vmlinux"
seed loader_kernel debian-bzimage-head "$guest/debian-cloud-vmlinuz"

# Command lines as loader_cmdline reads them: flags byte, then pieces split at 0xff.
cmdline() { # cmdline NAME BASE PIECE...
    local name="$1" base="$2"
    shift 2
    { printf '\x01%s' "$base"; for p in "$@"; do printf '\xff%s' "$p"; done; } >"fuzz/corpus/loader_cmdline/seed-real-$name"
}
mkdir -p fuzz/corpus/loader_cmdline
cmdline default "console=ttyS0 reboot=k panic=1 pci=off" "quiet" "guest.test=diskio"
cmdline rootfs "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw" "init=/sbin/init" "guest.scale=0.1"
cmdline verity "console=ttyS0 root=/dev/vda ro rootwait" "systemd.unit=multi-user.target" "8250.nr_uarts=1"
cmdline virtio-mmio "console=hvc0" "virtio_mmio.device=4K@0xd0000000:5" "virtio_mmio.device=4K@0xd0001000:6"

# qcow2: version 2 and 3, small and big clusters, a backing file, a compressed cluster.
qemu-img create -q -f raw "$tmp/raw" 1M
printf 'fuzz seed data' | dd of="$tmp/raw" conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 -o cluster_size=512 "$tmp/raw" "$tmp/v3-512.qcow2"
qemu-img convert -q -f raw -O qcow2 -o compat=0.10,cluster_size=4096 "$tmp/raw" "$tmp/v2.qcow2"
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 "$tmp/raw" "$tmp/compressed.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=512 -b "$tmp/v3-512.qcow2" -F qcow2 "$tmp/overlay.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=65536,lazy_refcounts=on "$tmp/lazy.qcow2" 64M
for f in v3-512 v2 compressed overlay lazy; do seed qcow2_header "$f" "$tmp/$f.qcow2"; done

# Layered: an empty image, one with data and a discard, a sealed layer under a clone.
"$vmm" disk create --size 1M "$tmp/empty.layer" >/dev/null
seed layered_image empty "$tmp/empty.layer"
"$vmm" disk create --base "$tmp/raw" "$tmp/over-raw.layer" >/dev/null
seed layered_image over-raw "$tmp/over-raw.layer"
"$vmm" disk convert --format layered "$tmp/raw" "$tmp/data.layer" >/dev/null
seed layered_image data "$tmp/data.layer"
"$vmm" disk snapshot "$tmp/data.layer" >/dev/null
seed layered_image after-snapshot "$tmp/data.layer"
for f in "$tmp"/*.layer*; do
    [ -f "$f" ] || continue
    n="$(basename "$f")"
    # layered_superblock reads one 4 KiB block: the header (block 0) and both superblocks.
    for b in 0 1 2; do
        dd if="$f" of="$tmp/block" bs=4096 skip="$b" count=1 status=none
        [ -s "$tmp/block" ] && seed layered_superblock "$n-block$b" "$tmp/block" 4096
    done
done

# dm-verity hash files: ours and veritysetup's, 4 KiB and 512-byte blocks, with and without salt.
"$vmm" disk verity-format "$tmp/raw" "$tmp/ours.verity" >/dev/null
veritysetup format "$tmp/raw" "$tmp/vs-4k.verity" >/dev/null
veritysetup format --data-block-size=512 --hash-block-size=512 --salt=- "$tmp/raw" "$tmp/vs-512.verity" >/dev/null
veritysetup format --hash=sha512 "$tmp/raw" "$tmp/vs-sha512.verity" >/dev/null
for f in ours vs-4k vs-512 vs-sha512; do seed verity_superblock "$f" "$tmp/$f.verity" 4096; done

# LUKS headers: cryptsetup's LUKS1 and LUKS2 (pbkdf2 and argon2id) and ours (the primary and
# secondary LUKS2 binary headers with their JSON, 32 KiB; LUKS1's phdr and first keyslot area).
printf 'fuzz' >"$tmp/key"
truncate -s 20M "$tmp/luks"
cryptsetup luksFormat -q --type luks1 --pbkdf-force-iterations 1000 --key-file "$tmp/key" "$tmp/luks"
seed luks_header cryptsetup-luks1 "$tmp/luks"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$tmp/key" "$tmp/luks"
seed luks_header cryptsetup-luks2-pbkdf2 "$tmp/luks" 32768
cryptsetup luksFormat -q --type luks2 --pbkdf argon2id --pbkdf-force-iterations 4 --pbkdf-memory 32 --key-file "$tmp/key" "$tmp/luks"
seed luks_header cryptsetup-luks2-argon2id "$tmp/luks" 32768
"$vmm" disk luks-format --key-file "$tmp/key" --size 1M --pbkdf2-iterations 1000 "$tmp/ours.luks" >/dev/null
seed luks_header ours-luks2 "$tmp/ours.luks" 32768
"$vmm" disk luks-format --key-file "$tmp/key" --size 1M --type luks1 --pbkdf2-iterations 1000 "$tmp/ours1.luks" >/dev/null
seed luks_header ours-luks1 "$tmp/ours1.luks"

echo "seeds: written under fuzz/corpus/*/seed-real-*"
