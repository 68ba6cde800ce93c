"""A full FOTA through the fixtures: ``qfota_modem`` (the virtual EC25 on a
pseudo-terminal) downloads from ``qfota_server`` over HTTP, driven by a
pyserial host that retries after a failed download."""

import pytest
from conftest import PACKAGE
from host import Host

HTTPEND = r'\+QIND:\s*"FOTA"\s*,\s*"HTTPEND"\s*,\s*(\d+)'
END = r'\+QIND:\s*"FOTA"\s*,\s*"END"\s*,\s*(\d+)'


def test_modem_ready_object(qfota_modem):
    modem = qfota_modem(model="EC25", version="v12", tcp=True)
    assert (modem.model, modem.profile, modem.version) == ("EC25", "ec2x", "v12")
    assert modem.port.endswith("/at")
    assert modem.tcp.startswith("127.0.0.1:")


def test_fota_over_http_with_a_failed_first_attempt_retried_by_the_host(
    qfota_server, qfota_modem, packages
):
    srv = qfota_server(packages, protocols=("http",), faults=["status=503,protocol=http,times=1"])
    modem = qfota_modem(model="EC25", version="v12")
    url = srv.url(PACKAGE)
    size = (packages / PACKAGE).stat().st_size
    host = Host(modem.port)
    try:
        host.send("AT")
        host.wait("^OK$", 10)
        code = None
        for _attempt in range(3):  # a host update loop retries a failed download
            host.send(f'AT+QFOTADL="{url}"')
            host.wait("^OK$", 10)
            code = int(host.wait(HTTPEND).group(1))
            if code == 0:
                break
        assert code == 0, "download never succeeded:\n" + "\n".join(host.transcript)
        host.reopen_after_reboot()  # the module reboots into the upgrade
        assert int(host.wait(END, 120).group(1)) == 0
        host.reopen_after_reboot()  # and into the new firmware
        host.send("AT+QGMR")
        host.wait("^v13$", 10)
        assert modem.version == "v13"
    finally:
        host.close()
    records = srv.downloads()
    assert [(r["status"], r.get("fault")) for r in records] == [
        (503, "status=503,protocol=http,times=1"),
        (200, None),
    ]
    assert records[1]["outcome"] == "complete" and records[1]["bytes_sent"] == size


def test_control_reads_the_state_and_cuts_the_network(qfota_modem):
    modem = qfota_modem(model="EC25", version="v12")
    state = modem.control("state")
    assert state["version"] == "v12", state
    modem.control("fault", set="network-down")
    modem.control("fault", clear="network-down")
    with pytest.raises(RuntimeError):
        modem.control("no-such-command")


def test_control_of_a_modem_that_died_says_so(qfota_modem):
    import os
    import signal

    from pytest_qfota import QfotaProcessError

    modem = qfota_modem(model="EC25", version="v12")
    os.kill(modem.pid, signal.SIGKILL)
    modem._child.proc.wait(10)
    with pytest.raises(QfotaProcessError, match="died"):
        modem.control("state")
    # The teardown would fail the test for the death: expected here.
    modem.expect_exit()
