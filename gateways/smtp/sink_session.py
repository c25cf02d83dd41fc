"""What happens inside one SMTP session of the sink: aiosmtpd hooks, fault injection, AUTH.

:class:`SinkConfig` and :class:`SinkFaults` say how the sink behaves, :class:`SinkHandler` is the
aiosmtpd handler that applies them per command, and :class:`SinkMailbox` records what arrived
(written by the sink thread, read from any thread). :mod:`gateways.smtp.sink` runs the listener.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException, syntax

__all__ = [
    "ReceivedMail",
    "SinkConfig",
    "SinkFaults",
    "SinkHandler",
    "SinkMailbox",
    "SinkSession",
    "abort_transport",
]

logger = logging.getLogger(__name__)


class _QuietDeprecations(logging.Filter):
    """aiosmtpd warns about its own deprecated ``Session.login_data`` on every successful AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


_AIOSMTPD_LOG = logging.getLogger("mail.log")
if not any(isinstance(f, _QuietDeprecations) for f in _AIOSMTPD_LOG.filters):
    _AIOSMTPD_LOG.addFilter(_QuietDeprecations())


@dataclass
class SinkFaults:
    """Injected failures; keys are lower-case addresses or ``@domain``."""

    rcpt_replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    drop_during_data: set[str] = field(default_factory=set)
    # Like drop_during_data, but only the first N times per address; then the message is taken.
    drop_first_n: dict[str, int] = field(default_factory=dict)
    fail_first_n: dict[str, int] = field(default_factory=dict)
    # Like Exchange's MaxMessagesPerConnection: after this many messages on one connection,
    # answer the next MAIL with 421 and hang up.
    messages_per_connection: int | None = None


@dataclass
class SinkConfig:
    host: str = "127.0.0.1"
    port: int = 2525  # 0: an ephemeral port, read it back from SmtpSink.port
    require_starttls: bool = False
    implicit_tls: bool = False  # SMTPS: TLS from the first byte (relay setting tls = "tls")
    tls_cert: Path | None = None  # with tls_key; without them a self-signed pair is generated
    tls_key: Path | None = None
    auth: tuple[str, str] | None = field(default=None, repr=False)  # (username, password)
    store: bool = True  # keep received messages in memory; False only counts them
    faults: SinkFaults = field(default_factory=SinkFaults)

    @property
    def needs_tls(self) -> bool:
        # AUTH is offered only over TLS, as on any relay worth imitating.
        return self.require_starttls or self.implicit_tls or self.auth is not None


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    envelope_from: str
    rcpt_tos: list[str]
    data: bytes
    connection_id: int


