#!/usr/bin/env python3
"""virtio-blk and virtio-net throughput of this VMM against QEMU microvm, measured in the same run.

Boots the shared vmlinux with the test initramfs (scripts/build-test-initramfs.sh) under both VMMs
alternately, N times each, every boot with a fresh sparse data disk (/dev/vda) and a tap device
(tapb0, 169.254.0.1/30) in a private network namespace, and runs the guest tests
`guest.test=blkbench,nettcp,netbench`: O_DIRECT sequential write and read of the disk (1 MiB
blocks), a 1 MiB TCP echo check, then TCP transmit to a sink and receive from a source (busybox
nc). The host sides (scripts/guest/host-echo.py echo 7000, sink 7001, source 7002) run inside the
namespace. Prints the medians, a table (metric, vmm, qemu, ratio vmm/qemu) and exits 1 if any run
failed. Needs root (netns, tap) and a /dev/kvm that boots Linux: on a PVM host run it through
benches/virtio-vs-qemu.sh, which runs it inside ../shared/testhost (nested KVM under TCG: only
the ratios carry over).

    benches/virtio_bench.py [-n 3] [--mib 256] [--peers vmm,qemu] [--qemu-vhost] [--timeout 1800]
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST_ECHO = os.path.join(ROOT, "scripts", "guest", "host-echo.py")
TAP = "tapb0"
HOST_IP = "169.254.0.1"
CMDLINE = ("console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux "
           "i8042.dumbkbd quiet noxsave")
METRICS = [  # (key, label, unit)
    ("blk_write", "blk seq write (O_DIRECT, 1 MiB)", "MiB/s"),
    ("blk_read", "blk seq read (O_DIRECT, 1 MiB)", "MiB/s"),
    ("net_tx", "net TCP tx guest->host", "MiB/s"),
    ("net_rx", "net TCP rx host->guest", "MiB/s"),
    ("wall", "whole boot, wall clock", "s"),
]


def guest_dir():
    return os.environ.get("VMM_GUEST_DIR", os.path.join(ROOT, "..", "shared", "guest"))


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, stdin=subprocess.DEVNULL, capture_output=True, text=True)


class NetNs:
    """A network namespace with tapb0 (169.254.0.1/30) and the host-echo.py servers in it."""

    def __init__(self, mib, timeout):
        self.name = f"vmmbench{os.getpid()}"
        self.servers = []
        self.logs = []
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
            sh("ip", "-n", self.name, "tuntap", "add", TAP, "mode", "tap")
            sh("ip", "-n", self.name, "addr", "add", f"{HOST_IP}/30", "dev", TAP)
            sh("ip", "-n", self.name, "link", "set", TAP, "up")
            for args in (["echo", "7000"], ["sink", "7001"], ["source", "7002", str(mib << 20)]):
                log = tempfile.TemporaryFile()
                proc = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, HOST_ECHO] + args,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                self.servers.append(proc)
                self.logs.append(log)
            self._wait_listening(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_listening(self, timeout):
        """Waits for each server's "listening on" line; `timeout` (--timeout, the bound on one
        boot) only bounds a hang: three Pythons starting under TCG may take a while."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.server_output()
            if out.count("listening on") >= len(self.servers):
                return
            for proc in self.servers:
                if proc.poll() is not None:
                    raise RuntimeError(f"host-echo.py ended early:\n{out}")
            time.sleep(0.1)  # polling interval; nothing is measured here
        raise RuntimeError(f"host-echo.py servers not listening after {timeout:g} s (--timeout):\n"
                           f"{self.server_output()}")

    def server_output(self):
        out = ""
        for log in self.logs:
            log.seek(0)
            out += log.read().decode(errors="replace")
        return out

    def wrap(self, cmd):
        return ["ip", "netns", "exec", self.name] + cmd

    def close(self):
        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.servers:
            # Cleanup only: a server slow to honour SIGTERM gets SIGKILL after 5 s. The
            # results are already collected, so this wait can neither fail the run nor
            # change a number.
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        sh("ip", "netns", "del", self.name, check=False)


