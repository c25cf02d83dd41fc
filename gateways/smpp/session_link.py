"""One connection of an SMPP session: framing, the write lock, its reader, the submits in flight.

A :class:`Link` is one bound TCP connection (the bind handshake lives in
:mod:`gateways.smpp.client`, which owns smpplib and hands its encoder in as a
:class:`PduEncoder`). It frames PDUs, serialises writes, answers the SMSC's enquire_link and
unbind, sends our enquire_link when idle, passes deliver_sm on, and keeps the window: each submit
in flight is settled OK or ERROR by its response (matched by sequence number), or AMBIGUOUS after
the response timeout or when the connection dies.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateways.smpp.session_incoming import (
    HEADER_LENGTH,
    Header,
    Incoming,
    PduError,
    parse_deliver_sm,
    parse_header,
    parse_message_id,
)
from gateways.smpp.session_util import Call, Outcome, SessionCounters, describe_status

__all__ = ["Link", "LinkDown", "PduEncoder", "Role"]

logger = logging.getLogger(__name__)

# SMPP 3.4 §5.1.2 command ids of the PDUs we receive.
GENERIC_NACK = 0x80000000
SUBMIT_SM_RESP = 0x80000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
UNBIND_RESP = 0x80000006
ENQUIRE_LINK = 0x00000015
ENQUIRE_LINK_RESP = 0x80000015
ALERT_NOTIFICATION = 0x00000102
RESPONSE_BIT = 0x80000000

ESME_RINVCMDID = 0x03
ESME_RSYSERR = 0x08
ESME_RX_P_APPN = 0x65  # permanent application error: the SMSC gives the deliver_sm up

# After a write found the peer gone, how long the reader may take to drain and meet EOF.
WRITE_ERROR_GRACE_S = 1.0

Role = Literal["trx", "tx", "rx"]


class PduEncoder(Protocol):
    """Encodes the PDUs we send (implemented with smpplib in :mod:`gateways.smpp.client`)."""

    def request(self, command: str, sequence: int, **fields: object) -> bytes: ...

    def response(self, command: str, sequence: int, status: int = 0) -> bytes: ...


class LinkDown(Exception):
    """A connection is unusable (connect, bind, I/O or protocol failure); the message says why."""


class _PeerGone(LinkDown):
    """A write found the connection closed or reset: nothing of the PDU went out."""


@dataclass(slots=True)
class _Pending:
    call: Call
    index: int
    deadline: float


def _ignore_incoming(_item: Incoming) -> None:
    """Until start_reader() sets the session's handlers."""


def _ignore_dead(_link: Link) -> None:
    """Until start_reader() sets the session's handlers."""


