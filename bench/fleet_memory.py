#!/usr/bin/env python3
"""The `fleet` load generator's own memory: N simulated modules fetching a
1 MiB package at a cellular rate from a local qfota-serve, all at once.

    python3 bench/fleet_memory.py                      # 10,000 modules at 20 kB/s
    python3 bench/fleet_memory.py --modules 1000 --rate 60000

Prints the codes, the run's time and fleet's peak RSS (sampled every
0.5 s from /proc). Needs a release build (`cargo build --release`), and an
open-file limit above the module count (raised here to the hard limit).
Bounded: fleet's own --deadline-secs, and the server is stopped by PID at
the end (Ctrl-C included). Loopback only.
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "qfota-serve")


def rss_kib(pid):
    """Resident set of `pid` in KiB, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=20_000, help="bytes per second per module")
    ap.add_argument("--size", type=int, default=1 << 20, help="package payload, bytes")
    ap.add_argument("--deadline-secs", type=int, default=240)
    ap.add_argument("--bin", default=BIN)
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin}: not built (cargo build --release --locked)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.modules + 1000:
        print(f"open-file limit {hard} is below {args.modules + 1000}: fewer modules will connect")
    with tempfile.TemporaryDirectory(prefix="qfota-fleet-bench-") as work:
        www = os.path.join(work, "www")
        os.mkdir(www)
        pkg = "big-v1-to-v2.zip"
        with zipfile.ZipFile(os.path.join(www, pkg), "w", zipfile.ZIP_STORED) as z:
            z.writestr("system.diff", os.urandom(args.size))
        port = free_port()
        server = subprocess.Popen(
            [args.bin, "--bind", "127.0.0.1", "--http", str(port),
             "--max-connections", str(args.modules + 1000),
             "--max-connections-per-ip", str(args.modules + 1000),
             "--log", os.path.join(work, "downloads.jsonl"),
             "--certs-dir", os.path.join(work, "certs"), www],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{port}/{pkg}"
            fleet = subprocess.Popen(
                [args.bin, "fleet", url, "--modules", str(args.modules),
                 "--concurrency", str(args.modules), "--rate", str(args.rate),
                 "--deadline-secs", str(args.deadline_secs), "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                start_new_session=True)
            peak = 0
            end = time.monotonic() + args.deadline_secs + 30
            while fleet.poll() is None and time.monotonic() < end:
                peak = max(peak, rss_kib(fleet.pid))
                time.sleep(0.5)
            if fleet.poll() is None:
                fleet.kill()
            out = fleet.communicate(timeout=30)[0]
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    report = json.loads(out.strip().splitlines()[-1])
    print(f"{args.modules} modules x {args.size} B at {args.rate} B/s: codes {report['codes']}, "
          f"{report['elapsed_ms'] / 1000:.1f} s, download p50 {report['p50_ms']} ms, "
          f"time to first byte p99 {report['ttfb_p99_ms']} ms")
    print(f"fleet peak RSS {peak / 1024:.0f} MiB ({peak / args.modules:.1f} KiB per module)")


if __name__ == "__main__":
    main()
