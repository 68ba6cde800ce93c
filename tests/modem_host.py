#!/usr/bin/env python3
"""Host firmware against the virtual modem, written the way MCU/Linux host
code drives a Quectel module over its USB AT port with pyserial.

Run by tests/modem.rs against `qfota-serve modem --pty <link>` and a real
qfota-serve server; usable by hand too:

    python3 tests/modem_host.py --port /tmp/qfota-modem \
        --url 'ftp://test:test@127.0.0.1:2121/update-v12-to-v13.zip' \
        --bad-url 'ftp://test:nope@127.0.0.1:2121/update-v12-to-v13.zip' \
        --expect-version v13

What it does (SPEC section 8): syncs with `AT`, reads `ATI`, `AT+QGMR`,
`AT+GSN`, `AT+CPIN?`, `AT+CREG?` (refuses to go on unless registered,
`+CREG: n,1|5`), `AT+CSQ`, `AT+CGACT?`; then a failing update (wrong FTP
password: `FTPEND,601`, the module does not reboot, the port stays up);
then the real update: `OK` within 5 s, `FTPEND,0`, the port disappears
(reboot), reopen the port by its path until it is back, `START`,
`UPDATING`..., `END,0`, the port disappears again, reopen, `AT+QGMR` shows
the new version.

It prints a transcript (`>> ` sent, `<< ` received, `== ` events) and exits
0 on success, 1 on any deviation (with `FAIL: <why>`), 2 on bad usage.
"""

import argparse
import queue
import re
import sys
import threading
import time

import serial

URC_FOTA = re.compile(r'\+QIND:\s*"FOTA"\s*,\s*"(\w+)"(?:\s*,\s*(\d+))?')
FTPEND = re.compile(r'\+QIND:\s*"FOTA"\s*,\s*"FTPEND"\s*,\s*(\d+)')
END = re.compile(r'\+QIND:\s*"FOTA"\s*,\s*"END"\s*,\s*(\d+)')
START = re.compile(r'\+QIND:\s*"FOTA"\s*,\s*"START"')
UPDATING = re.compile(r'\+QIND:\s*"FOTA"\s*,\s*"UPDATING"\s*,\s*(\d+)')
CREG = re.compile(r'^\+CREG:\s*\d+\s*,\s*([15])\b')
REVISION = re.compile(r'^Revision:\s*(\S+)')
FINAL = re.compile(r'^(OK|ERROR|\+CME ERROR:.*|\+CMS ERROR:.*)$')
UNSOLICITED = re.compile(r'^(\+QIND:|RDY$)')


class Fail(Exception):
    """A deviation from what a real module does."""


LOG_LOCK = threading.Lock()


def log(kind, text):
    # One write per line under a lock: the reader thread and the main
    # thread both log, and print() writes the text and its newline apart.
    with LOG_LOCK:
        sys.stdout.write(f"{kind} {text}\n")
        sys.stdout.flush()


