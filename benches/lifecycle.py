#!/usr/bin/env python3
"""Lifecycle costs of this VMM against QEMU microvm: pause, resume, snapshot, restore.

Runs ../shared/guest/tiny-pvh.elf (prints GUEST-INIT-OK and halts; the VM keeps running) under
both VMMs alternately, N runs each for every guest size (128 MiB and 1 GiB by default), on this
machine's /dev/kvm (PVM included), and measures per run:

  pause / resume   one round trip of PATCH /vm {"state":"Paused"|"Resumed"} (vmm, over the
                   API's Unix socket, one keep-alive connection) vs QMP `stop` / `cont` (QEMU);
                   median of 20 of each per run.
  snapshot create  after a pause, PUT /snapshot/create (vmm: state file + memory file) vs QMP
                   `migrate` to "exec:cat > FILE" polled with `query-migrate` until completed
                   (QEMU, after `stop`); plus the snapshot's size on disk (st_blocks * 512).
  restore          wall time from starting `vmm restore --snapshot P --mem M --api-sock S` to
                   GET / answering Running (vmm) vs from starting `qemu-system-x86_64 ...
                   -incoming "exec:cat FILE"` to `cont` answered and `query-status` running.

The guest touches almost no memory, so snapshot and restore figures are those of a mostly-empty
guest: our memory file skips zero pages (they stay holes in a sparse file) and QEMU's migration
stream compresses zero pages too. They measure the VMMs' fixed costs, not copying RAM.

    benches/lifecycle.py [-n 10] [--sizes 128,1024] [--vmm target/x86_64-unknown-linux-gnu/release/vmm]
                         [--qemu qemu-system-x86_64] [--no-qemu] [--sealed] [--timeout 60]
    benches/lifecycle.py --linux [-n 10] [--sizes 1024] [--strace]

--linux restores a Linux guest instead (and QEMU's, unless --no-qemu): the shared vmlinux with the test
initramfs (scripts/build-test-initramfs.sh), 2 vCPUs, every virtio device attached (a disk, a
tap, vsock, rng, balloon), whose `fillmem` test fills three quarters of its RAM with non-zero
data before the snapshot (full, paused). Each size boots once; the snapshot is then restored -n
times, each from starting `vmm restore` to GET / answering Running, the VMM killed after.
QEMU microvm gets the same guest and devices (vhost-vsock for vsock), a migration to a file
while paused, and restores with `-incoming "exec:cat FILE"` to `cont` answered and running.
--strace traces one more restore with `strace -f -T` and prints where its time went: wall time
per syscall kind, the slowest calls, and the first and last call of the process. On a PVM host
(which cannot boot Linux) the script runs itself inside ../shared/testhost, where every figure
is that of the nested, emulated machine (TCG): compare them with each other, not with a host.

--sealed compares this VMM's unsealed snapshots with sealed ones (a random 32-byte --key-file)
instead of QEMU: a sealed memory file is all of RAM, encrypted (no holes), and its restore
decrypts it into anonymous memory before the guest runs instead of mapping the file.

Each run measures a guest sitting in its HLT: after the VMM says the VM runs, the script waits
until the vCPU thread sleeps in KVM's halt (/proc/PID/task/*/wchan), never a fixed delay. Every
wait is for an event (a socket accepting, an API or QMP state, a process gone); --timeout only
bounds a hung step and turns it into an error naming the step.

Prints one table (medians over the runs; the ratio is vmm/QEMU). Everything it starts and
writes lives in a temporary directory under /tmp and is removed at the end. A failed run prints
why (with the tail of the failing process's output) and the script exits non-zero.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from startup import wait_guest_halted  # noqa: E402

PAUSE_RESUME_ROUNDS = 20
# Upper bound for any one step (a socket to appear, an answer, a state, a process to go), set
# by --timeout. Far above what any step takes; reaching it means something hangs, and the
# script says which step.
TIMEOUT = 60.0


class BenchError(Exception):
    pass


def guest_dir():
    return os.environ.get("VMM_GUEST_DIR", os.path.join(ROOT, "..", "shared", "guest"))


def now():
    return time.perf_counter()


def disk_bytes(*paths):
    return sum(os.stat(p).st_blocks * 512 for p in paths)


class Procs:
    """Every process this script starts, each in its own session; all killed on cleanup."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.live = []
        self.count = 0

    def start(self, name, cmd):
        self.count += 1
        log_path = os.path.join(self.tmp, f"{self.count:04d}-{name}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        proc.log_path = log_path
        proc.cmd = cmd
        self.live.append(proc)
        return proc

    def kill(self, proc):
        """SIGKILLs the process and its whole process group, then reaps it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        wait_group_gone(proc.pid, TIMEOUT, kill=True)
        if proc in self.live:
            self.live.remove(proc)

    def kill_all(self):
        for proc in list(self.live):
            self.kill(proc)


def wait_group_gone(pgid, timeout, kill=False):
    """Waits until no process is left in the process group (e.g. QEMU's `cat` children)."""
    deadline = now() + timeout
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL if kill else 0)
        except ProcessLookupError:
            return
        if now() > deadline:
            raise BenchError(f"process group {pgid} still alive after {timeout:g} s (--timeout)")
        time.sleep(0.002)  # polling interval


def log_tail(proc, lines=15):
    try:
        with open(proc.log_path, "rb") as f:
            text = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    tail = "\n".join("    " + l for l in text[-lines:])
    return f"\n  command: {' '.join(proc.cmd)}\n  exit: {proc.poll()}\n  output:\n{tail or '    (none)'}"


def connect_unix(path, proc, timeout=None):
    """Connects to a Unix socket the process is about to create (polls until it accepts)."""
    timeout = TIMEOUT if timeout is None else timeout
    deadline = now() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            sock.settimeout(timeout)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        if proc.poll() is not None:
            raise BenchError(f"process ended before its socket {path} appeared" + log_tail(proc))
        if now() > deadline:
            raise BenchError(f"socket {path} not accepting after {timeout:g} s (--timeout)"
                             + log_tail(proc))
        time.sleep(0.0002)  # polling interval


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, proc):
        super().__init__("localhost", timeout=TIMEOUT)
        self.unix_path = path
        self.proc = proc

    def connect(self):
        self.sock = connect_unix(self.unix_path, self.proc)


