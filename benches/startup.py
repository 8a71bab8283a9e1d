#!/usr/bin/env python3
"""Start-up cost of this VMM against QEMU microvm, measured in the same run.

Boots ../shared/guest/tiny-pvh.elf (a 144-byte PVH guest: prints GUEST-INIT-OK, then with
`test=` on its command line stops the VM) under both VMMs alternately, N times each, and prints
for each: ms from process start to the GUEST-INIT-OK line and to process exit, and the memory
the VMM process uses outside guest RAM (Anonymous and Rss summed over /proc/PID/smaps, leaving
out the guest RAM mapping), read once the guest sits halted after its marker and every thread
of the VMM sleeps (seen in /proc, no fixed delay).

This is the VMM's own cost: the guest does almost nothing. It runs on any /dev/kvm, PVM included.

    benches/startup.py [-n 20] [--vmm target/x86_64-unknown-linux-gnu/release/vmm] [--qemu qemu-system-x86_64] [--memory-mib 128]
                       [--no-qemu] [--seccomp-compare] [--irqchip-compare] [--timeout 30]

--seccomp-compare also runs this VMM with --no-seccomp, alternating with the default (filters
on), and prints the cost of compiling and applying the per-thread seccomp filters.
--irqchip-compare also runs this VMM with --irqchip kernel (the default is split), alternating.

Peers besides QEMU, when their binaries are given by path (skipped quietly otherwise):
FIRECRACKER=/path/to/firecracker (its --no-api mode with a config file) and
CLOUD_HYPERVISOR=/path/to/cloud-hypervisor.

Targets (issue 16): <= 3 ms to the marker and <= 5 ms to exit (median and p90), <= 256 KiB
anonymous and <= 4 MiB RSS outside guest RAM. They are reported as met / NOT met, never a
failure: absolute times depend on the machine. The script fails only when a run fails (no
marker, a non-zero exit, or a step that took longer than --timeout, an upper bound far above any
normal run).
"""
import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def guest_dir():
    return os.environ.get("VMM_GUEST_DIR", os.path.join(ROOT, "..", "shared", "guest"))


def our_command(args, kernel, test):
    cmd = [args.vmm, "run", "--kernel", kernel, "--memory", f"{args.memory_mib}M", "--vcpus", "1",
           "--cmdline", "test=1" if test else "console=ttyS0"]
    return cmd


def no_seccomp_command(args, kernel, test):
    return our_command(args, kernel, test) + ["--no-seccomp"]


def kernel_irqchip_command(args, kernel, test):
    return our_command(args, kernel, test) + ["--irqchip", "kernel"]


