"""The pytest plugin (entry point ``pytest11``): the ``qfota_server`` and
``qfota_modem`` fixtures, factories that start the real binary and stop
everything they started when the test ends — failing the test, with the
process's stderr, when it could not start or died on the way."""

import pytest

from ._process import QfotaProcessError
from .modem import QfotaModem
from .server import QfotaServer


def _factory(start):
    """A factory fixture body: ``start(**kw)`` per call, all stopped at
    teardown; a process error becomes a test failure with its stderr."""
    started = []

    def make(*args, **kwargs):
        try:
            thing = start(*args, **kwargs)
        except QfotaProcessError as e:
            message = str(e)
        else:
            started.append(thing)
            return thing
        # Outside the `except`: the message once, not chained to itself.
        pytest.fail(message, pytrace=False)

    def teardown():
        errors = []
        for thing in reversed(started):
            try:
                thing.stop()
            except QfotaProcessError as e:
                errors.append(str(e))
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)

    return make, teardown


@pytest.fixture
def qfota_server():
    """Factory: ``qfota_server(packages_dir, users=[("test", "test")],
    faults=[...], protocols=("ftp", "http"), tls=None, allow_invalid=False,
    passive_ports=None, binary=None, extra_args=[...])`` starts a
    ``qfota-serve`` on 127.0.0.1 free ports with an admin listener and
    returns a :class:`QfotaServer` (``urls``, ``downloads()``,
    ``wait_download()``, ``next_seq()``, ``set_faults()``, ``rescan()``,
    ``expect_exit()``, ``stop()``)."""
    make, teardown = _factory(QfotaServer.start)
    yield make
    teardown()


@pytest.fixture
def qfota_modem():
    """Factory: ``qfota_modem(model="EC25", version=None, link=None,
    tcp=False, faults=[...], time_scale=None, reboot_ms=None,
    timeout_secs=None, profile=None, binary=None, extra_args=[...])``
    starts ``qfota-serve modem`` on a pseudo-terminal and returns a
    :class:`QfotaModem` (``port``: the path to open with pyserial;
    ``control()``, ``version``, ``expect_exit()``, ``stop()``)."""
    make, teardown = _factory(QfotaModem.start)
    yield make
    teardown()
