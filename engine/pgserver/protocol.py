"""The wire protocol: buenavista's server, framing and start-up, with the parts pondstream needs replaced.

buenavista (MIT/Apache, pure Python) supplies the socketserver, message codes, BVBuffer, the start-up
message parsing, MD5 password authentication and Parse/Close bookkeeping. What it lacks for this server,
and is overridden here, each in one method:

- errors: buenavista sends only a message and ends the connection on any exception; here every error is
  an ErrorResponse with severity, SQLSTATE, message and hint, and the connection stays usable (the
  extended protocol skips to Sync after an error, as PostgreSQL does);
- framing: a message length outside 4..MAX_MESSAGE is a protocol violation (08P01) that closes that one
  connection, instead of a read of up to 4 GB; SSL and GSS requests are refused with 'N';
- results: rows are streamed batch by batch from a RecordBatchReader (encode.py builds each batch's
  DataRows with numpy), writes are buffered and flushed before each read, a client gone mid-result
  closes the reader (which stops the DataFusion query); Execute honours its row limit (PortalSuspended);
  the answers to Parse/Bind/Describe/Execute/Close go out at the next Sync or Flush, as PostgreSQL's do;
- parameters: Bind decodes values by type OID and format (params.py), instead of guessing dates;
- statements: BEGIN/SET/SHOW and the read-only refusal (session.py), catalog queries (catalog.py);
- authentication: any user name with the one server password, compared in constant time; a wrong one
  is a FATAL 28P01 and the connection closes; CancelRequest cancels the running query.
"""

from __future__ import annotations

import hmac
import io
import logging
import socket
import socketserver
import struct
import threading
import time
from typing import Any

import pyarrow as pa
from buenavista.core import Connection
from buenavista.postgres import (
    NULL_BYTE,
    BuenaVistaHandler,
    BuenaVistaServer,
    BVBuffer,
    BVContext,
    ClientCommand,
    ServerResponse,
)

from pondstream.engine.pgserver import params as bind_params
from pondstream.engine.pgserver.catalog import Catalog
from pondstream.engine.pgserver.catalog import rewrite as rewrite_catalog
from pondstream.engine.pgserver.encode import data_rows, pg_oid
from pondstream.engine.pgserver.errors import PgError, from_exception
from pondstream.engine.pgserver.session import SETTINGS, STARTUP_PARAMETERS, Result, Session

log = logging.getLogger("pondstream.serve")
MAX_MESSAGE = 64 << 20  # a longer message is a broken or hostile client, not a query
MAX_STARTUP = 10_000
SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST, PROTOCOL_3 = 80877103, 80877104, 80877102, 196608


# After these the answer stays buffered, as PostgreSQL does: a client sends Sync or Flush when it wants
# to read (psycopg: Parse, Bind, Describe, Execute, Sync), so one query is one send, not five.
_HELD = frozenset({ClientCommand.PARSE, ClientCommand.BIND, ClientCommand.DESCRIBE, ClientCommand.EXECUTE,
                   ClientCommand.CLOSE})


class _Closed(Exception):
    """The client went away or broke the protocol: end this connection quietly."""


class _Portal:
    """A bound statement: its SQL (with $n placeholders), its shared syntax tree (None if it does not
    parse) and the literal nodes of its values (params.Statements.bind), result formats, and the result
    once started."""

    def __init__(self, sql: str, bound: tuple[Any, list], result_formats: list[int]) -> None:
        self.sql, self.result_formats = sql, result_formats
        self.tree, self.params = bound
        self.result: Result | None = None
        self.pending: pa.RecordBatch | None = None  # rows of a batch left over by an Execute row limit
        self.sent = 0
        self.described = False

    def close(self) -> None:
        if self.result is not None and self.result.reader is not None:
            self.result.reader.close()
        self.result = None


class PgContext(BVContext):
    """buenavista's per-connection state plus our session, portals and a cancel flag."""

    def __init__(self, session: Session, params: dict[str, str]) -> None:
        super().__init__(session=None, rewriter=None, params=params)  # type: ignore[arg-type]
        self.pg = session
        self.portals: dict[str, _Portal] = {}
        self.cancelled = threading.Event()
        self.failures = 0  # errors sent for queries, so the metrics hook can tell how one ended

    def transaction_status(self) -> bytes:
        return self.pg.tx.encode()


