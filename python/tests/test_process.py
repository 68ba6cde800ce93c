"""What the fixtures do when the binary dies (the test fails with its
stderr), and that no child outlives the tests: not a Ctrl-C, not a test
process killed without teardown."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pytest_qfota import QfotaProcessError


def test_a_server_that_cannot_start_fails_the_test_with_its_stderr(qfota_server, tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"(?s)exit status 1.*cannot read package folder"):
        qfota_server(tmp_path / "missing")


def test_a_binary_that_is_missing_or_cannot_run_is_a_process_error(packages, tmp_path):
    from pytest_qfota import QfotaServer

    with pytest.raises(QfotaProcessError, match="does not exist"):
        QfotaServer.start(packages, binary=tmp_path / "nowhere" / "qfota-serve")
    with pytest.raises(QfotaProcessError, match="not an executable file"):
        QfotaServer.start(packages, binary=tmp_path)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF not really")
    garbage.chmod(0o755)
    with pytest.raises(QfotaProcessError, match="cannot run .*garbage"):
        QfotaServer.start(packages, binary=garbage)


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


def test_a_ctrl_c_in_the_terminal_reaches_the_tests_not_the_children(qfota_server, packages):
    # A terminal sends SIGINT to its foreground process group: the server
    # is in a session of its own, so only teardown stops it.
    srv = qfota_server(packages)
    assert os.getpgid(srv.pid) != os.getpgid(0)
    assert os.getsid(srv.pid) == srv.pid


def test_a_test_process_killed_without_teardown_takes_its_server_along(qfota_server, packages):
    # A runner cancelling the job SIGKILLs the test process: no teardown
    # runs, yet the server must not live on, and the next start removes
    # the folder it left.
    script = textwrap.dedent(
        f"""
        import sys, time
        from pytest_qfota.server import QfotaServer
        srv = QfotaServer.start({str(packages)!r})
        print(srv.pid, srv._workdir.name, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid_text, workdir = child.stdout.readline().split()
        server_pid = int(pid_text)
        assert os.path.isdir(workdir)
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(server_pid, signal.SIGKILL)
            pytest.fail(f"server {server_pid} outlived its test process")
        assert os.path.isdir(workdir), "left behind: nobody ran its cleanup"
        qfota_server(packages)
        assert not os.path.exists(workdir), "the next start removes it"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def test_a_server_started_from_a_short_lived_thread_outlives_the_thread(packages):
    # Linux's parent-death signal follows the thread that forked the child:
    # a server started from a pool thread must not get it when the thread
    # ends (`concurrent.futures`, `asyncio.to_thread`).
    import threading
    import urllib.request

    from pytest_qfota.server import QfotaServer

    started = []
    thread = threading.Thread(target=lambda: started.append(QfotaServer.start(str(packages))))
    thread.start()
    thread.join(60)
    assert started, "the server started"
    srv = started[0]
    try:
        # A signal sent at the thread's end would stop the listeners within
        # milliseconds: a second of downloads and liveness checks sees it.
        for _ in range(5):
            with urllib.request.urlopen(srv.url("update-v12-to-v13.zip", "http"), timeout=10) as r:
                assert r.status == 200 and len(r.read()) > 0
            srv.check_alive()
            time.sleep(0.2)
    finally:
        srv.stop()


def test_a_forked_test_process_can_still_start_servers(packages):
    # A fork (multiprocessing's default on Linux before 3.14) does not
    # carry the spawner thread over: the child makes its own.
    from pytest_qfota.server import QfotaServer

    QfotaServer.start(str(packages)).stop()  # the parent's spawner exists
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            QfotaServer.start(str(packages)).stop()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung starting a server")


def test_a_protocol_not_enabled_is_named_in_the_error(qfota_server, packages):
    srv = qfota_server(packages, protocols=("http",))
    with pytest.raises(ValueError, match=r"https is not enabled on this server \(enabled: .*http"):
        srv.address("https")
    with pytest.raises(ValueError, match="ftp is not enabled"):
        srv.url("update-v12-to-v13.zip", "ftp")
    with pytest.raises(KeyError, match="no package 'missing.zip'"):
        srv.url("missing.zip")


def test_a_wrapper_script_without_exec_leaves_nothing_behind(packages, tmp_path):
    from pytest_qfota import QfotaServer
    from pytest_qfota._process import find_binary

    wrapper = tmp_path / "wrapped-qfota-serve"
    wrapper.write_text(f'#!/bin/sh\nRUST_BACKTRACE=1 "{find_binary()}" "$@"\n')
    wrapper.chmod(0o755)
    srv = QfotaServer.start(packages, binary=wrapper)
    assert srv.pid != srv._child.proc.pid, "the binary runs under the shell"
    srv.stop()  # SIGTERM to the group: the shell and the binary
    assert not _running(srv.pid), "the wrapped server still runs"


def _running(pid):
    """Whether process `pid` runs (exited and not yet reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def test_a_server_meant_to_die_does_not_fail_the_test(qfota_server, packages):
    srv = qfota_server(packages)
    srv.expect_exit()
    os.kill(srv.pid, signal.SIGKILL)
    srv._child.proc.wait(10)
    with pytest.raises(QfotaProcessError, match="died"):
        srv.check_alive()
    # The fixture's teardown stops it without an error.


def test_a_stopped_server_says_so(qfota_server, packages):
    srv = qfota_server(packages)
    srv.stop()
    with pytest.raises(QfotaProcessError, match="already stopped"):
        srv.faults()


def test_a_string_where_a_list_belongs_is_a_type_error(qfota_server, packages):
    from pytest_qfota import QfotaModem, QfotaServer

    with pytest.raises(TypeError, match=r"faults must be a list .*\['status=503'\]"):
        QfotaServer.start(packages, faults="status=503")
    with pytest.raises(TypeError, match="protocols must be a list"):
        QfotaServer.start(packages, protocols="http")
    with pytest.raises(TypeError, match=r"users must be a list of \(name, password\) pairs"):
        QfotaServer.start(packages, users=("test", "test"))
    with pytest.raises(TypeError, match="faults must be a list"):
        QfotaModem.start(faults="network-down")
    # A generator of users is read once, whole: the server is not left open.
    srv = qfota_server(packages, users=(u for u in [("test", "test")]))
    assert srv._child.argv[srv._child.argv.index("--user") + 1] == "test:test"
    with pytest.raises(TypeError, match="rules must be a list"):
        srv.set_faults("status=503")
    assert srv.faults() == []
