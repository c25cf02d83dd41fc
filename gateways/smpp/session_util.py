"""Value types and pure helpers of the SMPP client adapter (:mod:`gateways.smpp.client`).

Nothing here touches a socket or smpplib: the adapter's data types (bind settings, submits, their
results and the bookkeeping of one ``submit_many()``, incoming deliver_sm, session counters) and
SMPP address and time formatting. Import the public names from :mod:`gateways.smpp.client`.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal, TypedDict

from gateways.smpp.errors import ErrorTable, is_throttle

__all__ = [
    "BindConfig",
    "BindMode",
    "Call",
    "Deliver",
    "DeliverHandler",
    "GatewayCheckError",
    "Outcome",
    "ResultHook",
    "SessionCounters",
    "SessionStats",
    "Submit",
    "SubmitResult",
    "describe_status",
    "smpp_absolute_time",
    "source_ton_npi",
    "submit_sm_fields",
]

BindMode = Literal["transceiver", "transmitter_receiver"]

# SMPP 3.4 §5.2: C-Octet String maxima without the NUL. smpplib cuts longer values silently.
_MAX_SYSTEM_ID = 15
_MAX_PASSWORD = 8
_MAX_SYSTEM_TYPE = 12
_MAX_ADDRESS = 20
_MAX_ALPHANUMERIC_SENDER = 11  # GSM 03.40 TP-OA: 11 characters in a 7-bit alphanumeric address
_MAX_SHORT_MESSAGE = 254

_DIGITS = re.compile(r"[0-9]+")


class GatewayCheckError(Exception):
    """A one-shot bind check failed; the message names the gateway, host:port and the SMPP error."""


@dataclass(frozen=True)
class BindConfig:
    """How to reach and bind one carrier account. ``repr`` never shows the password."""

    name: str  # gateway name, for logs and thread names
    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    system_type: str = ""
    bind_mode: BindMode = "transceiver"
    window: int = 10  # outstanding submit_sm per session
    enquire_link_s: float = 30.0  # idle time (nothing received) before an enquire_link
    response_timeout_s: float = 30.0  # a submit (or enquire_link) unanswered this long is given up
    connect_timeout_s: float = 10.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.system_id.isascii() or not 0 < len(self.system_id) <= _MAX_SYSTEM_ID:
            raise ValueError(f"{self.name}: system_id must be 1..{_MAX_SYSTEM_ID} ASCII characters")
        if not self.password.isascii():
            raise ValueError(f"{self.name}: the SMPP password must be ASCII")
        if not self.system_type.isascii() or len(self.system_type) > _MAX_SYSTEM_TYPE:
            raise ValueError(f"{self.name}: system_type must be at most {_MAX_SYSTEM_TYPE} ASCII characters")
        if self.bind_mode not in ("transceiver", "transmitter_receiver"):
            raise ValueError(f"{self.name}: bind_mode must be transceiver or transmitter_receiver")
        if not 0 < self.port < 65536:
            raise ValueError(f"{self.name}: port out of range: {self.port}")
        if self.window < 1:
            raise ValueError(f"{self.name}: window must be at least 1")
        for label in ("enquire_link_s", "response_timeout_s", "connect_timeout_s", "reconnect_initial_s"):
            if not getattr(self, label) > 0:
                raise ValueError(f"{self.name}: {label} must be positive")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(f"{self.name}: reconnect_max_s must be >= reconnect_initial_s")

    @property
    def password_truncated(self) -> bool:
        """SMPP 3.4 passwords hold 8 characters; longer ones go out cut to 8 (as smpplib sends them)."""
        return len(self.password) > _MAX_PASSWORD


@dataclass(frozen=True)
class Submit:
    """One submit_sm (one segment). ``short_message`` is kept out of ``repr``: it may be a credential."""

    ref: Hashable  # the caller's key, e.g. (message_id, segment_index)
    source_addr: str  # alphanumeric → TON 5 / NPI 0; digits, optionally with a leading + → TON 1 / NPI 1
    destination: str  # E.164 with or without '+', sent as digits with TON 1 / NPI 1
    short_message: bytes = field(repr=False)  # already encoded, UDH included when esm_class has 0x40
    data_coding: int  # 0 GSM-7 (one septet per octet) or 8 UCS-2
    esm_class: int = 0
    validity_period: datetime | None = None  # aware; sent as SMPP absolute time in UTC
    registered_delivery: int = 1

    def __post_init__(self) -> None:
        # Checked here because smpplib would cut an over-long address or fail deep inside encoding.
        digits = self.destination.removeprefix("+")
        if not _DIGITS.fullmatch(digits) or len(digits) > _MAX_ADDRESS:
            raise ValueError(f"destination must be up to {_MAX_ADDRESS} digits, optionally after '+'")
        ton, _ = source_ton_npi(self.source_addr)
        sender = self.source_addr.removeprefix("+") if ton == 1 else self.source_addr
        limit = _MAX_ALPHANUMERIC_SENDER if ton == 5 else _MAX_ADDRESS
        if not self.source_addr.isascii() or len(sender) > limit:
            raise ValueError(f"source_addr {self.source_addr!r} must be ASCII and at most {limit} characters")
        if len(self.short_message) > _MAX_SHORT_MESSAGE:
            raise ValueError(f"short_message is {len(self.short_message)} octets; SMPP allows 254")
        for label in ("data_coding", "esm_class", "registered_delivery"):
            if not 0 <= getattr(self, label) <= 0xFF:
                raise ValueError(f"{label} must fit in one octet")
        if self.validity_period is not None:
            smpp_absolute_time(self.validity_period)  # raises for a naive datetime


class Outcome(StrEnum):
    OK = "ok"  # submit_sm_resp with status 0; provider_id holds the SMSC's message id
    ERROR = "error"  # an error status (submit_sm_resp or generic_nack); command_status holds it
    AMBIGUOUS = "ambiguous"  # written, but no response (session died or response timeout)
    NOT_SENT = "not_sent"  # never written to the socket: safe to retry


@dataclass(frozen=True)
class SubmitResult:
    ref: Hashable
    outcome: Outcome
    provider_id: str | None = None  # message_id from submit_sm_resp, as received
    command_status: int | None = None  # for ERROR


@dataclass(frozen=True)
class Deliver:
    """An incoming deliver_sm: a delivery receipt, or an MO message (a reply).

    ``short_message`` stays out of ``repr``: a receipt quotes the start of the message it reports
    on, and that may be a credential.
    """

    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes = field(repr=False)
    receipted_message_id: str | None
    message_state: int | None

    @property
    def is_receipt(self) -> bool:
        return bool(self.esm_class & 0x04)


# Called with a batch of deliver_sm; each is acknowledged only after it returns (0x64 if it raises).
DeliverHandler = Callable[[Sequence[Deliver]], None]


# Told each result the moment it is known (index into the items, the result). It runs on the
# session's reader thread with the link's lock held: it must be quick and must not block.
ResultHook = Callable[[int, "SubmitResult"], None]


@dataclass(eq=False)
class Call:
    """One ``submit_many()``: its items and their results so far (guarded by the link's condition)."""

    items: Sequence[Submit]
    results: list[SubmitResult | None]
    outstanding: set[int] = field(default_factory=set)
    on_result: ResultHook | None = None

    def settle(
        self,
        seq: int,
        index: int,
        outcome: Outcome,
        provider_id: str | None = None,
        status: int | None = None,
    ) -> None:
        self.outstanding.discard(seq)
        result = SubmitResult(self.items[index].ref, outcome, provider_id, status)
        self.results[index] = result
        if self.on_result is not None:
            self.on_result(index, result)

    def final_results(self) -> list[SubmitResult]:
        """The results, NOT_SENT for every item that was never written."""
        return [
            result if result is not None else SubmitResult(self.items[index].ref, Outcome.NOT_SENT)
            for index, result in enumerate(self.results)
        ]


class SessionStats(TypedDict):
    """A snapshot of one session's counters (:attr:`SmppSession.stats`)."""

    submits: int  # submit_sm written to the socket
    responses: dict[int, int]  # submit_sm_resp / matched generic_nack, by command_status
    throttles: int  # responses with 0x58 ESME_RTHROTTLED or 0x14 ESME_RMSGQFUL
    response_timeouts: int  # submits given up as AMBIGUOUS after response_timeout_s
    late_responses: int  # submit_sm_resp for nothing pending (after a timeout)
    generic_nacks: int
    max_outstanding: int  # the highest window occupancy seen
    binds: int  # successful binds (one per connection)
    bind_failures: int  # failed connect or bind attempts
    reconnects: int  # sessions re-established after a loss
    enquire_links: int  # enquire_link sent by us
    delivers: int  # deliver_sm handed to on_deliver and acknowledged with 0
    deliver_failures: int  # deliver_sm answered 0x64 because on_deliver raised
    last_error: str | None


CounterName = Literal[
    "submits",
    "response_timeouts",
    "late_responses",
    "generic_nacks",
    "binds",
    "bind_failures",
    "reconnects",
    "enquire_links",
    "delivers",
    "deliver_failures",
]


class SessionCounters:
    """The counters behind ``SmppSession.stats``, shared by the session's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[CounterName] = Counter()
        self._responses: Counter[int] = Counter()
        self._throttles = 0
        self._max_outstanding = 0
        self._last_error: str | None = None

    def add(self, name: CounterName, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def response(self, status: int) -> None:
        """A submit answered (submit_sm_resp, or a generic_nack matched to it) with ``status``."""
        with self._lock:
            self._responses[status] += 1
            if is_throttle(status):
                self._throttles += 1

    def outstanding(self, n: int) -> None:
        with self._lock:
            self._max_outstanding = max(self._max_outstanding, n)

    def error(self, reason: str) -> None:
        with self._lock:
            self._last_error = reason

    def snapshot(self) -> SessionStats:
        with self._lock:
            counts = self._counts
            return SessionStats(
                submits=counts["submits"],
                responses=dict(self._responses),
                throttles=self._throttles,
                response_timeouts=counts["response_timeouts"],
                late_responses=counts["late_responses"],
                generic_nacks=counts["generic_nacks"],
                max_outstanding=self._max_outstanding,
                binds=counts["binds"],
                bind_failures=counts["bind_failures"],
                reconnects=counts["reconnects"],
                enquire_links=counts["enquire_links"],
                delivers=counts["delivers"],
                deliver_failures=counts["deliver_failures"],
                last_error=self._last_error,
            )


def source_ton_npi(addr: str) -> tuple[int, int]:
    """TON/NPI for a sender: digits (optionally after '+') are international/ISDN, else alphanumeric.

    An empty sender gets 0/0, leaving the choice to the SMSC's default for the account.
    """
    if not addr:
        return 0, 0
    if _DIGITS.fullmatch(addr.removeprefix("+")):
        return 1, 1
    return 5, 0


def smpp_absolute_time(dt: datetime) -> str:
    """An aware datetime as SMPP 3.4 absolute time in UTC: ``YYMMDDhhmmss000+``."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("SMPP times need an aware datetime (naive ones are ambiguous)")
    return dt.astimezone(UTC).strftime("%y%m%d%H%M%S") + "000+"


def submit_sm_fields(item: Submit) -> dict[str, object]:
    """The submit_sm fields for one :class:`Submit`, as smpplib's encoder takes them."""
    ton, npi = source_ton_npi(item.source_addr)
    validity = item.validity_period
    return {
        "service_type": "",
        "source_addr_ton": ton,
        "source_addr_npi": npi,
        "source_addr": item.source_addr.removeprefix("+") if ton == 1 else item.source_addr,
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "destination_addr": item.destination.removeprefix("+"),
        "esm_class": item.esm_class,
        "registered_delivery": item.registered_delivery,
        "data_coding": item.data_coding,
        "short_message": item.short_message,
        "validity_period": smpp_absolute_time(validity) if validity is not None else None,
    }


_STATUS_NAMES = ErrorTable()


def describe_status(code: int) -> str:
    """``"0x0000000E ESME_RINVPASWD"``: a command_status as logs and error messages show it."""
    return _STATUS_NAMES.describe(code)