def firecracker_command(args, kernel, test):
    # Firecracker reads its whole VM from a config file in --no-api mode; one per command line.
    config = {
        "boot-source": {"kernel_image_path": kernel,
                        "boot_args": "test=1" if test else "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": args.memory_mib},
        "drives": [],
    }
    path = os.path.join(args.scratch, f"firecracker-{'test' if test else 'idle'}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return [args.firecracker, "--no-api", "--config-file", path, "--level", "Error"]


def cloud_hypervisor_command(args, kernel, test):
    return [args.cloud_hypervisor, "--kernel", kernel, "--cmdline", "test=1" if test else "console=ttyS0",
            "--cpus", "boot=1", "--memory", f"size={args.memory_mib}M", "--serial", "tty",
            "--console", "off"]


def p90(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, (len(ordered) * 9 + 9) // 10 - 1)]


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
    """Returns (ms to marker, ms to exit, exit code). `timeout` only bounds a hung run."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def give_up(what):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"{what} within {timeout:g} s (--timeout; marker "
                           f"{'seen' if seen is not None else 'not seen'}): {' '.join(cmd)}")

    seen = None
    buf = b""
    fd = proc.stdout.fileno()
    while True:
        left = timeout - (time.perf_counter() - start)
        if left <= 0:
            give_up("no end of output")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        if seen is None and marker.encode() in buf:
            seen = (time.perf_counter() - start) * 1000
    # End of output is not the end of the process: wait for the exit too, still bounded.
    try:
        code = proc.wait(timeout=max(timeout - (time.perf_counter() - start), 0.001))
    except subprocess.TimeoutExpired:
        give_up("output closed but no exit")
    end = (time.perf_counter() - start) * 1000
    if seen is None:
        raise RuntimeError(f"no {marker} from: {' '.join(cmd)} (exit {code})")
    return seen, end, code


# A halted vCPU, seen from outside: the guest executed HLT, so its thread sleeps inside KVM_RUN
# waiting for an interrupt, and /proc/PID/task/TID/wchan (readable by root and the process's
# owner) names the KVM function it sleeps in. A vCPU still executing guest code is running
# (state R, wchan 0); one handling an exit or parked by a pause sleeps elsewhere (futex, poll).
# The same holds for this VMM ("vcpu0") and QEMU (its threads are all "qemu-system-x86").
HALT_WCHANS = ("kvm_vcpu_block", "kvm_vcpu_halt")


def thread_states(pid):
    """[(tid, comm, state letter, wchan or None)] of every thread of pid still there."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out = []
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(base + "/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat[stat.rindex(")") + 2]
        try:
            with open(base + "/wchan") as f:
                wchan = f.read().strip()
        except OSError:
            wchan = None
        out.append((tid, comm, state, wchan))
    return out


def guest_halted(pid, vcpus=1, idle=False):
    """(done, description): done once `vcpus` threads of pid sleep in KVM's halt, and with
    idle=True every thread of pid sleeps (the VMM is idle, nothing left to set up).

    Where wchan cannot be read (not root, a kernel that hides it), a vCPU in its halt cannot be
    told from one sleeping elsewhere: then "done" is every thread of the process asleep, which
    for tiny-pvh.elf after its start (no exits left but the HLT) means the same in practice;
    were a vCPU caught asleep in an exit instead, the only effect is that the first pause of a
    run meets a vCPU a few guest instructions short of its HLT."""
    threads = thread_states(pid)
    asleep = lambda state: state in ("S", "I")
    wchan_known = any(w not in (None, "", "0") for _, _, _, w in threads)
    all_asleep = bool(threads) and all(asleep(st) for _, _, st, _ in threads)
    if wchan_known:
        in_halt = [t for t in threads if t[2] == "S" and (t[3] or "").split(".")[0] in HALT_WCHANS]
        done = len(in_halt) >= vcpus and (all_asleep or not idle)
    else:
        done = all_asleep
    desc = ", ".join(f"{tid} {comm} {st} {w}" for tid, comm, st, w in threads) or "none"
    return done, f"threads (tid comm state wchan): {desc}"


def wait_guest_halted(proc, vcpus=1, idle=False, timeout=30.0):
    """Waits (polling /proc) until guest_halted(); RuntimeError if the process ends first or
    `timeout` (an upper bound for a hung guest, not an expected duration) passes."""
    deadline = time.monotonic() + timeout
    while True:
        done, desc = guest_halted(proc.pid, vcpus, idle)
        if done:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process ended (exit {proc.returncode}) before its guest halted")
        if time.monotonic() > deadline:
            raise RuntimeError(f"guest vCPU not halted in KVM within {timeout:g} s (--timeout); {desc}")
        time.sleep(0.001)  # polling interval, not a guess at how long anything takes


def memory_outside_ram(cmd, ram_bytes, timeout=30.0):
    """Starts a guest that halts after its marker and sums smaps outside guest RAM (KiB)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        buf = b""
        deadline = time.monotonic() + timeout
        while b"GUEST-INIT-OK" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no GUEST-INIT-OK within {timeout:g} s (--timeout) for the "
                                   f"memory run: {' '.join(cmd)}")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError("process ended before its marker")
                buf += chunk
        # Read smaps only once the guest sits in its HLT and every thread of the VMM sleeps:
        # all set-up is done then, whatever the speed of the machine.
        wait_guest_halted(proc, vcpus=1, idle=True, timeout=timeout)
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
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "vmm"))
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--memory-mib", type=int, default=128)
    parser.add_argument("--no-qemu", action="store_true", help="measure this VMM only")
    parser.add_argument("--seccomp-compare", action="store_true",
                        help="also run this VMM with --no-seccomp and compare")
    parser.add_argument("--irqchip-compare", action="store_true",
                        help="also run this VMM with --irqchip kernel and compare")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds before one run counts as hung and the script fails (upper bound)")
    args = parser.parse_args()
    kernel = os.path.join(guest_dir(), "tiny-pvh.elf")
    if not os.path.exists(kernel):
        sys.exit(f"startup.py: {kernel} not found (set VMM_GUEST_DIR)")
    if not os.path.exists(args.vmm):
        sys.exit(f"startup.py: {args.vmm} not found (cargo build --release)")
    peers = [("vmm", our_command)]
    if args.seccomp_compare:
        peers.append(("vmm-no-seccomp", no_seccomp_command))
    if args.irqchip_compare:
        peers.append(("vmm-kernel-irq", kernel_irqchip_command))
    args.scratch = tempfile.mkdtemp(prefix="startup-")
    args.firecracker = os.environ.get("FIRECRACKER")
    args.cloud_hypervisor = os.environ.get("CLOUD_HYPERVISOR")
    if args.firecracker and os.access(args.firecracker, os.X_OK):
        peers.append(("firecracker", firecracker_command))
    if args.cloud_hypervisor and os.access(args.cloud_hypervisor, os.X_OK):
        peers.append(("cloud-hypervisor", cloud_hypervisor_command))
    if not args.no_qemu:
        peers.append(("qemu-microvm", qemu_command))
    results = {name: {"marker": [], "exit": []} for name, _ in peers}
    for _ in range(2):  # warm the page cache; not counted
        for name, build in peers:
            run_once(build(args, kernel, True), timeout=args.timeout)
    for _ in range(args.n):
        for name, build in peers:
            marker, end, code = run_once(build(args, kernel, True), timeout=args.timeout)
            if code != 0:
                raise RuntimeError(f"{name} exited {code}")
            results[name]["marker"].append(marker)
            results[name]["exit"].append(end)
    ram = args.memory_mib << 20
    for name, build in peers:
        anon, rss = memory_outside_ram(build(args, kernel, False), ram, timeout=args.timeout)
        results[name]["anon"], results[name]["rss"] = anon, rss

    host = "PVM /dev/kvm" if os.path.exists("/sys/module/kvm_pvm") else "/dev/kvm"
    print(f"tiny-pvh.elf, {args.n} runs each, alternating, {args.memory_mib} MiB guest, {host}, {os.cpu_count()} CPUs")
    print(f"{'':16} {'to marker ms':>13} {'p90':>6} {'to exit ms':>11} {'p90':>6} {'anon KiB':>9} {'rss KiB':>8}   (medians; min-max)")
    for name, _ in peers:
        r = results[name]
        print(f"{name:16} {statistics.median(r['marker']):13.2f} {p90(r['marker']):6.2f} "
              f"{statistics.median(r['exit']):11.2f} {p90(r['exit']):6.2f} "
              f"{r['anon']:9d} {r['rss']:8d}   marker {min(r['marker']):.2f}-{max(r['marker']):.2f}, "
              f"exit {min(r['exit']):.2f}-{max(r['exit']):.2f}")
    for peer_name in ("firecracker", "cloud-hypervisor"):
        if peer_name in results:
            ours, peer = results["vmm"], results[peer_name]
            print("ratio vmm/{}: marker {:.3f}  exit {:.3f}  anon {:.3f}  rss {:.3f}".format(
                peer_name,
                statistics.median(ours["marker"]) / statistics.median(peer["marker"]),
                statistics.median(ours["exit"]) / statistics.median(peer["exit"]),
                ours["anon"] / max(peer["anon"], 1), ours["rss"] / max(peer["rss"], 1)))
    if not args.no_qemu:
        ours, peer = results["vmm"], results["qemu-microvm"]
        print("ratio vmm/qemu: marker {:.3f}  exit {:.3f}  anon {:.3f}  rss {:.3f}".format(
            statistics.median(ours["marker"]) / statistics.median(peer["marker"]),
            statistics.median(ours["exit"]) / statistics.median(peer["exit"]),
            ours["anon"] / max(peer["anon"], 1), ours["rss"] / max(peer["rss"], 1)))
    if args.seccomp_compare:
        on, off = results["vmm"], results["vmm-no-seccomp"]
        print("seccomp filters on minus off (medians): marker {:+.2f} ms  exit {:+.2f} ms  anon {:+d} KiB".format(
            statistics.median(on["marker"]) - statistics.median(off["marker"]),
            statistics.median(on["exit"]) - statistics.median(off["exit"]), on["anon"] - off["anon"]))
    if args.irqchip_compare:
        split, kernel_chip = results["vmm"], results["vmm-kernel-irq"]
        print("split minus kernel irqchip (medians): marker {:+.2f} ms  exit {:+.2f} ms  anon {:+d} KiB".format(
            statistics.median(split["marker"]) - statistics.median(kernel_chip["marker"]),
            statistics.median(split["exit"]) - statistics.median(kernel_chip["exit"]),
            split["anon"] - kernel_chip["anon"]))
    r = results["vmm"]
    # Informational only: absolute times depend on the machine, so a target missed is reported,
    # never turned into a failure.
    verdict = lambda ok: "met" if ok else "NOT met"
    print("targets: marker <= 3 ms {} (p90 {}), exit <= 5 ms {} (p90 {}), anon <= 256 KiB {}, "
          "rss <= 4096 KiB {}".format(
              verdict(statistics.median(r["marker"]) <= 3), verdict(p90(r["marker"]) <= 3),
              verdict(statistics.median(r["exit"]) <= 5), verdict(p90(r["exit"]) <= 5),
              verdict(r["anon"] <= 256), verdict(r["rss"] <= 4096)))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:  # a failed or hung run: say which, without a traceback
        sys.exit(f"startup.py: {e}")