class VmmApi:
    def __init__(self, path, proc):
        self.proc = proc
        self.conn = UnixHTTPConnection(path, proc)

    def call(self, method, path, body=None):
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        except socket.timeout:
            raise BenchError(f"{method} {path}: no answer within {TIMEOUT:g} s (--timeout)"
                             + log_tail(self.proc))
        except (OSError, http.client.HTTPException) as e:
            raise BenchError(f"{method} {path}: {e!r}" + log_tail(self.proc))

    def expect(self, method, path, body, status):
        got, text = self.call(method, path, body)
        if got != status:
            raise BenchError(f"{method} {path} {body}: HTTP {got} {text}" + log_tail(self.proc))
        return text

    def state(self):
        text = self.expect("GET", "/", None, 200)
        return json.loads(text).get("state")

    def close(self):
        self.conn.close()


class Qmp:
    def __init__(self, path, proc):
        self.proc = proc
        self.sock = connect_unix(path, proc)
        self.reader = self.sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise BenchError(f"no QMP greeting: {greeting}" + log_tail(proc))
        self.execute("qmp_capabilities")

    def _read(self):
        try:
            line = self.reader.readline()
        except socket.timeout:
            raise BenchError(f"QMP: no answer within {TIMEOUT:g} s (--timeout)" + log_tail(self.proc))
        except OSError as e:
            raise BenchError(f"QMP read: {e!r}" + log_tail(self.proc))
        if not line:
            raise BenchError("QMP connection closed" + log_tail(self.proc))
        return json.loads(line)

    def execute(self, command, arguments=None):
        msg = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise BenchError(f"QMP {command}: {reply['error']}" + log_tail(self.proc))
            # anything else is an asynchronous event: skip it

    def status(self):
        return self.execute("query-status")["status"]

    def close(self):
        for f in (self.reader, self.sock):
            try:
                f.close()
            except OSError:
                pass


def time_call(fn):
    start = now()
    fn()
    return (now() - start) * 1000


def ms_median(samples):
    return statistics.median(samples)


def pause_resume(pause, resume):
    pauses, resumes = [], []
    for _ in range(PAUSE_RESUME_ROUNDS):
        pauses.append(time_call(pause))
        resumes.append(time_call(resume))
    return ms_median(pauses), ms_median(resumes)


