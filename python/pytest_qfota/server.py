"""`QfotaServer`: a real `qfota-serve` package server in a child process,
with its admin listener on loopback for run-time control (fault rules,
download records, re-scans)."""

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from ._process import Child, make_workdir, QfotaProcessError, find_binary, string_list

#: Longest single admin request wait, seconds (the server caps long-polls
#: at 60 s).
POLL_SLICE = 30.0


class QfotaServer:
    """A running server. Start it with :meth:`start` (or the
    ``qfota_server`` fixture).

    Attributes: ``ready`` (the ``--ready-json`` object), ``pid``,
    ``listeners`` (``{"ftp": "127.0.0.1:40123", ...}``), ``admin``
    (``"127.0.0.1:port"``), ``urls`` (package path → ``{"ftp": url, "http":
    url, ...}``), ``log`` (download log file).
    """

    def __init__(self, child, workdir):
        self._child = child
        self._workdir = workdir
        self.ready = child.ready
        self.pid = self.ready["pid"]
        self.listeners = self.ready["listeners"]
        self.admin = self.listeners["admin"]
        self.log = self.ready["log"]
        # What the latest rescan() found (None: none since start).
        self._found = None

    @classmethod
    def start(
        cls,
        packages,
        *,
        users=(("test", "test"),),
        faults=(),
        protocols=("ftp", "http"),
        tls=None,
        allow_invalid=False,
        passive_ports=None,
        binary=None,
        extra_args=(),
        start_timeout=30.0,
    ):
        """Starts ``qfota-serve`` on 127.0.0.1, free ports, over the folder
        ``packages``.

        ``users``: FTP accounts as ``(name, password)`` (empty: any login);
        ``faults``: fault rules in ``--fault`` syntax; ``protocols``: any of
        ``ftp``, ``http``, ``https``; ``tls``: ``(cert_pem, key_pem)`` for
        HTTPS (else a certificate is generated in a temporary folder);
        ``binary``: path of ``qfota-serve`` (else ``$QFOTA_SERVE_BIN``, else
        ``PATH``); ``extra_args``: more flags as they are typed (say
        ``["--stall-timeout-secs", "5", "--fault-seed", "7"]``). Raises
        ``QfotaProcessError`` with the server's stderr when it cannot start,
        ``TypeError`` for a string where a list belongs (``faults``,
        ``protocols``, ``extra_args``) or a user that is no ``(name,
        password)`` pair.
        """
        # Checked before the temporary folder exists: nothing to clean up.
        binary = find_binary(binary)
        faults = string_list(faults, "faults", "fault rules")
        protocols = string_list(protocols, "protocols", "protocol names")
        extra_args = string_list(extra_args, "extra_args", "flags")
        if isinstance(users, (str, bytes)):
            raise TypeError(f"users must be a list of (name, password) pairs, not {users!r}")
        users = list(users)  # a generator is gone once looked at
        if any(isinstance(u, (str, bytes)) or len(u) != 2 for u in users):
            raise TypeError(f"users must be a list of (name, password) pairs, not {users!r}")
        for proto in protocols:
            if proto not in ("ftp", "http", "https"):
                raise ValueError(f"unknown protocol {proto!r} (ftp, http, https)")
        workdir = make_workdir("server")
        argv = [
            binary,
            "--bind", "127.0.0.1",
            "--admin", "127.0.0.1:0",
            "--ready-json", "-",
            "--log", os.path.join(workdir.name, "downloads.jsonl"),
            "--certs-dir", os.path.join(workdir.name, "certs"),
            "--grace-secs", "2",
        ]
        for proto in protocols:
            argv += [f"--{proto}", "0"]
        for name, password in users:
            argv += ["--user", f"{name}:{password}"]
        for rule in faults:
            argv += ["--fault", rule]
        if tls:
            argv += ["--tls-cert", os.fspath(tls[0]), "--tls-key", os.fspath(tls[1])]
        if allow_invalid:
            argv.append("--allow-invalid")
        if passive_ports:
            argv += ["--passive-ports", passive_ports]
        argv += [*extra_args, os.fspath(packages)]
        try:
            child = Child(argv, "qfota-serve", start_timeout=start_timeout)
        except BaseException:
            workdir.cleanup()
            raise
        return cls(child, workdir)

    # --- what the ready object says -------------------------------------

    @property
    def packages(self):
        """The packages found at start, or by the latest :meth:`rescan`:
        dicts with ``path``, ``size``, ``sha256``, ``valid``, ``urls``."""
        if self._found is not None:
            return self._found
        return self.ready["packages"]

    @property
    def urls(self):
        """Package path → ``{"ftp": url, "http": url, "https": url}`` (the
        enabled protocols), as modules are given them."""
        return {p["path"]: p["urls"] for p in self.packages}

    def url(self, path, protocol="http"):
        """The URL of package ``path`` over ``protocol``. Raises KeyError
        naming the packages when there is no such package, ValueError when
        ``protocol`` is not enabled on this server."""
        urls = self.urls
        if path not in urls:
            raise KeyError(f"no package {path!r}; the server has {sorted(urls)}")
        if protocol not in urls[path]:
            served = ", ".join(sorted(urls[path]))
            raise ValueError(
                f"{protocol} is not enabled on this server (packages are served over: {served})"
            )
        return urls[path][protocol]

    def address(self, protocol):
        """``(host, port)`` of a listener (``ftp``, ``http``, ``https``,
        ``admin``). Raises ValueError when that listener is not enabled."""
        listener = self.listeners.get(protocol)
        if not listener:
            raise ValueError(self._not_enabled(protocol))
        host, _, port = listener.rpartition(":")
        return host.strip("[]"), int(port)

    def _not_enabled(self, protocol):
        enabled = sorted(k for k, v in self.listeners.items() if v)
        return f"{protocol} is not enabled on this server (enabled: {', '.join(enabled)})"

    # --- run-time control over the admin listener -----------------------

    def admin_request(self, method, path, body=None, timeout=10.0):
        """One request to the admin listener (``body``: bytes or None):
        ``(status, text, headers)``, whatever the status. Raises
        ``QfotaProcessError`` (with stderr) when the server died or was
        stopped, also while the request was under way."""
        self._child.check_alive()
        req = urllib.request.Request(
            f"http://{self.admin}{path}", data=body, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode(), resp.headers
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read().decode(), e.headers
        except (OSError, http.client.HTTPException):
            # The server went away under the request: say so, not how the
            # socket saw it.
            if self._child.died_within(1.0):
                raise self._child.error("died") from None
            raise

    def next_seq(self):
        """The sequence number the next download record will get: pass it
        as ``since=`` to see only what happens from now on (a server
        shared by several tests)."""
        status, text, headers = self.admin_request("GET", "/downloads?since=0&timeout_ms=0")
        if status != 200:
            raise RuntimeError(f"GET /downloads: {status} {text.strip()}")
        return int(headers["X-Next-Since"])

    def downloads(self, since=0, timeout=0.0):
        """Download records with sequence number ≥ ``since`` (dicts: the
        log line's fields plus ``seq``), waiting up to ``timeout`` seconds
        for the first one."""
        query = urllib.parse.urlencode({"since": since, "timeout_ms": int(timeout * 1000)})
        status, text, _ = self.admin_request("GET", f"/downloads?{query}", timeout=timeout + 10)
        if status != 200:
            raise RuntimeError(f"GET /downloads: {status} {text.strip()}")
        return [json.loads(line) for line in text.splitlines() if line]

    def wait_download(self, pred=None, *, path=None, outcome=None, since=0, timeout=10.0):
        """The first record (seq ≥ ``since``) for which ``pred(record)`` is
        true and whose ``path`` / ``outcome`` equal the ones given; waits
        up to ``timeout`` s. Raises ``TimeoutError`` listing what came."""
        def matches(r):
            return (
                (path is None or r["path"] == path.lstrip("/"))
                and (outcome is None or r["outcome"] == outcome)
                and (pred is None or pred(r))
            )

        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            records = self.downloads(since, timeout=max(0.0, min(left, POLL_SLICE)))
            for r in records:
                if matches(r):
                    return r
            seen += records
            if records:
                since = records[-1]["seq"] + 1
            if time.monotonic() >= deadline:
                brief = [(r["seq"], r["path"], r["outcome"], r["status"]) for r in seen]
                raise TimeoutError(
                    f"no matching download record within {timeout} s "
                    f"(path={path!r}, outcome={outcome!r}); records seen: {brief}"
                )

    def faults(self):
        """The fault rules in force, one string each."""
        status, text, _ = self.admin_request("GET", "/faults")
        if status != 200:
            raise RuntimeError(f"GET /faults: {status} {text.strip()}")
        return text.splitlines()

    def set_faults(self, rules):
        """Replaces the fault rules (``--fault`` syntax) for attempts from
        now on; ``[]`` clears them. Returns the rules now in force. Raises
        ``ValueError`` naming the bad rule (nothing is changed then),
        ``TypeError`` for a string instead of a list."""
        rules = string_list(rules, "rules", "fault rules")
        for rule in rules:
            if "\n" in rule or "\r" in rule:
                raise ValueError(f"one rule per item, no line breaks: {rule!r}")
        body = "".join(f"{r}\n" for r in rules).encode()
        status, text, _ = self.admin_request("PUT", "/faults", body)
        if status == 400:
            raise ValueError(text.strip())
        if status != 200:
            raise RuntimeError(f"PUT /faults: {status} {text.strip()}")
        return text.splitlines()

    def rescan(self):
        """Re-scans the package folder now; returns ``{"packages": N,
        "valid": M, "found": [...]}``. From then on :attr:`packages`,
        :attr:`urls` and :meth:`url` list what this scan found (a package
        copied in since start, too)."""
        status, text, _ = self.admin_request("POST", "/packages/rescan", b"", timeout=60)
        if status != 200:
            raise RuntimeError(f"POST /packages/rescan: {status} {text.strip()}")
        answer = json.loads(text)
        self._found = answer.get("found")
        return answer

    # --- the process ------------------------------------------------------

    def stderr(self):
        """The server's stderr so far (banner, one line per download)."""
        return self._child.stderr()

    def check_alive(self):
        """Raises ``QfotaProcessError`` (with stderr) if the server died
        or was stopped."""
        self._child.check_alive()

    def expect_exit(self):
        """Says the server is meant to die in this test (killed, made to
        fail): stopping it, and the fixture's teardown, then no longer
        report its death or exit status. A server still running is
        stopped as usual."""
        self._child.expect_exit()

    def stop(self):
        """Stops the server (SIGTERM, grace period 2 s). Raises
        ``QfotaProcessError`` if it had died or exited non-zero."""
        try:
            self._child.stop()
        finally:
            self._workdir.cleanup()