def vmm_command(args, kernel, initrd, disk, cmdline):
    return [args.vmm, "run", "--kernel", kernel, "--initrd", initrd, "--vcpus", str(args.vcpus),
            "--memory", f"{args.memory_mib}M", "--cmdline", cmdline, "--serial", "stdio",
            "--disk", f"path={disk}", "--net", f"tap={TAP}"]


def qemu_command(args, kernel, initrd, disk, cmdline):
    blk = f"id=d0,file={disk},format=raw,if=none"
    if args.qemu_blk_cache:
        blk += f",cache={args.qemu_blk_cache}"
    net = f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost={'on' if args.qemu_vhost else 'off'}"
    return [args.qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off", "-accel", "kvm",
            "-cpu", "host", "-m", str(args.memory_mib), "-smp", str(args.vcpus), "-nodefaults",
            "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
            "-drive", blk, "-device", "virtio-blk-device,drive=d0",
            "-netdev", net, "-device", "virtio-net-device,netdev=n0"]


def run_guest(cmd, log_path, timeout):
    """Runs one VM, its console to log_path. Returns (exit code or None on timeout, output, seconds).

    Waits for the VMM to exit (the guest powers off after its tests); `timeout` only bounds a
    hung boot, which is then reported as failed with its last console lines."""
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    wall = time.monotonic() - start
    with open(log_path, "rb") as f:
        out = f.read().decode(errors="replace").replace("\r", "")
    return code, out, wall


def parse(out):
    """The guest's markers -> ({metric: value}, [problems])."""
    values, problems = {}, []
    m = re.search(r"^BLKBENCH write_mib_s=([\d.]+) read_mib_s=([\d.]+)", out, re.M)
    if m:
        values["blk_write"], values["blk_read"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"^NETBENCH tx_mib_s=([\d.]+) rx_mib_s=([\d.]+)", out, re.M)
    if m:
        values["net_tx"], values["net_rx"] = float(m.group(1)), float(m.group(2))
    for line in re.findall(r"^(?:\S+-FAIL|GUEST-TEST-UNKNOWN)\b.*$", out, re.M):
        problems.append(line)
    for marker in ("GUEST-INIT-OK", "BLKBENCH ", "NETTCP-OK", "NETBENCH ", "GUEST-TEST-DONE"):
        if not re.search(rf"^{marker}", out, re.M):
            problems.append(f"no {marker.strip()} marker")
    return values, problems


