#!/usr/bin/env python3
"""qfota-serve side by side with nginx and vsftpd, on loopback only.

One run installs what is missing (Debian packages nginx, vsftpd, wrk, curl,
openssl), builds qfota-serve and bench/slow-client in release, writes the
same real zip packages (incompressible content) into a temporary folder,
starts nginx, vsftpd and qfota-serve on 127.0.0.1 with their own temporary
configurations, runs the scenarios of issue 11 against each, prints one table
with ratios (qfota-serve / anchor) and writes a CSV.

    python3 bench/compare.py [--quick] [--only S1,S3] [--csv bench/results.csv]
                             [--md table.md] [--repeat 3] [--wrk-secs 10] [--no-build]

  S1  HTTP, 16 clients x 4 downloads of 64 MiB (curl): MB/s, server CPU s/GB,
      the curl clients' CPU s/GB
  S2  the same over HTTPS, TLS 1.2 ECDHE-RSA-AES128-GCM-SHA256
  S3  HTTP, 1 MiB file, wrk with 256 connections: req/s, p99 latency; then
      the same at other package sizes, whole files of 64 KiB to 4 MiB
      (5 s each), since nginx's rate moves with the size
  S4  FTP PASV, 16 x 4 x 64 MiB (curl --disable-epsv), vsftpd as the anchor;
      and memory per slow FTP download (200 curl at 20 kB/s, held 5 s)
  S5  5,000 idle HTTP connections: server memory per connection, how many
      the server accepted within 2 s
  S6  10,000 concurrent slow downloads of a 1 MiB package at 20 kB/s each
      (bench/slow-client): completed, server peak memory, memory per connection,
      p99 time to first byte, server CPU
  S7  package validation: `qfota-serve check` on 1 GiB of packages against
      `sha256sum` on the same files (page cache warm): MB/s

Server CPU is utime+stime+cutime+cstime summed over the server's process
tree (nginx's workers, vsftpd's session processes), from /proc/<pid>/stat;
memory is PSS summed over the tree (RSS for a single process; pages shared
by nginx's workers counted once). MB and GB are decimal (10^6, 10^9).
On loopback the kernel runs part of the sender's TCP work (transmitting
queued data when an acknowledgement arrives) in the process that triggers
it, often the client: the clients' CPU rows of S1, S2 and S4 show where it
went, and their machine CPU rows what the whole transfer cost (the busy
time of every CPU, from /proc/stat, over the scenario's wall time).

Every loop is bounded in count and time; every process started here is
stopped by its PID at the end, also on Ctrl-C or SIGTERM. `--quick` runs
tiny sizes of everything in well under a minute, as a smoke check: its
figures mean nothing. Figures only, no pass/fail exit code.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SLOW_CLIENT_DIR = os.path.join(HERE, "slow-client")
MiB = 1024 * 1024
SCENARIOS = ["S1", "S2", "S3", "S4", "S5", "S6", "S7"]
TLS_CIPHER = "ECDHE-RSA-AES128-GCM-SHA256"
QFOTA_PASSIVE = (43000, 43999)
VSFTPD_PASSIVE = (44000, 44999)
# S6's client sockets look like a module's path: a 16 KiB receive window and
# 1,400-byte segments. Left to loopback (64 KiB segments, autotuned windows),
# the servers' send buffers grow to MiBs per connection, 10,000 of them exceed
# net.ipv4.tcp_mem and the kernel resets connections ("TCP: out of memory").
SLOW_RCVBUF = 16 * 1024
SLOW_MSS = 1400
# S3's size sweep: whole file sizes in bytes (zip headers included). The
# main S3 row's package is 1 MiB of content plus the zip's 120 bytes; 90
# bytes under 1 MiB is where nginx ran fastest by hand. Below 256 KiB the
# cost per request outweighs the cost per byte: shown, not a target.
S3_SIZES = [64 * 1024, 256 * 1024, MiB - 90, MiB, 4 * MiB]
S3_TARGET_FROM = 256 * 1024

# Sizes per mode. Full: the workloads of issue 11. Quick: seconds in total.
SIZES = {
    "full": dict(big=64 * MiB, clients=16, rounds=4, small=1 * MiB, wrk_conns=256,
                 s3_sizes=S3_SIZES, s3_secs=5,
                 idle=5000, slow=10000, slow_rate=20000, slow_ramp=5.0,
                 check_files=16, check_size=64 * MiB, slow_ftp=200),
    "quick": dict(big=4 * MiB, clients=4, rounds=2, small=64 * 1024, wrk_conns=32,
                  s3_sizes=[16 * 1024, 256 * 1024], s3_secs=1,
                  idle=500, slow=200, slow_rate=64000, slow_ramp=0.5,
                  check_files=4, check_size=4 * MiB, slow_ftp=20),
}


class Stop(Exception):
    """SIGTERM, turned into an exception so that `finally` stops everything."""


def on_sigterm(_signum, _frame):
    raise Stop("SIGTERM")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

class Procs:
    """Every process this script starts; `stop_all` ends them by PID."""

    def __init__(self):
        self.procs = []  # (name, Popen)

    def start(self, name, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        # Own session: a Ctrl-C on the terminal reaches only this script,
        # which then stops the servers itself, in order.
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append((name, p))
        return p

    def stop(self, p, grace=10.0):
        """SIGTERM, wait up to `grace` s, SIGKILL; then the leftovers of its tree."""
        tree = tree_pids(p.pid) if p.poll() is None else []
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            except ProcessLookupError:
                pass
        # Children that outlived their parent (nginx workers, vsftpd sessions).
        for pid in tree:
            if pid != p.pid and pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop_all(self):
        for name, p in reversed(self.procs):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                log(f"stopping {name} (pid {p.pid}): {e}")
        self.procs.clear()


# vsftpd's session process exits before its unprivileged child, the one that
# sends the data; orphaned, that child is reaped by init and its CPU time is
# lost to the server's tree. So vsftpd runs under this wrapper, a child
# subreaper: orphans are reparented to it and reaped with wait(), which adds
# their time to the wrapper's cutime/cstime, counted by `tree_cpu`. (vsftpd
# itself cannot be the subreaper: it dies on reaping a child it didn't fork.)
REAPER = r"""
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = os.fork()
if child == 0:
    os.execv(sys.argv[1], sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
signal.signal(signal.SIGINT, signal.SIG_IGN)
status = 0
while True:
    try:
        pid, st = os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if pid == child:
        status = os.waitstatus_to_exitcode(st)
sys.exit(status if status >= 0 else 128 - status)
"""


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def tree_pids(root):
    """`root` and its descendants, from /proc (ppid links)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(proc_stat(d)[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo and len(out) < 100_000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def machine_cpu():
    """CPU seconds the whole machine has been busy (every process, interrupts
    and softirqs, from the `cpu` line of /proc/stat: user, nice, system, irq
    and softirq; not idle, iowait, or steal, the time a hypervisor gave to
    other guests)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root):
    """CPU seconds of the tree: utime+stime of the living, cutime+cstime of the reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree_pids(root):
        try:
            f = proc_stat(pid)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


def tree_mem_kib(root):
    """Memory of the tree in KiB: PSS summed over its processes, so that pages
    nginx's workers or vsftpd's sessions share count once (for one process,
    PSS is about its RSS); VmRSS where smaps_rollup is missing."""
    total = 0
    for pid in tree_pids(root):
        for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
            try:
                with open(path) as f:
                    kib = next((int(l.split()[1]) for l in f if l.startswith(key)), None)
            except OSError:
                kib = None
            if kib is not None:
                total += kib
                break
    return total


def accepted_conns(root, port):
    """Established TCP connections on local `port` that the tree has accepted:
    in /proc/net/tcp{,6}, state 01 with an inode one of its processes holds
    (a connection still in the accept queue has no such inode)."""
    inodes = set()
    for pid in tree_pids(root):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    want = f":{port:04X}"
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "01" and fields[1].endswith(want) \
                            and fields[9] in inodes:
                        n += 1
        except OSError:
            pass
    return n


def settle(root, base_count, limit=3.0):
    """Wait (at most `limit` s) until the tree is back to `base_count` processes."""
    end = time.monotonic() + limit
    while time.monotonic() < end and len(tree_pids(root)) > base_count:
        time.sleep(0.1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name, limit=60.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {limit:.0f} s")


def raise_fd_limit():
    """As many open files as allowed (S5, S6); inherited by every server started here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- setup

def ensure_tools():
    """apt-get install the Debian packages whose commands are missing."""
    want = {"nginx": "nginx", "vsftpd": "vsftpd", "wrk": "wrk", "curl": "curl",
            "openssl": "openssl", "sha256sum": "coreutils"}
    paths = {cmd: shutil.which(cmd) or next(
        (p for p in (f"/usr/sbin/{cmd}", f"/sbin/{cmd}") if os.access(p, os.X_OK)), None)
        for cmd in want}
    missing = sorted({want[c] for c, p in paths.items() if p is None})
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"missing {' '.join(missing)}: install them (apt-get install -y ...) or run as root")
        log(f"installing {' '.join(missing)}")
        # Keep the packages' init scripts from starting system-wide daemons
        # on ports 80/21: a policy-rc.d answering 101, removed afterwards.
        policy = "/usr/sbin/policy-rc.d"
        made_policy = not os.path.exists(policy)
        if made_policy:
            with open(policy, "w") as f:
                f.write("#!/bin/sh\nexit 101\n")
            os.chmod(policy, 0o755)
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update"], check=True, env=env, timeout=600,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                           check=True, env=env, timeout=900, stdout=subprocess.DEVNULL)
        finally:
            if made_policy:
                os.remove(policy)
        paths = {cmd: shutil.which(cmd) or next(
            (p for p in (f"/usr/sbin/{cmd}", f"/sbin/{cmd}") if os.access(p, os.X_OK)), None)
            for cmd in want}
        still = [c for c, p in paths.items() if p is None]
        if still:
            sys.exit(f"still missing after apt-get: {' '.join(still)}")
    return paths


def cargo_build(manifest, binary):
    """`cargo build --release` of one package; the path of its `binary`."""
    log(f"cargo build --release ({os.path.relpath(manifest, ROOT)})")
    out = subprocess.run(
        ["cargo", "build", "--release", "--manifest-path", manifest,
         "--message-format=json-render-diagnostics"],
        stdout=subprocess.PIPE, text=True, timeout=3600, check=True)
    exe = None
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == binary:
            exe = msg["executable"]
    if not exe:
        sys.exit(f"cargo built no executable named {binary}")
    return exe


def write_zip(path, size):
    """A stored (uncompressed) zip whose one entry is `size` random bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        with z.open("system.diff", "w", force_zip64=size >= 2**31) as entry:
            left = size
            while left > 0:
                n = min(left, 8 * MiB)
                entry.write(os.urandom(n))
                left -= n
    os.chmod(path, 0o644)


def write_zip_total(path, total):
    """A stored zip of random bytes that is `total` bytes long, headers included."""
    write_zip(path, total)
    overhead = os.path.getsize(path) - total
    write_zip(path, total - overhead)
    if os.path.getsize(path) != total:
        raise RuntimeError(f"{path}: {os.path.getsize(path)} bytes, not {total}")


def make_packages(work, sz, only):
    """www/ (served by all three) and check/ (S7's 1 GiB set)."""
    www = os.path.join(work, "www")
    os.makedirs(www, mode=0o755)
    os.chmod(www, 0o755)
    pk = {"big": "big-v1-to-v2.zip", "small": "small-v1-to-v2.zip"}
    log(f"packages in {work}")
    write_zip(os.path.join(www, pk["big"]), sz["big"])
    write_zip(os.path.join(www, pk["small"]), sz["small"])
    pk["sweep"] = []
    if "S3" in only:
        for total in sz["s3_sizes"]:
            name = f"sweep{total}-v1-to-v2.zip"
            write_zip_total(os.path.join(www, name), total)
            pk["sweep"].append((name, total))
    pk["check"] = []
    if "S7" in only:
        chk = os.path.join(work, "check")
        os.makedirs(chk, mode=0o755)
        for i in range(sz["check_files"]):
            p = os.path.join(chk, f"set{i:02d}-v1-to-v2.zip")
            write_zip(p, sz["check_size"])
            pk["check"].append(p)
        pk["check_dir"] = chk
    for name in ("big", "small"):
        pk[name + "_size"] = os.path.getsize(os.path.join(www, pk[name]))
    return www, pk


def make_cert(work, openssl):
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert],
                   check=True, timeout=60, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(key, 0o600)
    return cert, key


def start_nginx(procs, nginx, work, www, cert, key, http, https):
    d = os.path.join(work, "nginx")
    os.makedirs(os.path.join(d, "tmp"))
    conf = os.path.join(d, "nginx.conf")
    tmp = os.path.join(d, "tmp")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 30000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    types {{ application/zip zip; }}
    default_type application/octet-stream;
    access_log {d}/access.log combined buffer=64k flush=5s;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{http} backlog=4096;
        root {www};
    }}
    server {{
        listen 127.0.0.1:{https} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2;
        ssl_ciphers {TLS_CIPHER};
        root {www};
    }}
}}
""")
    errf = open(os.path.join(d, "stderr.log"), "w")
    p = procs.start("nginx", [nginx, "-p", d, "-c", conf, "-e", f"{d}/error.log"],
                    stdout=errf, stderr=errf)
    wait_port(http, p, "nginx")
    wait_port(https, p, "nginx")
    return p


def start_vsftpd(procs, vsftpd, work, www, port):
    d = os.path.join(work, "vsftpd")
    empty = os.path.join(d, "empty")
    os.makedirs(empty, mode=0o755)
    conf = os.path.join(d, "vsftpd.conf")
    lo, hi = VSFTPD_PASSIVE
    # The anonymous user needs an existing home (vsftpd changes into it
    # before anon_root); Debian's vsftpd package creates `ftp` for that.
    try:
        ftp_user = pwd.getpwnam("ftp").pw_name
    except KeyError:
        ftp_user = "nobody"
    with open(conf, "w") as f:
        f.write(f"""listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={www}
