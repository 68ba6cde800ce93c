#!/usr/bin/env python3
"""Figures for qfota-serve's serving cost, on loopback only.

Prints, for HTTP and FTP:
  * CPU seconds the server process spends per GiB served (curl downloads of
    one 64 MiB package, a bounded number of times);
  * resident memory per slow connection: K curl downloads throttled to a
    cellular-like rate, held for a few seconds, RSS growth divided by K.

Every loop is bounded in count and time and stops by itself. Usage:

    cargo build --release && python3 bench/serve_bench.py [--slow 200] [--rounds 16]

Figures only, no pass/fail: tests assert behaviour, this measures it.
"""
import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "qfota-serve")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, deadline=20):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"server did not listen on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=16, help="downloads per protocol")
    ap.add_argument("--slow", type=int, default=200, help="slow connections")
    ap.add_argument("--rate", default="20k", help="curl --limit-rate for slow ones")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")

    work = tempfile.mkdtemp(prefix="qfota-bench-")
    pkgs = os.path.join(work, "packages")
    os.mkdir(pkgs)
    with zipfile.ZipFile(os.path.join(pkgs, "big-v1-to-v2.zip"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("system.diff", random.randbytes(args.size_mib * 1024 * 1024))
    http, ftp = free_port(), free_port()
    server = subprocess.Popen(
        [BIN, "--bind", "127.0.0.1", "--http", str(http), "--ftp", str(ftp),
         "--user", "test:test", "--passive-ports", "43000-43999",
         "--log", os.path.join(work, "downloads.jsonl"), pkgs],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(http)
        wait_port(ftp)
        urls = {
            "http": f"http://127.0.0.1:{http}/big-v1-to-v2.zip",
            "ftp": f"ftp://test:test@127.0.0.1:{ftp}/big-v1-to-v2.zip",
        }
        size = os.path.getsize(os.path.join(pkgs, "big-v1-to-v2.zip"))
        print(f"qfota-serve, package {size / 2**20:.0f} MiB, loopback")
        for proto, url in urls.items():
            before = cpu_seconds(server.pid)
            t0 = time.monotonic()
            for _ in range(args.rounds):
                subprocess.run(["curl", "-sSf", "-o", "/dev/null", "--max-time", "120", url], check=True)
            cpu = cpu_seconds(server.pid) - before
            gib = args.rounds * size / 2**30
            print(f"  {proto:4}: {cpu / gib:6.2f} CPU s per GiB served "
                  f"({gib:.1f} GiB in {time.monotonic() - t0:.1f} s)")
        for proto, url in urls.items():
            base = rss_kib(server.pid)
            slow = [
                subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--limit-rate", args.rate,
                                  "--max-time", "8", url])
                for _ in range(args.slow)
            ]
            time.sleep(5)
            held = rss_kib(server.pid)
            for p in slow:
                p.wait(timeout=30)
            print(f"  {proto:4}: {(held - base) / args.slow:6.1f} KiB RSS per slow connection "
                  f"({args.slow} at {args.rate}B/s; RSS {base} -> {held} KiB)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
