"""Running `qfota-serve` as a child process: find the binary, start it with
`--ready-json -`, read the one ready line (waiting on the pipe, with a
deadline), and stop it with SIGTERM — reporting its stderr whenever it died
or failed to start. The child leads a process group of its own, and
stopping it signals the whole group: a wrapper script that starts the
binary without `exec` leaves nothing behind."""

import ctypes
import fcntl
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

#: Environment variables the binary reads as flags (`QFOTA_*`) are dropped
#: from the child's environment, so a developer's shell cannot change what
#: a fixture starts — except these.
KEPT_ENV = {"QFOTA_LOG_LEVEL"}

#: How much of the child's stderr an error message quotes, characters.
STDERR_TAIL = 4000


#: Linux `prctl(2)` option: the signal the child gets when its parent dies.
PR_SET_PDEATHSIG = 1

try:
    # Looked up here, in the parent: a forked child must not load
    # libraries (another thread may hold the loader's lock at fork time).
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _child_setup(parent):
    """Returns what runs in the child before exec: SIGTERM when the test
    process (`parent`) dies — killed by a CI runner, a crashed xdist
    worker — so no server outlives it; and, when it died already, exit at
    once. Linux only; elsewhere a no-op."""

    def setup():
        if _PRCTL is None:
            return
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


#: The one thread children are started from. Linux sends
#: `PR_SET_PDEATHSIG` when the *thread* that forked the child ends, not the
#: process: a child started from a short-lived thread (a
#: `concurrent.futures` pool, `asyncio.to_thread`) would get SIGTERM as soon
#: as that thread finished. This thread lives as long as the process.
_SPAWNER = None
_SPAWNER_LOCK = threading.Lock()


def _forget_spawner():
    """In a forked child: the parent's spawner thread did not come along
    (its executor would wait for it for good), so a new one is made."""
    global _SPAWNER, _SPAWNER_LOCK
    _SPAWNER = None
    _SPAWNER_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_spawner)


def _spawn(argv, **kwargs):
    """`subprocess.Popen(argv, **kwargs)`, run on the spawner thread."""
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qfota-spawn")
    return _SPAWNER.submit(subprocess.Popen, argv, **kwargs).result()


def _start_time(pid):
    """The start time of process `pid` (clock ticks since boot, field 22
    of `/proc/<pid>/stat`), or None when there is no such process or no
    `/proc`."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def _group_alive(pgid):
    """Whether a process of group `pgid` is alive. Exited processes not yet
    reaped (zombies: an orphan waits for whoever adopts it) do not count;
    they are seen through `/proc` where there is one."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = None
    if entries is None:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp …; comm may hold spaces and parens.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


#: Temporary folders of the processes started here are named
#: `qfota-<kind>-<pid of the test process>-…`.
_WORKDIR = re.compile(r"qfota-(?:server|modem)-(\d+)-")


#: The file in each such folder its test process holds an `flock` on for
#: as long as it lives.
_OWNER_LOCK = ".owner"


def make_workdir(kind):
    """A temporary folder for a `kind` (`server`, `modem`) process, named
    after this test process, which holds a lock on a file in it while it
    lives. Folders whose lock nobody holds any more (their test process
    was killed without teardown, in this container or another sharing the
    folder) are removed first."""
    tmp = tempfile.gettempdir()
    try:
        entries = os.listdir(tmp)
    except OSError:
        entries = []
    for entry in entries:
        if not _WORKDIR.match(entry):
            continue
        path = os.path.join(tmp, entry)
        try:
            fd = os.open(os.path.join(path, _OWNER_LOCK), os.O_RDWR)
        except OSError:
            continue  # not made here, or being made or removed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner lives
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
    return _Workdir(kind)


