"""What the SMSC simulator saw: counters, per-second submit counts, the submit log, sessions.

The simulator's event loop thread writes; tests, benchmarks and the demo read from other threads.
Every write and every composite read holds one lock, so a reader never sees a half-updated
per-second table or log. Import these names from :mod:`gateways.smpp.simulator`.
"""

from __future__ import annotations

import threading
from typing import Literal, NamedTuple

__all__ = ["Counter", "SmscStats", "SubmitRecord"]

# The plain integer counters of SmscStats that SmscStats.add() may bump.
Counter = Literal[
    "throttled",
    "rejected",
    "generic_nacks",
    "unanswered",
    "receipts_sent",
    "receipts_acked",
    "mo_sent",
    "mo_acked",
    "enquire_links",
]


class SubmitRecord(NamedTuple):
    """One accepted submit_sm (a segment of a long message is a record of its own)."""

    system_id: str
    source_addr: str
    destination_addr: str
    short_message: bytes
    esm_class: int
    data_coding: int
    message_id: str  # as written in submit_sm_resp
    received_at: float  # time.time()
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    registered_delivery: int = 0
    validity_period: str = ""  # as sent: SMPP absolute or relative time, "" when absent


class SmscStats:
    """Counters of one simulator; safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.submits = 0  # accepted submit_sm: answered 0, or left unanswered by unanswered_every
        self.throttled = 0  # answered 0x58 ESME_RTHROTTLED
        self.rejected = 0  # answered another error status (reject_prefixes, invalid fields)
        self.generic_nacks = 0  # submit_sm answered with generic_nack (fault injection)
        self.unanswered = 0  # accepted but never answered (fault injection)
        self.receipts_sent = 0  # deliver_sm receipts written, redeliveries included
        self.receipts_acked = 0  # deliver_sm_resp with status 0 for a receipt
        self.mo_sent = 0  # MO deliver_sm written
        self.mo_acked = 0  # deliver_sm_resp with status 0 for an MO message
        self.enquire_links = 0  # enquire_link received
        self._per_second: dict[str, dict[int, int]] = {}
        self._log: list[SubmitRecord] = []
        self._seen: set[tuple[str, bytes]] = set()
        self._duplicates = 0
        self._sessions: dict[str, int] = {}
        self._max_sessions: dict[str, int] = {}
        self._max_outstanding: dict[str, int] = {}

    # -- reads ---------------------------------------------------------------------------------

    def per_second(self, system_id: str) -> dict[int, int]:
        """Calendar second (``int(time.time())``) → submit_sm *received* from ``system_id``.

        Every submit_sm counts, whatever its answer (accepted, throttled, rejected, nacked): this
        is what a carrier's TPS cap is judged on.
        """
        with self._lock:
            return dict(self._per_second.get(system_id, {}))

    @property
    def log(self) -> list[SubmitRecord]:
        """A snapshot of every accepted submit_sm, in arrival order (empty if keep_log is off)."""
        with self._lock:
            return list(self._log)

    def duplicates(self) -> int:
        """Accepted submits whose (destination_addr, short_message) had been accepted before."""
        with self._lock:
            return self._duplicates

    def sessions(self, system_id: str) -> int:
        """Sessions of ``system_id`` bound right now."""
        with self._lock:
            return self._sessions.get(system_id, 0)

    def max_outstanding(self, system_id: str) -> int:
        """Most submit_sm one session of ``system_id`` had unanswered at once (its window)."""
        with self._lock:
            return self._max_outstanding.get(system_id, 0)

    def max_sessions(self, system_id: str) -> int:
        """Peak number of concurrently bound sessions of ``system_id``."""
        with self._lock:
            return self._max_sessions.get(system_id, 0)

    def reset(self) -> None:
        """Zero the counters and forget the log; bound sessions stay bound and counted."""
        with self._lock:
            self.submits = self.throttled = self.rejected = 0
            self.generic_nacks = self.unanswered = 0
            self.receipts_sent = self.receipts_acked = 0
            self.mo_sent = self.mo_acked = 0
            self.enquire_links = 0
            self._per_second = {}
            self._log = []
            self._seen = set()
            self._duplicates = 0
            self._max_sessions = dict(self._sessions)
            self._max_outstanding = {}

    # -- writes (simulator loop thread) --------------------------------------------------------

    def count_received(self, system_id: str, second: int) -> None:
        with self._lock:
            counts = self._per_second.get(system_id)
            if counts is None:
                counts = self._per_second[system_id] = {}
            counts[second] = counts.get(second, 0) + 1

    def count_accepted(self, record: SubmitRecord, keep_log: bool) -> None:
        with self._lock:
            self.submits += 1
            if keep_log:
                self._log.append(record)
                key = (record.destination_addr, record.short_message)
                if key in self._seen:
                    self._duplicates += 1
                else:
                    self._seen.add(key)

    def add(self, counter: Counter, n: int = 1) -> None:
        """Add ``n`` to one of the public integer counters, e.g. ``add("throttled")``."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)

    def note_outstanding(self, system_id: str, n: int) -> None:
        with self._lock:
            if n > self._max_outstanding.get(system_id, 0):
                self._max_outstanding[system_id] = n

    def session_bound(self, system_id: str) -> None:
        with self._lock:
            now = self._sessions.get(system_id, 0) + 1
            self._sessions[system_id] = now
            if now > self._max_sessions.get(system_id, 0):
                self._max_sessions[system_id] = now

    def session_unbound(self, system_id: str) -> None:
        with self._lock:
            self._sessions[system_id] = self._sessions.get(system_id, 1) - 1
