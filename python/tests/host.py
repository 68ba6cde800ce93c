"""A small pyserial host, written the way host firmware drives a Quectel
module's AT port: a reader thread splitting lines into a queue, regexes on
URCs, and reopening the port by its path after every module reboot."""

import queue
import re
import threading
import time

import serial

#: Longest the port may stay away during a reboot, seconds.
REOPEN_DEADLINE = 30.0


class Host:
    """One AT port at ``path``; every line received goes to ``lines``, and
    ``"PORT-LOST"`` when the port vanishes (the module rebooted)."""

    def __init__(self, path):
        self.path = path
        self.lines = queue.Queue()
        self.transcript = []
        self.port = None
        self.open()

    def open(self, deadline=REOPEN_DEADLINE):
        end = time.monotonic() + deadline
        while True:
            try:
                self.port = serial.Serial(self.path, 115200, timeout=0.1)
                break
            except (serial.SerialException, OSError):
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)  # the port is not back yet: retry
        threading.Thread(target=self._reader, args=(self.port,), daemon=True).start()

    def _reader(self, port):
        buf = b""
        try:
            while True:
                buf += port.read(port.in_waiting or 1)
                *lines, buf = re.split(rb"\r\n|\r|\n", buf)
                for line in filter(None, lines):
                    self.lines.put(line.decode(errors="replace"))
        except (serial.SerialException, OSError, TypeError):
            self.lines.put("PORT-LOST")

    def send(self, command):
        self.transcript.append(f">> {command}")
        self.port.write(command.encode() + b"\r")

    def wait(self, pattern, timeout=60.0):
        """The match of the first line matching ``pattern`` (lines before
        it are consumed); raises TimeoutError with the transcript."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.transcript.append(f"<< {line}")
            m = re.search(pattern, line)
            if m:
                return m
        raise TimeoutError(f"{pattern!r} not seen; transcript:\n" + "\n".join(self.transcript))

    def reopen_after_reboot(self):
        self.wait("^PORT-LOST$")
        self.close()
        self.open()

    def close(self):
        if self.port:
            try:
                self.port.close()
            except (serial.SerialException, OSError):
                pass
            self.port = None
