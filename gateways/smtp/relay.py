"""SMTP relay settings, send outcomes, reply classification, and the relay check.

What lives here is everything about *one* relay that is not pooling: :class:`RelayConfig` (one
``[[smtp]]`` entry of the gateways file), the :class:`Outcome` of a send and how an SMTP reply
maps to it (:func:`classify_reply`), opening one authenticated aiosmtplib connection
(:func:`open_connection`), and :func:`check_relay` for ``loa gateways check``.
:mod:`gateways.smtp.pool` builds the connection pool on top and re-exports these names.

Outcome rules (DESIGN "Email facts"):

* 2xx after DATA -> ``SENT``;
* 4xx anywhere -> ``TRANSIENT`` (retry later, slowly);
* 530 (authentication or STARTTLS required, RFC 4954/3207) -> ``TRANSIENT``: our relay settings
  are wrong, not the message; failing a whole campaign for it would punish the recipients;
* 5xx -> ``PERMANENT``; ``suppress`` is set when the reply says the mailbox does not exist:
  enhanced status 5.1.x (except 5.1.7/5.1.8, which are about *our* sender address), or, from a
  server without enhanced codes, 550/551/553 at RCPT;
* connection lost or timed out before DATA -> ``TRANSIENT``; after DATA was sent ->
  ``AMBIGUOUS`` (the relay may have queued the message before the link broke).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import aiosmtplib

__all__ = [
    "Outcome",
    "RelayCheckError",
    "RelayConfig",
    "SendResult",
    "Stage",
    "check_relay",
    "classify_reply",
    "enhanced_status",
    "open_connection",
    "ssl_cause",
]

Stage = Literal["mail", "rcpt", "data"]

_ENHANCED_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# 5.1.7 / 5.1.8: the *sender* address is bad -- the recipient must not be suppressed for that.
_SENDER_SIDE_STATUS = frozenset({"5.1.7", "5.1.8"})
_MAILBOX_UNKNOWN_CODES = frozenset({550, 551, 553})


@dataclass(frozen=True)
class RelayConfig:
    """One SMTP relay. ``local_hostname`` is what we say in EHLO: pass the sender's FQDN."""

    name: str
    host: str
    port: int
    tls: Literal["none", "starttls", "tls"] = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    connections: int = 4
    local_hostname: str = "localhost"
    timeout_s: float = 30.0
    validate_certs: bool = True
    ca_file: str | None = None
    # Pool tuning; the defaults suit common relays (Postfix, Exchange, Microsoft 365, SES).
    noop_after_idle_s: float = 30.0  # verify a connection idle this long before using it
    # Recycle a connection after this many messages. Relays that cap messages per session
    # (Exchange's MaxMessagesPerConnection) answer 421, and the pool reconnects on that anyway.
    max_messages_per_connection: int = 1000
    connect_attempts: int = 3  # tries per connect, with exponential backoff and jitter
    down_cooldown_s: float = 10.0  # after connecting failed, answer TRANSIENT at once for this long

    def __post_init__(self) -> None:
        if self.tls not in ("none", "starttls", "tls"):
            raise ValueError(f"relay {self.name}: tls must be none, starttls or tls, not {self.tls!r}")
        if self.connections < 1:
            raise ValueError(f"relay {self.name}: connections must be at least 1")
        if self.connect_attempts < 1 or self.max_messages_per_connection < 1:
            raise ValueError(f"relay {self.name}: connect_attempts and max_messages_per_connection >= 1")
        if self.password and not self.username:
            raise ValueError(f"relay {self.name}: password given without username")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Outcome(StrEnum):
    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one message. ``code``/``text`` are the relay's last reply, if any."""

    outcome: Outcome
    code: int | None
    text: str
    suppress: bool = False  # the mailbox does not exist: add the address to the suppression list


