#!/usr/bin/env python3
"""Disk formats and layers under a real guest: raw, qcow2, layered, LUKS and dm-verity in this VMM,
and QEMU on the same qcow2.

Every run makes fresh images over one base (a raw file of --mib MiB of non-zero data): a full
raw copy (the reference), a qcow2 overlay (`qemu-img create -f qcow2 -b base -F raw`) and a
layered overlay (`vmm disk create --base base`), and boots the shared vmlinux with the test
initramfs on each, `guest.test=diskbench` (scripts/guest/tests/diskbench): O_DIRECT sequential
(1 MiB) and 4 KiB random I/O, in an order that separates reads of base blocks, first writes,
rewrites and reads of allocated blocks. Peers alternate within a run. Prints medians, the ratios
against raw and against QEMU, and the targets (reads and rewrites >= 0.90 of raw, first writes
>= 0.70, qcow2 >= 1.0x QEMU; LUKS reads and writes >= 0.70 of raw; verified reads >= 0.80). The
LUKS peer is a LUKS2 image of the same size (`vmm disk luks-format --zero`, a cheap PBKDF2 keyslot:
the KDF runs once, at open); the verity peer is a raw copy of the base with its hash tree
(`vmm disk verity-format`), read-only, so it runs the read steps only. Exits 1 when a run failed (a missed target is reported,
not an error: the figures under nested virtualization are indicative only).

Needs a /dev/kvm that boots Linux: on a PVM host run it through benches/disk-formats.sh (it
re-runs inside ../shared/testhost).

    benches/disk_bench.py [-n 3] [--mib 32] [--peers raw,qcow2,layered,qemu-qcow2]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import re

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from virtio_bench import CMDLINE, ROOT, fmt, guest_dir, run_guest  # noqa: E402

METRICS = [  # (key, label, kind): kind says which target applies
    ("seq_read_base", "seq read, base blocks (1 MiB)", "read"),
    ("rand_read_base", "4 KiB random read, base blocks", "read"),
    ("rand_write_first", "4 KiB random first write", "first"),
    ("rand_rewrite", "4 KiB random rewrite", "rewrite"),
    ("rand_read_alloc", "4 KiB random read, allocated", "read"),
    ("seq_write", "seq write (1 MiB, half first)", "first"),
    ("seq_read", "seq read, allocated (1 MiB)", "read"),
]
TARGET = {"read": 0.90, "rewrite": 0.90, "first": 0.70}
PEERS = ("raw", "qcow2", "layered", "qemu-qcow2", "luks", "verity")


def make_base(path, mib):
    """A raw base of `mib` MiB whose every 4 KiB block is different and non-zero."""
    with open(path, "wb") as f:
        for block in range(mib * 256):
            f.write(block.to_bytes(8, "little") * 512)


def make_disk(peer, args, base, workdir):
    """The peer's fresh disk: (path, its --disk spec for this VMM)."""
    if peer == "raw":
        path = os.path.join(workdir, "disk.raw")
        shutil.copyfile(base, path)
        return path, f"path={path},format=raw"
    if peer in ("qcow2", "qemu-qcow2"):
        path = os.path.join(workdir, f"{peer}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", path],
                       check=True)
        return path, f"path={path},format=qcow2"
    if peer == "luks":
        path, key = os.path.join(workdir, "disk.luks"), os.path.join(workdir, "luks.key")
        with open(key, "wb") as f:
            f.write(b"disk-bench-key-0123456789abcdef")
        subprocess.run([args.vmm, "disk", "luks-format", path, "--key-file", key, "--size",
                        f"{args.mib}M", "--pbkdf2-iterations", "1000", "--zero"], check=True,
                       stdout=subprocess.DEVNULL)
        return path, f"path={path},key_file={key}"
    if peer == "verity":
        path, tree = os.path.join(workdir, "verity.raw"), os.path.join(workdir, "verity.hash")
        shutil.copyfile(base, path)
        root = subprocess.run([args.vmm, "disk", "verity-format", path, tree], check=True,
                              capture_output=True, text=True).stdout.strip()
        return path, f"path={path},read_only=on,verity={tree},root_hash={root}"
    path = os.path.join(workdir, "disk.layered")
    subprocess.run([args.vmm, "disk", "create", path, "--base", base], check=True,
                   stdout=subprocess.DEVNULL)
    return path, f"path={path},format=layered"


def command(peer, args, kernel, disk, spec, cmdline):
    if peer == "qemu-qcow2":
        return [args.qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off", "-accel", "kvm",
                "-cpu", "host", "-m", str(args.memory_mib), "-smp", "1", "-nodefaults",
                "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                "-kernel", kernel, "-initrd", args.initrd, "-append", cmdline,
                "-drive", f"id=d0,file={disk},format=qcow2,if=none",
                "-device", "virtio-blk-device,drive=d0"]
    return [args.vmm, "run", "--kernel", kernel, "--initrd", args.initrd, "--vcpus", "1",
            "--memory", f"{args.memory_mib}M", "--cmdline", cmdline, "--serial", "stdio",
            "--disk", spec]