anon_world_readable_only=YES
local_enable=NO
write_enable=NO
anon_upload_enable=NO
anon_mkdir_write_enable=NO
connect_from_port_20=NO
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port={lo}
pasv_max_port={hi}
secure_chroot_dir={empty}
ftp_username={ftp_user}
nopriv_user=nobody
run_as_launching_user=NO
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
xferlog_enable=NO
syslog_enable=NO
dirmessage_enable=NO
max_clients=0
max_per_ip=0
use_sendfile=YES
""")
    os.chmod(conf, 0o600)
    errf = open(os.path.join(d, "stderr.log"), "w")
    p = procs.start("vsftpd", [sys.executable, "-c", REAPER, vsftpd, conf],
                    stdout=errf, stderr=errf)
    wait_port(port, p, "vsftpd")
    return p


def start_qfota(procs, exe, work, www, cert, key, http, https, ftp):
    d = os.path.join(work, "qfota")
    os.makedirs(d)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QFOTA_")}
    errf = open(os.path.join(d, "stderr.log"), "w")
    lo, hi = QFOTA_PASSIVE
    p = procs.start("qfota-serve", [
        exe, "--bind", "127.0.0.1", "--public-host", "127.0.0.1",
        "--http", str(http), "--https", str(https), "--ftp", str(ftp),
        "--passive-ports", f"{lo}-{hi}", "--tls-cert", cert, "--tls-key", key,
        "--certs-dir", os.path.join(d, "certs"), "--log", os.path.join(d, "downloads.jsonl"),
        # Every bench client comes from 127.0.0.1: lift the per-address
        # limit (default 256) above S5's and S6's connection counts.
        "--max-connections", "20000", "--max-connections-per-ip", "20000",
        "--grace-secs", "1", www], stdout=errf, stderr=errf, env=env)
    for port in (http, https, ftp):
        wait_port(port, p, "qfota-serve")
    return p


# ---------------------------------------------------------------- scenarios

def bulk(procs, server, url, sz, size, curl_opts, deadline):
    """`clients` curl processes, each downloading `url` `rounds` times; MB/s, server
    CPU s/GB and the clients' CPU s/GB (curl's user + system time, from the
    rusage of the reaped clients)."""
    base_n = len(tree_pids(server.pid))
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = tree_cpu(server.pid), time.monotonic()
    machine0 = machine_cpu()
    argv = ["curl", "-sS", "--max-time", str(deadline), "-w", "%{size_download}\\n", *curl_opts]
    for _ in range(sz["rounds"]):
        argv += ["-o", "/dev/null", url]
    clients = [procs.start("curl", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(sz["clients"])]
    got, errors = 0, []
    for c in clients:
        try:
            out, err = c.communicate(timeout=deadline + 10)
        except subprocess.TimeoutExpired:
            c.kill()
            out, err = c.communicate(timeout=5)
        got += sum(int(x) for x in out.split() if x.isdigit())
        if c.returncode != 0:
            errors.append(err.strip()[:200])
    wall = time.monotonic() - t0
    # Both CPU figures end after the server's session processes are gone.
    settle(server.pid, base_n)
    machine = machine_cpu() - machine0
    cpu = tree_cpu(server.pid) - cpu0
    procs.procs = [(n, p) for n, p in procs.procs if p not in clients]
    want = sz["clients"] * sz["rounds"] * size
    if got != want:
        raise RuntimeError(f"{url}: {got} of {want} bytes; {errors[:2]}")
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    return {"MB/s": got / 1e6 / wall, "CPU s/GB": cpu / (got / 1e9),
            "client CPU s/GB": client_cpu / (got / 1e9),
            "machine CPU s/GB": machine / (got / 1e9)}


def wrk_run(wrk, url, conns, secs):
    out = subprocess.run(
        [wrk, "-t2", f"-c{conns}", f"-d{secs}s", "--timeout", "10s", "--latency", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=secs + 60)
    text = out.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m or not p:
        raise RuntimeError(f"wrk output not understood:\n{text}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if bad:
        raise RuntimeError(f"{url}: {bad.group(1)} non-2xx responses")
    return {"req/s": float(m.group(1)), "p99 ms": float(p.group(1)) * scale}


def idle_conns(server, port, n):
    """`n` connections that send nothing; accepted within 2 s, memory bytes per connection."""
    base_mem = tree_mem_kib(server.pid)
    socks = []
    try:
        t0 = time.monotonic()
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        in_2s, accepted = None, 0
        end = t0 + 10.0
        while time.monotonic() < end:
            accepted = accepted_conns(server.pid, port)
            if in_2s is None and time.monotonic() - t0 >= 2.0:
                in_2s = accepted
            if accepted >= n:
                if in_2s is None:
                    in_2s = accepted
                break
            time.sleep(0.1)
        if in_2s is None:
            in_2s = accepted
        time.sleep(0.5)
        mem = tree_mem_kib(server.pid)
        accepted = accepted_conns(server.pid, port)
        per = (mem - base_mem) * 1024 / max(accepted, 1)
        return {"accepted in 2 s": float(in_2s), "accepted in 10 s": float(accepted),
                "B/conn": per}
    finally:
        for s in socks:
            s.close()


def slow_downloads(client, server, url, sz, size):
    """S6: the slow client against `url`; peak memory sampled every 0.5 s."""
    rate, n, ramp = sz["slow_rate"], sz["slow"], sz["slow_ramp"]
    deadline = ramp + 2.0 * size / rate + 30
    base_rss, cpu0 = tree_mem_kib(server.pid), tree_cpu(server.pid)
    p = subprocess.Popen([client, "--url", url, "--conns", str(n), "--rate", str(rate),
                          "--deadline-secs", f"{deadline:.0f}", "--ramp-secs", str(ramp),
                          "--rcvbuf", str(SLOW_RCVBUF), "--mss", str(SLOW_MSS)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    peak = base_rss
    end = time.monotonic() + deadline + 30
    try:
        while p.poll() is None and time.monotonic() < end:
            peak = max(peak, tree_mem_kib(server.pid))
            time.sleep(0.5)
        out, err = p.communicate(timeout=max(end - time.monotonic(), 1))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)
    cpu = tree_cpu(server.pid) - cpu0
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"slow-client: {err.strip()[:300]}")
    ends = ", ".join(f"{k.replace('_', ' ')} {r[k]}" for k in
                     ("connect_failed", "bad_response", "short", "timed_out") if r.get(k))
    return {"ends": ends, "complete": float(r["complete"]), "peak memory MiB": peak / 1024,
            "memory KiB/conn": (peak - base_rss) / n, "p99 TTFB ms": r["ttfb_p99_ms"],
            "CPU s": cpu}


def slow_ftp(procs, server, url, n, hold=5.0):
    """Memory per slow FTP download (from the former serve_bench.py): `n` curl
    downloads at 20 kB/s, held `hold` s, memory growth divided by `n`."""
    base = tree_mem_kib(server.pid)
    argv = ["curl", "-s", "-o", "/dev/null", "--disable-epsv", "--limit-rate", "20k",
            "--max-time", str(hold + 3), url]
    clients = [procs.start("curl", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(n)]
    try:
        time.sleep(hold)
        held = tree_mem_kib(server.pid)
    finally:
        for c in clients:
            try:
                c.wait(timeout=15)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait(timeout=5)
        procs.procs = [(nm, p) for nm, p in procs.procs if p not in clients]
    return {"KiB/conn": (held - base) / n}


def timed(argv, timeout):
    t0 = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {r.returncode}: {r.stderr.strip()[:300]}")
    return time.monotonic() - t0


def median_of(runs):
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# ---------------------------------------------------------------- report

def ratio(q, a):
    return q / a if a else float("nan")


def row(scn, metric, anchor, a, q, target, met, note=""):
    return {"scenario": scn, "metric": metric, "anchor": anchor,
            "anchor_value": a, "qfota_value": q,
            "ratio": ratio(q, a) if a is not None else None,
            "target": target, "met": met, "note": note}


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def print_table(rows, header):
    cols = ["scenario", "metric", "anchor", "anchor_value", "qfota_value", "ratio", "target", "met"]
    names = ["scenario", "metric", "anchor", "anchor", "qfota-serve", "ratio", "target", "met"]
    cells = [[fmt(r[c]) if c not in ("met",) else {True: "yes", False: "NO", None: "-"}[r[c]]
              for c in cols] for r in rows]
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    print(header)
    print("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.rjust(w) if i in (3, 4, 5) else v.ljust(w)
                        for i, (v, w) in enumerate(zip(c, widths))))
    for r in rows:
        if r["note"]:
            print(f"  note {r['scenario']} {r['metric']}: {r['note']}")


def write_markdown(path, rows, header):
    """The table as Markdown, for the README's Performance section."""
    met = {True: "yes", False: "**no**", None: ""}
    with open(path, "w") as f:
        f.write(f"{header}\n\n")
        f.write("| scenario | metric | anchor | anchor | qfota-serve | ratio | target | met |\n")
        f.write("|---|---|---|--:|--:|--:|---|---|\n")
        for r in rows:
            f.write(f"| {r['scenario']} | {r['metric']} | {r['anchor']} | {fmt(r['anchor_value'])} "
                    f"| {fmt(r['qfota_value'])} | {fmt(r['ratio'])} | {r['target']} | {met[r['met']]} |\n")
        for r in rows:
            if r["note"]:
                f.write(f"\n{r['scenario']} {r['metric']}: {r['note']}\n")


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores {model}, Linux {platform.release()}".strip()


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check in seconds")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="e.g. S1,S3")
    ap.add_argument("--csv", default=None,
                    help="where the CSV goes (default bench/results.csv; with --quick, "
                         "qfota-compare-quick.csv in the temporary folder, so that a smoke "
                         "check does not replace the full run's figures)")
    ap.add_argument("--md", help="also write the table as Markdown to this file")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs of S1-S4 and S7, median kept (default 3; quick 1)")
    ap.add_argument("--wrk-secs", type=int, default=None, help="S3 duration (default 10; quick 2)")
    ap.add_argument("--no-build", action="store_true",
                    help="use target/release/qfota-serve and bench/slow-client's build as they are")
    args = ap.parse_args()
    only = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    if not only or any(s not in SCENARIOS for s in only):
        sys.exit(f"--only takes a comma-separated subset of {','.join(SCENARIOS)}")
    mode = "quick" if args.quick else "full"
    if args.csv is None:
        args.csv = (os.path.join(tempfile.gettempdir(), "qfota-compare-quick.csv") if args.quick
                    else os.path.join(HERE, "results.csv"))
    sz = SIZES[mode]
    repeat = max(1, min(args.repeat or (1 if args.quick else 3), 10))
    wrk_secs = max(1, min(args.wrk_secs or (2 if args.quick else 10), 300))
    signal.signal(signal.SIGTERM, on_sigterm)

    tools = ensure_tools()
    if args.no_build:
        exe = os.path.join(ROOT, "target", "release", "qfota-serve")
        slow = os.path.join(SLOW_CLIENT_DIR, "target", "release", "slow-client")
    else:
        exe = cargo_build(os.path.join(ROOT, "Cargo.toml"), "qfota-serve")
        slow = cargo_build(os.path.join(SLOW_CLIENT_DIR, "Cargo.toml"), "slow-client")
    nofile = raise_fd_limit()
    if not args.quick and nofile < sz["slow"] + 1000:
        log(f"open-file limit {nofile} is below what S6 needs ({sz['slow'] + 1000})")
    load = os.getloadavg()
    started = datetime.datetime.now().astimezone()

    procs = Procs()
    work = tempfile.mkdtemp(prefix="qfota-compare-")
    os.chmod(work, 0o755)  # vsftpd reads the packages as nobody
    rows = []
    try:
        www, pk = make_packages(work, sz, only)
        cert, key = make_cert(work, tools["openssl"])
        ports = {k: free_port() for k in ("ng_http", "ng_https", "vs_ftp", "q_http", "q_https", "q_ftp")}
        nginx = start_nginx(procs, tools["nginx"], work, www, cert, key,
                            ports["ng_http"], ports["ng_https"])
        vsftpd = start_vsftpd(procs, tools["vsftpd"], work, www, ports["vs_ftp"])
        qfota = start_qfota(procs, exe, work, www, cert, key,
                            ports["q_http"], ports["q_https"], ports["q_ftp"])
        servers = {"nginx": nginx, "vsftpd": vsftpd, "qfota": qfota}
        url = {
            "nginx": f"http://127.0.0.1:{ports['ng_http']}/",
            "nginx_tls": f"https://127.0.0.1:{ports['ng_https']}/",
            "vsftpd": f"ftp://127.0.0.1:{ports['vs_ftp']}/",
            "qfota": f"http://127.0.0.1:{ports['q_http']}/",
            "qfota_tls": f"https://127.0.0.1:{ports['q_https']}/",
            "qfota_ftp": f"ftp://127.0.0.1:{ports['q_ftp']}/",
        }
        big, small = pk["big"], pk["small"]
        bulk_deadline = 600 if not args.quick else 60
        tls_opts = ["-k", "--tlsv1.2", "--tls-max", "1.2", "--ciphers", TLS_CIPHER]
        ftp_opts = ["--disable-epsv"]
        wl = f"{sz['clients']} x {sz['rounds']} x {sz['big'] // MiB} MiB"

        def twice(fn, a_key, q_key):
            """The same workload on the anchor then qfota-serve, `repeat` times; medians."""
            ra, rq = [], []
            for _ in range(repeat):
                ra.append(fn(a_key))
                rq.append(fn(q_key))
            return median_of(ra), median_of(rq)

        def run_scenario(scn):
            if scn in ("S1", "S2", "S4"):
                a_name, a_key, q_key, opts = {
                    "S1": ("nginx", "nginx", "qfota", []),
                    "S2": ("nginx", "nginx_tls", "qfota_tls", tls_opts),
                    "S4": ("vsftpd", "vsftpd", "qfota_ftp", ftp_opts),
                }[scn]
                srv = {"nginx": nginx, "nginx_tls": nginx, "vsftpd": vsftpd}
                a, q = twice(lambda k: bulk(procs, srv.get(k, qfota), url[k] + big, sz,
                                            pk["big_size"], opts, bulk_deadline), a_key, q_key)
                limit = {"S1": 1.5, "S2": 1.0, "S4": 1.5}[scn]
                rows.append(row(scn, f"CPU s/GB ({wl})", a_name, a["CPU s/GB"], q["CPU s/GB"],
                                f"ratio <= {limit}", ratio(q["CPU s/GB"], a["CPU s/GB"]) <= limit))
                rows.append(row(scn, "MB/s", a_name, a["MB/s"], q["MB/s"], "", None))
                # On loopback the kernel runs part of the sender's TCP work
                # in whichever process triggers it; the clients' share shows
                # where a server's low figure went.
                rows.append(row(scn, "client CPU s/GB (curl)", a_name, a["client CPU s/GB"],
                                q["client CPU s/GB"], "", None))
                # Everything the transfer cost the machine, wherever the
                # kernel charged it (server, clients, softirq threads).
                rows.append(row(scn, "machine CPU s/GB (server + clients + kernel)", a_name,
                                a["machine CPU s/GB"], q["machine CPU s/GB"], "", None))
                if scn == "S4":
                    n = sz["slow_ftp"]
                    a = slow_ftp(procs, vsftpd, url["vsftpd"] + big, n)
                    q = slow_ftp(procs, qfota, url["qfota_ftp"] + big, n)
                    # A few KiB per download is within what the allocator
                    # returns to the system or keeps from the bulk run before.
                    shrank = [w for w, r in ((a_name, a), ("qfota-serve", q)) if r["KiB/conn"] < 0]
                    rows.append(row(scn, f"memory KiB per slow conn ({n} at 20 kB/s)", a_name,
                                    a["KiB/conn"], q["KiB/conn"], "", None,
                                    f"{', '.join(shrank)}: memory shrank while the downloads were "
                                    "held; the growth per download is below what this measures"
                                    if shrank else ""))
            elif scn == "S3":
                a, q = twice(lambda k: wrk_run(tools["wrk"], url[k] + small, sz["wrk_conns"],
                                               wrk_secs), "nginx", "qfota")
                rows.append(row(scn, f"req/s ({sz['small'] // 1024} KiB, {sz['wrk_conns']} conns)",
                                "nginx", a["req/s"], q["req/s"], "ratio >= 1.0",
                                q["req/s"] >= a["req/s"]))
                rows.append(row(scn, "p99 latency ms", "nginx", a["p99 ms"], q["p99 ms"],
                                "<= nginx", q["p99 ms"] <= a["p99 ms"]))
                for name, total in pk["sweep"]:
                    a, q = twice(lambda k: wrk_run(tools["wrk"], url[k] + name, sz["wrk_conns"],
                                                   sz["s3_secs"]), "nginx", "qfota")
                    target = total >= S3_TARGET_FROM
                    rows.append(row(scn, f"req/s ({total:,} B file)", "nginx", a["req/s"], q["req/s"],
                                    "ratio >= 1.0" if target else "",
                                    q["req/s"] >= a["req/s"] if target else None))
                    rows.append(row(scn, f"p99 latency ms ({total:,} B file)", "nginx", a["p99 ms"],
                                    q["p99 ms"], "<= nginx" if target else "",
                                    q["p99 ms"] <= a["p99 ms"] if target else None))
            elif scn == "S5":
                n = sz["idle"]
                a = idle_conns(nginx, ports["ng_http"], n)
                time.sleep(1.0)  # let the closes drain before the next server
                q = idle_conns(qfota, ports["q_http"], n)
                rows.append(row(scn, f"memory B/conn ({n} idle)", "nginx", a["B/conn"], q["B/conn"],
                                "<= 1024 B", q["B/conn"] <= 1024))
                rows.append(row(scn, "accepted in 2 s", "nginx", a["accepted in 2 s"],
                                q["accepted in 2 s"], f"= {n}", q["accepted in 2 s"] >= n))
                rows.append(row(scn, "accepted in 10 s", "nginx", a["accepted in 10 s"],
                                q["accepted in 10 s"], "", None))
            elif scn == "S6":
                n = sz["slow"]
                a = slow_downloads(slow, nginx, url["nginx"] + small, sz, pk["small_size"])
                q = slow_downloads(slow, qfota, url["qfota"] + small, sz, pk["small_size"])
                what = f"{n} x {sz['small'] // 1024} KiB at {sz['slow_rate'] // 1000} kB/s"
                notes = "; ".join(f"{who}: {r['ends']}" for who, r in (("nginx", a), ("qfota-serve", q))
                                  if r["ends"])
                rows.append(row(scn, f"complete ({what})", "nginx", a["complete"], q["complete"],
                                f"= {n}", q["complete"] >= n, f"not complete: {notes}" if notes else ""))
                rows.append(row(scn, "server peak memory MiB", "nginx", a["peak memory MiB"],
                                q["peak memory MiB"], "<= 300 MiB", q["peak memory MiB"] <= 300))
                rows.append(row(scn, "memory KiB per slow conn", "nginx", a["memory KiB/conn"],
                                q["memory KiB/conn"], "", None))
                rows.append(row(scn, "p99 TTFB ms", "nginx", a["p99 TTFB ms"], q["p99 TTFB ms"],
                                "<= 50 ms", q["p99 TTFB ms"] <= 50))
                rows.append(row(scn, "server CPU s", "nginx", a["CPU s"], q["CPU s"], "", None))
            elif scn == "S7":
                files = pk["check"]
                total = sum(os.path.getsize(f) for f in files)
                timed([tools["sha256sum"], *files], 600)  # warm the page cache, not counted
                ra, rq = [], []
                for _ in range(repeat):
                    ra.append({"MB/s": total / 1e6 / timed([tools["sha256sum"], *files], 600)})
                    rq.append({"MB/s": total / 1e6 / timed([exe, "check", pk["check_dir"]], 600)})
                a, q = median_of(ra), median_of(rq)
                rows.append(row(scn, f"MB/s ({len(files)} x {sz['check_size'] // MiB} MiB)",
                                "sha256sum", a["MB/s"], q["MB/s"], "ratio >= 0.9",
                                ratio(q["MB/s"], a["MB/s"]) >= 0.9))
        for scn in only:
            log(f"{scn} ...")
            try:
                run_scenario(scn)
            except (RuntimeError, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
                log(f"{scn} failed: {e}")
                rows.append(row(scn, "failed", "", None, None, "", False, str(e)[:300]))

        for name, p in servers.items():
            if p.poll() is not None:
                rows.append(row("-", f"{name} exited early ({p.returncode})", "", None, None, "", False))
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()[0]
    header = (f"qfota-serve vs anchors, {mode} run, {started:%Y-%m-%d %H:%M %Z}, {machine()}, "
              f"1-min load average {load[0]:.2f} before, {load_after:.2f} after, medians of {repeat}")
    print_table(rows, header)
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "machine", "load1", "mode", "repeat", "scenario", "metric", "anchor",
                    "anchor_value", "qfota_value", "ratio", "target", "met"])
        for r in rows:
            w.writerow([started.isoformat(timespec="seconds"), machine(), f"{load[0]:.2f}", mode,
                        repeat, r["scenario"], r["metric"], r["anchor"],
                        "" if r["anchor_value"] is None else f"{r['anchor_value']:.4g}",
                        "" if r["qfota_value"] is None else f"{r['qfota_value']:.4g}",
                        "" if r["ratio"] is None else f"{r['ratio']:.3f}",
                        r["target"], {True: "yes", False: "no", None: ""}[r["met"]]])
    print(f"CSV: {args.csv}")
    if args.md:
        write_markdown(args.md, rows, header)
        print(f"Markdown: {args.md}")


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Stop):
        sys.exit("interrupted; every process started here was stopped")
