"""Every admin route of a real server, from Python's urllib (through
``QfotaServer.admin_request``)."""

import json
import threading
import urllib.request

import pytest

from conftest import PACKAGE


def call(srv, method, path, body=None, timeout=30):
    """(status, body text, headers) of one admin request, over urllib."""
    return srv.admin_request(method, path, body, timeout)


@pytest.fixture
def srv(qfota_server, packages):
    return qfota_server(packages)


def test_health_and_readiness(srv):
    assert call(srv, "GET", "/healthz")[:2] == (200, "ok\n")
    status, body, headers = call(srv, "GET", "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True})
    assert headers["Content-Type"] == "application/json"
    assert call(srv, "HEAD", "/healthz")[:2] == (200, "")


def test_unknown_paths_and_wrong_methods(srv):
    assert call(srv, "GET", "/nothing")[0] == 404
    status, _, headers = call(srv, "POST", "/faults", b"")
    assert (status, headers["Allow"]) == (405, "GET, HEAD, PUT")
    status, _, headers = call(srv, "GET", "/packages/rescan")
    assert (status, headers["Allow"]) == (405, "POST")


def test_faults_put_get_and_refusal(srv):
    rules = b"# the first HTTP attempt fails\nstatus=503,protocol=http,times=1\n\nnot-found,path=/x.zip\n"
    status, body, _ = call(srv, "PUT", "/faults", rules)
    assert status == 200
    assert body.splitlines() == ["status=503,protocol=http,times=1", "not-found,path=/x.zip"]
    assert call(srv, "GET", "/faults")[1] == body
    status, body, _ = call(srv, "PUT", "/faults", b"drop-after=lots\n")
    assert status == 400 and body.startswith("line 1: ") and "drop-after" in body
    assert call(srv, "GET", "/faults")[1].count("\n") == 2, "a refused body changes nothing"
    status, _, _ = call(srv, "PUT", "/faults", b"x" * (64 * 1024 + 1))
    assert status == 413
    assert call(srv, "PUT", "/faults", b"")[:2] == (200, "")


def test_downloads_long_poll_wakes_on_a_record(srv):
    status, body, headers = call(srv, "GET", "/downloads?since=0&timeout_ms=50")
    assert (status, body, headers["X-Next-Since"]) == (200, "", "0")
    assert headers["Content-Type"] == "application/x-ndjson"
    polled = {}
    poller = threading.Thread(
        target=lambda: polled.update(r=call(srv, "GET", "/downloads?since=0&timeout_ms=20000"))
    )
    poller.start()
    with urllib.request.urlopen(srv.url(PACKAGE), timeout=10) as resp:
        resp.read()
    poller.join(30)
    assert not poller.is_alive()
    status, body, headers = polled["r"]
    lines = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and len(lines) == 1
    assert (lines[0]["seq"], lines[0]["path"], lines[0]["outcome"]) == (0, PACKAGE, "complete")
    assert headers["X-Next-Since"] == "1"
    assert call(srv, "GET", "/downloads?since=1")[1] == ""
    assert call(srv, "GET", "/downloads?since=-1")[0] == 400
    assert call(srv, "GET", "/downloads?after=1")[0] == 400


def test_rescan_answers_when_done(srv, packages):
    status, body, _ = call(srv, "POST", "/packages/rescan", b"")
    count = json.loads(body)
    assert status == 200 and count["packages"] == count["valid"] >= 1
    (packages / "broken-v1-to-v2.zip").write_bytes(b"not a zip")
    status, body, _ = call(srv, "POST", "/packages/rescan", b"")
    after = json.loads(body)
    assert (after["packages"], after["valid"]) == (count["packages"] + 1, count["valid"])
    broken = [p for p in after["found"] if p["path"] == "broken-v1-to-v2.zip"]
    assert len(broken) == 1 and broken[0]["valid"] is False, after
