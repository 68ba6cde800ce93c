"""What the fixtures do when the binary dies: the test fails with its
stderr."""

import os
import signal

import pytest

from pytest_qfota import QfotaProcessError


def test_a_server_that_cannot_start_fails_the_test_with_its_stderr(qfota_server, tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"(?s)exit status 1.*cannot read package folder"):
        qfota_server(tmp_path / "missing")


def test_a_modem_that_cannot_start_fails_the_test_with_its_stderr(qfota_modem):
    with pytest.raises(pytest.fail.Exception, match=r"(?s)exited before it was ready.*BG96"):
        qfota_modem(model="BG96")


def test_a_server_that_died_is_reported_when_stopped(qfota_server, packages):
    srv = qfota_server(packages)
    os.kill(srv.pid, signal.SIGKILL)
    srv._child.proc.wait(10)  # reap it, so the death is visible
    with pytest.raises(QfotaProcessError, match="died"):
        srv.check_alive()
    with pytest.raises(QfotaProcessError, match=r"(?s)died before it was stopped.*exit status -9"):
        srv.stop()