class PgHandler(BuenaVistaHandler):
    """One connection, on its own thread (socketserver.ThreadingTCPServer)."""

    wbufsize = 1 << 16  # buffered: flushed before every read, so a batch of rows is a few sends

    server: PgServer

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.r = BVBuffer(self.rfile)
        ctx: PgContext | None = None
        try:
            ctx = self.handle_startup(self.server.conn)
            code = b""
            while ctx is not None:
                if code not in _HELD:  # Parse/Bind/Describe/Execute/Close answers wait for Sync or Flush
                    self.wfile.flush()
                code, payload = self._read_message()
                if code == ClientCommand.TERMINATE:
                    break
                if not ctx.authenticated:
                    if code != ClientCommand.PASSWORD_MESSAGE:
                        raise PgError("08P01", "expected a password message", fatal=True)
                    self.handle_md5_password(ctx, payload)
                    continue
                self._dispatch(ctx, code, payload)
        except (_Closed, ConnectionError, TimeoutError, OSError):
            pass
        except PgError as e:  # fatal: say why, then close
            self._try_send_error(e)
        except Exception as e:  # a bug: this connection ends, the server carries on
            log.exception("connection failed")
            self._try_send_error(PgError("XX000", f"internal error: {e}", fatal=True))
        finally:
            if ctx is not None:
                for portal in ctx.portals.values():
                    portal.close()
                self.server.forget(ctx)

    def _try_send_error(self, e: PgError) -> None:
        try:
            self.send_error(e)
            self.wfile.flush()
        except OSError:
            pass

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if data is None or len(data) < n:
            raise _Closed()
        return data

    def _read_message(self) -> tuple[bytes, bytes]:
        code = self.rfile.read(1)
        if not code:
            raise _Closed()
        (length,) = struct.unpack("!I", self._read_exact(4))
        if length < 4 or length > MAX_MESSAGE:
            raise PgError("08P01", f"invalid message length {length} for message type {code!r}", fatal=True)
        return code, self._read_exact(length - 4)

    # -- start-up and authentication -------------------------------------------------------------
    def handle_startup(self, conn: Connection) -> PgContext | None:
        while True:
            (length,) = struct.unpack("!I", self._read_exact(4))
            if length < 8 or length > MAX_STARTUP:
                raise PgError("08P01", f"invalid startup packet length {length}", fatal=True)
            body = self._read_exact(length - 4)
            (code,) = struct.unpack("!I", body[:4])
            if code in (SSL_REQUEST, GSS_REQUEST):  # no TLS: the client goes on in plain text or gives up
                self.wfile.write(b"N")
                self.wfile.flush()
                continue
            if code == CANCEL_REQUEST and len(body) >= 12:
                pid, key = struct.unpack("!II", body[4:12])
                self.server.cancel(pid, key)
                return None
            if code != PROTOCOL_3:
                raise PgError("08P01", f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}", fatal=True)
            fields = body[4:].split(NULL_BYTE)
            try:
                params = {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields) - 1, 2)
                          if fields[i]}
            except UnicodeDecodeError:
                raise PgError("08P01", "startup parameters are not UTF-8", fatal=True) from None
            user = params.get("user", "pondstream")
            ctx = PgContext(Session(self.server.engine, self.server.catalog, user), params)
            self.server.remember(ctx)
            if self.server.password is None:
                self.send_authentication_ok()
                self.handle_post_auth(ctx)
            else:
                self.send_authentication_md5(ctx)
            return ctx

    def handle_md5_password(self, ctx: PgContext, payload: bytes) -> None:
        user = ctx.params.get("user", "")
        ctx.params.setdefault("user", user)
        expected = ctx.get_hashed_password({user: self.server.password})
        if not hmac.compare_digest(payload.rstrip(NULL_BYTE), expected.encode()):
            raise PgError("28P01", f'password authentication failed for user "{user}"', fatal=True)
        self.send_authentication_ok()
        self.handle_post_auth(ctx)

    def handle_post_auth(self, ctx: PgContext) -> None:
        values = {k: ctx.pg.settings[k.lower()] for k in STARTUP_PARAMETERS}
        values["session_authorization"] = ctx.pg.user
        if "application_name" in ctx.params:
            values["application_name"] = ctx.params["application_name"]
        self.send_parameter_status(values)
        self.send_backend_key_data(ctx)
        self.send_ready_for_query(ctx)
        ctx.authenticated = True

    # -- messages ----------------------------------------------------------------------------------
    def _dispatch(self, ctx: PgContext, code: bytes, payload: bytes) -> None:
        """One message; a Query or an Execute that runs is counted and timed for --metrics-port (a client
        gone mid-result counts as an error)."""
        metrics = self.server.metrics
        if metrics is None or not (code == ClientCommand.QUERY or code == ClientCommand.EXECUTE and not ctx.has_error):
            self._handle(ctx, code, payload)
            return
        began, failures, ok = time.perf_counter(), ctx.failures, False
        try:
            self._handle(ctx, code, payload)
            ok = ctx.failures == failures
        finally:
            metrics.query_done(time.perf_counter() - began, ok)

    def _handle(self, ctx: PgContext, code: bytes, payload: bytes) -> None:
        if code == ClientCommand.QUERY:
            self._simple_query(ctx, payload)
            return
        if code == ClientCommand.SYNC:
            ctx.has_error = False
            self.send_ready_for_query(ctx)
            return
        if code == ClientCommand.FLUSH:
            return  # handle() flushes before the next read
        if ctx.has_error:  # after an error the extended protocol skips everything up to Sync
            return
        try:
            handler = {ClientCommand.PARSE: self._parse, ClientCommand.BIND: self._bind,
                       ClientCommand.DESCRIBE: self._describe, ClientCommand.EXECUTE: self._execute,
                       ClientCommand.CLOSE: self._close}.get(code)
            if handler is None:
                raise PgError("08P01", f"unknown message type {code!r}", fatal=True)
            handler(ctx, payload)
        except (PgError, Exception) as e:
            if isinstance(e, (_Closed, OSError)):
                raise
            err = from_exception(e)
            if err.fatal:
                raise err from None
            self._query_failed(ctx, err)
            ctx.has_error = True

    def _query_failed(self, ctx: PgContext, err: PgError) -> None:
        ctx.failures += 1
        ctx.pg.failed()
        self.send_error(err)

    def _simple_query(self, ctx: PgContext, payload: bytes) -> None:
        sql = payload.rstrip(NULL_BYTE).decode("utf-8", errors="replace")
        ctx.cancelled.clear()
        try:
            result = ctx.pg.execute(sql)
            if result.tag == "" and result.reader is None:
                self.wfile.write(struct.pack("!ci", ServerResponse.EMPTY_QUERY_RESPONSE, 4))
            elif result.reader is not None:
                self._row_description(result.reader.schema, [])
                n, _ = self._send_rows(ctx, result.reader, None, 0)
                self.send_command_complete(_tag(result, n))
            else:
                self.send_command_complete(result.tag)
        except (_Closed, OSError):
            raise
        except Exception as e:
            self._query_failed(ctx, from_exception(e))
        self.send_ready_for_query(ctx)

    def _parse(self, ctx: PgContext, payload: bytes) -> None:
        name, rest = _cstring(payload)
        sql, rest = _cstring(rest)
        buf = BVBuffer(io.BytesIO(rest))
        n = buf.read_int16()
        oids = [buf.read_uint32() for _ in range(n)]
        ctx.stmts[name] = (sql, oids)
        self.send_parse_complete()

    def _bind(self, ctx: PgContext, payload: bytes) -> None:
        portal, rest = _cstring(payload)
        stmt, rest = _cstring(rest)
        if stmt not in ctx.stmts:
            raise PgError("26000", f"prepared statement {stmt!r} does not exist")
        sql, oids = ctx.stmts[stmt]
        buf = BVBuffer(io.BytesIO(rest))
        formats = [buf.read_int16() for _ in range(buf.read_int16())]
        values = []
        count = buf.read_int16()
        for i in range(count):
            size = buf.read_int32()
            raw = None if size < 0 else buf.read_bytes(size)
            fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
            values.append(bind_params.decode(raw, oids[i] if i < len(oids) else 0, fmt))
        result_formats = [buf.read_int16() for _ in range(buf.read_int16())]
        if any(result_formats):
            raise PgError("0A000", "binary result format is not supported", "request text results (the default)")
        if portal in ctx.portals:
            ctx.portals.pop(portal).close()
        if self.server.catalog.handles(sql):  # before binding re-renders it: reg* casts become CAST(... AS REGTYPE)
            sql = rewrite_catalog(sql)
        ctx.portals[portal] = _Portal(sql, self.server.statements.bind(sql, values), result_formats)
        self.send_bind_complete()

    def _start(self, ctx: PgContext, portal: _Portal) -> Result:
        if portal.result is None:
            ctx.cancelled.clear()
            portal.result = ctx.pg.execute(portal.sql, portal.tree, portal.params)
        return portal.result

    def _describe(self, ctx: PgContext, payload: bytes) -> None:
        kind, name = payload[:1], payload[1:].rstrip(NULL_BYTE).decode()
        if kind == b"S":
            if name not in ctx.stmts:
                raise PgError("26000", f"prepared statement {name!r} does not exist")
            sql, oids = ctx.stmts[name]
            self.send_paramter_description([oid or 25 for oid in oids])
            schema = self._statement_schema(ctx, sql, len(oids))
            if schema is None:
                self.wfile.write(struct.pack("!ci", ServerResponse.NO_DATA, 4))
            else:
                self._row_description(schema, [])
            return
        if name not in ctx.portals:
            raise PgError("34000", f"portal {name!r} does not exist")
        portal = ctx.portals[name]
        result = self._start(ctx, portal)
        portal.described = True
        if result.reader is None:
            self.wfile.write(struct.pack("!ci", ServerResponse.NO_DATA, 4))
        else:
            self._row_description(result.reader.schema, portal.result_formats)

    def _statement_schema(self, ctx: PgContext, sql: str, nparams: int) -> pa.Schema | None:
        """The result columns of a prepared statement, planned with NULL parameters (not run to the end)."""
        from pondstream.engine.pgserver.session import strip

        first = (strip(sql).split(None, 1) or [""])[0].lower()
        if first not in ("select", "with", "values", "table", "show", "explain", "("):
            return None
        result = ctx.pg.execute(sql, *self.server.statements.bind(sql, [None] * nparams))
        if result.reader is None:
            return None
        schema = result.reader.schema
        result.reader.close()
        return schema

    def _execute(self, ctx: PgContext, payload: bytes) -> None:
        name, rest = _cstring(payload)
        (limit,) = struct.unpack("!i", rest[:4])
        if name not in ctx.portals:
            raise PgError("34000", f"portal {name!r} does not exist")
        portal = ctx.portals[name]
        result = self._start(ctx, portal)
        if result.reader is None:
            self.send_command_complete(result.tag)
            return
        n, more = self._send_rows(ctx, result.reader, portal, limit)
        portal.sent += n
        if more:
            self.send_portal_suspend()
            return
        self.send_command_complete(_tag(result, portal.sent))
        portal.close()

    def _close(self, ctx: PgContext, payload: bytes) -> None:
        kind, name = payload[:1], payload[1:].rstrip(NULL_BYTE).decode()
        if kind == b"S":
            ctx.stmts.pop(name, None)
        elif name in ctx.portals:
            ctx.portals.pop(name).close()
        self.send_close_complete()

    # -- results -----------------------------------------------------------------------------------
    def _row_description(self, schema: pa.Schema, formats: list[int]) -> None:
        buf = BVBuffer()
        for field in schema:
            buf.write_string(field.name)
            buf.write_bytes(struct.pack("!ihihih", 0, 0, pg_oid(field.type), -1, -1, 0))
        out = buf.get_value()
        self.wfile.write(struct.pack("!cih", ServerResponse.ROW_DESCRIPTION, len(out) + 6, len(schema)) + out)

    def _send_rows(self, ctx: PgContext, reader: pa.RecordBatchReader, portal: _Portal | None,
                   limit: int) -> tuple[int, bool]:
        """Send rows batch by batch (up to `limit` if > 0); returns (rows sent, whether rows remain).
        A failed write (client gone) closes the reader, so DataFusion stops reading files."""
        sent = 0
        try:
            while True:
                if ctx.cancelled.is_set():
                    raise PgError("57014", "canceling statement due to user request")
                batch = portal.pending if portal is not None and portal.pending is not None else None
                if batch is not None:
                    portal.pending = None
                else:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return sent, False
                if limit > 0 and sent + batch.num_rows > limit:
                    take = limit - sent
                    if portal is not None:
                        portal.pending = batch.slice(take)
                    batch = batch.slice(0, take)
                self.wfile.write(data_rows(batch))
                sent += batch.num_rows
                if limit > 0 and sent >= limit:
                    return sent, True
        except BaseException:
            reader.close()
            raise

    def send_error(self, exception: Any, ctx: BVContext | None = None) -> None:
        err = from_exception(exception) if not isinstance(exception, str) else PgError("XX000", exception)
        buf = BVBuffer()
        severity = "FATAL" if err.fatal else "ERROR"
        for code, value in (("S", severity), ("V", severity), ("C", err.sqlstate), ("M", err.message),
                            ("H", err.hint)):
            if value:
                buf.write_byte(code.encode())
                buf.write_string(value)
        buf.write_byte(NULL_BYTE)
        out = buf.get_value()
        self.wfile.write(struct.pack("!ci", ServerResponse.ERROR_RESPONSE, len(out) + 4) + out)

    def send_command_complete(self, tag: str) -> None:
        data = tag.encode() + NULL_BYTE
        self.wfile.write(struct.pack("!ci", ServerResponse.COMMAND_COMPLETE, len(data) + 4) + data)


