"""`QfotaModem`: `qfota-serve modem`, the virtual Quectel module behind a
pseudo-terminal (and optionally TCP), in a child process."""

import json
import os
import socket
import tempfile

from ._process import Child, find_binary


class QfotaModem:
    """A running virtual modem. Start it with :meth:`start` (or the
    ``qfota_modem`` fixture).

    Attributes: ``ready`` (the ``--ready-json`` object), ``pid``, ``port``
    (the PTY path to open with pyserial; it disappears and comes back on
    every reboot), ``tcp`` (``"127.0.0.1:port"`` or ``None``), ``model``,
    ``profile``, ``version``.
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
        self.version = self.ready["version"]
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
        binary=None,
        extra_args=(),
        start_timeout=30.0,
    ):
        """Starts ``qfota-serve modem`` with a PTY in a temporary folder.

        ``model``: ``EC25``, ``EC200T``, ``EM060K``, …; ``version``: the
        firmware revision it reports; ``link``: ``usb`` or ``uart`` (passed
        as ``--link``: needs a binary that has it); ``tcp``: also an AT port
        on 127.0.0.1; ``faults``: module faults (``network-down``, …) fixed
        for its life; ``time_scale``, ``reboot_ms``: as the flags. Raises
        ``QfotaProcessError`` with the modem's stderr when it cannot start.
        """
        binary = find_binary(binary)
        workdir = tempfile.TemporaryDirectory(prefix="qfota-modem-")
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
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            conn.sendall((json.dumps(request) + "\n").encode())
            answer = conn.makefile("rb").readline()
        reply = json.loads(answer)
        if reply.get("ok") is False:
            raise RuntimeError(f"modem refused {request}: {reply.get('error')}")
        return reply

    def stderr(self):
        """The modem's stderr so far (status lines, log)."""
        return self._child.stderr()

    def check_alive(self):
        """Raises ``QfotaProcessError`` (with stderr) if the modem died."""
        self._child.check_alive()

    def stop(self):
        """Stops the modem (SIGTERM). Raises ``QfotaProcessError`` if it
        had died or exited non-zero."""
        try:
            self._child.stop()
        finally:
            self._workdir.cleanup()
