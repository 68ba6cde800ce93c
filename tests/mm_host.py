#!/usr/bin/env python3
"""A ModemManager-style host: the port probe and the init sequence that
ModemManager's generic broadband modem and port code send (read from
ModemManager's src/mm-port-probe.c, src/mm-broadband-modem.c: `AT` probes,
`ATZ` alone, then `E0`, `V1`, `+CMEE=1`, `X4`, `&C1` each as its own
`AT<cmd>\\r`, then `+GCAP`, `+CGMI`, `+CGMM`, `+CGMR`, `+CGSN`, `+CIMI`,
`+CSQ`, `+CREG=2`/`+CEREG=2`), plus the V.250 forms hosts also use
(`ATE0 V1`, `AT+CSQ;+CREG?`, `ATV0`, `A/`, `AT+CFUN=4`).

Every answer is compared byte for byte with what a Quectel module sends.
Run by tests/modem.rs against `Modem` on a PTY:

    python3 tests/mm_host.py --port /tmp/qfota-modem --model EC25 --revision v12

Prints a transcript; exits 0 when every answer matched, 1 otherwise.
"""

import argparse
import sys
import time

import serial


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--revision", required=True)
    ap.add_argument("--deadline", type=float, default=20)
    a = ap.parse_args()
    end = time.monotonic() + a.deadline
    ser = serial.Serial(a.port, 115200, timeout=0.05)

    def exchange(send, want):
        """Writes `send`, reads until exactly len(want) bytes came."""
        ser.write(send)
        got = b""
        while len(got) < len(want) and time.monotonic() < end:
            got += ser.read(len(want) - len(got))
        print(f">> {send!r}\n<< {got!r}", flush=True)
        if got != want:
            print(f"FAIL: wanted {want!r}", flush=True)
            sys.exit(1)

    ok = b"\r\nOK\r\n"
    m, r = a.model.encode(), a.revision.encode()
    # Port probe: AT with echo still on, then ATZ alone (V.250 6.1.1).
    exchange(b"AT\r", b"AT\r" + ok)
    exchange(b"ATZ\r", b"ATZ\r" + ok)
    # Primary port init sequence, one command per line.
    exchange(b"ATE0\r", b"ATE0\r" + ok)
    for cmd in [b"ATV1", b"AT+CMEE=1", b"ATX4", b"AT&C1"]:
        exchange(cmd + b"\r", ok)
    exchange(b"ATE0 V1\r", ok)
    exchange(b"AT+GCAP\r", b"\r\n+GCAP: +CGSM\r\n" + ok)
    exchange(b"AT+CGMI\r", b"\r\nQuectel\r\n" + ok)
    exchange(b"AT+CGMM\r", b"\r\n" + m + b"\r\n" + ok)
    exchange(b"AT+CGMR\r", b"\r\n" + r + b"\r\n" + ok)
    exchange(b"AT+CGSN\r", b"\r\n867675040000011\r\n" + ok)
    exchange(b"AT+CIMI\r", b"\r\n001010123456789\r\n" + ok)
    exchange(b"AT+QCCID\r", b"\r\n+QCCID: 89001012012341234567\r\n" + ok)
    exchange(b"AT+CFUN?\r", b"\r\n+CFUN: 1\r\n" + ok)
    exchange(b"AT+IFC=?\r", b"\r\n+IFC: (0,2),(0,2)\r\n" + ok)
    exchange(b"AT+CSQ;+CREG?\r", b"\r\n+CSQ: 24,99\r\n\r\n+CREG: 0,1\r\n" + ok)
    exchange(b"A/", b"\r\n+CSQ: 24,99\r\n\r\n+CREG: 0,1\r\n" + ok)
    exchange(b"AT+CREG=2;+CEREG=2\r", ok)
    exchange(b"AT+CREG?\r", b'\r\n+CREG: 2,1,"1A2B","01A2B3C4",7\r\n' + ok)
    # CMEE=1: failures carry a 27.007 code; unknown commands too.
    exchange(b"AT+CFUN=9\r", b"\r\n+CME ERROR: 50\r\n")
    exchange(b"AT+NOSUCH\r", b"\r\n+CME ERROR: 4\r\n")
    exchange(b"AT+CMEE=2\r", ok)
    exchange(b"AT+CFUN=9\r", b"\r\n+CME ERROR: incorrect parameters\r\n")
    exchange(b"AT+CMEE=1\r", ok)
    # Numeric result codes, then back.
    exchange(b"ATV0\r", b"0\r")
    exchange(b"AT+CSQ\r", b"+CSQ: 24,99\r\n0\r")
    exchange(b"ATV1\r", ok)
    # Radio off and on: registration URCs after the answer.
    exchange(b"AT+CFUN=4\r", ok + b"\r\n+CREG: 0\r\n\r\n+CEREG: 0\r\n")
    exchange(b"AT+CREG?;+CSQ\r", b"\r\n+CREG: 2,0\r\n\r\n+CSQ: 99,99\r\n" + ok)
    exchange(
        b"AT+CFUN=1\r",
        ok + b'\r\n+CREG: 1,"1A2B","01A2B3C4",7\r\n\r\n+CEREG: 1,"1A2B","01A2B3C4",7\r\n',
    )
    # Garbage and an over-long line: an error, and the port still answers.
    exchange(b"\xff\xfe\x00junk\r", b"\r\n+CME ERROR: 100\r\n")
    exchange(b"AT" + b"9" * 5000 + b"\r", b"\r\n+CME ERROR: 100\r\n")
    exchange(b"AT\r", ok)
    print("== PASS", flush=True)


if __name__ == "__main__":
    main()