class _Workdir:
    """A temporary folder (`name`) with its owner's lock held until
    `cleanup()`, which removes it."""

    def __init__(self, kind):
        self._dir = tempfile.TemporaryDirectory(prefix=f"qfota-{kind}-{os.getpid()}-")
        self.name = self._dir.name
        self._lock = os.open(os.path.join(self.name, _OWNER_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def cleanup(self):
        """Lets go of the lock and removes the folder."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        self._dir.cleanup()


def string_list(value, name, what):
    """`value` as a list of strings (paths, `os.PathLike`, as their text);
    TypeError naming `name` when it is a single string (which would be
    taken one character at a time) or holds anything else."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list of {what}, not the string {value!r}: use [{value!r}]")
    items = []
    for item in value:
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if not isinstance(item, str):
            raise TypeError(f"{name} must be a list of {what} (strings), got {item!r}")
        items.append(item)
    return items


class QfotaProcessError(Exception):
    """The binary is missing, died, failed to start or to stop cleanly;
    the message carries its exit status and the tail of its stderr."""


def find_binary(binary=None):
    """The `qfota-serve` to run: `binary` if given, else
    `$QFOTA_SERVE_BIN`, else `qfota-serve` on `PATH`."""
    candidate = binary or os.environ.get("QFOTA_SERVE_BIN") or shutil.which("qfota-serve")
    if not candidate:
        raise QfotaProcessError(
            "qfota-serve not found: set QFOTA_SERVE_BIN, put it on PATH, or pass binary="
        )
    path = os.path.abspath(os.fspath(candidate))
    if not os.path.exists(path):
        raise QfotaProcessError(f"qfota-serve binary {path} does not exist")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise QfotaProcessError(f"qfota-serve binary {path} is not an executable file")
    return path


class Child:
    """One started `qfota-serve` process with its stderr in a temporary
    file (a file, not a pipe: a chatty child never blocks on it)."""

    def __init__(self, argv, what, start_timeout=30.0, stop_timeout=15.0):
        self.what = what
        self.argv = list(argv)
        self.stop_timeout = stop_timeout
        self._stderr = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if not k.startswith("QFOTA_") or k in KEPT_ENV}
        try:
            self.proc = _spawn(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                # A session of its own: a Ctrl-C in the terminal interrupts the
                # tests, whose teardown stops the child, instead of reaching it
                # directly (it would then "die" before teardown).
                start_new_session=True,
                # SIGTERM to the child when this process dies without teardown
                # (started from the spawner thread, which lives as long).
                preexec_fn=_child_setup(os.getpid()),
            )
        except OSError as e:
            # Not a program the kernel will run (a script without its
            # interpreter, another machine's binary): a start failure.
            self._stderr.close()
            raise QfotaProcessError(f"{what}: cannot run {self.argv[0]}: {e}") from None
        # Who leads the group: its number may be another process's once
        # the group is gone (see `_group_is_ours`).
        self._started = _start_time(self.proc.pid)
        self.stopped = False
        self.exit_expected = False
        self._stderr_text = None
        try:
            self.ready = self._read_ready(start_timeout)
        except BaseException:
            self._kill()
            raise

    def _read_ready(self, timeout):
        """The JSON object of the first stdout line, waiting at most
        `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.error(f"not ready within {timeout:.0f} s")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._wait_exit(5.0)
                    raise self.error("exited before it was ready")
                buf += chunk
        line = buf.split(b"\n", 1)[0]
        try:
            return json.loads(line)
        except ValueError as e:
            raise self.error(f"ready line is not JSON ({e}): {line[:200]!r}") from None

    def stderr(self):
        """Everything the child wrote to stderr so far."""
        if self._stderr_text is not None:
            return self._stderr_text
        self._stderr.flush()
        pos = self._stderr.tell()
        self._stderr.seek(0)
        data = self._stderr.read()
        self._stderr.seek(pos)
        return data.decode("utf-8", "replace")

    def error(self, problem):
        """A QfotaProcessError naming the command, the exit status and
        the tail of stderr."""
        code = self.proc.poll()
        status = "running" if code is None else f"exit status {code}"
        tail = self.stderr()[-STDERR_TAIL:]
        return QfotaProcessError(
            f"{self.what}: {problem} ({status})\n"
            f"command: {' '.join(self.argv)}\n"
            f"stderr:\n{tail}"
        )

    def check_alive(self):
        """Raises QfotaProcessError when the child has exited or was
        stopped."""
        if self.stopped:
            raise QfotaProcessError(f"{self.what}: already stopped")
        if self.proc.poll() is not None:
            raise self.error("died")

    def died(self):
        """Whether the child has exited without being stopped."""
        return not self.stopped and self.proc.poll() is not None

    def died_within(self, timeout):
        """Whether the child exits (without being stopped) within
        `timeout` seconds: after a request to it failed, whether that was
        its death."""
        if self.stopped:
            return False
        self._wait_exit(timeout)
        return self.died()

    def expect_exit(self):
        """The child is meant to exit (a test kills it, or makes it fail):
        stopping it no longer reports its death or its exit status. A
        child still running is stopped as usual."""
        self.exit_expected = True

    def stop(self):
        """SIGTERM, then wait up to `stop_timeout` s (SIGKILL after).
        Raises QfotaProcessError when it had died before, or exited
        non-zero. Calling it again does nothing."""
        if self.stopped:
            return
        died = self.proc.poll() is not None
        self.stopped = True
        if died:
            # Whatever it left in its group goes with it.
            self._signal_group(signal.SIGKILL)
            self._close()
            if self.exit_expected:
                return
            raise self.error("died before it was stopped")
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        if not self._wait_exit(self.stop_timeout) or not self._wait_group(deadline):
            self._kill()
            raise self.error(f"did not stop within {self.stop_timeout:.0f} s of SIGTERM; killed")
        code = self.proc.returncode
        self._close()
        # The binary handles SIGTERM and exits 0; death by the SIGTERM we
        # sent is fine only for a wrapper script (`sh -c '… qfota-serve …'`:
        # the ready line names another process), whose binary stopped
        # with it.
        ready = self.ready if isinstance(self.ready, dict) else {}
        wrapped = ready.get("pid") not in (None, self.proc.pid)
        clean = code == 0 or (wrapped and code == -signal.SIGTERM)
        if not clean and not self.exit_expected:
            raise self.error("exited non-zero when stopped")

    def _group_is_ours(self):
        """Whether the process group numbered as the child may still be
        the child's. While any member lives, Linux keeps the number from
        being given to a new process; once the group is gone and the child
        reaped, a new session leader may get it — then `/proc/<pid>` shows
        another start time, and the group is left alone. Without `/proc`,
        only while the child is not reaped."""
        if self._started is None:
            return self.proc.returncode is None
        now = _start_time(self.proc.pid)
        return now is None or now == self._started

    def _signal_group(self, sig):
        """`sig` to the child's process group (the child and whatever it
        started), if any of it is left and the group is still its own."""
        if not self._group_is_ours():
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _wait_group(self, deadline):
        """Waits until no process of the child's group is left, at most
        until `deadline` (monotonic); whether none is."""
        while self._group_is_ours() and _group_alive(self.proc.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _wait_exit(self, timeout):
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _kill(self):
        self.stopped = True
        self._signal_group(signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self):
        """Closes the pipe and the stderr file, keeping its text for
        error messages."""
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._stderr_text is None:
            self._stderr_text = self.stderr()
            self._stderr.close()
