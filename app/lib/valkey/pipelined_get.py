"""`PipelinedGetter`: GETs (and script calls) from many concurrent requests pipelined over one connection.

The hot path of the API (a cached session read) is one GET. Through valkey-py's pool each GET costs
~90 µs of CPU here; written straight to one shared connection and answered by a single reader task in
order, it costs a fraction of that. The session cache's set-if-newer script (every create and update) goes the
same way (`eval_script`), and so, on a connection of their own, do the event appends of every run of the instance
(`EventLog`); everything else uses the regular client."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import unquote, urlparse

import libvalkey
from valkey._parsers.base import BaseParser
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import NoScriptError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from app.lib.tasks import cancel_and_wait
from app.lib.valkey import timeouts
from app.lib.valkey.timeouts import bounded

_MAX_BUFFERED = 1 << 20


ScriptArg = str | bytes | int | float


class KeyGetter(Protocol):
    """A GET and a script call for the hot path: `PipelinedGetter` on one node, `ClusterPipelinedGetter` on a
    cluster."""

    async def get(self, key: str) -> bytes | None:
        """Bounded by `COMMAND_TIMEOUT` itself (valkey's `TimeoutError`)."""
        ...

    async def eval_script(self, sha: str, source: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> object:
        """EVALSHA; EVAL with `source` when the node does not know the script (NOSCRIPT). Keys in one slot."""
        ...

    async def aclose(self) -> None: ...


def _expire(batch: list[asyncio.Future[object]]) -> None:
    for future in batch:
        if not future.done():
            future.set_exception(ValkeyTimeoutError(f"Valkey did not answer within {timeouts.COMMAND_TIMEOUT} s"))


def _encoded(value: ScriptArg) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class PipelinedGetter:
    def __init__(self, url: str, *, connect_timeout: float = 1.0) -> None:
        parsed = urlparse(url)
        self._unix_path = parsed.path if parsed.scheme in {"unix", "valkey+unix", "redis+unix"} else None
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._password = unquote(parsed.password) if parsed.password else None
        self._username = unquote(parsed.username) if parsed.username else None
        db_text = (parsed.path or "/0").lstrip("/") if self._unix_path is None else "0"
        self._db = int(db_text) if db_text.isdigit() else 0
        self._connect_timeout = connect_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._pending: collections.deque[asyncio.Future[object]] = collections.deque()
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        # Commands issued in the same event-loop turn go out in one write (one syscall for many GETs).
        self._outgoing: list[bytes] = []
        self._batch: list[asyncio.Future[object]] = []
        self._flush_scheduled = False

    async def get(self, key: str) -> bytes | None:
        reply = await self._call(_command(b"GET", key.encode()))
        assert reply is None or isinstance(reply, bytes)
        return reply

    async def eval_script(self, sha: str, source: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> object:
        parts = [str(len(keys)).encode(), *(k.encode() for k in keys), *(_encoded(a) for a in args)]
        try:
            return await self._call(_command(b"EVALSHA", sha.encode(), *parts))
        except NoScriptError:
            return await self._call(_command(b"EVAL", source.encode(), *parts))

    async def _call(self, command: bytes) -> object:
        """The reply, or valkey's `TimeoutError` after `COMMAND_TIMEOUT` (one timer per batch: an
        `asyncio.timeout` per command cost ~7 % of a cached read)."""
        writer = self._writer if self._writer is not None else await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self._pending.append(future)
        self._outgoing.append(command)
        self._batch.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, writer)
        if writer.transport.get_write_buffer_size() > _MAX_BUFFERED:
            async with bounded():
                await writer.drain()
        return await future

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        self._flush_scheduled = False
        data, self._outgoing = b"".join(self._outgoing), []
        batch, self._batch = self._batch, []
        asyncio.get_running_loop().call_later(timeouts.COMMAND_TIMEOUT, _expire, batch)
        if writer is self._writer and not writer.is_closing():
            writer.write(data)

    async def _connect(self) -> asyncio.StreamWriter:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if self._unix_path is not None:
                        reader, writer = await asyncio.open_unix_connection(self._unix_path)
                    else:
                        reader, writer = await asyncio.open_connection(self._host, self._port)
                    parser = libvalkey.Reader()
                    for setup in self._setup_commands():
                        writer.write(setup)
                        reply = await self._read_one(reader, parser)
                        if isinstance(reply, Exception):
                            raise ValkeyConnectionError(f"Valkey connection setup failed: {reply}")
            except (OSError, TimeoutError) as exc:
                raise ValkeyConnectionError(f"cannot connect to Valkey: {exc}") from exc
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_loop(reader, writer, parser), name="valkey-get-reader")
            return writer

    def _setup_commands(self) -> list[bytes]:
        commands = []
        if self._password is not None:
            auth = [self._username.encode()] if self._username else []
            commands.append(_command(b"AUTH", *auth, self._password.encode()))
        if self._db:
            commands.append(_command(b"SELECT", str(self._db).encode()))
        return commands

    @staticmethod
    async def _read_one(reader: asyncio.StreamReader, parser: libvalkey.Reader) -> object:
        while True:
            reply = parser.gets()
            if reply is not False:
                return reply
            data = await reader.read(65536)
            if not data:
                raise ValkeyConnectionError("Valkey closed the connection")
            parser.feed(data)

    async def _read_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: libvalkey.Reader
    ) -> None:
        error: Exception = ValkeyConnectionError("Valkey connection lost")
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future = self._pending.popleft()
                    if future.done():  # the caller gave up (timeout); its answer is dropped
                        continue
                    if isinstance(reply, Exception):
                        # valkey-py's own classes (NoScriptError, ReadOnlyError, ...), as its client raises them.
                        future.set_exception(BaseParser.parse_error(str(reply)))  # type: ignore[no-untyped-call]
                    else:
                        future.set_result(reply)
        except (OSError, IndexError) as exc:
            error = ValkeyConnectionError(f"Valkey connection lost: {exc}")
        finally:
            if self._writer is writer:
                self._writer = None
            while self._pending:
                future = self._pending.popleft()
                if not future.done():
                    future.set_exception(error)
            writer.close()

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        await cancel_and_wait(self._reader_task)
