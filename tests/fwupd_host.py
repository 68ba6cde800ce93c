#!/usr/bin/env python3
"""fwupd's Quectel DFOTA flow, byte for byte, over the modem's PTY.

The bytes and checks follow fwupd's plugins/modem-manager/fu-mm-dfota-device.c
and fu-mm-device.c (read, not copied): every command is written as
`<cmd>\\r\\n` and succeeds when `\\r\\nOK\\r\\n` (or `\\r\\nCONNECT\\r\\n`) comes;

- setup: `AT+QFLST=?`, then `AT+QFLST="UFS:dfota_update.bin"` — when it
  succeeds an old file is there, and `AT+QFDEL="dfota_update.bin"` must;
- write: `AT+QFUPL="dfota_update.bin",<size>,5,1`, then the image in
  2,048-byte chunks, each padded with 0xFF to 2,048 bytes, reading
  `<chunk size> / 1024` bytes after each, all `A`; then
  `\\r\\n+QFUPL: <size>,<hex checksum>\\r\\n` with `\\r\\nOK\\r\\n`, size and
  16-bit XOR checksum compared with the image's;
- `AT+QFOTADL="/data/ufs/dfota_update.bin"`, then `+QIND: "FOTA",…` URCs:
  `START`, `UPDATING,<n>`, `END,0` (any other `END` is a failure), read
  as fwupd reads them: one read per 100 ms, the first match of each.

Before it, the host does what ModemManager has already done when fwupd
takes the port (`ATE0`), and leaves an orphan `dfota_update.bin` behind
(an earlier upload) so the setup's delete path runs.

    python3 tests/fwupd_host.py --port /tmp/qfota-modem --image packages/update-v12-to-v13.zip

Prints a transcript; exits 0 when everything matched, 1 otherwise.
"""

import argparse
import os
import re
import sys
import time

import serial

NAME = "dfota_update.bin"
CHUNK = 0x800
OK = b"\r\nOK\r\n"


def fail(why):
    print(f"FAIL: {why}", flush=True)
    sys.exit(1)


class Port:
    def __init__(self, path, deadline):
        self.path = path
        self.end = time.monotonic() + deadline
        self.buf = b""
        self.ser = None
        self.open()

    def open(self):
        """Opens the port's path, waiting (bounded) for it to be there."""
        while True:
            try:
                self.dev = os.path.realpath(self.path)
                self.ser = serial.Serial(self.path, 115200, timeout=0.05)
                return
            except (serial.SerialException, OSError) as e:
                if time.monotonic() > self.end:
                    fail(f"cannot open {self.path}: {e}")
                time.sleep(0.05)

    def replugged(self):
        """fwupd's WAIT_FOR_REPLUG: the module rebooted and its USB port
        went away; wait for the new one and open it."""
        print("== port gone (module reboots); reopening", flush=True)
        try:
            self.ser.close()
        except (serial.SerialException, OSError):
            pass
        while os.path.realpath(self.path) == self.dev and time.monotonic() < self.end:
            time.sleep(0.05)
        self.open()

    def read_replug(self):
        """Some bytes, following the port through a replug."""
        try:
            data = self.ser.read(4096)
        except (serial.SerialException, OSError):
            data = None
        if data is None or (not data and os.path.realpath(self.path) != self.dev):
            self.replugged()
            return b""
        return data

    def read_until(self, done, what):
        """Reads until done(buffer) holds; returns and clears the buffer."""
        while not done(self.buf):
            if time.monotonic() > self.end:
                fail(f"{what}: no answer before the deadline; got {self.buf!r}")
            self.buf += self.ser.read(4096)
        out, self.buf = self.buf, b""
        return out

    def read_exact(self, n, what):
        while len(self.buf) < n:
            if time.monotonic() > self.end:
                fail(f"{what}: {n} bytes wanted, got {self.buf!r}")
            self.buf += self.ser.read(n - len(self.buf))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def at(self, cmd, want=None):
        """fu_mm_device_at_cmd: `<cmd>\\r\\n`; True on OK/CONNECT."""
        self.ser.write(cmd.encode() + b"\r\n")
        finals = (OK, b"\r\nCONNECT\r\n", b"\r\nERROR\r\n", b"+CME ERROR")
        got = self.read_until(
            lambda b: any(f in b for f in finals) and b.endswith(b"\r\n"), cmd
        )
        print(f">> {cmd}\n<< {got!r}", flush=True)
        if want is not None and got != want:
            fail(f"{cmd}: wanted {want!r}")
        return OK in got or b"\r\nCONNECT\r\n" in got


