"""A connection pool for one SMTP relay on top of aiosmtplib (which has none).

:class:`SmtpPool` keeps up to ``cfg.connections`` long-lived, authenticated connections and
reuses each for many messages: one MAIL/RCPT/DATA transaction per message, RSET after a refused
one, NOOP before reusing a connection that sat idle, a fresh connection after
``max_messages_per_connection`` messages. Connecting retries with exponential backoff and jitter
(tenacity); when that fails the pool answers ``TRANSIENT`` immediately for ``down_cooldown_s``
so a batch for a dead relay finishes fast and is rescheduled, instead of each message waiting
through its own reconnect attempts.

A pool belongs to the event loop that first uses it (its sockets do): keep one loop per worker
thread and one pool per relay on it. ``send`` never raises for relay trouble; it returns a
:class:`SendResult` whose outcome (see :mod:`gateways.smtp.relay`) drives retry, failure and
suppression.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import aiosmtplib
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from gateways.smtp.relay import (
    Outcome,
    RelayCheckError,
    RelayConfig,
    SendResult,
    Stage,
    check_relay,
    classify_reply,
    open_connection,
    ssl_cause,
)

__all__ = [
    "Outcome",
    "PoolClosedError",
    "PoolStats",
    "RelayCheckError",
    "RelayConfig",
    "SendResult",
    "SmtpPool",
    "check_relay",
]

logger = logging.getLogger(__name__)

_QUIT_TIMEOUT_S = 5.0


class PoolClosedError(RuntimeError):
    """``send`` was called after ``close``."""


@dataclass
class PoolStats:
    opened: int = 0  # connections ever opened
    sent: int = 0  # messages accepted by the relay
    connect_failures: int = 0  # connects that failed after all retries
    by_outcome: Counter[Outcome] = field(default_factory=Counter)


@dataclass(eq=False)
class _Connection:
    client: aiosmtplib.SMTP
    number: int
    last_used: float
    messages: int = 0


class _ConnectFailed(Exception):
    """Connecting to the relay failed; ``result`` is what ``send`` reports."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.text)
        self.result = result


def _worth_retrying(exc: BaseException) -> bool:
    # Network trouble is worth another try; a refused login or an untrusted certificate
    # (ssl errors are OSErrors too) will not change within seconds.
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) or ssl_cause(exc) is not None:
        return False
    return isinstance(
        exc,
        OSError | aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError,
    )


