"""The ``qfota_server`` fixture against the real binary: downloads over
FTP (ftplib) and HTTP (urllib), records through ``downloads()`` and
``wait_download()``, fault rules changed mid-test, re-scans."""

import ftplib
import hashlib
import io
import shutil
import urllib.error
import urllib.request

import pytest

from conftest import PACKAGE


def test_ready_object_lists_listeners_and_package_urls(qfota_server, packages):
    srv = qfota_server(packages)
    pkg = next(p for p in srv.packages if p["path"] == PACKAGE)
    data = (packages / PACKAGE).read_bytes()
    assert pkg["size"] == len(data)
    assert pkg["sha256"] == hashlib.sha256(data).hexdigest()
    assert pkg["valid"] is True
    host, port = srv.address("ftp")
    assert srv.url(PACKAGE, "ftp") == f"ftp://test:test@{host}:{port}/{PACKAGE}"
    assert srv.url(PACKAGE, "http") == f"http://{srv.listeners['http']}/{PACKAGE}"
    assert srv.listeners["https"] is None
    assert srv.admin.startswith("127.0.0.1:")


def test_ftp_and_http_downloads_are_recorded(qfota_server, packages):
    srv = qfota_server(packages)
    data = (packages / PACKAGE).read_bytes()
    host, port = srv.address("ftp")
    got = io.BytesIO()
    with ftplib.FTP() as ftp:
        ftp.connect(host, port, timeout=10)
        ftp.login("test", "test")
        ftp.retrbinary(f"RETR {PACKAGE}", got.write)
    assert got.getvalue() == data
    rec = srv.wait_download(path=PACKAGE, outcome="complete")
    assert (rec["protocol"], rec["user"], rec["bytes_sent"]) == ("ftp", "test", len(data))

    with urllib.request.urlopen(srv.url(PACKAGE), timeout=10) as resp:
        assert resp.read() == data
    rec = srv.wait_download(lambda r: r["protocol"] == "http", outcome="complete")
    assert rec["bytes_sent"] == len(data)
    assert [r["protocol"] for r in srv.downloads()] == ["ftp", "http"]
    assert [r["seq"] for r in srv.downloads()] == [0, 1]


def test_a_fault_set_mid_test_hits_the_next_download_and_clears(qfota_server, packages):
    srv = qfota_server(packages)
    with urllib.request.urlopen(srv.url(PACKAGE), timeout=10) as resp:
        resp.read()
    assert srv.set_faults(["status=503,protocol=http"]) == ["status=503,protocol=http"]
    assert srv.faults() == ["status=503,protocol=http"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(srv.url(PACKAGE), timeout=10)
    assert err.value.code == 503
    err.value.close()
    # The 503 is recorded at once; the first download's record only once
    # its body was acknowledged, so it may come second: wait by content.
    rec = srv.wait_download(lambda r: r["status"] == 503)
    assert rec["fault"] == "status=503,protocol=http"

    assert srv.set_faults([]) == []
    with urllib.request.urlopen(srv.url(PACKAGE), timeout=10) as resp:
        assert resp.status == 200
        # Read it all: a client that leaves unread is (rightly) aborted.
        resp.read()
    rec = srv.wait_download(since=rec["seq"] + 1)
    assert (rec["status"], rec["outcome"], "fault" in rec) == (200, "complete", False), rec


def test_a_bad_fault_rule_is_refused_and_changes_nothing(qfota_server, packages):
    srv = qfota_server(packages, faults=["not-found,path=/nothing.zip"])
    with pytest.raises(ValueError, match="line 2: .*explode"):
        srv.set_faults(["status=503", "explode=now"])
    assert srv.faults() == ["not-found,path=/nothing.zip"]
    # One rule per item: a line break would smuggle in a second one.
    with pytest.raises(ValueError, match="no line breaks"):
        srv.set_faults(["status=503\nnot-found"])
    assert srv.faults() == ["not-found,path=/nothing.zip"]


def test_rescan_serves_a_package_copied_in(qfota_server, packages):
    srv = qfota_server(packages)
    before = srv.rescan()["packages"]
    shutil.copy(packages / PACKAGE, packages / "update-v13-to-v14.zip")
    answer = srv.rescan()
    assert (answer["packages"], answer["valid"]) == (before + 1, before + 1)
    # The new package's URL, as the server gives it, from then on.
    url = srv.url("update-v13-to-v14.zip")
    assert url == srv.url(PACKAGE).replace(PACKAGE, "update-v13-to-v14.zip")
    assert "update-v13-to-v14.zip" in srv.urls
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200


def test_wait_download_times_out_naming_what_came(qfota_server, packages):
    srv = qfota_server(packages)
    with urllib.request.urlopen(srv.url(PACKAGE), timeout=10) as resp:
        resp.read()
    with pytest.raises(TimeoutError, match="records seen: .*complete"):
        srv.wait_download(outcome="aborted", timeout=0.3)


def test_next_seq_marks_where_a_test_on_a_shared_server_starts(qfota_server, packages):
    import urllib.request

    srv = qfota_server(packages, protocols=("http",))
    assert srv.next_seq() == 0
    with urllib.request.urlopen(srv.url(PACKAGE), timeout=10) as r:
        r.read()
    first = srv.wait_download(path=PACKAGE, outcome="complete", timeout=10)
    start = srv.next_seq()
    assert start == first["seq"] + 1
    # From here on the earlier record is not seen.
    with pytest.raises(TimeoutError):
        srv.wait_download(path=PACKAGE, since=start, timeout=0.5)