def _tag(result: Result, rows: int) -> str:
    return f"SELECT {rows}" if result.tag == "SELECT" else result.tag


def _cstring(data: bytes) -> tuple[str, bytes]:
    end = data.index(NULL_BYTE)
    return data[:end].decode("utf-8"), data[end + 1:]


class _NoSessions(Connection):
    """buenavista's Connection is its session factory; sessions here are made by the handler."""

    def new_session(self):  # pragma: no cover - never called
        raise NotImplementedError

    def parameters(self) -> dict[str, str]:
        return dict(SETTINGS)


class PgServer(BuenaVistaServer):
    """A thread per connection over one state dir; `password` None means no authentication."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], engine, password: str | None) -> None:
        # BuenaVistaServer.__init__ would install its own handler; set up the TCP server with ours.
        socketserver.ThreadingTCPServer.__init__(self, address, PgHandler)
        self.conn, self.rewriter, self.extensions, self.auth = _NoSessions(), None, {}, None
        self.engine, self.password = engine, password
        self.metrics: Any = None  # a Metrics (engine/metrics.py) when --metrics-port is given
        self.catalog = Catalog(engine)
        self.statements = bind_params.Statements()
        self.ctxts: dict[int, PgContext] = {}
        self._lock = threading.Lock()

    def verify_request(self, request, client_address) -> bool:
        """buenavista admits loopback only; serve.py decides where to listen and whether a password is needed."""
        return True

    def remember(self, ctx: PgContext) -> None:
        with self._lock:
            self.ctxts[ctx.process_id] = ctx

    def forget(self, ctx: PgContext) -> None:
        with self._lock:
            self.ctxts.pop(ctx.process_id, None)

    def cancel(self, pid: int, key: int) -> None:
        with self._lock:
            ctx = self.ctxts.get(pid)
        if ctx is not None and hmac.compare_digest(struct.pack("!I", ctx.secret_key), struct.pack("!I", key)):
            ctx.cancelled.set()

    def handle_error(self, request, client_address) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)
