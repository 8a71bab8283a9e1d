#!/usr/bin/env python3
"""Start-up cost of this VMM against QEMU microvm, measured in the same run.

Boots ../shared/guest/tiny-pvh.elf (a 144-byte PVH guest: prints GUEST-INIT-OK, then with
`test=` on its command line stops the VM) under both VMMs alternately, N times each, and prints
for each: ms from process start to the GUEST-INIT-OK line and to process exit, and the memory
the VMM process uses outside guest RAM (Anonymous and Rss summed over /proc/PID/smaps, leaving
out the guest RAM mapping), read while the guest sits halted after its marker.

This is the VMM's own cost: the guest does almost nothing. It runs on any /dev/kvm, PVM included.

    benches/startup.py [-n 20] [--vmm target/release/vmm] [--qemu qemu-system-x86_64] [--memory-mib 128]

Targets (issue: boot foundation): <= 5 ms to the marker, <= 10 ms to exit, <= 256 KiB anonymous.
"""
import argparse
import os
import select
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def guest_dir():
    return os.environ.get("VMM_GUEST_DIR", os.path.join(ROOT, "..", "shared", "guest"))


def our_command(args, kernel, test):
    cmd = [args.vmm, "run", "--kernel", kernel, "--memory", f"{args.memory_mib}M", "--vcpus", "1",
           "--cmdline", "test=1" if test else "console=ttyS0"]
    return cmd


def qemu_command(args, kernel, test):
    cpu = "host"
    if os.path.exists("/sys/module/kvm_pvm"):
        # PVM rejects the IA32_ARCH_CAPABILITIES value QEMU sets for -cpu host.
        cpu = "host,-arch-capabilities"
    return [args.qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
            "-accel", "kvm", "-cpu", cpu, "-m", str(args.memory_mib), "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-kernel", kernel, "-append", "test=1" if test else "console=ttyS0"]


def run_once(cmd, marker="GUEST-INIT-OK", timeout=30.0):
    """Returns (ms to marker, ms to exit, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    seen = None
    buf = b""
    fd = proc.stdout.fileno()
    while True:
        left = timeout - (time.perf_counter() - start)
        if left <= 0:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"timeout: {' '.join(cmd)}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        if seen is None and marker.encode() in buf:
            seen = (time.perf_counter() - start) * 1000
    code = proc.wait()
    end = (time.perf_counter() - start) * 1000
    if seen is None:
        raise RuntimeError(f"no {marker} from: {' '.join(cmd)} (exit {code})")
    return seen, end, code


def memory_outside_ram(cmd, ram_bytes, timeout=30.0):
    """Starts a guest that halts after its marker and sums smaps outside guest RAM (KiB)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        buf = b""
        deadline = time.time() + timeout
        while b"GUEST-INIT-OK" not in buf:
            if time.time() > deadline:
                raise RuntimeError("no marker for the memory run")
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError("process ended before its marker")
                buf += chunk
        time.sleep(0.3)  # let every thread settle after the guest halted
        anon = rss = 0
        size = 0
        with open(f"/proc/{proc.pid}/smaps") as f:
            mapping = {}
            for line in f:
                parts = line.split()
                if "-" in parts[0] and not parts[0].endswith(":"):
                    if mapping:
                        anon, rss = add_mapping(mapping, ram_bytes, anon, rss)
                    lo, hi = parts[0].split("-")
                    size = int(hi, 16) - int(lo, 16)
                    mapping = {"size": size}
                elif parts[0] in ("Anonymous:", "Rss:"):
                    mapping[parts[0]] = int(parts[1])
            if mapping:
                anon, rss = add_mapping(mapping, ram_bytes, anon, rss)
        return anon, rss
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def add_mapping(mapping, ram_bytes, anon, rss):
    # Guest RAM is the one mapping at least as large as the guest's memory; leave it out.
    if mapping["size"] >= ram_bytes:
        return anon, rss
    return anon + mapping.get("Anonymous:", 0), rss + mapping.get("Rss:", 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20, help="runs per VMM")
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target", "release", "vmm"))
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--memory-mib", type=int, default=128)
    parser.add_argument("--no-qemu", action="store_true", help="measure this VMM only")
    args = parser.parse_args()
    kernel = os.path.join(guest_dir(), "tiny-pvh.elf")
    if not os.path.exists(kernel):
        sys.exit(f"startup.py: {kernel} not found (set VMM_GUEST_DIR)")
    if not os.path.exists(args.vmm):
        sys.exit(f"startup.py: {args.vmm} not found (cargo build --release)")
    peers = [("vmm", our_command)]
    if not args.no_qemu:
        peers.append(("qemu-microvm", qemu_command))
    results = {name: {"marker": [], "exit": []} for name, _ in peers}
    for _ in range(2):  # warm the page cache; not counted
        for name, build in peers:
            run_once(build(args, kernel, True))
    for _ in range(args.n):
        for name, build in peers:
            marker, end, code = run_once(build(args, kernel, True))
            if code != 0:
                raise RuntimeError(f"{name} exited {code}")
            results[name]["marker"].append(marker)
            results[name]["exit"].append(end)
    ram = args.memory_mib << 20
    for name, build in peers:
        anon, rss = memory_outside_ram(build(args, kernel, False), ram)
        results[name]["anon"], results[name]["rss"] = anon, rss

    host = "PVM /dev/kvm" if os.path.exists("/sys/module/kvm_pvm") else "/dev/kvm"
    print(f"tiny-pvh.elf, {args.n} runs each, alternating, {args.memory_mib} MiB guest, {host}, {os.cpu_count()} CPUs")
    print(f"{'':14} {'to marker ms':>13} {'to exit ms':>11} {'anon KiB':>9} {'rss KiB':>8}   (medians; min-max)")
    for name, _ in peers:
        r = results[name]
        print(f"{name:14} {statistics.median(r['marker']):13.2f} {statistics.median(r['exit']):11.2f} "
              f"{r['anon']:9d} {r['rss']:8d}   marker {min(r['marker']):.2f}-{max(r['marker']):.2f}, "
              f"exit {min(r['exit']):.2f}-{max(r['exit']):.2f}")
    if not args.no_qemu:
        ours, peer = results["vmm"], results["qemu-microvm"]
        print("ratio vmm/qemu: marker {:.3f}  exit {:.3f}  anon {:.3f}  rss {:.3f}".format(
            statistics.median(ours["marker"]) / statistics.median(peer["marker"]),
            statistics.median(ours["exit"]) / statistics.median(peer["exit"]),
            ours["anon"] / max(peer["anon"], 1), ours["rss"] / max(peer["rss"], 1)))
    r = results["vmm"]
    verdict = lambda ok: "met" if ok else "NOT met"
    print("targets: marker <= 5 ms {}, exit <= 10 ms {}, anon <= 256 KiB {}".format(
        verdict(statistics.median(r["marker"]) <= 5), verdict(statistics.median(r["exit"]) <= 10),
        verdict(r["anon"] <= 256)))


if __name__ == "__main__":
    main()
