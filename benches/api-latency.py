#!/usr/bin/env python3
"""API request latency of the `firecracker` front end over one kept-alive connection, against
Firecracker itself when its binary is given (FIRECRACKER_BIN=/path/to/firecracker), measured in
the same run.

For each VMM: start it with only --api-sock (nothing booted: this is the API path itself, the
parsing, the hand-over to the VMM thread and the answer), open ONE Unix-socket connection and
send N requests of each kind back to back, each waiting for its answer:

    GET  /machine-config                      (what go-sdk polls)
    PUT  /machine-config  {"vcpu_count": 1, "mem_size_mib": 128}
    PUT  /drives/d1       a drive on a scratch file
    GET  /                (instance info)

and print the median and p99 in microseconds, and our/peer ratios when the peer ran.

    benches/api-latency.py [-n 2000] [--vmm target/x86_64-unknown-linux-gnu/release/vmm]

The drive file is a scratch file in a temporary folder. Nothing is asserted: times depend on
the machine; the script fails only when a request fails.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def request(sock, buf, method, path, body=None):
    """Sends one request and reads its response; returns (status, rest of the buffer)."""
    if body is None:
        raw = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
    else:
        raw = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}")
    sock.sendall(raw.encode())
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode()
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(buf) >= end + 4 + length:
                status = int(head.split()[1])
                return status, buf[end + 4 + length:]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"{method} {path}: connection closed")
        buf += chunk


def measure(binary, argv0, n, workdir):
    sock_path = os.path.join(workdir, f"{argv0}.sock")
    disk = os.path.join(workdir, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    proc = subprocess.Popen([argv0, "--api-sock", sock_path], executable=binary,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock_path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not open its socket")
            time.sleep(0.005)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(sock_path)
        buf = b""
        kinds = [
            ("GET /machine-config", "GET", "/machine-config", None, 200),
            ("PUT /machine-config", "PUT", "/machine-config",
             '{"vcpu_count": 1, "mem_size_mib": 128}', 204),
            ("PUT /drives/d1", "PUT", "/drives/d1",
             f'{{"drive_id": "d1", "path_on_host": "{disk}", "is_root_device": false, '
             f'"is_read_only": false}}', 204),
            ("GET /", "GET", "/", None, 200),
        ]
        results = {}
        for name, method, path, body, want in kinds:
            for _ in range(min(100, n)):  # warm-up
                status, buf = request(sock, buf, method, path, body)
            samples = []
            for _ in range(n):
                start = time.perf_counter_ns()
                status, buf = request(sock, buf, method, path, body)
                samples.append((time.perf_counter_ns() - start) / 1000)
                if status != want:
                    raise RuntimeError(f"{name}: status {status}, want {want}")
            samples.sort()
            results[name] = (statistics.median(samples), samples[int(len(samples) * 0.99) - 1])
        sock.close()
        return results
    finally:
        proc.kill()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "vmm"))
    args = parser.parse_args()
    if not os.path.exists(args.vmm):
        sys.exit(f"{args.vmm} is missing: cargo build --release -p vmm-cli")
    peer = os.environ.get("FIRECRACKER_BIN")
    with tempfile.TemporaryDirectory() as workdir:
        ours = measure(args.vmm, "firecracker", args.n, workdir)
        theirs = measure(peer, "firecracker", args.n, workdir) if peer else None
    print(f"API latency over one kept-alive connection, {args.n} requests each (microseconds)")
    header = f"{'request':24} {'vmm p50':>9} {'vmm p99':>9}"
    if theirs:
        header += f" {'FC p50':>9} {'FC p99':>9} {'p50 ratio':>10}"
    print(header)
    for name, (p50, p99) in ours.items():
        row = f"{name:24} {p50:9.1f} {p99:9.1f}"
        if theirs:
            fp50, fp99 = theirs[name]
            row += f" {fp50:9.1f} {fp99:9.1f} {p50 / fp50:10.2f}"
        print(row)
    if not theirs:
        print("(set FIRECRACKER_BIN to compare with Firecracker in the same run)")


if __name__ == "__main__":
    main()