def run_vmm(args, procs, tmp, kernel, mib, tag, key_file=None):
    """One vmm run: returns {metric: value}. With key_file the snapshot is sealed and restored
    with that key."""
    sock = os.path.join(tmp, f"{tag}.sock")
    state_file = os.path.join(tmp, f"{tag}.state")
    mem_file = os.path.join(tmp, f"{tag}.mem")
    out = {}
    proc = procs.start("vmm-run", [args.vmm, "run", "--kernel", kernel, "--memory", f"{mib}M",
                                   "--vcpus", "1", "--serial", "none", "--api-sock", sock])
    api = VmmApi(sock, proc)
    try:
        wait_until(lambda: api.state() == "Running", "vmm run: Running", proc)
        wait_halted(proc, "vmm run")
        paused = {"state": "Paused"}
        resumed = {"state": "Resumed"}
        out["pause"], out["resume"] = pause_resume(
            lambda: api.expect("PATCH", "/vm", paused, 204),
            lambda: api.expect("PATCH", "/vm", resumed, 204))
        api.expect("PATCH", "/vm", paused, 204)
        create = {"snapshot_type": "Full", "snapshot_path": state_file, "mem_file_path": mem_file}
        if key_file:
            create["key_file"] = key_file
        out["snapshot"] = time_call(lambda: api.expect("PUT", "/snapshot/create", create, 204))
        out["size"] = disk_bytes(state_file, mem_file)
    finally:
        api.close()
        procs.kill(proc)

    sock2 = os.path.join(tmp, f"{tag}-restored.sock")
    start = now()
    restore = [args.vmm, "restore", "--snapshot", state_file, "--mem", mem_file,
               "--api-sock", sock2]
    if key_file:
        restore += ["--key-file", key_file]
    proc = procs.start("vmm-restore", restore)
    api = VmmApi(sock2, proc)
    try:
        wait_until(lambda: api.state() == "Running", "vmm restore: Running", proc, fast=True)
        out["restore"] = (now() - start) * 1000
    finally:
        api.close()
        procs.kill(proc)
    for path in (state_file, mem_file, sock, sock2):
        remove(path)
    return out


def qemu_command(args, kernel, mib, qmp_sock, incoming=None):
    # PVM rejects the IA32_ARCH_CAPABILITIES value QEMU sets for -cpu host (see startup.py).
    cmd = [args.qemu, "-M", "microvm,x-option-roms=off,isa-serial=off,rtc=off",
           "-accel", "kvm", "-cpu", "host,arch-capabilities=off", "-m", str(mib), "-smp", "1",
           "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
           "-kernel", kernel, "-qmp", f"unix:{qmp_sock},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", incoming]
    return cmd


def run_qemu(args, procs, tmp, kernel, mib, tag):
    sock = os.path.join(tmp, f"{tag}.qmp")
    image = os.path.join(tmp, f"{tag}.migration")
    out = {}
    proc = procs.start("qemu-run", qemu_command(args, kernel, mib, sock))
    qmp = Qmp(sock, proc)
    try:
        wait_until(lambda: qmp.status() == "running", "qemu: running", proc)
        wait_halted(proc, "qemu")
        out["pause"], out["resume"] = pause_resume(lambda: qmp.execute("stop"),
                                                   lambda: qmp.execute("cont"))
        qmp.execute("stop")
        start = now()
        qmp.execute("migrate", {"uri": f"exec:cat > {image}"})
        while True:
            info = qmp.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise BenchError(f"QEMU migration {status}: {info}" + log_tail(proc))
            if now() - start > TIMEOUT:
                raise BenchError(f"QEMU migration not done after {TIMEOUT:g} s (--timeout): {info}"
                                 + log_tail(proc))
            time.sleep(0.0002)  # polling interval
        out["snapshot"] = (now() - start) * 1000
        # Quit cleanly and let the `cat` child finish writing the file before measuring it.
        qmp.execute("quit")
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchError(f"QEMU still running {TIMEOUT:g} s after `quit` (--timeout)"
                             + log_tail(proc))
        wait_group_gone(proc.pid, TIMEOUT)
        procs.live.remove(proc)
        out["size"] = disk_bytes(image)
        if out["size"] == 0:
            raise BenchError(f"QEMU migration wrote an empty {image}" + log_tail(proc))
    finally:
        qmp.close()
        if proc in procs.live:
            procs.kill(proc)

    sock2 = os.path.join(tmp, f"{tag}-restored.qmp")
    start = now()
    proc = procs.start("qemu-restore",
                       qemu_command(args, kernel, mib, sock2, incoming=f"exec:cat {image}"))
    qmp = None
    try:
        qmp = Qmp(sock2, proc)
        qemu_run_restored(qmp, proc, start, TIMEOUT)
        out["restore"] = (now() - start) * 1000
    finally:
        if qmp:
            qmp.close()
        procs.kill(proc)
    for path in (image, sock, sock2):
        remove(path)
    return out


