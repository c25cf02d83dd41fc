"""Built-in SMTP sink (aiosmtpd) for the demo, ``loa simulate smtp`` and the tests.

:class:`SmtpSink` accepts mail on a loopback port in its own thread and event loop, optionally
with STARTTLS or implicit TLS (a self-signed certificate is generated when none is given) and
required AUTH PLAIN/LOGIN. It keeps what it received in memory (``store=True``) or only counts
(the demo), and it can misbehave on purpose, per recipient address or ``@domain``
(:class:`SinkFaults`):

* ``rcpt_replies``: answer RCPT with a fixed reply, e.g. ``(550, "5.1.1 user unknown")``;
* ``fail_first_n``: answer RCPT ``451 4.7.1`` the first N times (greylisting), then accept;
* ``drop_during_data``: cut the connection after the message data, before the final reply --
  the case where the sender cannot know whether the message was taken (``drop_first_n``: only
  the first N times per address);
* ``messages_per_connection``: after N messages answer MAIL ``421`` and hang up (as Exchange's
  MaxMessagesPerConnection does).

``sink.config`` may be changed while the sink runs; each command reads it afresh. The session
logic lives in :mod:`gateways.smtp.sink_session`.

The listener is started here rather than through ``aiosmtpd.controller.Controller``: the
Controller cannot listen on an ephemeral port (it connects to ``port`` to check readiness) and
that check connection would count as a client.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import signal
import ssl
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import FrameType, TracebackType

from gateways.smtp.selfsigned import generate_self_signed
from gateways.smtp.sink_session import (
    ReceivedMail,
    SinkConfig,
    SinkFaults,
    SinkHandler,
    SinkMailbox,
    SinkSession,
    abort_transport,
)

__all__ = [
    "ReceivedMail",
    "SinkConfig",
    "SinkFaults",
    "SmtpSink",
    "generate_self_signed",
    "read_stats",
    "serve",
    "write_stats",
]

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 10.0
_STATS_INTERVAL_S = 0.5


class SmtpSink:
    """An SMTP server in a background thread. Use as a context manager or start()/stop()."""

    def __init__(self, config: SinkConfig | None = None) -> None:
        self.config = config or SinkConfig()
        self._mailbox = SinkMailbox()
        self._connection_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        # Live sessions, so stop() can cut them; weak so finished ones need no bookkeeping.
        self._sessions: weakref.WeakSet[SinkSession] = weakref.WeakSet()
        self._tempdir: Path | None = None
        self._port = 0
        self.tls_cert_path: Path | None = None  # the certificate clients should trust

    # -- observations (any thread) ----------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def received(self) -> list[ReceivedMail]:
        return self._mailbox.snapshot()

    @property
    def count(self) -> int:
        return self._mailbox.count

    @property
    def connections_opened(self) -> int:
        return self._mailbox.connections_opened

    @property
    def drops(self) -> int:
        """Connections cut by ``drop_during_data``."""
        return self._mailbox.drops

    @property
    def noops(self) -> int:
        """NOOP commands seen (clients checking idle connections)."""
        return self._mailbox.noops

    def clear(self) -> None:
        self._mailbox.clear()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("SMTP sink already running")
        tls_context = self._server_tls_context() if self.config.needs_tls else None
        implicit_tls = self.config.implicit_tls
        handler = SinkHandler(lambda: self.config, self._mailbox)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def new_session() -> SinkSession:
            self._mailbox.increment("connections_opened")
            session = SinkSession(
                handler,
                connection_id=next(self._connection_ids),
                implicit_tls=implicit_tls,
                hostname="loa-sink.localhost",
                ident="Loa SMTP sink",
                tls_context=None if implicit_tls else tls_context,
                require_starttls=self.config.require_starttls and not implicit_tls,
                auth_required=self.config.auth is not None,
                auth_require_tls=True,
                authenticator=handler.authenticate,
                loop=loop,
            )
            self._sessions.add(session)
            return session

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                listener = loop.create_server(
                    new_session,
                    host=self.config.host,
                    port=self.config.port,
                    ssl=tls_context if implicit_tls else None,
                )
                self._server = loop.run_until_complete(listener)
            except BaseException as exc:  # reported to start() in the caller's thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            self._port = self._server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"smtp-sink-{self.config.port}", daemon=True)
        self._thread.start()
        if not ready.wait(_READY_TIMEOUT_S) or failure:
            self._thread.join(timeout=1)
            self._thread = None
            self._cleanup_tempdir()
            cause = failure[0] if failure else None
            raise RuntimeError(
                f"SMTP sink could not listen on {self.config.host}:{self.config.port}: {cause or 'timed out'}"
            ) from cause
        logger.info(
            "SMTP sink listening on %s:%d (tls=%s, auth=%s)",
            self.config.host,
            self._port,
            "implicit" if implicit_tls else "starttls" if tls_context else "none",
            "required" if self.config.auth else "none",
        )

    def stop(self) -> None:
        """Cut every session, close the listener and end the thread; safe to call twice."""
        if self._thread is None or self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=_READY_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_READY_TIMEOUT_S)
        self._thread = None
        self._loop = None
        self._cleanup_tempdir()

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        # Runs in the sink thread. Server.close() leaves accepted connections open (Python
        # 3.11), so cut them explicitly, then let every session task finish its cancellation.
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            abort_transport(session.transport)
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _server_tls_context(self) -> ssl.SSLContext:
        cert, key = self.config.tls_cert, self.config.tls_key
        if cert is None:
            self._tempdir = Path(tempfile.mkdtemp(prefix="loa-sink-tls-"))
            cert, key = generate_self_signed(self._tempdir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.tls_cert_path = cert
        return context

    def _cleanup_tempdir(self) -> None:
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None


def serve(cfg: SinkConfig, stats_file: Path | None = None) -> None:
    """Run a sink in the foreground until SIGINT/SIGTERM (``loa simulate smtp``).

    With ``stats_file``, the counts are written there as JSON (``received``, ``connections``,
    ``drops``) twice a second and at the end, so another process (``loa demo``) can compare what
    arrived with what the campaign says it sent.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # aiosmtpd logs every command at INFO on "mail.log"; a demo sends thousands.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    sink = SmtpSink(cfg)
    try:
        sink.start()
        last = -1
        logged_at = time.monotonic()
        while not stop.wait(_STATS_INTERVAL_S):
            if stats_file is not None:
                write_stats(sink, stats_file)
            if sink.count != last and time.monotonic() - logged_at >= 10.0:
                last, logged_at = sink.count, time.monotonic()
                logger.info("SMTP sink: %d messages received on %d connections", last, sink.connections_opened)
    finally:
        sink.stop()
        if stats_file is not None:
            write_stats(sink, stats_file)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("SMTP sink stopped after %d messages on %d connections", sink.count, sink.connections_opened)


def write_stats(sink: SmtpSink, path: Path) -> None:
    """Write the sink's counts as JSON, atomically (readers never see half a file)."""
    stats = {"received": sink.count, "connections": sink.connections_opened, "drops": sink.drops}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


def read_stats(path: Path) -> dict[str, int] | None:
    """The counts last written by :func:`write_stats`, or ``None`` before the first write."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else None
