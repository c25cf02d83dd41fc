"""SMPP client sessions: the adapter the rest of Loa talks to, and the only module importing smpplib.

:class:`SmppSession` keeps one carrier bind alive (a transceiver, or a transmitter + receiver pair):
it connects and binds in the background, sends enquire_link when a connection is idle, reconnects
with exponential backoff and jitter after any failure, keeps a window of outstanding submit_sm
matched to their responses, and hands incoming deliver_sm (receipts, MO) to the caller in batches,
acknowledging them only after the caller has stored them. :func:`check_bind` is the one-shot bind
test behind ``loa gateways check``.

smpplib serves as the PDU encoder (:class:`_SmpplibEncoder`). Its ``Client`` is not used: nothing
guards its socket between the reader and a sender, it draws sequence numbers without a lock, it
raises out of ``listen()`` on any error response (0x58 included), and it logs every PDU in hex at
DEBUG, bind passwords and message texts (census credentials) included. The connection itself lives
in :mod:`gateways.smpp.session_link`, incoming PDUs are decoded in
:mod:`gateways.smpp.session_incoming` (which says why), value types are in
:mod:`gateways.smpp.session_util`; all public names are re-exported here.

Threads of a session, all daemons, named for ``ps``/py-spy: ``smpp-<name>-supervisor`` (connect,
bind, enquire_link, reconnect), one reader per connection (``smpp-<name>-reader``, or
``-tx-reader`` and ``-rx-reader``), and ``smpp-<name>-deliver`` (runs ``on_deliver``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from smpplib import command as smpplib_command
from smpplib import smpp as smpplib_codec
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential, wait_random

from gateways.smpp.session_incoming import DeliverBatcher
from gateways.smpp.session_link import UNBIND_RESP, Link, LinkDown, Role
from gateways.smpp.session_util import (
    BindConfig,
    BindMode,
    Call,
    Deliver,
    DeliverHandler,
    GatewayCheckError,
    Outcome,
    ResultHook,
    SessionCounters,
    SessionStats,
    Submit,
    SubmitResult,
    describe_status,
    smpp_absolute_time,
    source_ton_npi,
    submit_sm_fields,
)

__all__ = [
    "BindConfig",
    "BindMode",
    "Deliver",
    "DeliverHandler",
    "GatewayCheckError",
    "Outcome",
    "ResultHook",
    "SessionStats",
    "SmppSession",
    "Submit",
    "SubmitResult",
    "check_bind",
    "describe_status",
    "smpp_absolute_time",
    "source_ton_npi",
]

logger = logging.getLogger(__name__)

UNBIND_WAIT_MAX_S = 5.0
_BIND_COMMANDS: dict[Role, str] = {"trx": "bind_transceiver", "tx": "bind_transmitter", "rx": "bind_receiver"}


class _GivenSequence:
    """smpplib draws a request's sequence number from its "client"; this one hands over ours."""

    def __init__(self, sequence: int) -> None:
        self.sequence = sequence

    def next_sequence(self) -> int:
        return self.sequence


_SUBMIT_SM = 0x00000004
_DELIVER_SM_RESP = 0x80000005
_SUBMIT_PARAMS = smpplib_command.SubmitSM.params
# The fields `submit_sm_fields` gives; anything else (TLVs, say) goes through smpplib.
_SUBMIT_FIELDS = frozenset(
    {
        "service_type",
        "source_addr_ton",
        "source_addr_npi",
        "source_addr",
        "dest_addr_ton",
        "dest_addr_npi",
        "destination_addr",
        "esm_class",
        "registered_delivery",
        "data_coding",
        "short_message",
        "validity_period",
    }
)


def _c_string(fields: dict[str, object], name: str) -> bytes:
    """As smpplib writes a C-octet string: latin-1, cut to its maximum less the NUL, NUL-ended."""
    value = fields.get(name) or ""
    limit = _SUBMIT_PARAMS[name].max
    return str(value)[: limit - 1].encode("latin-1") + b"\0"


def _octet(fields: dict[str, object], name: str) -> int:
    value = fields.get(name)
    return value if isinstance(value, int) else 0


