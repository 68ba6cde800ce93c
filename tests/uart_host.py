#!/usr/bin/env python3
"""A UART-style FOTA host, written the way MCU / USB-UART scripts drive a
module (e.g. public pyserial FOTA scripts for EC800K/EG800K): it opens the
port once and never reopens it, sends `CMD\\r\\n`, calls
`reset_input_buffer()` before each command, and a monitor thread collects
lines. It runs `AT+QFOTADL="<url>",0,50` and follows the URCs through the
module's reboots on the same port: `HTTPEND,0`, `RDY`, `START`, `UPDATING`,
`END,0`, `RDY`, then checks the new revision.

    python3 tests/uart_host.py --port /tmp/qfota-modem --url http://…/update-v12-to-v13.zip --expect-version v13

Exits 0 on success, 1 on any deviation (a read error on the port is one:
a UART does not vanish).
"""

import argparse
import queue
import re
import sys
import threading
import time

import serial

lines = queue.Queue()


def monitor(ser):
    buf = b""
    while True:
        try:
            data = ser.read(ser.in_waiting or 1)
        except (serial.SerialException, OSError) as e:
            lines.put(f"PORT-ERROR {e}")
            return
        buf += data
        *done, buf = re.split(rb"\r\n|\r|\n", buf)
        for raw in done:
            text = raw.decode("ascii", "replace").strip()
            if text:
                print(f"<< {text}", flush=True)
                lines.put(text)


def fail(why):
    print(f"FAIL: {why}", flush=True)
    sys.exit(1)


def wait(pattern, deadline):
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line.startswith("PORT-ERROR"):
            fail(line)
        m = re.search(pattern, line)
        if m:
            return m
    fail(f"no {pattern!r} before the deadline")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--expect-version", required=True)
    ap.add_argument("--deadline", type=float, default=50)
    a = ap.parse_args()
    end = time.monotonic() + a.deadline
    ser = serial.Serial(a.port, 115200, timeout=0.1)
    threading.Thread(target=monitor, args=(ser,), daemon=True).start()

    def command(cmd, pattern):
        ser.reset_input_buffer()
        print(f">> {cmd}", flush=True)
        ser.write(cmd.encode() + b"\r\n")
        return wait(pattern, end)

    command("AT", r"^OK$")
    command("ATE0", r"^OK$")
    command("AT+QGMR", r"^v\d+$")
    command('AT+QFOTADL="%s",0,50' % a.url, r"^OK$")
    code = int(wait(r'"HTTPEND",(\d+)', end).group(1))
    if code != 0:
        fail(f"download failed: {code}")
    wait(r"^RDY$", end)
    print("== RDY on the same port (reboot into the upgrade)", flush=True)
    wait(r'"START"', end)
    result = int(wait(r'"END",(\d+)', end).group(1))
    if result != 0:
        fail(f"upgrade failed: {result}")
    wait(r"^RDY$", end)
    wait(r"^\+CPIN: READY$", end)
    print("== RDY on the same port (new firmware)", flush=True)
    version = command("AT+QGMR", r"^(v\d+)$").group(1)
    if version != a.expect_version:
        fail(f"version {version}, wanted {a.expect_version}")
    print(f"== PASS: {version}, port never reopened", flush=True)


if __name__ == "__main__":
    main()