def qemu_run_restored(qmp, proc, start, timeout):
    """Waits for a QEMU started with -incoming to load its stream, sends `cont` and waits until
    it runs (`timeout` seconds from `start` bound a hang)."""
    cont_sent = False
    while True:
        status = qmp.status()
        if status == "running":
            return
        if status in ("inmigrate", "prelaunch"):
            pass  # still loading the stream
        elif status in ("paused", "postmigrate") and not cont_sent:
            qmp.execute("cont")
            cont_sent = True
        elif status not in ("paused", "postmigrate"):
            raise BenchError(f"QEMU restore ended in state {status}" + log_tail(proc))
        if now() - start > timeout:
            raise BenchError(f"QEMU restore: not running after {timeout:g} s (--timeout; "
                             f"state {status})" + log_tail(proc))
        time.sleep(0.0002)  # polling interval


def wait_until(check, what, proc, fast=False, timeout=None):
    """Polls check() until true. The interval is only polling granularity (fast: 0.2 ms, for
    waits that are measured); TIMEOUT only bounds a hang."""
    timeout = TIMEOUT if timeout is None else timeout
    deadline = now() + timeout
    while not check():
        if proc.poll() is not None:
            raise BenchError(f"{what}: process ended" + log_tail(proc))
        if now() > deadline:
            raise BenchError(f"{what}: not reached within {timeout:g} s (--timeout)" + log_tail(proc))
        time.sleep(0.0002 if fast else 0.005)


def wait_halted(proc, what):
    """Waits until the guest's vCPU sleeps in its HLT inside KVM, so that pause, resume and
    snapshot meet the same idle guest on every machine (tiny-pvh.elf halts for good once
    started, and resuming returns it to that HLT)."""
    try:
        wait_guest_halted(proc, vcpus=1, timeout=TIMEOUT)
    except RuntimeError as e:
        raise BenchError(f"{what}: {e}" + log_tail(proc))


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fmt_size(b):
    return f"{b / 1024:.0f} KiB" if b < (10 << 20) else f"{b / (1 << 20):.1f} MiB"