def fmt(v, unit):
    if v is None:
        return "-"
    return f"{v:.2f}" if unit == "s" else f"{v:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=3, help="runs per VMM (alternating)")
    parser.add_argument("--mib", type=int, default=256, help="data disk size, and MiB per transfer")
    parser.add_argument("--peers", default="vmm,qemu", help="vmm,qemu | vmm | qemu")
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--memory-mib", type=int, default=512)
    parser.add_argument("--kernel", default="vmlinux")
    parser.add_argument("--initrd", default=os.path.join(ROOT, "target", "test-guest", "initramfs.cpio.gz"))
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "vmm"))
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--qemu-vhost", action="store_true", help="QEMU's tap with vhost=on (default off)")
    parser.add_argument("--qemu-blk-cache", default="",
                        help="QEMU -drive cache= mode (default: QEMU's own, writeback)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per boot")
    parser.add_argument("--logdir", default=os.path.join(ROOT, "target", "virtio-bench"))
    parser.add_argument("--workdir", default=None, help="where the data disks go (default: a temp dir)")
    args = parser.parse_args()

    if os.path.exists("/sys/module/kvm_pvm"):
        sys.exit("virtio_bench.py: /dev/kvm is PVM here and cannot boot Linux: use benches/virtio-vs-qemu.sh")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or any(p not in ("vmm", "qemu") for p in peers):
        sys.exit("virtio_bench.py: --peers takes vmm, qemu or vmm,qemu")
    kernel = os.path.join(guest_dir(), args.kernel)
    for path, what in ((kernel, "kernel (set VMM_GUEST_DIR)"),
                       (args.initrd, "test initramfs (scripts/build-test-initramfs.sh)")):
        if not os.path.exists(path):
            sys.exit(f"virtio_bench.py: no {what}: {path}")
    if "vmm" in peers and not os.path.exists(args.vmm):
        sys.exit(f"virtio_bench.py: {args.vmm} not found (cargo build --release -p vmm-cli)")
    if "qemu" in peers and not shutil.which(args.qemu):
        sys.exit(f"virtio_bench.py: {args.qemu} not found")
    if os.geteuid() != 0:
        sys.exit("virtio_bench.py: needs root (network namespace and tap device)")
    if not os.path.exists(HOST_ECHO):
        sys.exit(f"virtio_bench.py: {HOST_ECHO} missing")

    cmdline = (f"{CMDLINE} guest.test=blkbench,nettcp,netbench guest.benchdev=/dev/vda "
               f"guest.benchmib={args.mib} guest.ip=169.254.0.2/30 guest.peer={HOST_IP} "
               f"guest.bench_timeout={int(args.timeout)}")
    builders = {"vmm": vmm_command, "qemu": qemu_command}
    os.makedirs(args.logdir, exist_ok=True)
    workdir = args.workdir or tempfile.mkdtemp(prefix="virtio-bench.")
    os.makedirs(workdir, exist_ok=True)
    results = {p: {k: [] for k, _, _ in METRICS} for p in peers}
    failures = []
    where = "inside the test host (nested KVM)" if os.environ.get("TESTHOST") else "on /dev/kvm"
    print(f"virtio_bench: {args.kernel} + test initramfs, {args.vcpus} vCPU(s), {args.memory_mib} MiB, "
          f"{args.mib} MiB disk/transfers, {args.n} runs each, alternating, {where}", flush=True)
    netns = NetNs(args.mib, args.timeout)
    try:
        for i in range(1, args.n + 1):
            for peer in peers:
                disk = os.path.join(workdir, f"data-{peer}.img")
                if os.path.exists(disk):
                    os.unlink(disk)
                with open(disk, "wb") as f:
                    f.truncate(args.mib << 20)
                cmd = netns.wrap(builders[peer](args, kernel, args.initrd, disk, cmdline))
                log = os.path.join(args.logdir, f"{peer}-{i}.log")
                code, out, wall = run_guest(cmd, log, args.timeout)
                os.unlink(disk)
                values, problems = parse(out)
                if code != 0:
                    problems.insert(0, f"no exit within {args.timeout:g} s (--timeout), killed"
                                    if code is None else f"exit status {code}")
                summary = " ".join(f"{k}={fmt(v, 'x')}" for k, v in values.items())
                if problems:
                    failures.append(f"{peer} run {i}: {'; '.join(problems)} (log {log})")
                    print(f"run {i} {peer:4}: FAILED after {wall:.1f} s: {'; '.join(problems)}  {summary}",
                          flush=True)
                    tail = "\n".join(out.rstrip().splitlines()[-15:])
                    print("  last console lines:\n    " + tail.replace("\n", "\n    "), flush=True)
                    continue
                values["wall"] = wall
                for k, v in values.items():
                    results[peer][k].append(v)
                print(f"run {i} {peer:4}: {summary} wall={wall:.1f}s", flush=True)
    finally:
        server_log = netns.server_output()
        netns.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    with open(os.path.join(args.logdir, "host-echo.log"), "w") as f:
        f.write(server_log)

    med = lambda p, k: statistics.median(results[p][k]) if results.get(p, {}).get(k) else None
    print()
    print(f"{'metric (medians)':36} {'unit':6} {'vmm':>9} {'qemu':>9} {'vmm/qemu':>9}")
    for key, label, unit in METRICS:
        v, q = med("vmm", key), med("qemu", key)
        ratio = f"{v / q:.3f}" if v is not None and q else "-"
        print(f"{label:36} {unit:6} {fmt(v, unit):>9} {fmt(q, unit):>9} {ratio:>9}")
    counts = ", ".join(f"{p} {len(results[p]['wall'])}/{args.n} ok" for p in peers)
    print(f"runs: {counts}; MiB/s: higher is better (ratio > 1: vmm faster); logs in {args.logdir}")
    if failures:
        print("FAILED runs:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
