#!/usr/bin/env bash
# Builds the test guest's initramfs: target/test-guest/initramfs.cpio.gz = the shared guest's
# initramfs.cpio.gz ($VMM_GUEST_DIR, default ../shared/guest from the repository root) followed by a
# second gzip'd newc cpio archive with
#   /bin/vsock-tool, /bin/blkio              scripts/guest/{vsock-tool,blkio}.c, gcc -static -O2
#   /tests/{vsockio,nettcp,blkbench,netbench,blkwrite,balloon,diskwrite,busy-gated,count-gated,
#   ratelimit,hotdisk,poweroff-acpi,powerbutton,diskbench,discard,verityread,fillmem}
#   and /tests/gate.sh (their gate helper)  scripts/guest/tests/*
# The kernel unpacks concatenated archives in order (later files win), so the shared /init and
# /tests/* stay as they are and gain these. Rebuilds only when an input (or VMM_GUEST_DIR)
# changed. Prints the output path on stdout.
#   scripts/build-test-initramfs.sh [--force]
# Needs gcc, libc6-dev (static libc), cpio, gzip (scripts/install-deps.sh installs them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GUEST_DIR="${VMM_GUEST_DIR:-../shared/guest}"
OUT_DIR="$ROOT/target/test-guest"
OUT="$OUT_DIR/initramfs.cpio.gz"
BASE="$GUEST_DIR/initramfs.cpio.gz"
TOOLS=(vsock-tool blkio)
TESTS=(fillmem vsockio nettcp blkbench netbench blkwrite balloon diskwrite busy-gated count-gated ratelimit hotdisk poweroff-acpi powerbutton diskbench discard verityread gate.sh)

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac
[ -f "$BASE" ] || { echo "build-test-initramfs: no $BASE (set VMM_GUEST_DIR)" >&2; exit 1; }
for t in "${TESTS[@]}"; do
    [ -f "scripts/guest/tests/$t" ] || { echo "build-test-initramfs: missing scripts/guest/tests/$t" >&2; exit 1; }
done
for tool in gcc cpio gzip; do
    command -v "$tool" >/dev/null || { echo "build-test-initramfs: $tool not found (scripts/install-deps.sh)" >&2; exit 1; }
done

# what the output depends on: the inputs' contents, this script, the base archive's real path
inputs=("$BASE" "${BASH_SOURCE[0]}")
for t in "${TOOLS[@]}"; do inputs+=("scripts/guest/$t.c"); done
for t in "${TESTS[@]}"; do inputs+=("scripts/guest/tests/$t"); done
stamp="$( { realpath "$BASE"; gcc -dumpfullversion; sha256sum "${inputs[@]}"; } )"
if [ $force = 0 ] && [ -f "$OUT" ] && [ -f "$OUT_DIR/stamp" ] && [ "$(cat "$OUT_DIR/stamp")" = "$stamp" ]; then
    echo "$OUT"
    exit 0
fi

mkdir -p "$OUT_DIR"
rm -rf "$OUT_DIR/overlay"
mkdir -p "$OUT_DIR/overlay/bin" "$OUT_DIR/overlay/tests"
for t in "${TOOLS[@]}"; do
    if ! gcc -static -O2 -s -Wall -Wextra -o "$OUT_DIR/$t" "scripts/guest/$t.c"; then
        echo "build-test-initramfs: building scripts/guest/$t.c failed (static linking needs libc6-dev)" >&2
        exit 1
    fi
    install -m 0755 "$OUT_DIR/$t" "$OUT_DIR/overlay/bin/$t"
done
for t in "${TESTS[@]}"; do install -m 0755 "scripts/guest/tests/$t" "$OUT_DIR/overlay/tests/$t"; done
# fixed owner and timestamps, so the same inputs give the same bytes
find "$OUT_DIR/overlay" -exec touch -h -d @0 {} +
(
    cd "$OUT_DIR/overlay"
    printf '%s\n' bin tests "${TOOLS[@]/#/bin/}" "${TESTS[@]/#/tests/}" \
        | cpio -o -H newc -R 0:0 --reproducible --quiet
) | gzip -n -9 >"$OUT_DIR/overlay.cpio.gz.tmp"
mv "$OUT_DIR/overlay.cpio.gz.tmp" "$OUT_DIR/overlay.cpio.gz"
cat "$BASE" "$OUT_DIR/overlay.cpio.gz" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
printf '%s\n' "$stamp" >"$OUT_DIR/stamp"
echo "build-test-initramfs: wrote $OUT ($(stat -c %s "$BASE") + $(stat -c %s "$OUT_DIR/overlay.cpio.gz") bytes)" >&2
echo "$OUT"