def _submit_sm(sequence: int, fields: dict[str, object]) -> bytes:
    """A submit_sm, byte for byte what smpplib's ``make_pdu(...).generate()`` gives for these fields.

    Written out because it is the one PDU on the hot path: smpplib builds a ``Command`` object and
    walks its 45 parameters for every PDU, about 42 us of CPU per submit here, a tenth of a core at
    2,500 submits/s on one bind; this takes ~3 us. The other PDUs stay with smpplib, and a test
    compares the two encoders over generated fields (tests/gateways/smpp/test_submit_encoder.py).
    """
    short_message = fields.get("short_message") or b""
    assert isinstance(short_message, bytes)
    if len(short_message) > _SUBMIT_PARAMS["short_message"].max:
        raise ValueError(f"short_message of {len(short_message)} octets does not fit submit_sm")
    body = b"".join(
        (
            _c_string(fields, "service_type"),
            bytes((_octet(fields, "source_addr_ton"), _octet(fields, "source_addr_npi"))),
            _c_string(fields, "source_addr"),
            bytes((_octet(fields, "dest_addr_ton"), _octet(fields, "dest_addr_npi"))),
            _c_string(fields, "destination_addr"),
            # esm_class, protocol_id, priority_flag, schedule_delivery_time (empty)
            bytes((_octet(fields, "esm_class"), 0, 0, 0)),
            _c_string(fields, "validity_period"),
            # registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id, sm_length
            bytes(
                (
                    _octet(fields, "registered_delivery"),
                    0,
                    _octet(fields, "data_coding"),
                    0,
                    len(short_message),
                )
            ),
            short_message,
        )
    )
    return struct.pack(">LLLL", 16 + len(body), _SUBMIT_SM, 0, sequence) + body


class _SmpplibEncoder:
    """The :class:`~gateways.smpp.session_link.PduEncoder` every link uses."""

    def request(self, command: str, sequence: int, **fields: object) -> bytes:
        if command == "submit_sm" and fields.keys() <= _SUBMIT_FIELDS:
            return _submit_sm(sequence, fields)
        pdu = smpplib_codec.make_pdu(command, client=_GivenSequence(sequence), **fields)
        return bytes(pdu.generate())

    def response(self, command: str, sequence: int, status: int = 0) -> bytes:
        if command == "deliver_sm_resp":
            # One per receipt, so on the hot path like submit_sm: smpplib took ~9 us to build these
            # 17 octets (a header and an empty message_id); a test compares the two.
            return struct.pack(">LLLL", 17, _DELIVER_SM_RESP, status, sequence) + b"\0"
        pdu = smpplib_codec.make_pdu(command, client=_GivenSequence(sequence), status=status)
        pdu.sequence = sequence  # responses do not draw a sequence number; they echo the request's
        return bytes(pdu.generate())


_ENCODER = _SmpplibEncoder()


class _BindRefused(LinkDown):
    def __init__(self, command: str, status: int) -> None:
        super().__init__(f"{command} refused: {describe_status(status)}")
        self.status = status


