"""`QfotaModem`: `qfota-serve modem`, the virtual Quectel module behind a
pseudo-terminal (and optionally TCP), in a child process."""

import json
import os
import socket

from ._process import Child, make_workdir, find_binary, string_list


class QfotaModem:
    """A running virtual modem. Start it with :meth:`start` (or the
    ``qfota_modem`` fixture).

    Attributes: ``ready`` (the ``--ready-json`` object), ``pid``, ``port``
    (the PTY path to open with pyserial; it disappears and comes back on
    every reboot), ``tcp`` (``"127.0.0.1:port"`` or ``None``), ``model``,
    ``profile``; :attr:`version` asks the modem.
    """

    def __init__(self, child, workdir):
        self._child = child
        self._workdir = workdir
        self.ready = child.ready
        self.pid = self.ready["pid"]
        self.port = self.ready["pty"]
        self.tcp = self.ready["tcp"]
        self.model = self.ready["model"]
        self.profile = self.ready["profile"]
        self._version = self.ready["version"]
        # `modem --control` (always on here): runtime control over TCP.
        self.control_addr = self.ready.get("control")

    @classmethod
    def start(
        cls,
        *,
        model="EC25",
        version=None,
        link=None,
        tcp=False,
        faults=(),
        time_scale=None,
        reboot_ms=None,
        timeout_secs=None,
        profile=None,
        binary=None,
        extra_args=(),
        start_timeout=30.0,
    ):
        """Starts ``qfota-serve modem`` with a PTY in a temporary folder.

        ``model``: ``EC25``, ``EC200T``, ``EM060K``, …; ``version``: the
        firmware revision it reports; ``link``: ``usb`` or ``uart`` (passed
        as ``--link``: needs a binary that has it); ``tcp``: also an AT port
        on 127.0.0.1; ``faults``: module faults (``network-down``, …) fixed
        for its life; ``time_scale``, ``reboot_ms``: as the flags;
        ``timeout_secs``: the download's no-progress timeout (default 60 s:
        a stalled download's end code comes that much later); ``profile``:
        the family, for a model whose name does not select one
        (``model="EC800K", profile="ec200"``); ``extra_args``: more flags
        as they are typed. Raises ``QfotaProcessError`` with the modem's
        stderr when it cannot start, ``TypeError`` for a string where a
        list belongs.
        """
        binary = find_binary(binary)
        faults = string_list(faults, "faults", "module faults")
        extra_args = string_list(extra_args, "extra_args", "flags")
        workdir = make_workdir("modem")
        argv = [
            binary, "modem",
            "--pty", os.path.join(workdir.name, "at"),
            "--model", model,
            "--ready-json", "-",
        ]
        if version:
            argv += ["--version", version]
        if link:
            argv += ["--link", link]
        if tcp:
            argv += ["--tcp", "127.0.0.1:0"]
        for fault in faults:
            argv += ["--fault", fault]
        if time_scale is not None:
            argv += ["--time-scale", str(time_scale)]
        if reboot_ms is not None:
            argv += ["--reboot-ms", str(reboot_ms)]
        if timeout_secs is not None:
            argv += ["--timeout-secs", str(timeout_secs)]
        if profile:
            argv += ["--profile", profile]
        argv += ["--control", "127.0.0.1:0"]
        argv += list(extra_args)
        try:
            child = Child(argv, "qfota-serve modem", start_timeout=start_timeout)
        except BaseException:
            workdir.cleanup()
            raise
        return cls(child, workdir)

    def control(self, cmd, timeout=10.0, **fields):
        """Sends one runtime-control request (``modem --control``, JSON
        lines over TCP) and returns its JSON answer: ``control("fault",
        set="network-down")`` cuts the module's network now (``clear=`` to
        restore it), ``control("reboot")``, ``control("urc", line=...)``,
        ``control("signal", csq=20)``, ``control("state")`` (version, files,
        last FOTA result). Raises ``RuntimeError`` when the modem refuses
        (``{"ok": false, "error": ...}``)."""
        # A dead modem is said so, with its stderr, not as a refused
        # connection.
        self.check_alive()
        host, port = self.control_addr.rsplit(":", 1)
        request = dict(fields, cmd=cmd)
        try:
            with socket.create_connection((host, int(port)), timeout=timeout) as conn:
                conn.sendall((json.dumps(request) + "\n").encode())
                answer = conn.makefile("rb").readline()
            reply = json.loads(answer)
        except (OSError, ValueError):
            if self._child.died_within(1.0):
                raise self._child.error("died") from None
            raise
        if reply.get("ok") is False:
            raise RuntimeError(f"modem refused {request}: {reply.get('error')}")
        return reply

    def stderr(self):
        """The modem's stderr so far (status lines, log)."""
        return self._child.stderr()

    @property
    def version(self):
        """The firmware revision the module reports now (its new one after
        an upgrade), asked over the runtime control; once the modem is
        stopped, the last one seen."""
        if not self._child.stopped and not self._child.died():
            self._version = self.control("state").get("version")
        return self._version

    def check_alive(self):
        """Raises ``QfotaProcessError`` (with stderr) if the modem died or
        was stopped."""
        self._child.check_alive()

    def expect_exit(self):
        """Says the modem is meant to die in this test: stopping it, and the
        fixture's teardown, then no longer report its death or exit
        status. A modem still running is stopped as usual."""
        self._child.expect_exit()

    def stop(self):
        """Stops the modem (SIGTERM). Raises ``QfotaProcessError`` if it
        had died or exited non-zero."""
        try:
            self._child.stop()
        finally:
            self._workdir.cleanup()
