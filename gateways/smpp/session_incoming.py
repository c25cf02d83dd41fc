"""What the SMSC sends us: decoding incoming PDUs, and handing deliver_sm over to the caller.

Why our own decoder: smpplib 2.2.4 decodes incoming PDUs in ways that would cost receipts. A
standard TLV missing from its per-command table (0x0425 delivery_failure_reason in a deliver_sm,
say) raises ``KeyError``; a C-string TLV sent without its NUL (common for
``receipted_message_id``) loses its last character; a ``submit_sm_resp`` whose message_id lacks
the NUL decodes as an empty id. A receipt we cannot decode is redelivered forever, so incoming PDUs
are decoded here, tolerantly; smpplib still encodes everything we send.

:class:`DeliverBatcher` calls the caller's handler with batches of deliver_sm (up to 200, or
50 ms from the first) from its own thread, so a slow database never stalls the reader that
matches submit responses, and acknowledges each deliver_sm only after the handler returned.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from gateways.smpp.session_util import Deliver, DeliverHandler, SessionCounters

__all__ = [
    "HEADER_LENGTH",
    "MAX_PDU_LENGTH",
    "DeliverBatcher",
    "DeliverSource",
    "Header",
    "Incoming",
    "PduError",
    "parse_deliver_sm",
    "parse_header",
    "parse_message_id",
]

logger = logging.getLogger(__name__)

ESME_RX_T_APPN = 0x64  # temporary application error: the SMSC delivers the deliver_sm again later
DELIVER_BATCH_MAX = 200
DELIVER_BATCH_WAIT_S = 0.05

HEADER_LENGTH = 16
# Far above any PDU we expect (message_payload tops out near 64 KiB); a larger length field means
# the stream is out of step, and reading it would let a broken peer make us buffer gigabytes.
MAX_PDU_LENGTH = 70_000

_HEADER = struct.Struct(">LLLL")
_TLV_HEAD = struct.Struct(">HH")
_TAG_RECEIPTED_MESSAGE_ID = 0x001E
_TAG_MESSAGE_PAYLOAD = 0x0424
_TAG_MESSAGE_STATE = 0x0427


class PduError(ValueError):
    """Bytes that are not a well-formed SMPP PDU."""


class Header(NamedTuple):
    length: int
    command_id: int
    status: int
    sequence: int


def parse_header(data: bytes | bytearray) -> Header:
    """The 16-octet PDU header; raises :class:`PduError` for an impossible length."""
    if len(data) < HEADER_LENGTH:
        raise PduError("short PDU header")
    header = Header(*_HEADER.unpack_from(data))
    if not HEADER_LENGTH <= header.length <= MAX_PDU_LENGTH:
        raise PduError(f"PDU length {header.length} out of range")
    return header


def parse_message_id(body: bytes) -> str | None:
    """The message_id of a submit_sm_resp body (NUL terminator optional), ``None`` when empty."""
    raw = body.split(b"\0", 1)[0]
    return raw.decode("ascii", "replace") or None


def _cstring(body: bytes, pos: int) -> tuple[bytes, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise PduError("unterminated C-string in PDU body")
    return body[pos:end], end + 1


def _tlvs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    pos = 0
    while pos + _TLV_HEAD.size <= len(data):
        tag, length = _TLV_HEAD.unpack_from(data, pos)
        pos += _TLV_HEAD.size
        if pos + length > len(data):
            raise PduError(f"TLV 0x{tag:04X} runs past the end of the PDU")
        found[tag] = data[pos : pos + length]
        pos += length
    return found


def parse_deliver_sm(body: bytes) -> Deliver:
    """Decode a deliver_sm body: the mandatory fields we use and the receipt TLVs; others are skipped."""
    try:
        _service_type, pos = _cstring(body, 0)
        source, pos = _cstring(body, pos + 2)  # after source_addr_ton, source_addr_npi
        destination, pos = _cstring(body, pos + 2)  # after dest_addr_ton, dest_addr_npi
        esm_class = body[pos]
        _schedule, pos = _cstring(body, pos + 3)  # after esm_class, protocol_id, priority_flag
        _validity, pos = _cstring(body, pos)
        # registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id, sm_length
        data_coding, sm_length = body[pos + 2], body[pos + 4]
        pos += 5
    except IndexError:
        raise PduError("deliver_sm body too short") from None
    short_message = body[pos : pos + sm_length]
    if len(short_message) != sm_length:
        raise PduError("deliver_sm short_message runs past the end of the PDU")
    tlvs = _tlvs(body[pos + sm_length :])
    if not short_message:
        short_message = tlvs.get(_TAG_MESSAGE_PAYLOAD, b"")
    receipted = tlvs.get(_TAG_RECEIPTED_MESSAGE_ID, b"").rstrip(b"\0").decode("ascii", "replace")
    state = tlvs.get(_TAG_MESSAGE_STATE)
    return Deliver(
        source_addr=source.decode("ascii", "replace"),
        destination_addr=destination.decode("ascii", "replace"),
        esm_class=esm_class,
        data_coding=data_coding,
        short_message=short_message,
        receipted_message_id=receipted or None,
        message_state=state[0] if state else None,
    )


class DeliverSource(Protocol):
    """The connection a deliver_sm came on, which must carry its acknowledgement."""

    def ack_delivers(self, sequences: Sequence[int], status: int) -> None: ...


class Incoming(NamedTuple):
    source: DeliverSource
    sequence: int
    deliver: Deliver


class DeliverBatcher:
    """Runs the caller's deliver handler on batches in thread ``smpp-<name>-deliver``, then acks."""

    def __init__(self, name: str, handler: DeliverHandler, counters: SessionCounters) -> None:
        self._name = name
        self._handler = handler
        self._counters = counters
        self._queue: queue.SimpleQueue[Incoming | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"smpp-{name}-deliver", daemon=True)

    def put(self, item: Incoming) -> None:
        self._queue.put(item)

    def stop(self, timeout: float) -> None:
        """Hand over what was queued so far, then end the thread (waits up to ``timeout``)."""
        self._queue.put(None)
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            until = time.monotonic() + DELIVER_BATCH_WAIT_S
            while len(batch) < DELIVER_BATCH_MAX:
                try:
                    item = self._queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._hand_over(batch)
            if stop:
                return

    def _hand_over(self, batch: list[Incoming]) -> None:
        status = 0
        try:
            self._handler([item.deliver for item in batch])
        except Exception:
            status = ESME_RX_T_APPN
            logger.exception(
                "smpp %s: on_deliver failed for %d deliver_sm; answering ESME_RX_T_APPN "
                "so the SMSC delivers them again",
                self._name,
                len(batch),
            )
        self._counters.add("deliver_failures" if status else "delivers", len(batch))
        by_source: dict[DeliverSource, list[int]] = {}
        for item in batch:
            by_source.setdefault(item.source, []).append(item.sequence)
        for source, sequences in by_source.items():
            source.ack_delivers(sequences, status)