def _open_link(
    cfg: BindConfig,
    role: Role,
    counters: SessionCounters,
    closing: threading.Event | None = None,
) -> Link:
    """Connect and bind one connection; raises LinkDown (_BindRefused for an error status)."""
    command = _BIND_COMMANDS[role]
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s)
    except OSError as exc:
        raise LinkDown(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from None
    try:
        # A window of small PDUs: Nagle would hold each one back until the previous is acked.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Also bounds sendall(): an SMSC that stops reading must not hang a submitting caller.
        sock.settimeout(cfg.response_timeout_s)
        link = Link(
            name=cfg.name,
            role=role,
            sock=sock,
            encoder=_ENCODER,
            counters=counters,
            response_timeout_s=cfg.response_timeout_s,
            closing=closing,
        )
        fields = {"system_id": cfg.system_id, "password": cfg.password, "system_type": cfg.system_type}
        seq = link.request(command, **fields)
        deadline = time.monotonic() + cfg.response_timeout_s
        while time.monotonic() < deadline:
            frame = link.read_pdu()
            if frame is None or frame[0].sequence != seq:
                continue  # nothing but the bind response is due before the bind
            if frame[0].status != 0:
                raise _BindRefused(command, frame[0].status)
            return link
        raise LinkDown(f"no response to {command} within {cfg.response_timeout_s:g} s")
    except OSError as exc:
        sock.close()
        raise LinkDown(f"{command} failed: {exc}") from None
    except BaseException:
        sock.close()
        raise


@contextlib.contextmanager
def _killing_on_failure(link: Link) -> Iterator[None]:
    """A write that fails kills the link instead of raising (for best-effort unbinds)."""
    try:
        yield
    except LinkDown as exc:
        link.kill(str(exc))


def _roles(mode: BindMode) -> tuple[Role, ...]:
    return ("trx",) if mode == "transceiver" else ("tx", "rx")


def _warn_long_password(cfg: BindConfig) -> None:
    if cfg.password_truncated:
        logger.warning("smpp %s: the password is longer than SMPP's 8 characters; only 8 are sent", cfg.name)


class SmppSession:
    """One carrier bind kept alive in the background; see the module docstring.

    ``start()``, ``wait_bound()``, then ``submit_many()`` as often as needed, ``close()`` at the
    end. A session starts once; after ``close()`` make a new one. ``on_deliver`` is called from
    the session's deliver thread and must be idempotent: a deliver_sm whose acknowledgement was lost
    with its connection comes again.
    """

    def __init__(self, cfg: BindConfig, on_deliver: DeliverHandler) -> None:
        self.cfg = cfg
        self._counters = SessionCounters()
        self._batcher = DeliverBatcher(cfg.name, on_deliver, self._counters)
        self._cond = threading.Condition()  # guards the fields below
        self._links: list[Link] = []  # the current bind's connections; [0] carries the submits
        self._bound = False
        self._ever_bound = False
        self._started = False
        self._closing = threading.Event()
        self._wake = threading.Event()  # wakes the supervisor: a link died, or close()
        self._supervisor = threading.Thread(target=self._supervise, name=f"smpp-{cfg.name}-supervisor", daemon=True)

    # --- public surface ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background threads; they bind, keep the bind alive and rebind until close()."""
        with self._cond:
            if self._started:
                raise RuntimeError(f"smpp session {self.cfg.name} was already started")
            self._started = True
        _warn_long_password(self.cfg)
        self._batcher.thread.start()
        self._supervisor.start()

    def wait_bound(self, timeout: float) -> bool:
        """Block until bound (True), or until ``timeout`` seconds passed or close() (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._is_bound() or self._closing.is_set(), timeout)
            return self._is_bound()

    @property
    def bound(self) -> bool:
        """Every connection of the bind mode is bound (transmitter_receiver: both)."""
        with self._cond:
            return self._is_bound()

    def _is_bound(self) -> bool:
        # A link is marked dead before its waiters wake, a moment before _on_link_dead runs.
        return self._bound and not any(link.dead for link in self._links)

    @property
    def outstanding(self) -> int:
        """submit_sm written and neither answered nor given up: the window's occupancy."""
        with self._cond:
            links = self._links if self._bound else []
        return links[0].outstanding if links else 0

    @property
    def stats(self) -> SessionStats:
        """A snapshot of the counters."""
        return self._counters.snapshot()

    def submit_many(
        self,
        items: Sequence[Submit],
        before_each: Callable[[], None] | None = None,
        on_result: ResultHook | None = None,
    ) -> list[SubmitResult]:
        """Submit ``items`` keeping up to ``cfg.window`` unanswered; one result per item, in order.

        Blocks until every written submit is answered, given up after ``response_timeout_s``
        (AMBIGUOUS) or lost with the connection (AMBIGUOUS); items never written come back
        NOT_SENT. When the session is down, or goes down mid-way, this returns at once rather than
        waiting for the reconnect. ``before_each`` runs right before each submit_sm is written (a
        rate limiter blocks there); if it raises, the batch stops and the rest come back NOT_SENT,
        which is also how a caller ends a batch early (a paused campaign, say). ``on_result`` is
        told each OK, ERROR or AMBIGUOUS result as soon as it is known (see
        :data:`~gateways.smpp.session_util.ResultHook`), e.g. to journal accepted submits before
        the whole batch is done; NOT_SENT results only come back in the returned list.

        Meant for one caller thread at a time per session; concurrent callers are safe but share
        the window.
        """
        call = Call(items, [None] * len(items), on_result=on_result)
        with self._cond:
            link = self._links[0] if self._bound else None
        if link is None:
            return call.final_results()
        try:
            for index, item in enumerate(items):
                if not link.wait_for_slot(self.cfg.window):
                    break
                if before_each is not None:
                    try:
                        before_each()
                    except Exception as exc:
                        logger.warning(
                            "smpp %s: before_each raised %r; the rest of the batch is not sent",
                            self.cfg.name,
                            exc,
                        )
                        break
                if not link.submit(call, index, submit_sm_fields(item)):
                    break
        finally:
            link.await_call(call)  # even on an exception: results already written must not be lost
        return call.final_results()

    def close(self, timeout: float = 5.0) -> None:
        """Hand over the deliver_sm already read, unbind politely, stop the threads (within ``timeout``)."""
        if self._closing.is_set():
            return
        deadline = time.monotonic() + timeout
        self._closing.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
            links = [link for link in self._links if not link.dead]
        for link in links:
            with link.cond:
                link.cond.notify_all()  # a submit_many waiting for a window slot stops sending
        # Receipts already read reach on_deliver and are acked before the unbind: no redelivery.
        if self._batcher.thread.is_alive():
            self._batcher.stop(max(0.0, (deadline - time.monotonic()) / 2))
        for link in links:
            with _killing_on_failure(link):
                link.request("unbind")
        unbind_deadline = min(deadline, time.monotonic() + UNBIND_WAIT_MAX_S)
        for link in links:
            link.unbind_acked.wait(max(0.0, unbind_deadline - time.monotonic()))
        for link in links:
            link.kill("session closed")
        with self._cond:
            self._bound = False
            self._cond.notify_all()
        for thread in [self._supervisor, *(link.reader for link in links if link.reader is not None)]:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    # --- supervisor: bind, keep alive, reconnect -----------------------------------------------

    def _supervise(self) -> None:
        cfg = self.cfg
        while not self._closing.is_set():
            retrying = Retrying(
                # Exponential from reconnect_initial_s up to reconnect_max_s, plus up to one
                # initial step of jitter so a fleet of workers does not rebind in lockstep.
                wait=wait_exponential(multiplier=cfg.reconnect_initial_s, max=cfg.reconnect_max_s)
                + wait_random(0, cfg.reconnect_initial_s),
                retry=retry_if_exception_type(LinkDown),
                stop=lambda _state: self._closing.is_set(),
                sleep=self._pause,
                before_sleep=self._log_backoff,
                reraise=True,
            )
            try:
                retrying(self._bind_and_serve)
            except LinkDown:
                return  # close() came while backing off
            if not self._closing.is_set():
                # A bind that stayed up ends its backoff streak and the next starts from the
                # bottom, after one short pause: an SMSC that just unbound us rarely wants us
                # back within the same second.
                self._pause(random.uniform(cfg.reconnect_initial_s, 2 * cfg.reconnect_initial_s))

    def _pause(self, seconds: float) -> None:
        self._closing.wait(seconds)  # close() cuts a backoff short

    def _log_backoff(self, state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.info("smpp %s: rebinding in %.1f s (attempt %d)", self.cfg.name, delay, state.attempt_number + 1)

    def _bind_and_serve(self) -> None:
        """One bind's life. Raises LinkDown when it failed or ended soon; returns after a long one."""
        try:
            self._serve_once()
        except LinkDown:
            raise
        except Exception as exc:  # a bug must not end the supervisor: log it, rebind with backoff
            logger.exception("smpp %s: unexpected error in the session supervisor", self.cfg.name)
            with self._cond:
                links = list(self._links)
            self._teardown(links, f"internal error: {exc!r}")
            raise LinkDown(f"internal error: {exc!r}") from exc

    def _serve_once(self) -> None:
        if self._closing.is_set():
            return
        links: list[Link] = []
        try:
            for role in _roles(self.cfg.bind_mode):
                links.append(_open_link(self.cfg, role, self._counters, self._closing))
        except LinkDown as exc:
            for link in links:
                link.close()
            self._counters.add("bind_failures")
            self._counters.error(str(exc))
            logger.warning("smpp %s: %s:%s: %s", self.cfg.name, self.cfg.host, self.cfg.port, exc)
            raise
        if not self._install(links):
            for link in links:
                link.close()
            return
        bound_at = time.monotonic()
        reason = self._keepalive(links)
        if self._closing.is_set():
            return  # close() unbinds and tears down
        self._teardown(links, reason)
        if time.monotonic() - bound_at < self.cfg.reconnect_max_s:
            raise LinkDown(reason)  # a short-lived bind continues the backoff streak

    def _install(self, links: list[Link]) -> bool:
        """Adopt a fresh bind's links; False if close() came first (the caller closes them)."""
        with self._cond:
            if self._closing.is_set():
                return False
            self._links = links  # before the readers start, so _on_link_dead sees any death
        self._counters.add("binds", len(links))
        for link in links:
            suffix = "reader" if link.role == "trx" else f"{link.role}-reader"
            link.start_reader(f"smpp-{self.cfg.name}-{suffix}", self._batcher.put, self._on_link_dead)
        with self._cond:
            # Bound only once every reader runs; a link may already have died meanwhile.
            self._bound = not self._closing.is_set() and not any(link.dead for link in links)
            if self._ever_bound:
                self._counters.add("reconnects")
            self._ever_bound = True
            self._cond.notify_all()
        logger.info("smpp %s: bound to %s:%s (%s)", self.cfg.name, self.cfg.host, self.cfg.port, self.cfg.bind_mode)
        return True

    def _on_link_dead(self, link: Link) -> None:
        with self._cond:
            if link in self._links:
                self._bound = False
                self._cond.notify_all()
        self._wake.set()

    def _keepalive(self, links: list[Link]) -> str:
        """Keep every link alive until one dies or close(); returns why it ended."""
        while True:
            self._wake.clear()
            if self._closing.is_set():
                return "session closed"
            waits = [link.keepalive(self.cfg.enquire_link_s, self.cfg.response_timeout_s) for link in links]
            for link in links:
                if link.dead:
                    return link.reason
            self._wake.wait(min(waits))

    def _teardown(self, links: list[Link], reason: str) -> None:
        """End a bind after a failure: unbind the survivors (without waiting), close everything."""
        for link in links:
            if not link.dead:
                with _killing_on_failure(link):
                    link.request("unbind")  # polite, e.g. to the receiver of a pair whose tx died
            link.kill(reason)
        with self._cond:
            self._bound = False
        for link in links:
            if link.reader is not None:
                link.reader.join(1.0)


def check_bind(cfg: BindConfig) -> None:
    """Connect, bind and unbind once (each connection of the bind mode); for ``loa gateways check``.

    Raises :class:`GatewayCheckError` naming the gateway, host:port and the SMPP error. deliver_sm
    arriving meanwhile (receipts the SMSC kept for the account) are left unanswered, so the SMSC
    delivers them again to a real session instead of losing them to this probe.
    """
    _warn_long_password(cfg)
    for role in _roles(cfg.bind_mode):
        try:
            link = _open_link(cfg, role, SessionCounters())
        except LinkDown as exc:
            raise GatewayCheckError(f"{cfg.name} ({cfg.host}:{cfg.port}): {exc}") from None
        try:
            link.set_read_timeout(UNBIND_WAIT_MAX_S)
            seq = link.request("unbind")
            deadline = time.monotonic() + min(cfg.response_timeout_s, UNBIND_WAIT_MAX_S)
            while time.monotonic() < deadline:
                frame = link.read_pdu()
                if frame is not None and frame[0].command_id == UNBIND_RESP and frame[0].sequence == seq:
                    break
        except LinkDown:
            pass  # the bind worked, which is what is being checked
        finally:
            link.close()
