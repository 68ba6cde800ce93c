"""pytest-qfota: pytest fixtures that run the real ``qfota-serve`` binary —
a FOTA package server (``qfota_server``) and a virtual Quectel modem
(``qfota_modem``) — per test, read their ``--ready-json`` start-up object,
control the server at run time over its admin listener, and stop them.

The classes work without pytest too::

    from pytest_qfota import QfotaServer
    srv = QfotaServer.start("packages")
    print(srv.url("update-v12-to-v13.zip", "ftp"))
    srv.stop()
"""

from ._process import QfotaProcessError, find_binary
from .modem import QfotaModem
from .server import QfotaServer

__all__ = ["QfotaModem", "QfotaProcessError", "QfotaServer", "find_binary"]