class RelayCheckError(Exception):
    """``check_relay`` failed; the message says what to fix and names the relay."""


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply text (``"5.1.1"``), if any."""
    match = _ENHANCED_STATUS.match(text)
    return ".".join(match.groups()) if match else None


def classify_reply(code: int, text: str, stage: Stage) -> SendResult:
    """Map an SMTP reply at ``stage`` to an outcome (see the module docstring)."""
    text = " ".join(text.split())
    if 200 <= code < 300:
        return SendResult(Outcome.SENT, code, text)
    if 400 <= code < 500:
        return SendResult(Outcome.TRANSIENT, code, text)
    if code == 530:
        return SendResult(Outcome.TRANSIENT, code, f"relay wants AUTH or STARTTLS (check the relay settings): {text}")
    if 500 <= code < 600:
        status = enhanced_status(text)
        if stage == "mail":
            suppress = False  # MAIL FROM is about our sender, never about the recipient
        elif status is not None:
            suppress = status.startswith("5.1.") and status not in _SENDER_SIDE_STATUS
        else:
            suppress = stage == "rcpt" and code in _MAILBOX_UNKNOWN_CODES
        return SendResult(Outcome.PERMANENT, code, text, suppress=suppress)
    # 1xx/3xx where a final reply belongs: the relay misbehaves; try again later.
    return SendResult(Outcome.TRANSIENT, code, f"unexpected reply: {text}")


def _client(cfg: RelayConfig) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=cfg.host,
        port=cfg.port,
        local_hostname=cfg.local_hostname,
        timeout=cfg.timeout_s,
        use_tls=cfg.tls == "tls",
        # "none" means none: opportunistic STARTTLS against an unvalidated certificate would
        # fail where the operator asked for plain SMTP.
        start_tls=cfg.tls == "starttls",
        validate_certs=cfg.validate_certs,
        cert_bundle=cfg.ca_file,
        username=cfg.username or None,
        password=cfg.password if cfg.username else None,
    )


async def open_connection(cfg: RelayConfig) -> aiosmtplib.SMTP:
    """Connect, EHLO, STARTTLS/TLS and AUTH as configured; raises aiosmtplib/ssl/OS errors."""
    client = _client(cfg)
    await client.connect()
    if client.is_ehlo_or_helo_needed:
        # With tls="none" and no AUTH nothing has spoken EHLO yet; do it now so a broken relay
        # fails here, at connect time, not in the middle of a message.
        await client.ehlo()
    return client


async def check_relay(cfg: RelayConfig) -> str:
    """Connect, EHLO, TLS and AUTH as configured, then QUIT; return a one-line summary.

    Raises :class:`RelayCheckError` with a message naming the relay and the likely fix.
    """
    where = f"relay {cfg.name} ({cfg.address})"
    try:
        client = await open_connection(cfg)
    except Exception as exc:
        error = _check_error(cfg, where, exc)
        if error is None:
            raise
        raise error from exc
    try:
        tls_object = client.get_transport_info("ssl_object")
        tls = f"TLS {tls_object.version()}" if isinstance(tls_object, ssl.SSLObject) else "no TLS"
        auth = f"AUTH as {cfg.username}" if cfg.username else "no AUTH"
        extensions = sorted(name.upper() for name in client.esmtp_extensions)
        greeting = client.last_ehlo_response.message if client.last_ehlo_response else ""
        server = greeting.split()[0] if greeting.split() else "EHLO ok"
        return f"{where}: ok, EHLO answered by {server}, {tls}, {auth}, extensions {' '.join(extensions) or '-'}"
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error behind ``exc`` (aiosmtplib wraps implicit-TLS failures in SMTPConnectError)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _check_error(cfg: RelayConfig, where: str, exc: Exception) -> RelayCheckError | None:
    """A RelayCheckError that says what to fix; ``None`` for exceptions that are bugs."""
    tls_error = ssl_cause(exc)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        return RelayCheckError(
            f"{where}: TLS certificate not trusted ({tls_error.verify_message}); "
            "set ca_file to the relay's CA, or validate_certs = false for a test relay"
        )
    if tls_error is not None:
        return RelayCheckError(f"{where}: TLS handshake failed ({tls_error.reason}); check tls = {cfg.tls!r}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return RelayCheckError(f"{where}: authentication as {cfg.username!r} rejected: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        hint = " (does the port expect TLS from the first byte? then tls = 'tls')" if cfg.tls == "none" else ""
        return RelayCheckError(f"{where}: no answer within {cfg.timeout_s:g} s{hint}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return RelayCheckError(f"{where}: refused: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError) and not isinstance(
        exc, aiosmtplib.SMTPServerDisconnected
    ):
        return RelayCheckError(f"{where}: cannot connect: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        # "server does not support STARTTLS / AUTH", dropped connections.
        return RelayCheckError(f"{where}: {exc}")
    return None