class Link:
    """One bound connection. ``pending``, the enquire_link state and ``dead`` live under ``cond``."""

    def __init__(
        self,
        *,
        name: str,
        role: Role,
        sock: socket.socket,
        encoder: PduEncoder,
        counters: SessionCounters,
        response_timeout_s: float,
        closing: threading.Event | None = None,
    ) -> None:
        self.name = name  # the gateway's, for logs
        self.role: Role = role
        self.cond = threading.Condition()
        self.dead = False
        self.reason = ""
        self.last_rx = time.monotonic()
        self.unbind_acked = threading.Event()
        self.reader: threading.Thread | None = None
        self._sock = sock
        self._encoder = encoder
        self._counters = counters
        self._timeout = response_timeout_s
        self._closing = closing or threading.Event()
        self._write_lock = threading.Lock()
        self._seq_lock = threading.Lock()
        self._sequence = 0
        self._buffer = bytearray()
        self._pending: dict[int, _Pending] = {}
        self._enquire_seq: int | None = None
        self._enquire_sent_at = 0.0
        self._write_error: str | None = None  # set when a write found the peer gone
        self._write_error_at = 0.0
        self._on_incoming: Callable[[Incoming], None] = _ignore_incoming
        self._on_dead: Callable[[Link], None] = _ignore_dead

    # --- framing and writing -------------------------------------------------------------------

    def next_sequence(self) -> int:
        with self._seq_lock:
            self._sequence = self._sequence % 0x7FFFFFFF + 1
            return self._sequence

    def send(self, data: bytes) -> None:
        # The reader answers enquire_link/unbind and the deliver thread acks receipts while a
        # caller writes submits: without the lock their bytes could interleave mid-PDU.
        with self._write_lock:
            try:
                self._sock.sendall(data)
            except TimeoutError:
                # Part of a PDU may be out: the stream is out of step for good.
                raise LinkDown(f"write timed out after {self._timeout:g} s") from None
            except OSError as exc:
                raise _PeerGone(f"write failed: {exc}") from None

    def request(self, command: str, **fields: object) -> int:
        """Send a request PDU; returns its sequence number."""
        seq = self.next_sequence()
        self.send(self._encoder.request(command, seq, **fields))
        return seq

    def respond(self, command: str, sequence: int, status: int = 0) -> None:
        self.send(self._encoder.response(command, sequence, status))

    def ack_delivers(self, sequences: Sequence[int], status: int) -> None:
        """Answer deliver_sm received on this link, in one write."""
        if self.dead:
            return  # a sequence number means nothing on another connection: the SMSC redelivers
        acks = b"".join(self._encoder.response("deliver_sm_resp", seq, status) for seq in sequences)
        try:
            self.send(acks)
        except LinkDown as exc:
            self.kill(str(exc))

    def read_pdu(self) -> tuple[Header, bytes] | None:
        """The next PDU, or None when the socket timeout passed first; LinkDown on EOF or garbage."""
        while True:
            if len(self._buffer) >= HEADER_LENGTH:
                try:
                    header = parse_header(self._buffer)
                except PduError as exc:
                    raise LinkDown(f"protocol error: {exc}") from None
                if len(self._buffer) >= header.length:
                    body = bytes(self._buffer[HEADER_LENGTH : header.length])
                    del self._buffer[: header.length]
                    self.last_rx = time.monotonic()
                    return header, body
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise LinkDown(f"read failed: {exc}") from None
            if not chunk:
                raise LinkDown("connection closed by the SMSC")
            self._buffer += chunk

    def set_read_timeout(self, seconds: float) -> None:
        self._sock.settimeout(seconds)

    def _shutdown(self) -> None:
        # Unblocks a reader or writer in another thread at once, where close() alone would not.
        with contextlib.suppress(OSError):  # never connected, or already shut
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._shutdown()
        self._sock.close()

    # --- life and death ------------------------------------------------------------------------

    def start_reader(
        self, thread_name: str, on_incoming: Callable[[Incoming], None], on_dead: Callable[[Link], None]
    ) -> None:
        self._on_incoming = on_incoming
        self._on_dead = on_dead
        self.reader = threading.Thread(target=self._read_loop, name=thread_name, daemon=True)
        self.reader.start()

    def kill(self, reason: str) -> None:
        """Mark the link dead (once): its in-flight submits become AMBIGUOUS, its socket shuts."""
        with self.cond:
            if self.dead:
                return
            self.dead = True
            self.reason = reason
            lost = len(self._pending)
            for seq, pending in self._pending.items():
                pending.call.settle(seq, pending.index, Outcome.AMBIGUOUS)
            self._pending.clear()
            self.cond.notify_all()
        self._shutdown()  # the reader closes the socket on its way out
        if not self._closing.is_set():
            self._counters.error(reason)
            logger.warning(
                "smpp %s: %s connection lost: %s (%d submits in flight now ambiguous)",
                self.name,
                self.role,
                reason,
                lost,
            )
        self._on_dead(self)

    def keepalive(self, idle_s: float, timeout_s: float) -> float:
        """enquire_link after ``idle_s`` without a PDU; kill when unanswered. Seconds to the next check."""
        now = time.monotonic()
        with self.cond:
            if self.dead:
                return 0.0
            sent_at = self._enquire_sent_at if self._enquire_seq is not None else None
            write_error, failed_at = self._write_error, self._write_error_at
        if write_error is not None:
            if now < failed_at + WRITE_ERROR_GRACE_S:
                return failed_at + WRITE_ERROR_GRACE_S - now
            self.kill(write_error)
            return 0.0
        if sent_at is not None:
            if now < sent_at + timeout_s:
                return sent_at + timeout_s - now
            self.kill(f"no enquire_link_resp within {timeout_s:g} s")
            return 0.0
        if now < self.last_rx + idle_s:
            return self.last_rx + idle_s - now
        seq = self.next_sequence()
        with self.cond:
            self._enquire_seq, self._enquire_sent_at = seq, now
        self._counters.add("enquire_links")
        try:
            self.send(self._encoder.request("enquire_link", seq))
        except LinkDown as exc:
            self.kill(str(exc))
        return timeout_s

    # --- the window ----------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        with self.cond:
            return len(self._pending)

    def wait_for_slot(self, window: int) -> bool:
        """Block until fewer than ``window`` submits are in flight; False if the link died or closing."""
        with self.cond:
            while True:
                if self.dead or self._write_error or self._closing.is_set():
                    return False
                self._expire()
                if len(self._pending) < window:
                    return True
                self.cond.wait(self._until_next_deadline())

    def submit(self, call: Call, index: int, fields: dict[str, object]) -> bool:
        """Write one submit_sm for ``call.items[index]``; False (item left NOT_SENT) if that failed."""
        seq = self.next_sequence()
        data = self._encoder.request("submit_sm", seq, **fields)
        with self.cond:
            if self.dead or self._write_error or self._closing.is_set():
                return False
            # Registered before the write: the response can beat us back from the socket.
            self._pending[seq] = _Pending(call, index, time.monotonic() + self._timeout)
            call.outstanding.add(seq)
            self._counters.outstanding(len(self._pending))
        try:
            self.send(data)
        except LinkDown as exc:
            with self.cond:
                # sendall() failed, so the PDU did not go out whole and cannot have been
                # processed: NOT_SENT, even if a concurrent kill() already said AMBIGUOUS.
                self._pending.pop(seq, None)
                call.outstanding.discard(seq)
                call.results[index] = None
            self._write_failed(exc)
            return False
        self._counters.add("submits")
        with self.cond:
            pending = self._pending.get(seq)
            if pending is not None:  # the timeout runs from the write, not from the queueing
                pending.deadline = time.monotonic() + self._timeout
        return True

    def _write_failed(self, exc: LinkDown) -> None:
        if not isinstance(exc, _PeerGone):
            self.kill(str(exc))
            return
        # The SMSC closed the connection. Responses it wrote before closing may still sit in our
        # receive buffer: the reader drains them and then meets EOF (and kills the link), so they
        # settle as OK/ERROR instead of AMBIGUOUS, which would mean duplicates. Nothing more is
        # written meanwhile; keepalive() kills the link should the reader never see the end.
        with self.cond:
            if self._write_error is None:
                self._write_error = str(exc)
                self._write_error_at = time.monotonic()
            self.cond.notify_all()

    def await_call(self, call: Call) -> None:
        """Block until every submit of ``call`` on this link is settled."""
        with self.cond:
            # kill() settles everything in flight, so this also ends when the link dies.
            while call.outstanding and not self.dead:
                self._expire()
                if call.outstanding:
                    self.cond.wait(self._until_next_deadline())

    def _expire(self) -> None:
        now = time.monotonic()
        expired = [seq for seq, pending in self._pending.items() if pending.deadline <= now]
        for seq in expired:
            pending = self._pending.pop(seq)
            pending.call.settle(seq, pending.index, Outcome.AMBIGUOUS)
        if expired:
            self._counters.add("response_timeouts", len(expired))
            self.cond.notify_all()  # slots opened for any other waiter
            logger.warning(
                "smpp %s: %d submit_sm unanswered after %g s, now ambiguous",
                self.name,
                len(expired),
                self._timeout,
            )

    def _until_next_deadline(self) -> float:
        now = time.monotonic()
        nearest = min((pending.deadline for pending in self._pending.values()), default=now + 1.0)
        return max(0.0, nearest - now)

    # --- reading -------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while not self.dead:
                frame = self.read_pdu()
                if frame is not None:
                    self._dispatch(*frame)
        except LinkDown as exc:
            self.kill(str(exc))
        except Exception as exc:
            logger.exception("smpp %s: %s reader failed", self.name, self.role)
            self.kill(f"reader failed: {exc!r}")
        finally:
            self.close()

    def _dispatch(self, header: Header, body: bytes) -> None:
        command, seq, status = header.command_id, header.sequence, header.status
        if command == SUBMIT_SM_RESP:
            self._settle_response(seq, status, parse_message_id(body) if status == 0 else None)
        elif command == DELIVER_SM:
            self._on_deliver_sm(seq, body)
        elif command == ENQUIRE_LINK:
            self.respond("enquire_link_resp", seq)
        elif command == ENQUIRE_LINK_RESP:
            with self.cond:
                if self._enquire_seq == seq:
                    self._enquire_seq = None
        elif command == GENERIC_NACK:
            self._on_generic_nack(seq, status)
        elif command == UNBIND:
            self.respond("unbind_resp", seq)
            self.kill("the SMSC unbound the session")
        elif command == UNBIND_RESP:
            self.unbind_acked.set()
        elif command == ALERT_NOTIFICATION or command & RESPONSE_BIT:
            logger.debug("smpp %s: ignoring command 0x%08X (sequence %d)", self.name, command, seq)
        else:
            self.respond("generic_nack", seq, ESME_RINVCMDID)

    def _settle_response(self, seq: int, status: int, message_id: str | None) -> None:
        self._counters.response(status)
        with self.cond:
            pending = self._pending.pop(seq, None)
            if pending is not None:
                outcome = Outcome.OK if status == 0 else Outcome.ERROR
                pending.call.settle(seq, pending.index, outcome, message_id, None if status == 0 else status)
                self.cond.notify_all()
        if pending is None:
            self._counters.add("late_responses")
            logger.info("smpp %s: submit_sm_resp for sequence %d came after its timeout", self.name, seq)

    def _on_generic_nack(self, seq: int, status: int) -> None:
        self._counters.add("generic_nacks")
        with self.cond:
            matches_submit = seq in self._pending
            if self._enquire_seq == seq:
                self._enquire_seq = None  # it answered, so the link is alive
                return
        if matches_submit:
            # A nack without a status says nothing about the message: call it a system error,
            # which the default error table treats as transient.
            self._settle_response(seq, status or ESME_RSYSERR, None)
            return
        self.kill(f"generic_nack {describe_status(status)} for sequence {seq}, matching nothing we sent")

    def _on_deliver_sm(self, seq: int, body: bytes) -> None:
        try:
            deliver = parse_deliver_sm(body)
        except PduError as exc:
            # Answered as a permanent failure: a temporary one would bring it back forever.
            logger.error(
                "smpp %s: undecodable deliver_sm (sequence %d, %d octets): %s; rejected",
                self.name,
                seq,
                len(body),
                exc,
            )
            self.respond("deliver_sm_resp", seq, ESME_RX_P_APPN)
            return
        self._on_incoming(Incoming(self, seq, deliver))
