"""`pondstream serve`: answer the PostgreSQL wire protocol over a state dir's materialized views.

Queries are `Engine.query_stream` (latest versions, VERSION AS OF, the point-lookup route, read-only),
so psql, psycopg, SQLAlchemy/pandas and BI tools see what `pondstream query` sees. The protocol is
buenavista's with our overrides (engine/pgserver/protocol.py); each connection runs on its own thread.
Prepared statements are parsed once (pgserver/params.py Statements); a query that DataFusion runs gets its
own context, as query_stream makes one per call, and a point lookup that only picks columns needs none.

Security: loopback by default. Listening on any other address needs a password (PONDSTREAM_PASSWORD or
--password-file), checked with PostgreSQL's MD5 challenge; there is no TLS (buenavista has none), so
beyond a trusted network put the server behind an SSH tunnel or a TLS-terminating proxy.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pondstream.state.errors import EngineError

if TYPE_CHECKING:
    from pondstream.engine.metrics import Metrics

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5433


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_password(password_file: str | None) -> str | None:
    """The server password: --password-file's first line, else $PONDSTREAM_PASSWORD, else None."""
    if password_file:
        try:
            text = Path(password_file).read_text().splitlines()
        except OSError as e:
            raise EngineError(f"cannot read --password-file {password_file}: {e.strerror or e}") from None
        if not text or not text[0]:
            raise EngineError(f"--password-file {password_file} is empty; put the password on its first line")
        return text[0]
    return os.environ.get("PONDSTREAM_PASSWORD") or None


def check_security(host: str, password: str | None) -> None:
    """Refuse to listen beyond loopback without a password."""
    if not is_loopback(host) and password is None:
        raise EngineError(f"--host {host} would accept connections from other machines without a password.\n"
                          "  Set PONDSTREAM_PASSWORD or pass --password-file FILE (clients log in with any "
                          "user name and that password), or keep the default --host 127.0.0.1")


class Server:
    """A running server: its address, and `close()` to stop it (the listening thread and new sessions)."""

    def __init__(self, state_dir: str | os.PathLike | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 password: str | None = None, metrics: Metrics | None = None) -> None:
        from pondstream.engine.api import Engine
        from pondstream.engine.pgserver.protocol import PgServer

        check_security(host, password)
        self.engine = Engine(state_dir)
        try:
            self._server = PgServer((host, port), self.engine, password)
        except OSError as e:
            raise EngineError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port") from None
        self._server.metrics = metrics  # a Metrics counts and times the queries
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    def start(self) -> Server:
        """Serve on a background thread (for `run --serve` and tests)."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="pondstream-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def free_port() -> int:
    """A free TCP port on loopback (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
