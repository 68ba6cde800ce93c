#!/usr/bin/env python3
"""qfota-serve over an S3-compatible store, on loopback only: figures, not tests.

Starts s3s-fs (the store tests/s3.rs uses; `cargo install --locked
s3s-fs@0.14.1 --features binary` when missing) on 127.0.0.1 over a temporary
folder, writes stored zips of random bytes into its bucket folder (s3s-fs
serves files placed there), and prints:

  R1  cold replica: seconds from start to ready (--ready-json written) with an
      empty cache, every package listed, downloaded once, validated; MB/s
  R2  warm restart: the same with the cache kept (re-validated locally, nothing
      downloaded)
  R3  throughput of a warm replica vs the same packages served from a folder:
      HTTP, curl, CLIENTS concurrent downloads x ROUNDS, MB/s each and the
      ratio (target: within 10 %)

    python3 bench/s3.py [--bytes 1073741824] [--packages 8] [--clients 4]
                        [--rounds 2] [--bin target/release/qfota-serve]

Default 256 MiB in 8 packages (about a minute on 2 cores); the issue's
figure is --bytes 1073741824. Build the binary in release first
(`cargo build --release`) for meaningful figures; the debug binary is used
when no release one exists, said so. MB are decimal (10^6).
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

BUCKET = "fota"
PREFIX = "fleet"
KEY, SECRET = "bench-key", "bench-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_packages(folder, total, count):
    """`count` stored zips of random bytes, `total` bytes together."""
    os.makedirs(folder, exist_ok=True)
    each = total // count
    names = []
    for i in range(count):
        name = f"bench{i:02d}-v1-to-v2.zip"
        with zipfile.ZipFile(os.path.join(folder, name), "w", zipfile.ZIP_STORED) as z:
            with z.open("system.diff", "w", force_zip64=True) as entry:
                left = each
                while left > 0:
                    n = min(left, 8 << 20)
                    entry.write(os.urandom(n))
                    left -= n
        names.append(name)
    return names


def start_store(root):
    proc = subprocess.Popen(
        ["s3s-fs", "--host", "127.0.0.1", "--port", "0",
         "--access-key", KEY, "--secret-key", SECRET, root],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "s3s_fs=info", "NO_COLOR": "1"})
    deadline = time.time() + 30
    for line in proc.stdout:
        m = re.search(r"running at (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
        if time.time() > deadline:
            break
    proc.kill()
    sys.exit("s3s-fs did not start")


def start_server(binary, source, work, extra):
    ready = os.path.join(work, "ready.json")
    if os.path.exists(ready):
        os.remove(ready)
    args = [binary, source, "--http", "0", "--bind", "127.0.0.1",
            "--log", os.path.join(work, "downloads.jsonl"),
            "--ready-json", ready] + extra
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_REGION": "us-east-1", "QFOTA_LOG_LEVEL": "warn"}
    began = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=work)
    deadline = began + 1800
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"{source}: server did not become ready")
        time.sleep(0.05)
    took = time.monotonic() - began
    with open(ready) as f:
        info = json.load(f)
    return proc, took, info["listeners"]["http"]


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def throughput(addr, names, clients, rounds):
    """MB/s over all downloads, wall clock."""
    urls = [f"http://{addr}/{n}" for n in names] * rounds
    total = 0

    def get(url):
        out = subprocess.run(["curl", "-sSf", "-o", "/dev/null", "-w", "%{size_download}", url],
                             capture_output=True, text=True, timeout=600, check=True)
        return int(out.stdout)

    began = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for n in pool.map(get, urls):
            total += n
    return total / (time.monotonic() - began) / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=256 << 20)
    ap.add_argument("--packages", type=int, default=8)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bin")
    a = ap.parse_args()
    binary = a.bin or "target/release/qfota-serve"
    if not os.path.exists(binary):
        binary = "target/debug/qfota-serve"
        print(f"note: no release binary, using {binary} (slower)", file=sys.stderr)
    binary = os.path.abspath(binary)
    if shutil.which("s3s-fs") is None:
        sys.exit("s3s-fs missing: cargo install --locked s3s-fs@0.14.1 --features binary")

    with tempfile.TemporaryDirectory(prefix="qfota-s3-bench-") as tmp:
        store_root = os.path.join(tmp, "store")
        folder = os.path.join(store_root, BUCKET, PREFIX)
        names = write_packages(folder, a.bytes, a.packages)
        store, endpoint = start_store(store_root)
        work = os.path.join(tmp, "replica")
        os.makedirs(work)
        s3 = ["--s3-endpoint", endpoint, "--s3-path-style",
              "--cache-dir", os.path.join(work, "cache")]
        mb = a.bytes / 1e6
        try:
            proc, cold, _ = start_server(binary, f"s3://{BUCKET}/{PREFIX}", work, s3)
            stop(proc)
            print(f"R1 cold replica ready: {cold:.2f} s for {mb:.0f} MB in {a.packages} packages"
                  f" ({mb / cold:.0f} MB/s)")
            proc, warm, replica_addr = start_server(binary, f"s3://{BUCKET}/{PREFIX}", work, s3)
            print(f"R2 warm restart ready: {warm:.2f} s (cache re-validated, nothing downloaded)")
            fdir = os.path.join(tmp, "folder")
            os.makedirs(fdir)
            fproc, _, folder_addr = start_server(binary, folder, fdir, [])
            try:
                from_replica = throughput(replica_addr, names, a.clients, a.rounds)
                from_folder = throughput(folder_addr, names, a.clients, a.rounds)
            finally:
                stop(fproc)
                stop(proc)
            print(f"R3 HTTP {a.clients} clients x {a.rounds} rounds: warm replica"
                  f" {from_replica:.0f} MB/s, folder {from_folder:.0f} MB/s,"
                  f" ratio {from_replica / from_folder:.2f}")
        finally:
            stop(store)


if __name__ == "__main__":
    main()