class SmtpPool:
    """Up to ``cfg.connections`` reusable connections to one relay."""

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.stats = PoolStats()
        # A slot is the right to hold one connection: at most cfg.connections exist at any time.
        self._slots = asyncio.Semaphore(cfg.connections)
        # Idle connections, most recently used last: reusing the warmest one lets surplus
        # connections age out instead of keeping every one of them barely alive.
        self._idle: list[_Connection] = []
        self._numbers = itertools.count(1)
        self._down_until = 0.0
        self._down_reason = ""
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        """Deliver one message to the relay and classify what happened."""
        self._check_usable()
        async with self._slots:
            result = await self._send_in_slot(envelope_from, recipient, data)
        self.stats.by_outcome[result.outcome] += 1
        if result.outcome is Outcome.SENT:
            self.stats.sent += 1
        return result

    async def close(self) -> None:
        """QUIT every idle connection; connections still sending are closed when they finish."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(conn) for conn in idle))

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # -- internals --------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise PoolClosedError(f"SMTP pool for relay {self.cfg.name} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                f"SMTP pool for relay {self.cfg.name} is bound to another event loop; "
                "create one pool per loop (sockets cannot move between loops)"
            )

    async def _send_in_slot(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        try:
            conn, reused = await self._checkout()
        except _ConnectFailed as failed:
            return failed.result
        healthy = False
        try:
            result, healthy, reached_data = await self._transact(conn, envelope_from, recipient, data)
            if not healthy and reused and not reached_data and result.code in (None, 421):
                # The relay dropped a connection we had parked (idle timeout, restart): the
                # message never reached it, so one more try on a fresh connection cannot
                # duplicate it.
                logger.debug("relay %s: connection %d went stale, retrying", self.cfg.name, conn.number)
                conn.client.close()
                try:
                    conn = await self._connect()
                except _ConnectFailed as failed:
                    return failed.result
                result, healthy, _ = await self._transact(conn, envelope_from, recipient, data)
            return result
        finally:
            # Also on cancellation: a connection left mid-transaction must never be reused.
            if healthy:
                await self._checkin(conn)
            else:
                conn.client.close()

    async def _checkout(self) -> tuple[_Connection, bool]:
        """A live connection (reused when possible) and whether it was reused."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.client.is_connected:
                conn.client.close()
                continue
            if time.monotonic() - conn.last_used >= self.cfg.noop_after_idle_s:
                try:
                    await conn.client.noop()
                except (aiosmtplib.SMTPException, OSError) as exc:
                    logger.debug("relay %s: idle connection %d failed NOOP: %s", self.cfg.name, conn.number, exc)
                    conn.client.close()
                    continue
            return conn, True
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        now = time.monotonic()
        if now < self._down_until:
            raise _ConnectFailed(SendResult(Outcome.TRANSIENT, None, self._down_reason))
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.cfg.connect_attempts),
                # Spelled as a sum: wait_exponential_jitter's arguments changed across tenacity 8/9.
                wait=wait_exponential(multiplier=0.2, max=5.0) + wait_random(0, 0.5),
                retry=retry_if_exception(_worth_retrying),
                reraise=True,
            ):
                with attempt:
                    client = await open_connection(self.cfg)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.stats.connect_failures += 1
            reason = f"relay {self.cfg.name} ({self.cfg.address}) unavailable: {_describe(exc)}"
            self._down_until = time.monotonic() + self.cfg.down_cooldown_s
            self._down_reason = reason
            logger.warning("%s; answering transient for %.0f s", reason, self.cfg.down_cooldown_s)
            code = exc.code if isinstance(exc, aiosmtplib.SMTPResponseException) else None
            raise _ConnectFailed(SendResult(Outcome.TRANSIENT, code, reason)) from exc
        self.stats.opened += 1
        conn = _Connection(client=client, number=next(self._numbers), last_used=time.monotonic())
        logger.debug("relay %s: opened connection %d", self.cfg.name, conn.number)
        return conn

    async def _transact(
        self, conn: _Connection, envelope_from: str, recipient: str, data: bytes
    ) -> tuple[SendResult, bool, bool]:
        """One MAIL/RCPT/DATA transaction: (result, connection still usable, DATA was sent)."""
        client = conn.client
        stage: Stage = "mail"
        try:
            await client.mail(envelope_from)
            stage = "rcpt"
            await client.rcpt(recipient)
            stage = "data"
            response = await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            result = classify_reply(exc.code, exc.message, stage)
            # aiosmtplib already closed the connection on 421; otherwise end the transaction
            # so the next message starts clean.
            healthy = client.is_connected and await self._reset(conn)
            return result, healthy, stage == "data"
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # Lost the relay mid-transaction. Before DATA it cannot have the message; once DATA
            # went out it may have queued it before the link broke, so a resend may duplicate.
            outcome = Outcome.AMBIGUOUS if stage == "data" else Outcome.TRANSIENT
            text = f"connection lost during {stage.upper()}: {_describe(exc)}"
            logger.info("relay %s: %s (%s)", self.cfg.name, text, outcome)
            return SendResult(outcome, None, text), False, stage == "data"
        except UnicodeEncodeError:
            # A non-ASCII address: nothing was sent for this stage, the relay is fine.
            healthy = await self._reset(conn)
            return (
                SendResult(Outcome.PERMANENT, None, f"address not ASCII at {stage.upper()}"),
                healthy,
                False,
            )
        conn.messages += 1
        conn.last_used = time.monotonic()
        return SendResult(Outcome.SENT, response.code, " ".join(response.message.split())), True, True

    async def _reset(self, conn: _Connection) -> bool:
        try:
            await conn.client.rset()
        except (aiosmtplib.SMTPException, OSError):
            return False
        conn.last_used = time.monotonic()
        return True

    async def _checkin(self, conn: _Connection) -> None:
        if self._closed or conn.messages >= self.cfg.max_messages_per_connection:
            await self._quit(conn)
        else:
            self._idle.append(conn)

    async def _quit(self, conn: _Connection) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await conn.client.quit(timeout=_QUIT_TIMEOUT_S)
        conn.client.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {' '.join(exc.message.split())}"
    return str(exc) or type(exc).__name__