def parse(out):
    m = re.search(r"^DISKBENCH((?: \w+=[\d.]+)+)\s*$", out, re.M)
    values = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(1))} if m else {}
    problems = re.findall(r"^(?:\S+-FAIL|GUEST-TEST-UNKNOWN)\b.*$", out, re.M)
    for marker in ("GUEST-INIT-OK", "DISKBENCH ", "GUEST-TEST-DONE"):
        if not re.search(rf"^{marker}", out, re.M):
            problems.append(f"no {marker.strip()} marker")
    return values, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=3, help="runs per peer (alternating)")
    parser.add_argument("--mib", type=int, default=32, help="disk region the guest uses")
    parser.add_argument("--peers", default=",".join(PEERS), help=",".join(PEERS))
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--kernel", default="vmlinux")
    parser.add_argument("--initrd", default=os.path.join(ROOT, "target", "test-guest", "initramfs.cpio.gz"))
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "vmm"))
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per boot (a hung boot)")
    parser.add_argument("--logdir", default=os.path.join(ROOT, "target", "disk-bench"))
    args = parser.parse_args()

    if os.path.exists("/sys/module/kvm_pvm"):
        sys.exit("disk_bench.py: /dev/kvm is PVM here and cannot boot Linux: use benches/disk-formats.sh")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or any(p not in PEERS for p in peers):
        sys.exit(f"disk_bench.py: --peers takes some of {','.join(PEERS)}")
    kernel = os.path.join(guest_dir(), args.kernel)
    needs = [(kernel, "kernel (set VMM_GUEST_DIR)"), (args.initrd, "test initramfs (scripts/build-test-initramfs.sh)")]
    if any(p != "qemu-qcow2" for p in peers):
        needs.append((args.vmm, "vmm (cargo build --release -p vmm-cli)"))
    for path, what in needs:
        if not os.path.exists(path):
            sys.exit(f"disk_bench.py: no {what}: {path}")
    for tool in ["qemu-img"] + ([args.qemu] if "qemu-qcow2" in peers else []):
        if not shutil.which(tool):
            sys.exit(f"disk_bench.py: {tool} not found (scripts/install-deps.sh)")

    cmdline = f"{CMDLINE} guest.test=diskbench guest.benchdev=/dev/vda guest.benchmib={args.mib}"
    os.makedirs(args.logdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="disk-bench.")
    results = {p: {k: [] for k, _, _ in METRICS} for p in peers}
    failures = []
    where = "inside the test host (nested KVM)" if os.environ.get("TESTHOST") else "on /dev/kvm"
    print(f"disk_bench: {args.mib} MiB region, {args.n} runs per peer, alternating, {where}", flush=True)
    try:
        base = os.path.join(workdir, "base.raw")
        make_base(base, args.mib)
        for i in range(1, args.n + 1):
            for peer in peers:
                disk, spec = make_disk(peer, args, base, workdir)
                log = os.path.join(args.logdir, f"{peer}-{i}.log")
                peer_cmdline = cmdline + (" guest.benchro=1" if peer == "verity" else "")
                code, out, wall = run_guest(command(peer, args, kernel, disk, spec, peer_cmdline),
                                            log, args.timeout)
                values, problems = parse(out)
                if code != 0:
                    problems.insert(0, "killed at --timeout" if code is None else f"exit status {code}")
                summary = " ".join(f"{k}={v:.1f}" for k, v in values.items())
                if problems:
                    failures.append(f"{peer} run {i}: {'; '.join(problems)} (log {log})")
                    print(f"run {i} {peer:10}: FAILED: {'; '.join(problems)}", flush=True)
                else:
                    for k, v in values.items():
                        if k in results[peer]:
                            results[peer][k].append(v)
                    print(f"run {i} {peer:10}: {summary} wall={wall:.1f}s", flush=True)
                for leftover in os.listdir(workdir):
                    if leftover != "base.raw":
                        os.unlink(os.path.join(workdir, leftover))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    med = lambda p, k: statistics.median(results[p][k]) if p in results and results[p][k] else None
    ratio = lambda a, b: a / b if a is not None and b else None
    print()
    cols = [p for p in PEERS if p in peers]
    extra = [("qcow2", "raw"), ("layered", "raw"), ("qcow2", "qemu-qcow2"), ("luks", "raw"),
             ("verity", "raw")]
    extra = [(a, b) for a, b in extra if a in peers and b in peers]
    print(f"{'MiB/s, medians':34}" + "".join(f"{c:>11}" for c in cols)
          + "".join(f"{a + '/' + b:>20}" for a, b in extra))
    missed = []
    for key, label, kind in METRICS:
        row = f"{label:34}" + "".join(f"{fmt(med(c, key), 'x'):>11}" for c in cols)
        for a, b in extra:
            r = ratio(med(a, key), med(b, key))
            row += f"{(f'{r:.3f}' if r is not None else '-'):>20}"
            want = {"qemu-qcow2": 1.0}.get(b, {"luks": 0.70, "verity": 0.80}.get(a, TARGET[kind]))
            if r is not None and r < want:
                missed.append(f"{label}: {a}/{b} {r:.3f} < {want:.2f}")
        print(row)
    print("targets: reads and rewrites >= 0.90 of raw, first writes >= 0.70, qcow2 >= 1.0x QEMU; "
          "LUKS >= 0.70 of raw; verified reads >= 0.80")
    print("targets missed:\n  " + "\n  ".join(missed) if missed else "targets: all met")
    if failures:
        print("FAILED runs:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
