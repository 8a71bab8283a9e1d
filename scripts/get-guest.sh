#!/usr/bin/env bash
# Builds a bootable guest from Debian packages, without ../shared: Debian's cloud kernel
# (linux-image-cloud-amd64) and a busybox initramfs whose /init opens a shell on the serial console.
#
#   scripts/get-guest.sh [DIR]      (default: ./guest)
#
# Writes DIR/vmlinuz and DIR/initramfs.cpio.gz. Needs Debian 12 (or newer) with apt, and root for
# installing cpio and for the /dev/console node. Then:
#   target/x86_64-unknown-linux-gnu/release/vmm run --kernel DIR/vmlinuz --initrd DIR/initramfs.cpio.gz --memory 256M
# In the guest, `reboot -f` (or leaving the shell) ends the VMM with exit code 0.
set -euo pipefail
out="$(realpath -m "${1:-guest}")"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need cpio cpio
need dpkg-deb dpkg
need gzip gzip

chmod 755 "$work"  # apt-get download drops privileges to _apt
cd "$work"
apt-get update -qq 2>/dev/null || true
# The metapackage names the current kernel package; download that one.
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "get-guest.sh: no linux-image-cloud-amd64 in apt's lists" >&2; exit 1; }
apt-get download -qq "$kernel_pkg" busybox-static
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
cp kernel/boot/vmlinuz-* "$out/vmlinuz"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,root}
cp busybox/bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
mknod -m 600 "$root/dev/console" c 5 1
cat > "$root/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo GUEST-INIT-OK
case " $(cat /proc/cmdline) " in
*" guest.test=poweroff "*) reboot -f ;;
esac
echo "guest: a busybox shell; 'reboot -f' or leaving the shell stops the VM"
setsid cttyhack sh -l
reboot -f
INIT
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initramfs.cpio.gz"
echo "guest ready: $out/vmlinuz ($kernel_pkg), $out/initramfs.cpio.gz"
