"""One SMPP session of the SMSC simulator: an asyncio protocol per TCP connection.

It frames PDUs, binds (checking the account), answers submit_sm with the configured faults,
schedules receipts, answers enquire_link and unbind, and tracks the deliver_sm it sent until the
ESME answers them. Everything a read brought in is answered in one ``transport.write``: the hot
path is submit_sm, so it parses only the fields it needs and does no per-message timer work
beyond handing receipts to the router's 10 ms buckets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol, cast

from gateways.smpp.pdu import (
    HEADER,
    HEADER_LEN,
    MAX_PDU_LEN,
    RESPONSE_BIT,
    CommandId,
    CommandStatus,
    PduError,
    SubmitSm,
    decode_bind,
    decode_submit_sm,
    encode_bind_resp,
    encode_pdu,
    encode_submit_sm_resp,
)
from gateways.smpp.sim_accounts import TpsGate, authorize_bind
from gateways.smpp.sim_config import Account, SimulatorConfig
from gateways.smpp.sim_delivery import DeliveryRouter, Outbound
from gateways.smpp.sim_receipts import choose_outcome, format_id, receipt_body, receipt_id
from gateways.smpp.sim_stats import SmscStats, SubmitRecord

__all__ = ["SMSC_SYSTEM_ID", "SessionHost", "SmppSession"]

logger = logging.getLogger(__name__)

SMSC_SYSTEM_ID: Final = "LoaSMSC"
# How long an SMSC-initiated unbind waits for unbind_resp, and a half-closed connection for the
# ESME's own close, before the socket is closed anyway.
UNBIND_GRACE_S: Final = 1.0
_MAX_SEQUENCE: Final = 0x7FFFFFFF
# smpplib leaves Nagle on. An ESME that writes a deliver_sm_resp while its previous segment is
# unacknowledged then waits for our delayed ACK (up to 40 ms on Linux), which caps a windowed client
# near 1,000 submit_sm/s. Acknowledging every read at once (Linux only) removes that stall.
_TCP_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)

# bind command → (mode name, may submit, may receive)
_BIND_MODES: Final[dict[int, tuple[str, bool, bool]]] = {
    CommandId.BIND_TRANSMITTER: ("transmitter", True, False),
    CommandId.BIND_RECEIVER: ("receiver", False, True),
    CommandId.BIND_TRANSCEIVER: ("transceiver", True, True),
}

# Plain ints for the comparisons made on every PDU.
_SUBMIT_SM: Final = int(CommandId.SUBMIT_SM)
_DELIVER_SM: Final = int(CommandId.DELIVER_SM)
_DELIVER_SM_RESP: Final = int(CommandId.DELIVER_SM_RESP)
_ENQUIRE_LINK: Final = int(CommandId.ENQUIRE_LINK)
_OK: Final = int(CommandStatus.ESME_ROK)


class SessionHost(Protocol):
    """What a session needs from the simulator that accepted it."""

    config: SimulatorConfig
    stats: SmscStats
    tps_gate: TpsGate

    @property
    def router(self) -> DeliveryRouter: ...

    def next_message_number(self) -> int: ...

    def session_opened(self, session: SmppSession) -> None: ...

    def session_closed(self, session: SmppSession) -> None: ...


class SmppSession(asyncio.Protocol):
    """The server side of one ESME connection."""

    def __init__(self, host: SessionHost) -> None:
        self._host = host
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._buffer = bytearray()
        # While a read is being handled, output collects here and goes out in one write.
        self._out: list[bytes] | None = None
        self._closing = False
        self.system_id: str | None = None  # set while bound
        self._account: Account | None = None
        self._mode = ""
        self._can_submit = False
        self._can_receive = False
        self._unbinding: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._submits = 0
        self._open = 0
        self._sequence = 0
        self._awaiting: dict[int, Outbound] = {}
        self._quickack: Callable[[], None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self._peer = f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if _TCP_QUICKACK is not None and sock is not None:
            self._quickack = functools.partial(sock.setsockopt, socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        self._host.session_opened(self)

    def data_received(self, data: bytes) -> None:
        if self._quickack is not None:
            self._quickack()
        if self._closing:
            return  # PDUs sent after we started closing are dropped unanswered
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        self._out = out
        size = len(buffer)
        pos = 0
        try:
            while size - pos >= HEADER_LEN and not self._closing:
                length, command_id, status, sequence = HEADER.unpack_from(buffer, pos)
                if length < HEADER_LEN or length > MAX_PDU_LEN:
                    # The stream lost its framing: nothing after this can be trusted.
                    logger.warning("bad command_length %s from %s; closing", length, self._peer)
                    out.append(encode_pdu(CommandId.GENERIC_NACK, CommandStatus.ESME_RINVCMDLEN, sequence))
                    self._close_after_write()
                    break
                if size - pos < length:
                    break
                body = bytes(buffer[pos + HEADER_LEN : pos + length])
                pos += length
                if command_id == _SUBMIT_SM:
                    self._on_submit_sm(sequence, body)
                elif command_id == _DELIVER_SM_RESP:
                    self._on_deliver_sm_resp(sequence, status)
                else:
                    self._on_other(command_id, status, sequence, body)
        finally:
            del buffer[:pos]
            self._out = None
            if self._transport is not None:
                if out:
                    self._transport.write(b"".join(out))
                if self._closing:
                    self._half_close()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._unbinding, self._linger):
            if timer is not None:
                timer.cancel()
        if self.system_id is not None:
            logger.info("session %s of %s closed", self._peer, self.system_id)
        self._release()
        self._transport = None
        # deliver_sm the ESME never answered are offered again, as carriers do.
        if self._awaiting:
            items = list(self._awaiting.values())
            self._awaiting.clear()
            self._host.router.send(items)
        self._host.session_closed(self)

    # -- used by the router and the simulator --------------------------------------------------

    def deliver(self, items: Sequence[Outbound]) -> None:
        """Write ``items`` as deliver_sm and remember them until deliver_sm_resp comes back."""
        chunks: list[bytes] = []
        receipts = 0
        for item in items:
            sequence = self._next_sequence()
            self._awaiting[sequence] = item
            chunks.append(HEADER.pack(HEADER_LEN + len(item.body), _DELIVER_SM, _OK, sequence))
            chunks.append(item.body)
            receipts += item.is_receipt
        stats = self._host.stats
        if receipts:
            stats.add("receipts_sent", receipts)
        if len(items) > receipts:
            stats.add("mo_sent", len(items) - receipts)
        self._emit(b"".join(chunks))

    def close(self) -> None:
        """Close the connection now, without unbind (simulator shutdown)."""
        if self._transport is not None:
            self._transport.close()

    # -- PDU handlers --------------------------------------------------------------------------

    def _on_submit_sm(self, sequence: int, body: bytes) -> None:
        account = self._account
        if not self._can_submit or account is None:
            self._emit(encode_submit_sm_resp(CommandStatus.ESME_RINVBNDSTS, sequence, ""))
            return
        host = self._host
        config = host.config
        # The account as configured now (a test may change its TPS while sessions stay bound).
        account = next((a for a in config.accounts if a.system_id == account.system_id), account)
        stats = host.stats
        now = time.time()
        stats.count_received(account.system_id, int(now))
        self._submits += 1
        count = self._submits
        # Unanswered submits of this session, this one included: the ESME's window as seen here.
        self._open += 1
        stats.note_outstanding(account.system_id, self._open)

        if config.generic_nack_every and count % config.generic_nack_every == 0:
            stats.add("generic_nacks")
            self._emit(encode_pdu(CommandId.GENERIC_NACK, CommandStatus.ESME_RSYSERR, sequence))
        else:
            try:
                submit = decode_submit_sm(body)
            except PduError as exc:
                logger.debug("invalid submit_sm from %s: %s", self._peer, exc)
                stats.add("rejected")
                self._emit(encode_submit_sm_resp(exc.status, sequence, ""))
            else:
                status = self._admission(submit, account, config, int(now))
                if status == _OK:
                    self._accept(account.system_id, submit, sequence, count, config, now)
                else:
                    self._emit(encode_submit_sm_resp(status, sequence, ""))

        self._open -= 1  # answered (or left open above, which added one back)

        if config.drop_after is not None and count >= config.drop_after:
            logger.info("dropping %s of %s after %d submit_sm", self._peer, account.system_id, count)
            self._close_after_write()
        elif config.unbind_after is not None and count >= config.unbind_after and self._unbinding is None:
            self._start_unbind()

    def _admission(self, submit: SubmitSm, account: Account, config: SimulatorConfig, second: int) -> int:
        """The status a submit_sm that decoded well gets: 0, a rejection or throttling."""
        stats = self._host.stats
        destination = submit.destination_addr
        if account.reject_status:
            stats.add("rejected")
            return account.reject_status
        if not destination:
            stats.add("rejected")
            return CommandStatus.ESME_RINVDSTADR
        if config.reject_prefixes:
            matches = [p for p in config.reject_prefixes if destination.startswith(p)]
            if matches:
                stats.add("rejected")
                return config.reject_prefixes[max(matches, key=len)]
        if not self._host.tps_gate.admit(account, second):
            stats.add("throttled")
            return CommandStatus.ESME_RTHROTTLED
        return _OK

    def _accept(
        self, system_id: str, submit: SubmitSm, sequence: int, count: int, config: SimulatorConfig, now: float
    ) -> None:
        host = self._host
        number = host.next_message_number()
        message_id = format_id(number, config.id_base)
        host.stats.count_accepted(
            SubmitRecord(
                system_id,
                submit.source_addr,
                submit.destination_addr,
                submit.short_message,
                submit.esm_class,
                submit.data_coding,
                message_id,
                now,
                submit.source_addr_ton,
                submit.source_addr_npi,
                submit.registered_delivery,
                submit.validity_period,
            ),
            config.keep_log,
        )
        # registered_delivery bits 0-1: 1 = receipt on any final outcome, 2 = on failure only.
        wanted = submit.registered_delivery & 0x03
        if config.receipts and wanted:
            self._schedule_receipts(system_id, submit, number, wanted, config, now)
        if config.unanswered_every and count % config.unanswered_every == 0:
            host.stats.add("unanswered")
            self._open += 1  # cancels the decrement below: this one stays open for good
            return
        response = encode_submit_sm_resp(_OK, sequence, message_id)
        if config.response_delay_s > 0:
            # Answered later: the ESME's window fills up, as with a slow SMSC.
            self._open += 1
            asyncio.get_running_loop().call_later(config.response_delay_s, self._answer_late, response)
            return
        self._emit(response)

    def _answer_late(self, response: bytes) -> None:
        self._open -= 1
        self._emit(response)

    def _schedule_receipts(
        self, system_id: str, submit: SubmitSm, number: int, wanted: int, config: SimulatorConfig, now: float
    ) -> None:
        stat = choose_outcome(config.outcomes)
        if wanted == 2 and stat == "DELIVRD":
            return
        rid = receipt_id(number, config)
        copies = 2 if config.duplicate_receipts else 1
        immediate = config.receipt_before_response
        low, high = config.receipt_delay_s
        delay = 0.0 if immediate else random.uniform(low, high)
        stages = [("ENROUTE", delay / 2), (stat, delay)] if config.enroute_first else [(stat, delay)]
        router = self._host.router
        for stage_stat, stage_delay in stages:
            body = receipt_body(
                submit,
                receipt_message_id=rid,
                stat=stage_stat,
                submitted_at=now,
                done_at=now + stage_delay,
                tlvs=config.receipt_tlvs,
            )
            items = [Outbound(system_id, body, True) for _ in range(copies)]
            if immediate:
                router.send(items)
            else:
                for item in items:
                    router.send_later(stage_delay, item)

    def _on_deliver_sm_resp(self, sequence: int, status: int) -> None:
        item = self._awaiting.pop(sequence, None)
        if item is None:
            return
        if status == _OK:
            self._host.stats.add("receipts_acked" if item.is_receipt else "mo_acked")
        else:
            # The ESME could not take it now (e.g. its database is down): offer it again later.
            self._host.router.send_later(self._host.config.redeliver_delay_s, item)

    def _on_other(self, command_id: int, status: int, sequence: int, body: bytes) -> None:
        if command_id == _ENQUIRE_LINK:
            self._host.stats.add("enquire_links")
            self._emit(encode_pdu(CommandId.ENQUIRE_LINK_RESP, _OK, sequence))
        elif command_id in _BIND_MODES:
            self._on_bind(command_id, sequence, body)
        elif command_id == CommandId.UNBIND:
            if self.system_id is not None:
                logger.info("unbind %s (%s) from %s", self.system_id, self._mode, self._peer)
            self._emit(encode_pdu(CommandId.UNBIND_RESP, _OK, sequence))
            self._close_after_write()
        elif command_id == CommandId.UNBIND_RESP:
            if self._unbinding is not None:
                self._close_after_write()
        elif command_id == CommandId.GENERIC_NACK:
            # An ESME that cannot parse our deliver_sm answers generic_nack with its sequence.
            self._on_deliver_sm_resp(sequence, status or CommandStatus.ESME_RSYSERR)
        elif command_id & RESPONSE_BIT:
            pass  # enquire_link_resp and the like need no action
        else:
            self._emit(encode_pdu(CommandId.GENERIC_NACK, CommandStatus.ESME_RINVCMDID, sequence))

    def _on_bind(self, command_id: int, sequence: int, body: bytes) -> None:
        mode, can_submit, can_receive = _BIND_MODES[command_id]
        if self.system_id is not None or self._unbinding is not None:
            self._emit(encode_bind_resp(command_id, CommandStatus.ESME_RALYBND, sequence, SMSC_SYSTEM_ID))
            return
        host = self._host
        try:
            request = decode_bind(body)
        except PduError as exc:
            status, account, system_id = exc.status, None, "?"
        else:
            status, account = authorize_bind(host.config, host.stats, request)
            system_id = request.system_id
        self._emit(encode_bind_resp(command_id, status, sequence, SMSC_SYSTEM_ID))
        if status != _OK or account is None:
            logger.info("refused bind of %s as %s from %s: 0x%02X", system_id, mode, self._peer, status)
            return
        logger.info("bound %s as %s from %s", system_id, mode, self._peer)
        self.system_id = system_id
        self._account = account
        self._mode = mode
        self._can_submit = can_submit
        self._can_receive = can_receive
        host.stats.session_bound(system_id)
        if can_receive:
            # After the bind_resp, so queued receipts never overtake it.
            host.router.attach(system_id, self)

    # -- helpers -------------------------------------------------------------------------------

    def _start_unbind(self) -> None:
        """SMSC-initiated unbind: stop taking submits and receipts, ask the ESME to unbind."""
        logger.info("unbinding %s of %s after %d submit_sm", self._peer, self.system_id, self._submits)
        # Released now, not when the socket closes, so the ESME may rebind at once even at its
        # max_binds; this connection answers 0x04 to submits and 0x05 to binds until it closes.
        self._release()
        self._emit(encode_pdu(CommandId.UNBIND, _OK, self._next_sequence()))
        loop = asyncio.get_running_loop()
        self._unbinding = loop.call_later(UNBIND_GRACE_S, self.close)

    def _release(self) -> None:
        """Leave the bound state (idempotent): no more submits, receipts or bind count."""
        if self.system_id is None:
            return
        if self._can_receive:
            self._host.router.detach(self.system_id, self)
        self._host.stats.session_unbound(self.system_id)
        self.system_id = None
        self._account = None
        self._can_submit = self._can_receive = False

    def _close_after_write(self) -> None:
        """Unbind locally, let what was written reach the ESME, then close; reads stop here."""
        self._release()
        self._closing = True
        if self._out is None:
            self._half_close()

    def _half_close(self) -> None:
        # Closing a socket whose receive queue still holds PDUs makes Linux send RST, and an RST
        # can destroy the answers still unread in the ESME's receive buffer (e.g. the last
        # submit_sm_resp before drop_after). So send FIN after the data, keep reading and
        # discarding, and close when the ESME closes or the grace period ends.
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(UNBIND_GRACE_S, self.close)

    def _emit(self, data: bytes) -> None:
        if self._out is not None:
            self._out.append(data)
        elif self._transport is not None and not self._closing and not self._transport.is_closing():
            self._transport.write(data)

    def _next_sequence(self) -> int:
        self._sequence = self._sequence % _MAX_SEQUENCE + 1
        return self._sequence
