#!/usr/bin/env python3
"""Linux boot time of this VMM against QEMU microvm (-accel kvm), measured in the same run.

Boots the shared guest's kernel and initramfs with `guest.test=poweroff` under both VMMs
alternately, N times each, and prints the medians (ms from process start to GUEST-INIT-OK and
to process exit) and their ratio. Needs a /dev/kvm with hardware virtualization: on a PVM host
run it through benches/boot-vs-qemu.sh, which runs it inside ../shared/testhost (nested: the
absolute numbers are the test host's, only the ratio carries over).

    benches/boot.py [-n 10] [--kernel vmlinux|bzImage] [--vcpus 1] [--vmm target/x86_64-unknown-linux-gnu/release/vmm]
                    [--irqchip-compare] [--timeout 300]

--irqchip-compare also boots this VMM with --irqchip kernel (the default is split), alternating.
Peers besides QEMU, when their binaries are given by path (skipped quietly otherwise):
FIRECRACKER=/path/to/firecracker (--no-api with a config file) and
CLOUD_HYPERVISOR=/path/to/cloud-hypervisor. Targets (issue 16): <= 0.9x Firecracker and
<= 0.8x QEMU to the marker, reported as met / NOT met, never a failure.

Each boot is timed to events (the marker line on the console, the process's exit); --timeout is
only an upper bound on one boot (a hung guest), far above a normal boot even in the test host,
and ends the script with an error naming the command.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import ROOT, guest_dir, run_once  # noqa: E402

CMDLINE = ("console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux "
           "i8042.dumbkbd quiet noxsave guest.test=poweroff")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--kernel", default="vmlinux")
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "vmm"))
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--irqchip-compare", action="store_true",
                        help="also boot this VMM with --irqchip kernel and compare")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds before one boot counts as hung and the script fails (upper bound)")
    args = parser.parse_args()
    if os.path.exists("/sys/module/kvm_pvm"):
        sys.exit("boot.py: /dev/kvm is PVM here and cannot boot Linux: use benches/boot-vs-qemu.sh")
    kernel = os.path.join(guest_dir(), args.kernel)
    initrd = os.path.join(guest_dir(), "initramfs.cpio.gz")
    ours = [args.vmm, "run", "--kernel", kernel, "--initrd", initrd, "--vcpus", str(args.vcpus),
            "--memory", f"{args.memory_mib}M", "--cmdline", CMDLINE]
    qemu = [args.qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off", "-accel", "kvm",
            "-cpu", "host", "-m", str(args.memory_mib), "-smp", str(args.vcpus), "-nodefaults",
            "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE]
    peers = [("vmm", ours)]
    if args.irqchip_compare:
        peers.append(("vmm-kernel-irq", ours + ["--irqchip", "kernel"]))
    firecracker = os.environ.get("FIRECRACKER")
    if firecracker and os.access(firecracker, os.X_OK):
        config = os.path.join(tempfile.mkdtemp(prefix="boot-"), "firecracker.json")
        with open(config, "w") as f:
            json.dump({"boot-source": {"kernel_image_path": kernel, "initrd_path": initrd,
                                       "boot_args": CMDLINE},
                       "machine-config": {"vcpu_count": args.vcpus, "mem_size_mib": args.memory_mib},
                       "drives": []}, f)
        peers.append(("firecracker", [firecracker, "--no-api", "--config-file", config, "--level", "Error"]))
    cloud_hypervisor = os.environ.get("CLOUD_HYPERVISOR")
    if cloud_hypervisor and os.access(cloud_hypervisor, os.X_OK):
        peers.append(("cloud-hypervisor", [
            cloud_hypervisor, "--kernel", kernel, "--initramfs", initrd, "--cmdline", CMDLINE,
            "--cpus", f"boot={args.vcpus}", "--memory", f"size={args.memory_mib}M",
            "--serial", "tty", "--console", "off"]))
    peers.append(("qemu-microvm", qemu))
    results = {name: {"marker": [], "exit": []} for name, _ in peers}
    for _ in range(args.n):
        for name, cmd in peers:
            marker, end, code = run_once(cmd, timeout=args.timeout)
            if code != 0:
                raise RuntimeError(f"{name} exited {code}")
            results[name]["marker"].append(marker)
            results[name]["exit"].append(end)
    where = "inside the test host (nested KVM)" if os.environ.get("TESTHOST") else "on /dev/kvm"
    print(f"{args.kernel} + initramfs, {args.vcpus} vCPU(s), {args.memory_mib} MiB, {args.n} runs each, "
          f"alternating, {where}")
    for name, _ in peers:
        r = results[name]
        print(f"{name:16} to GUEST-INIT-OK {statistics.median(r['marker']):8.1f} ms   to exit "
              f"{statistics.median(r['exit']):8.1f} ms   (medians; marker {min(r['marker']):.0f}-"
              f"{max(r['marker']):.0f})")
    m = lambda name, key: statistics.median(results[name][key])
    for peer, _ in peers[1:]:
        print("ratio vmm/{}: to marker {:.3f}, to exit {:.3f}".format(
            peer, m("vmm", "marker") / m(peer, "marker"), m("vmm", "exit") / m(peer, "exit")))
    verdict = lambda ok: "met" if ok else "NOT met"
    targets = [f"<= 0.8x QEMU {verdict(m('vmm', 'marker') <= 0.8 * m('qemu-microvm', 'marker'))}"]
    if "firecracker" in results:
        targets.append(f"<= 0.9x Firecracker {verdict(m('vmm', 'marker') <= 0.9 * m('firecracker', 'marker'))}")
    print("targets (to marker): " + ", ".join(targets))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:  # a failed or hung boot: say which, without a traceback
        sys.exit(f"boot.py: {e}")