def test_initramfs():
    out = subprocess.run([os.path.join(ROOT, "scripts", "build-test-initramfs.sh")], cwd=ROOT,
                         check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    return out.splitlines()[-1]


def wait_serial(path, marker, proc, what):
    """Waits until the serial log at `path` holds a line starting with `marker`."""
    def seen():
        try:
            with open(path, errors="replace") as f:
                return any(l.startswith(marker) for l in f)
        except FileNotFoundError:
            return False
    # A boot that fills RAM takes far longer than any other step (minutes in the test host).
    try:
        wait_until(seen, what, proc, timeout=max(TIMEOUT, 1200))
    except BenchError as e:
        try:
            with open(path, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
        except FileNotFoundError:
            tail = "(none)"
        raise BenchError(f"{e}\n  serial log tail:\n{tail}")


def linux_vm_args(tmp, tag, mib, tap, initrd):
    """`vmm run` arguments of the Linux guest with every virtio device."""
    disk = os.path.join(tmp, "disk.img")
    if not os.path.exists(disk):
        with open(disk, "wb") as f:
            f.truncate(64 << 20)
    return ["--kernel", os.path.join(guest_dir(), "vmlinux"), "--initrd", initrd,
            "--memory", f"{mib}M", "--vcpus", "2", "--cmdline", LINUX_CMDLINE,
            "--disk", f"path={disk}", "--net", f"tap={tap},mac=02:00:00:00:00:02",
            "--vsock", f"cid=3,socket={os.path.join(tmp, tag + '.vsock')}", "--rng",
            "--balloon", "deflate_on_oom=on"]


def strace_summary(trace_path, wall_ms):
    """Where a traced restore's time went: per syscall kind, the slowest calls, and the longest
    stretches a thread spent between two calls (in user space, or not scheduled). strace -f
    splits a call that another thread's call interrupts into `<unfinished ...>` and
    `<... NAME resumed>` lines; the call starts at the first and ends at the second."""
    per_kind, calls, first, last = {}, [], None, None
    # Per thread: when its previous call ended and what it was.
    previous, gaps = {}, []
    head_re = re.compile(r"^(\d+)\s+(\d+):(\d+):(\d+\.\d+) (.*)$")
    took_re = re.compile(r"<(\d+\.\d+)>$")
    with open(trace_path, errors="replace") as f:
        for line in f:
            m = head_re.match(line.strip())
            if not m:
                continue
            pid, h, mi, sec, rest = m.groups()
            at = (int(h) * 3600 + int(mi) * 60 + float(sec)) * 1000
            first = at if first is None else min(first, at)
            last = max(last or at, at)
            resumed = re.match(r"<\.\.\. (\w+) resumed>(.*)$", rest)
            if resumed:
                name, text = resumed.group(1), resumed.group(2)
            else:
                call = re.match(r"(\w+)\((.*)$", rest)
                if not call:
                    continue  # signals, exits
                name, text = call.groups()
                if pid in previous:
                    ended, before = previous.pop(pid)
                    gaps.append((at - ended, pid, before, name + "(" + text[:60]))
            if text.endswith("<unfinished ...>"):
                continue
            took = took_re.search(text)
            took_ms = float(took.group(1)) * 1000 if took else 0.0
            end = at if resumed else at + took_ms
            last = max(last, end)
            previous[pid] = (end, name + "(" + text[:60])
            k = per_kind.setdefault(name, [0, 0.0])
            k[0] += 1
            k[1] += took_ms
            calls.append((took_ms, pid, name, text[:90]))
    print(f"strace -f -T of one restore: {wall_ms:.1f} ms to Running under strace; first to last "
          f"syscall {((last or 0) - (first or 0)):.1f} ms; {len(calls)} calls")
    print("  time in syscalls by kind (ms, all threads; blocking waits included):")
    for name, (n, ms) in sorted(per_kind.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"    {name:24} {n:6d} x {ms:10.2f}")
    print("  slowest calls:")
    for took_ms, pid, name, text in sorted(calls, reverse=True)[:12]:
        print(f"    {took_ms:9.2f} ms  [{pid}] {name}({text}")
    print("  longest gaps between a thread's calls (user space, or not scheduled):")
    for gap, pid, before, after in sorted(gaps, reverse=True)[:10]:
        print(f"    {gap:9.2f} ms  [{pid}] after {before}\n{'':20}before {after}")


def run_linux(args, procs, tmp, mib, initrd, tap):
    """Boots the Linux guest once at `mib`, snapshots it and restores it args.n times."""
    tag = f"linux-{mib}"
    sock = os.path.join(tmp, f"{tag}.sock")
    serial = os.path.join(tmp, f"{tag}.serial")
    state_file = os.path.join(tmp, f"{tag}.state")
    mem_file = os.path.join(tmp, f"{tag}.mem")
    proc = procs.start("vmm-linux", [args.vmm, "run", *linux_vm_args(tmp, tag, mib, tap, initrd),
                                     "--serial", f"file:{serial}", "--api-sock", sock])
    api = VmmApi(sock, proc)
    booted = now()
    try:
        wait_serial(serial, "FILLMEM-OK", proc, "Linux guest: FILLMEM-OK")
        print(f"linux {mib} MiB: booted and filled in {now() - booted:.1f} s", file=sys.stderr)
        api.expect("PATCH", "/vm", {"state": "Paused"}, 204)
        create = {"snapshot_type": "Full", "snapshot_path": state_file, "mem_file_path": mem_file}
        snapshot_ms = time_call(lambda: api.expect("PUT", "/snapshot/create", create, 204))
    finally:
        api.close()
        procs.kill(proc)
    size = disk_bytes(state_file, mem_file)
    restore_cmd = [args.vmm, "restore", "--snapshot", state_file, "--mem", mem_file]
    times = []
    for i in range(args.n + 1):
        sock2 = os.path.join(tmp, f"{tag}-r{i}.sock")
        start = now()
        proc = procs.start("vmm-restore", restore_cmd + ["--api-sock", sock2])
        api = VmmApi(sock2, proc)
        try:
            wait_until(lambda: api.state() == "Running", "vmm restore: Running", proc, fast=True)
            if i > 0:  # the first one warms the page cache: not counted
                times.append((now() - start) * 1000)
        finally:
            api.close()
            procs.kill(proc)
        remove(sock2)
    traced = None
    if args.strace:
        trace = os.path.join(tmp, f"{tag}.strace")
        sock2 = os.path.join(tmp, f"{tag}-traced.sock")
        start = now()
        proc = procs.start("vmm-restore-strace", ["strace", "-f", "-T", "-tt", "-o", trace]
                           + restore_cmd + ["--api-sock", sock2, "--no-seccomp"])
        api = VmmApi(sock2, proc)
        try:
            wait_until(lambda: api.state() == "Running", "traced restore: Running", proc)
            traced = ((now() - start) * 1000, trace)
        finally:
            api.close()
            procs.kill(proc)
    return {"snapshot": snapshot_ms, "size": size, "restore": times, "traced": traced}


LINUX_CMDLINE = ("console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux "
                 "i8042.nomux i8042.dumbkbd quiet noxsave guest.test=fillmem")


def qemu_linux_command(args, tmp, tag, mib, tap, initrd, qmp_sock, serial, incoming=None):
    """QEMU microvm with the same guest and devices as linux_vm_args (vhost-vsock for vsock)."""
    disk = os.path.join(tmp, "disk.img")
    cmd = [args.qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off", "-accel", "kvm",
           "-cpu", "host", "-m", str(mib), "-smp", "2", "-nodefaults", "-no-user-config",
           "-nographic", "-no-reboot", "-kernel", os.path.join(guest_dir(), "vmlinux"),
           "-initrd", initrd, "-append", LINUX_CMDLINE, "-serial", f"file:{serial}",
           "-drive", f"id=d0,file={disk},format=raw,if=none",
           "-device", "virtio-blk-device,drive=d0",
           "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
           "-device", "virtio-net-device,netdev=n0,mac=02:00:00:00:00:02",
           "-device", "vhost-vsock-device,guest-cid=3", "-device", "virtio-rng-device",
           "-device", "virtio-balloon-device,deflate-on-oom=on",
           "-qmp", f"unix:{qmp_sock},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", incoming]
    return cmd


def run_linux_qemu(args, procs, tmp, mib, initrd, tap):
    """The same as run_linux's vmm part with QEMU: one boot, a migration to a file (paused),
    then args.n restores from it (`-incoming exec:cat FILE`, `cont`, to running)."""
    tag = f"qemu-linux-{mib}"
    sock = os.path.join(tmp, f"{tag}.qmp")
    serial = os.path.join(tmp, f"{tag}.serial")
    image = os.path.join(tmp, f"{tag}.migration")
    proc = procs.start("qemu-linux", qemu_linux_command(args, tmp, tag, mib, tap, initrd, sock, serial))
    qmp = Qmp(sock, proc)
    booted = now()
    try:
        wait_serial(serial, "FILLMEM-OK", proc, "QEMU Linux guest: FILLMEM-OK")
        print(f"qemu linux {mib} MiB: booted and filled in {now() - booted:.1f} s", file=sys.stderr)
        qmp.execute("stop")
        start = now()
        qmp.execute("migrate", {"uri": f"exec:cat > {image}"})
        while qmp.execute("query-migrate").get("status") != "completed":
            if now() - start > max(TIMEOUT, 1200):
                raise BenchError("QEMU migration did not complete" + log_tail(proc))
            time.sleep(0.001)  # polling interval
        snapshot_ms = (now() - start) * 1000
        qmp.execute("quit")
        proc.wait(timeout=TIMEOUT)
        wait_group_gone(proc.pid, TIMEOUT)
        procs.live.remove(proc)
    finally:
        qmp.close()
        if proc in procs.live:
            procs.kill(proc)
    size = disk_bytes(image)
    times = []
    for i in range(args.n + 1):
        sock2 = os.path.join(tmp, f"{tag}-r{i}.qmp")
        start = now()
        proc = procs.start("qemu-restore", qemu_linux_command(
            args, tmp, tag, mib, tap, initrd, sock2, serial + f".r{i}",
            incoming=f"exec:cat {image}"))
        qmp = None
        try:
            qmp = Qmp(sock2, proc)
            qemu_run_restored(qmp, proc, start, max(TIMEOUT, 1200))
            if i > 0:  # the first one warms the page cache: not counted
                times.append((now() - start) * 1000)
        finally:
            if qmp:
                qmp.close()
            procs.kill(proc)
        remove(sock2)
    remove(image)
    return {"snapshot": snapshot_ms, "size": size, "restore": times, "traced": None}


def main_linux(args):
    if os.path.exists("/sys/module/kvm_pvm") and not os.environ.get("TESTHOST"):
        testhost = os.environ.get("TESTHOST_DIR", os.path.join(ROOT, "..", "shared", "testhost"))
        print(f"lifecycle.py: PVM host: running inside the test host ({testhost})", file=sys.stderr)
        cmd = [os.path.join(testhost, "run.sh"), "-m", "6G", "-c", "2", "-t", "3000", "--",
               "python3", os.path.relpath(os.path.abspath(__file__), ROOT)] + sys.argv[1:]
        return subprocess.run(cmd, cwd=ROOT).returncode
    for tool in ["ip"] + (["strace"] if args.strace else []) + ([] if args.no_qemu else [args.qemu]):
        if not shutil.which(tool):
            sys.exit(f"lifecycle.py: {tool} not found (scripts/install-deps.sh, or --no-qemu)")
    initrd = test_initramfs()
    sizes = [int(s) for s in args.sizes.split(",") if s] if args.sizes_given else [1024]
    tmp = tempfile.mkdtemp(prefix="vmm-lifecycle-", dir="/tmp")
    procs = Procs(tmp)
    results = {}
    tap = linux_tap()
    try:
        for mib in sizes:
            results[("vmm", mib)] = run_linux(args, procs, tmp, mib, initrd, tap)
            traced = results[("vmm", mib)]["traced"]
            if traced:
                strace_summary(traced[1], traced[0])
            if not args.no_qemu:
                results[("qemu", mib)] = run_linux_qemu(args, procs, tmp, mib, initrd, tap)
    except BenchError as e:
        print(f"lifecycle.py: run failed: {e}", file=sys.stderr)
        return 1
    finally:
        procs.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)
    where = "inside the test host (TCG, emulated SVM)" if os.environ.get("TESTHOST") else "/dev/kvm"
    print(f"Linux guest (vmlinux + test initramfs, 2 vCPUs, blk, net, vsock, rng, balloon; "
          f"3/4 of RAM filled), {where}, {os.cpu_count()} CPUs; {args.n} restores of one full snapshot")
    print(f"{'':6} {'size':>8} {'snapshot ms':>12} {'on disk':>10} {'restore ms median':>18} "
          f"{'p90':>9} {'min':>9} {'max':>9}")
    for (name, mib), r in results.items():
        t = sorted(r["restore"])
        p90 = t[min(len(t) - 1, (len(t) * 9 + 9) // 10 - 1)]
        print(f"{name:6} {str(mib) + ' MiB':>8} {r['snapshot']:12.1f} {fmt_size(r['size']):>10} "
              f"{statistics.median(t):18.2f} {p90:9.2f} {t[0]:9.2f} {t[-1]:9.2f}")
    for mib in sizes:
        if ("qemu", mib) in results:
            ours = statistics.median(results[("vmm", mib)]["restore"])
            peer = statistics.median(results[("qemu", mib)]["restore"])
            print(f"restore ratio vmm/qemu at {mib} MiB: {ours / peer:.3f}")
    return 0


def on_term(signum, frame):
    raise SystemExit(f"lifecycle.py: killed by signal {signum}")


def main():
    global TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10, help="runs per VMM and size")
    parser.add_argument("--sizes", default=None, help="guest sizes in MiB, comma-separated "
                        "(default 128,1024; with --linux 1024)")
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "vmm"))
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--no-qemu", action="store_true", help="measure this VMM only")
    parser.add_argument("--sealed", action="store_true",
                        help="compare unsealed snapshots with sealed ones (--key-file, a random "
                             "32-byte key) instead of QEMU")
    parser.add_argument("--timeout", type=float, default=TIMEOUT,
                        help="seconds before any one step counts as hung and the run fails "
                             "(upper bound, default %(default).0f)")
    parser.add_argument("--linux", action="store_true",
                        help="restore a Linux guest with every virtio device (this VMM only)")
    parser.add_argument("--strace", action="store_true",
                        help="with --linux: trace one more restore and say where its time went")
    args = parser.parse_args()
    TIMEOUT = args.timeout
    args.sizes_given = args.sizes is not None
    if args.linux:
        signal.signal(signal.SIGTERM, on_term)
        return main_linux(args)
    sizes = [int(s) for s in (args.sizes or "128,1024").split(",") if s]
    kernel = os.path.join(guest_dir(), "tiny-pvh.elf")
    if not os.path.exists(kernel):
        sys.exit(f"lifecycle.py: {kernel} not found (set VMM_GUEST_DIR)")
    if not os.path.exists(args.vmm):
        sys.exit(f"lifecycle.py: {args.vmm} not found (cargo build --release -p vmm-cli)")
    if args.sealed:
        args.no_qemu = True
    if not args.no_qemu and not shutil.which(args.qemu):
        sys.exit(f"lifecycle.py: {args.qemu} not found (or pass --no-qemu)")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    tmp = tempfile.mkdtemp(prefix="vmm-lifecycle-", dir="/tmp")
    peers = [("vmm", run_vmm)]
    if args.sealed:
        key_file = os.path.join(tmp, "key")
        with open(key_file, "wb") as f:
            f.write(os.urandom(32))
        peers.append(("sealed", lambda *a: run_vmm(*a, key_file=key_file)))
    elif not args.no_qemu:
        peers.append(("qemu", run_qemu))
    metrics = ["pause", "resume", "snapshot", "size", "restore"]
    results = {(name, mib): {m: [] for m in metrics} for name, _ in peers for mib in sizes}

    procs = Procs(tmp)
    try:
        for name, run in peers:  # warm the page cache and both binaries; not counted
            run(args, procs, tmp, kernel, sizes[0], f"warm-{name}")
        for i in range(args.n):
            for mib in sizes:
                for name, run in peers:
                    got = run(args, procs, tmp, kernel, mib, f"{name}-{mib}-{i}")
                    for m in metrics:
                        results[(name, mib)][m].append(got[m])
    except BenchError as e:
        print(f"lifecycle.py: run failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lifecycle.py: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)

    host = "PVM /dev/kvm" if os.path.exists("/sys/module/kvm_pvm") else "/dev/kvm"
    print(f"tiny-pvh.elf, 1 vCPU, {args.n} runs per VMM and size, alternating, {host}, "
          f"{os.cpu_count()} CPUs; medians over runs (pause/resume: median of "
          f"{PAUSE_RESUME_ROUNDS} per run)")
    print("NOTE: snapshot and restore figures are for a mostly-empty guest: vmm's memory file "
          "skips zero pages (sparse holes), QEMU's migration compresses zero pages.")
    labels = {"pause": "pause ms", "resume": "resume ms", "snapshot": "snapshot create ms",
              "size": "snapshot on disk", "restore": "restore to running ms"}
    qemu_name = "sealed" if args.sealed else "qemu" if not args.no_qemu else None
    if args.sealed:
        print("The peer column is this vmm with sealed snapshots (--key-file); the ratio is "
              "unsealed/sealed.")
    print(f"{'metric':22} {'size':>8} {'vmm':>12} {qemu_name or 'qemu':>12} {'ratio':>9}")
    for m in metrics:
        for mib in sizes:
            ours = ms_median(results[("vmm", mib)][m])
            peer = ms_median(results[(qemu_name, mib)][m]) if qemu_name else None
            if m == "size":
                a, b = fmt_size(ours), fmt_size(peer) if peer is not None else "-"
            else:
                a, b = f"{ours:.3f}", f"{peer:.3f}" if peer is not None else "-"
            ratio = f"{ours / peer:.3f}" if peer else "-"
            print(f"{labels[m]:22} {str(mib) + ' MiB':>8} {a:>12} {b:>12} {ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