class SinkMailbox:
    """Thread-safe record of what the sink saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[ReceivedMail] = []
        self.count = 0
        self.drops = 0
        self.noops = 0
        self.connections_opened = 0

    def snapshot(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._received)

    def record(self, mail: ReceivedMail, *, store: bool) -> None:
        with self._lock:
            self.count += 1
            if store:
                self._received.append(mail)

    def increment(self, counter: Literal["drops", "noops", "connections_opened"]) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self.count = 0


# A plain ``<local@domain>`` (dot-atoms only): its addr-spec is the text itself, so the full RFC
# 5322 parse aiosmtpd runs on every MAIL and RCPT (40 % of the sink's CPU in a bulk run) can be
# skipped. Anything else still goes through aiosmtpd.
_PLAIN_ANGLE_ADDR = re.compile(
    r"\s*<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\.)*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    r"@(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+)>"
)
_END_OF_DATA = b"\r\n.\r\n"


class SinkSession(SMTP):
    """aiosmtpd's SMTP protocol with our connection number attached, and two shortcuts on the
    per-message path (the sink takes its share of the CPU in every benchmark that uses it):
    plain addresses skip the header parser, and DATA is read in blocks instead of line by line.
    """

    def __init__(self, handler: SinkHandler, *, connection_id: int, implicit_tls: bool, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.connection_id = connection_id
        self.messages_accepted = 0
        if implicit_tls:
            # aiosmtpd only counts STARTTLS as TLS; on an SMTPS listener the whole session is
            # already encrypted, so AUTH needs no upgrade first. (Passing auth_require_tls=False
            # would do the same but emits a warning meant for plain-text listeners.)
            self._auth_require_tls = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_ANGLE_ADDR.match(arg)
        rest = arg[match.end() :].lstrip() if match else ""
        if match is None or rest.startswith("("):  # comments and the like: aiosmtpd's parser
            return super()._getaddr(arg)  # type: ignore[no-any-return]
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA (same checks, replies and hooks), reading the content in blocks up to the
        ``CRLF . CRLF`` that ends it where aiosmtpd reads one line per call (and logs each)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await self._read_data()
        except asyncio.CancelledError:  # the connection went away during DATA
            self._writer.close()
            raise
        if data is None:
            reply = "552 Error: Too much mail data"
        elif max(map(len, data.split(b"\r\n"))) + 2 > self.line_length_limit:  # a line with its CRLF
            reply = "500 Line too long (see RFC5321 4.5.3.1.6)"
        else:
            self.envelope.original_content = self.envelope.content = data
            status = await self._call_handler_hook("DATA")
            reply = "250 OK" if status is MISSING else status
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(reply)

    async def _read_data(self) -> bytes | None:
        """The content after dot-unstuffing (RFC 5321 4.5.2); ``None`` past ``data_size_limit``."""
        # Starts with CRLF so that a leading dot and an empty message need no special case.
        buffer = bytearray(b"\r\n")
        too_much = False
        while not buffer.endswith(_END_OF_DATA):
            try:
                buffer += await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as overrun:  # no terminator within the reader's limit yet
                buffer += await self._reader.readexactly(overrun.consumed)
            if self.data_size_limit and len(buffer) > self.data_size_limit + len(_END_OF_DATA):
                too_much = True
                del buffer[: -len(_END_OF_DATA)]  # read on to the end without keeping it
        if too_much:
            return None
        return bytes(buffer[:-3]).replace(b"\r\n.", b"\r\n")[2:]


class SinkHandler:
    """aiosmtpd hooks; they run in the sink thread and read the configuration afresh each time."""

    def __init__(self, config: Callable[[], SinkConfig], mailbox: SinkMailbox) -> None:
        self._config = config
        self._mailbox = mailbox
        self._failures_seen: dict[str, int] = {}
        self._drops_seen: dict[str, int] = {}

    async def handle_MAIL(  # aiosmtpd's hook names
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        limit = self._config().faults.messages_per_connection
        assert isinstance(server, SinkSession)
        if limit is not None and server.messages_accepted >= limit:
            transport = server.transport
            if transport is not None:
                # close() after the reply is written: call_soon runs once this push is queued.
                server.loop.call_soon(transport.close)
            return "421 4.7.0 Too many messages on this connection, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        faults = self._config().faults
        key = _match(address, faults.rcpt_replies)
        if key is not None:
            code, text = faults.rcpt_replies[key]
            return f"{code} {text}"
        key = _match(address, faults.fail_first_n)
        if key is not None:
            seen = self._failures_seen.get(address.lower(), 0)
            if seen < faults.fail_first_n[key]:
                self._failures_seen[address.lower()] = seen + 1
                return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        self._mailbox.increment("noops")
        return "250 2.0.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        config = self._config()
        if any(_match(rcpt, config.faults.drop_during_data) is not None for rcpt in envelope.rcpt_tos) or any(
            self._drop_this_time(rcpt, config.faults.drop_first_n) for rcpt in envelope.rcpt_tos
        ):
            self._mailbox.increment("drops")
            abort_transport(server.transport)
            # aiosmtpd cancels this handler when it sees the connection go; wait for that.
            await asyncio.Event().wait()
        assert isinstance(server, SinkSession)
        mail = ReceivedMail(
            envelope.mail_from or "",
            list(envelope.rcpt_tos),
            envelope.original_content or b"",
            server.connection_id,
        )
        self._mailbox.record(mail, store=config.store)
        server.messages_accepted += 1
        return "250 2.0.0 OK: queued"

    def _drop_this_time(self, address: str, table: dict[str, int]) -> bool:
        key = _match(address, table)
        if key is None:
            return False
        seen = self._drops_seen.get(address.lower(), 0)
        if seen >= table[key]:
            return False
        self._drops_seen[address.lower()] = seen + 1
        return True

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that rejects our self-signed certificate: expected in tests, not a crash.
            logger.info("SMTP sink: TLS handshake failed: %r", error.__cause__)
            return "454 4.7.0 TLS handshake failed"
        logger.exception("SMTP sink: session error")
        return "451 4.3.0 Internal sink error"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        expected = self._config().auth
        if expected is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username, password = expected
        ok = auth_data.login == username.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)


def abort_transport(transport: asyncio.BaseTransport | None) -> None:
    """Close without goodbye or flushing, like a crashed server or a cut cable."""
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    elif transport is not None:
        transport.close()


def _match(address: str, table: dict[str, Any] | set[str]) -> str | None:
    address = address.lower()
    if address in table:
        return address
    domain_key = "@" + address.rpartition("@")[2]
    return domain_key if domain_key in table else None
