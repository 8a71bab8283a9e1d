#!/usr/bin/env python3
"""Host-side peers for the guest's network and vsock tests (python3 standard library only).

Servers (one thread per connection; run until killed, or until --count connections are done):

    host-echo.py echo ADDR          send back everything received; close after the client's EOF
    host-echo.py sink ADDR          count bytes until the client's EOF, answer "<count>\\n", close
    host-echo.py source ADDR BYTES  send BYTES zero bytes (K/M/G suffixes allowed), then close
    host-echo.py reply ADDR         read one line, answer "host-echo:<line>\\n", close

ADDR: PORT or HOST:PORT (TCP, default host 0.0.0.0), unix:PATH (Unix socket; a stale PATH is
replaced), vsock:PORT (AF_VSOCK, any CID: the host end of vhost-vsock). Each server prints
"host-echo: MODE listening on ADDR" once it listens, and one line per finished connection.

Clients (for vsock tests where the host connects to a guest listening on PORT):

    host-echo.py fc-connect PATH PORT MESSAGE     Firecracker-style hybrid vsock: connect to the
        VMM's Unix socket PATH, send "CONNECT PORT\\n", expect "OK <n>\\n", then as below
    host-echo.py vsock-connect CID PORT MESSAGE   AF_VSOCK straight to the guest CID (vhost-vsock)

They send "MESSAGE\\n", read one line, print "HOST-GOT <line>" and exit 0; connection attempts
are retried until --timeout (default 10 s) runs out, then exit 1 with the last error.

The guest tests these serve (scripts/guest/tests): nettcp (echo 7000), netbench (sink 7001,
source 7002 BYTES), vsockio (reply unix:PATH_6000 or reply vsock:6000; then fc-connect /
vsock-connect to port 5000).
"""
import argparse
import os
import socket
import sys
import threading
import time

CHUNK = 1 << 20


def log(msg):
    print(f"host-echo: {msg}", flush=True)


def parse_bytes(text):
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    m = 1
    if t and t[-1] in mult:
        m, t = mult[t[-1]], t[:-1]
    if not t.isdigit():
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}")
    return int(t) * m


def listen_socket(addr):
    if addr.startswith("unix:"):
        path = addr[5:]
        if os.path.exists(path) or os.path.islink(path):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
    elif addr.startswith("vsock:"):
        if not hasattr(socket, "AF_VSOCK"):
            sys.exit("host-echo: this python has no AF_VSOCK")
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.bind((socket.VMADDR_CID_ANY, int(addr[6:])))
    else:
        host, _, port = addr.rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host or "0.0.0.0", int(port)))
    s.listen(16)
    return s


def drain_until_eof(conn, timeout=30.0):
    """After our last byte: wait for the client's EOF, so close() sends FIN rather than RST."""
    conn.settimeout(timeout)
    try:
        while conn.recv(CHUNK):
            pass
    except OSError:
        pass


def serve_echo(conn, _args):
    total = 0
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        conn.sendall(data)
        total += len(data)
    return f"echoed {total} bytes"


def serve_sink(conn, _args):
    total = 0
    start = time.perf_counter()
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        total += len(data)
    dt = time.perf_counter() - start
    conn.sendall(f"{total}\n".encode())
    return f"received {total} bytes in {dt:.2f} s ({total / (1 << 20) / max(dt, 1e-6):.1f} MiB/s)"


def serve_source(conn, args):
    zeros = bytes(CHUNK)
    left = args.bytes
    start = time.perf_counter()
    while left > 0:
        n = min(left, CHUNK)
        conn.sendall(zeros[:n] if n < CHUNK else zeros)
        left -= n
    conn.shutdown(socket.SHUT_WR)
    dt = time.perf_counter() - start
    drain_until_eof(conn)
    return f"sent {args.bytes} bytes in {dt:.2f} s ({args.bytes / (1 << 20) / max(dt, 1e-6):.1f} MiB/s)"


def read_line(conn):
    buf = b""
    while not buf.endswith(b"\n"):
        data = conn.recv(1)
        if not data:
            break
        buf += data
        if len(buf) > 65536:
            raise OSError("line longer than 64 KiB")
    return buf


def serve_reply(conn, _args):
    line = read_line(conn).rstrip(b"\r\n")
    conn.sendall(b"host-echo:" + line + b"\n")
    conn.shutdown(socket.SHUT_WR)
    drain_until_eof(conn, timeout=5.0)
    return f"got line {line.decode(errors='replace')!r}"


SERVERS = {"echo": serve_echo, "sink": serve_sink, "source": serve_source, "reply": serve_reply}


def run_server(args):
    lsock = listen_socket(args.addr)
    log(f"{args.mode} listening on {args.addr}")
    handler = SERVERS[args.mode]
    done = threading.Semaphore(0)
    threads = []

    def one(conn, peer):
        try:
            with conn:
                conn.settimeout(args.idle_timeout)
                msg = handler(conn, args)
            log(f"{args.mode} {peer}: {msg}")
        except OSError as e:
            log(f"{args.mode} {peer}: error: {e}")
        finally:
            done.release()

    accepted = 0
    while args.count == 0 or accepted < args.count:
        conn, peer = lsock.accept()
        accepted += 1
        peer = peer if peer else "unix"
        t = threading.Thread(target=one, args=(conn, peer), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return 0


def run_client(args):
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        try:
            if args.mode == "fc-connect":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(max(1.0, deadline - time.monotonic()))
                s.connect(args.target)
                s.sendall(f"CONNECT {args.port}\n".encode())
                ack = read_line(s)
                if not ack.startswith(b"OK "):
                    s.close()
                    raise OSError(f"the VMM answered {ack!r} to CONNECT {args.port}")
            else:
                s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                s.settimeout(max(1.0, deadline - time.monotonic()))
                s.connect((int(args.target), args.port))
            break
        except OSError as e:
            last = e
            if time.monotonic() + 0.2 >= deadline:
                sys.exit(f"host-echo: {args.mode} {args.target} port {args.port}: {last}")
            time.sleep(0.2)
    with s:
        s.settimeout(max(1.0, deadline - time.monotonic()))
        try:
            s.sendall(args.message.encode() + b"\n")
            line = read_line(s)
        except OSError as e:
            sys.exit(f"host-echo: {args.mode} {args.target} port {args.port}: {e}")
    if not line:
        sys.exit(f"host-echo: {args.mode} {args.target} port {args.port}: closed without a reply")
    text = line.rstrip(b"\r\n").decode(errors="replace")
    print(f"HOST-GOT {text}", flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in SERVERS:
        sp = sub.add_parser(mode)
        sp.add_argument("addr")
        if mode == "source":
            sp.add_argument("bytes", type=parse_bytes)
        sp.add_argument("--count", type=int, default=0, help="exit after this many connections (0: never)")
        sp.add_argument("--idle-timeout", type=float, default=300.0,
                        help="drop a connection idle this long (s)")
    for mode, what in (("fc-connect", "PATH"), ("vsock-connect", "CID")):
        sp = sub.add_parser(mode)
        sp.add_argument("target", metavar=what)
        sp.add_argument("port", type=int)
        sp.add_argument("message")
        sp.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    try:
        return run_server(args) if args.mode in SERVERS else run_client(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