def checksum(data):
    """fu_mm_dfota_device_compute_checksum_cb."""
    total = 0
    for i in range(0, len(data), 2):
        word = data[i] << 8
        if i + 1 < len(data):
            word |= data[i + 1]
        total ^= word
    return total


def upload(port, image):
    """fu_mm_dfota_device_upload_stream, after `CONNECT`."""
    for offset in range(0, len(image), CHUNK):
        chunk = image[offset : offset + CHUNK]
        port.ser.write(chunk + b"\xff" * (CHUNK - len(chunk)))
        acks = len(chunk) // 1024
        if acks:
            got = port.read_exact(acks, f"ACKs of chunk {offset // CHUNK}")
            if got != b"A" * acks:
                fail(f"expected {acks} ACKs, got {got!r}")
    print(f"== sent {len(image)} bytes in {-(-len(image) // CHUNK)} chunks", flush=True)
    result = port.read_until(lambda b: OK in b, "AT+QFUPL result")
    print(f"<< {result!r}", flush=True)
    m = re.search(rb"\r\n\+QFUPL:\s*(\d+),([0-9a-f]+)\r\n", result)
    if not m:
        fail("could not match QFUPL response")
    size, sum16 = int(m.group(1)), int(m.group(2), 16)
    if size != len(image):
        fail(f"firmware size mismatch - expected {len(image)}, but was {size}")
    if sum16 != checksum(image):
        fail(f"checksum mismatch - expected {checksum(image):04x}, but was {sum16:04x}")


def flash(port):
    """fu_mm_dfota_device_attach, as fwupd reads: one read of up to 4,096
    bytes per try, 100 ms between tries, and only the first
    `+QIND: "FOTA"` match of each read is looked at (the rest of that read
    is dropped). An `END` that shares a read with an `UPDATING` before it
    is never seen."""
    seen = []
    while time.monotonic() < port.end:
        data = port.read_replug().decode("ascii", "replace")
        m = re.search(r'\+QIND:\s*"FOTA","([A-Z]+)"(,(\d+))?', data)
        if m:
            line = m.group(0)
            print(f"<< {line}", flush=True)
            status, number = m.group(1), m.group(3)
            seen.append(status)
            if status == "END":
                if number is None:
                    fail(f"badly formatted message {line!r}")
                if int(number) != 0:
                    fail(f"update exited with error code {number}")
                if seen[0] != "START" or "UPDATING" not in seen:
                    fail(f"URCs out of order: {seen}")
                return
            if status not in ("START", "UPDATING"):
                fail(f"unhandled fota status {status!r}")
            if status == "UPDATING" and number is None:
                fail(f"badly formatted message {line!r}")
        time.sleep(0.1)
    fail(f"no END before the deadline; saw {seen}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--deadline", type=float, default=40)
    a = ap.parse_args()
    image = open(a.image, "rb").read()
    port = Port(a.port, a.deadline)

    # What ModemManager did before fwupd took the port, and an orphan
    # from an earlier, abandoned update.
    port.at("ATE0", b"ATE0\r" + OK)
    orphan = b"AT\r\nATI\r\n" * 10
    port.at(f'AT+QFUPL="{NAME}",{len(orphan)}', b"\r\nCONNECT\r\n")
    port.ser.write(orphan)
    got = port.read_until(lambda b: OK in b, "orphan upload")
    want = f"\r\n+QFUPL: {len(orphan)},{checksum(orphan):x}\r\n".encode() + OK
    print(f"<< {got!r}", flush=True)
    if got != want:
        fail(f"orphan upload: wanted {want!r} (the data is not command lines)")

    # fu_mm_dfota_device_setup
    if not port.at("AT+QFLST=?", OK):
        fail("listing files not supported")
    want = f'\r\n+QFLST: "{NAME}",{len(orphan)}\r\n'.encode() + OK
    if port.at(f'AT+QFLST="UFS:{NAME}"', want):
        print("== found orphaned firmware file; deleting it", flush=True)
        if not port.at(f'AT+QFDEL="{NAME}"', OK):
            fail("failed to delete existing firmware file")
    else:
        fail("the orphan was not listed")
    # Gone now: the same probe fails, so setup would skip the delete.
    if port.at(f'AT+QFLST="UFS:{NAME}"', b"\r\nERROR\r\n"):
        fail("the deleted file is still listed")

    # fu_mm_dfota_device_write_firmware
    if not port.at(f'AT+QFUPL="{NAME}",{len(image)},5,1', b"\r\nCONNECT\r\n"):
        fail("failed to enable upload mode")
    upload(port, image)
    if not port.at(f'AT+QFOTADL="/data/ufs/{NAME}"', OK):
        fail("failed to start update")
    flash(port)
    print("== PASS: uploaded, flashed, END,0", flush=True)


if __name__ == "__main__":
    main()