class Modem:
    """One AT port: a reader thread splits lines; command responses and
    URCs go to separate queues. The port may vanish (module reboot); the
    reader then stops and `reopen` opens the path again."""

    def __init__(self, path):
        self.path = path
        self.ser = None
        self.reader = None
        self.lost = threading.Event()
        self.responses = queue.Queue()
        self.urcs = queue.Queue()
        self.awaiting = threading.Event()
        self.reopens = 0

    def open(self, deadline):
        last = None
        while time.monotonic() < deadline:
            try:
                self.ser = serial.Serial(self.path, 115200, timeout=0.05)
                break
            except (serial.SerialException, OSError) as e:
                last = e
                time.sleep(0.05)
        else:
            raise Fail(f"cannot open {self.path} before the deadline: {last}")
        self.lost.clear()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        log("==", f"opened {self.path}")

    def reopen(self, deadline):
        self.close()
        self.reopens += 1
        self.open(deadline)

    def close(self):
        if self.ser is not None:
            try:
                self.ser.close()
            except (serial.SerialException, OSError):
                pass
        if self.reader is not None:
            self.reader.join(timeout=2)
        self.ser = None
        self.reader = None

    def _read(self):
        buf = b""
        ser = self.ser
        while True:
            try:
                data = ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError, TypeError) as e:
                log("==", f"port lost: {e}")
                self.lost.set()
                return
            if not data:
                if not ser.is_open:
                    return
                continue
            buf += data
            *lines, buf = re.split(rb"\r\n|\r|\n", buf)
            for raw in lines:
                line = raw.decode("ascii", "replace").strip()
                if not line:
                    continue
                log("<<", line)
                if UNSOLICITED.match(line) or not self.awaiting.is_set():
                    self.urcs.put(line)
                else:
                    self.responses.put(line)

    def command(self, cmd, timeout=5.0):
        """Sends `cmd`, returns (information lines, final result)."""
        while not self.responses.empty():
            self.responses.get_nowait()
        self.awaiting.set()
        try:
            log(">>", cmd)
            try:
                self.ser.write(cmd.encode("ascii") + b"\r")
            except (serial.SerialException, OSError) as e:
                raise Fail(f"{cmd}: write failed: {e}")
            info = []
            end = time.monotonic() + timeout
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise Fail(f"{cmd}: no final result within {timeout} s")
                try:
                    line = self.responses.get(timeout=left)
                except queue.Empty:
                    continue
                if line == cmd:  # echo
                    continue
                if FINAL.match(line):
                    return info, line
                info.append(line)
        finally:
            self.awaiting.clear()

    def ok(self, cmd, timeout=5.0):
        info, result = self.command(cmd, timeout)
        if result != "OK":
            raise Fail(f"{cmd}: {result}")
        return info

    def sync(self, deadline):
        """`AT` until `OK`, as host code does after opening the port."""
        while time.monotonic() < deadline:
            try:
                _, result = self.command("AT", timeout=1.0)
                if result == "OK":
                    return
            except Fail:
                pass
        raise Fail("the module never answered AT")

    def wait_urc(self, pattern, timeout, seen=None):
        """The first URC matching `pattern`; other URCs are kept in `seen`."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise Fail(f"no URC matching {pattern.pattern} within {timeout} s")
            try:
                line = self.urcs.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            if seen is not None:
                seen.append(line)
            m = pattern.search(line)
            if m:
                return m

    def wait_lost(self, timeout):
        if not self.lost.wait(timeout):
            raise Fail(f"the port did not go away within {timeout} s (no reboot?)")
        log("==", "port gone (module rebooting)")


def revision(modem):
    for line in modem.ok("ATI"):
        m = REVISION.match(line)
        if m:
            return m.group(1)
    raise Fail("ATI shows no Revision line")


def preflight(modem):
    rev = revision(modem)
    qgmr = modem.ok("AT+QGMR")
    if qgmr != [rev]:
        raise Fail(f"AT+QGMR {qgmr} differs from ATI's revision {rev}")
    imei = modem.ok("AT+GSN")
    if len(imei) != 1 or not re.fullmatch(r"\d{15}", imei[0]):
        raise Fail(f"AT+GSN: {imei}")
    if modem.ok("AT+CPIN?") != ["+CPIN: READY"]:
        raise Fail("SIM not ready")
    creg = modem.ok("AT+CREG?")
    if not any(CREG.match(l) for l in creg):
        raise Fail(f"not registered ({creg}); refusing to start an update")
    modem.ok("AT+CSQ")
    modem.ok("AT+CGACT?")
    return rev


def failing_update(modem, url):
    reopens = modem.reopens
    modem.ok(f'AT+QFOTADL="{url}"', timeout=5.0)
    code = int(modem.wait_urc(FTPEND, timeout=30).group(1))
    if code != 601:
        raise Fail(f"wrong password: FTPEND,{code}, expected 601")
    # No reboot: the same port keeps answering.
    modem.ok("AT")
    if modem.lost.is_set() or modem.reopens != reopens:
        raise Fail("the port went away after a failed download")
    log("==", "failed download reported FTPEND,601; no reboot")


def update(modem, url, deadline):
    modem.ok(f'AT+QFOTADL="{url}"', timeout=5.0)
    code = int(modem.wait_urc(FTPEND, timeout=60).group(1))
    if code != 0:
        raise Fail(f"download failed: FTPEND,{code}")
    modem.wait_lost(timeout=30)
    modem.reopen(deadline)
    seen = []
    modem.wait_urc(START, timeout=90, seen=seen)
    end = modem.wait_urc(END, timeout=240, seen=seen)
    progress = [int(m.group(1)) for m in map(UPDATING.search, seen) if m]
    if not progress or progress != sorted(progress) or progress[-1] != 100:
        raise Fail(f"UPDATING progress {progress}")
    if "RDY" not in seen:
        raise Fail(f"no RDY after the reboot: {seen}")
    code = int(end.group(1))
    if code != 0:
        raise Fail(f"upgrade failed: END,{code}")
    log("==", f"upgraded: START, UPDATING x{len(progress)}, END,0")
    modem.wait_lost(timeout=30)
    modem.reopen(deadline)
    modem.sync(deadline)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", required=True, help="the AT port (PTY link)")
    ap.add_argument("--url", required=True, help="package URL that works")
    ap.add_argument("--bad-url", required=True, help="URL with a wrong password")
    ap.add_argument("--expect-version", required=True, help="version after the update")
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds for everything")
    args = ap.parse_args()
    deadline = time.monotonic() + args.deadline

    modem = Modem(args.port)
    try:
        modem.open(deadline)
        modem.sync(deadline)
        before = preflight(modem)
        log("==", f"module runs {before}")
        failing_update(modem, args.bad_url)
        update(modem, args.url, deadline)
        after = modem.ok("AT+QGMR")
        if after != [args.expect_version] or revision(modem) != args.expect_version:
            raise Fail(f"version after the update {after}, expected {args.expect_version}")
        log("==", f"PASS: {before} -> {args.expect_version}")
        return 0
    except Fail as e:
        log("==", f"FAIL: {e}")
        return 1
    finally:
        modem.close()


if __name__ == "__main__":
    sys.exit(main())
