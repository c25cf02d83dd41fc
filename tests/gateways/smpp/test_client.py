"""SmppSession and check_bind against the project's SMSC simulator over real loopback TCP.

Every test starts its own simulator on an ephemeral port and flips its fault knobs; the one fault
the simulator cannot play (an SMSC that goes silent without closing) is a tiny TCP server here.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from gateways.smpp.client import (
    BindConfig,
    Deliver,
    GatewayCheckError,
    Outcome,
    SmppSession,
    Submit,
    SubmitResult,
    check_bind,
)
from gateways.smpp.simulator import Account, SimulatorConfig, Smsc, run_in_thread

LOOPBACK = "127.0.0.1"
ESME_RSYSERR = 0x08
ESME_RINVDSTADR = 0x0B
ESME_RTHROTTLED = 0x58


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def make_cfg(port: int, **overrides: Any) -> BindConfig:
    settings: dict[str, Any] = {
        "name": "test",
        "host": LOOPBACK,
        "port": port,
        "system_id": "sys",
        "password": "pw",
        "window": 10,
        "response_timeout_s": 2.0,
        "connect_timeout_s": 2.0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.5,
    }
    settings.update(overrides)
    return BindConfig(**settings)


def sms(ref: object, destination: str = "+84912345678", text: bytes = b"hello") -> Submit:
    return Submit(ref=ref, source_addr="TCTK", destination=destination, short_message=text, data_coding=0)


class Receiver:
    """on_deliver for the tests: records each batch; can hold the first call or fail some calls."""

    def __init__(self, fail_calls: int = 0, hold: threading.Event | None = None) -> None:
        self.batches: list[list[Deliver]] = []
        self.calls = 0
        self._fail_calls = fail_calls
        self._hold = hold
        self._lock = threading.Lock()

    def __call__(self, batch: Sequence[Deliver]) -> None:
        with self._lock:
            self.calls += 1
            call = self.calls
        if self._hold is not None and call == 1:
            self._hold.wait(10)
        if call <= self._fail_calls:
            raise RuntimeError("database unavailable")
        with self._lock:
            self.batches.append(list(batch))

    @property
    def delivered(self) -> list[Deliver]:
        with self._lock:
            return [d for batch in self.batches for d in batch]


StartSmsc = Callable[..., Smsc]
OpenSession = Callable[..., tuple[SmppSession, Receiver]]


@pytest.fixture
def start_smsc() -> Iterator[StartSmsc]:
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> Smsc:
            overrides.setdefault("accounts", [Account("sys", "pw")])
            overrides.setdefault("receipt_delay_s", (0.01, 0.05))
            return stack.enter_context(run_in_thread(SimulatorConfig(host=LOOPBACK, port=0, **overrides)))

        yield start


@pytest.fixture
def open_session(start_smsc: StartSmsc) -> Iterator[OpenSession]:
    # Depends on start_smsc so sessions close before their simulator stops.
    sessions: list[SmppSession] = []

    def open_(
        smsc: Smsc, *, receiver: Receiver | None = None, bound: bool = True, **cfg: Any
    ) -> tuple[SmppSession, Receiver]:
        receiver = receiver or Receiver()
        session = SmppSession(make_cfg(smsc.port, **cfg), receiver)
        sessions.append(session)
        session.start()
        if bound:
            assert session.wait_bound(5), session.stats["last_error"]
        return session, receiver

    yield open_
    for session in sessions:
        session.close(timeout=2)


def outcomes(results: Sequence[SubmitResult]) -> list[Outcome]:
    return [result.outcome for result in results]


# --- submitting --------------------------------------------------------------------------------


def test_results_come_in_input_order_with_the_smscs_message_ids(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc(receipts=False)
    session, _ = open_session(smsc, window=5)
    items = [sms(("msg", i), destination=f"+849000{i:05d}") for i in range(40)]

    results = session.submit_many(items)

    assert [r.ref for r in results] == [item.ref for item in items]
    assert set(outcomes(results)) == {Outcome.OK}
    ids_by_destination = {rec.destination_addr: rec.message_id for rec in smsc.stats.log}
    assert [r.provider_id for r in results] == [ids_by_destination[f"849000{i:05d}"] for i in range(40)]
    stats = session.stats
    assert stats["submits"] == 40
    assert stats["responses"] == {0: 40}
    assert session.outstanding == 0


def test_the_window_is_never_exceeded_and_unanswered_submits_become_ambiguous(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc(receipts=False, unanswered_every=2)  # every 2nd submit is never answered
    session, _ = open_session(smsc, window=4, response_timeout_s=0.4)
    seen_outstanding: list[int] = []

    results = session.submit_many(
        [sms(i) for i in range(12)], before_each=lambda: seen_outstanding.append(session.outstanding)
    )

    assert max(seen_outstanding) < 4  # a slot is free whenever a submit_sm is about to be written
    assert session.stats["max_outstanding"] == 4  # ... and the window did fill up
    assert outcomes(results) == [Outcome.OK, Outcome.AMBIGUOUS] * 6
    assert smsc.stats.unanswered == 6
    assert session.stats["response_timeouts"] == 6
    assert session.bound  # lost responses are not a lost link


def test_throttling_and_permanent_errors_come_back_as_errors_with_their_status(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc(receipts=False, accounts=[Account("sys", "pw", tps=5)], reject_prefixes={"8499": 0x0B})
    session, _ = open_session(smsc)
    items = [sms(i) for i in range(30)] + [sms("bad", destination="+84991234567")]

    results = session.submit_many(items)

    throttled = [r for r in results[:30] if r.outcome is Outcome.ERROR]
    accepted = [r for r in results[:30] if r.outcome is Outcome.OK]
    assert len(throttled) + len(accepted) == 30
    assert {r.command_status for r in throttled} == {ESME_RTHROTTLED}
    # At most 5 accepted per calendar second, and the batch spans at most two of them.
    assert len(throttled) >= 20
    assert session.stats["throttles"] == len(throttled) == smsc.stats.throttled
    assert results[30] == SubmitResult("bad", Outcome.ERROR, command_status=ESME_RINVDSTADR)


def test_generic_nack_for_a_submit_is_an_error_and_keeps_the_session(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc(receipts=False, generic_nack_every=3)
    session, _ = open_session(smsc)

    results = session.submit_many([sms(i) for i in range(9)])

    assert outcomes(results) == [Outcome.OK, Outcome.OK, Outcome.ERROR] * 3
    assert {r.command_status for r in results if r.outcome is Outcome.ERROR} == {ESME_RSYSERR}
    assert session.stats["generic_nacks"] == 3
    assert session.bound
    assert session.stats["reconnects"] == 0


def test_a_dropped_connection_mid_batch_loses_no_ref_and_the_session_rebinds_by_itself(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc(receipts=False, drop_after=5)
    # A slow first rebind shows submit_many returning without waiting for it.
    session, _ = open_session(smsc, window=3, reconnect_initial_s=1.0, reconnect_max_s=2.0)
    items = [sms(i) for i in range(12)]

    results = session.submit_many(items)

    assert not session.bound
    assert [r.ref for r in results] == list(range(12))
    order = [Outcome.OK, Outcome.AMBIGUOUS, Outcome.NOT_SENT]
    seen = outcomes(results)
    assert seen == sorted(seen, key=order.index)  # nothing answered or written after the loss
    # The SMSC accepted 5; the ones still in flight (at most a window) may have lost their answer
    # (a TCP reset can discard it); everything after them was never written.
    accepted = smsc.stats.submits
    assert accepted == 5
    assert accepted - 3 <= seen.count(Outcome.OK) <= accepted
    assert seen.count(Outcome.OK) + seen.count(Outcome.AMBIGUOUS) <= accepted + 3
    assert [r.provider_id for r in results if r.outcome is Outcome.OK] == [rec.message_id for rec in smsc.stats.log][
        : seen.count(Outcome.OK)
    ]
    assert session.wait_bound(5)
    assert session.stats["reconnects"] == 1
    assert smsc.stats.max_sessions("sys") == 1  # the dead bind was gone before the new one
    assert outcomes(session.submit_many([sms("again")])) == [Outcome.OK]


def test_an_smsc_initiated_unbind_is_answered_and_followed_by_a_rebind(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc(receipts=False, unbind_after=3)
    session, _ = open_session(smsc)

    assert outcomes(session.submit_many([sms(i) for i in range(3)])) == [Outcome.OK] * 3

    assert wait_until(lambda: session.stats["reconnects"] >= 1 and session.bound)
    assert "unbound" in (session.stats["last_error"] or "")
    assert outcomes(session.submit_many([sms("after")])) == [Outcome.OK]


def test_submitting_on_a_session_that_is_not_bound_sends_nothing(start_smsc: StartSmsc) -> None:
    smsc = start_smsc()
    session = SmppSession(make_cfg(smsc.port), Receiver())  # never started

    results = session.submit_many([sms(1), sms(2)])

    assert results == [SubmitResult(1, Outcome.NOT_SENT), SubmitResult(2, Outcome.NOT_SENT)]
    assert smsc.stats.submits == 0


def test_before_each_raising_stops_the_batch(start_smsc: StartSmsc, open_session: OpenSession) -> None:
    smsc = start_smsc(receipts=False)
    session, _ = open_session(smsc)
    calls = 0

    def limiter() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("campaign paused")

    results = session.submit_many([sms(i) for i in range(5)], before_each=limiter)

    assert outcomes(results) == [Outcome.OK, Outcome.OK] + [Outcome.NOT_SENT] * 3
    assert smsc.stats.submits == 2


def test_a_ucs2_multipart_message_arrives_intact(start_smsc: StartSmsc, open_session: OpenSession) -> None:
    smsc = start_smsc(receipts=False)
    session, _ = open_session(smsc)
    text = "Điều tra dân số: mã đăng nhập của đơn vị bạn là Xy7#pQ2, hạn chót 30/4. Không chia sẻ mã này."
    chunks = [text[i : i + 67] for i in range(0, len(text), 67)]
    segments = [
        Submit(
            ref=("m1", n),
            source_addr="TCTK",
            destination="+84912345678",
            short_message=bytes([5, 0, 3, 0x2A, len(chunks), n + 1]) + chunk.encode("utf-16-be"),
            data_coding=8,
            esm_class=0x40,
        )
        for n, chunk in enumerate(chunks)
    ]

    assert outcomes(session.submit_many(segments)) == [Outcome.OK] * 2

    log = smsc.stats.log
    assert [rec.short_message for rec in log] == [s.short_message for s in segments]
    assert {(rec.destination_addr, rec.source_addr, rec.esm_class, rec.data_coding) for rec in log} == {
        ("84912345678", "TCTK", 0x40, 8)
    }
    assert b"".join(rec.short_message[6:] for rec in log).decode("utf-16-be") == text


# --- receipts and MO ---------------------------------------------------------------------------


def test_receipts_are_handed_over_in_batches_and_acked_only_after_the_handler(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc(receipt_delay_s=(0.01, 0.02))
    release = threading.Event()
    session, receiver = open_session(smsc, receiver=Receiver(hold=release))

    results = session.submit_many([sms(i, destination=f"+8491000{i:04d}") for i in range(30)])

    assert wait_until(lambda: smsc.stats.receipts_sent == 30)
    time.sleep(0.1)  # time enough for a wrongly early ack to reach the simulator
    assert smsc.stats.receipts_acked == 0  # the handler still holds the first batch
    release.set()
    assert wait_until(lambda: smsc.stats.receipts_acked == 30)
    delivered = receiver.delivered
    assert sorted(d.receipted_message_id or "" for d in delivered) == sorted(r.provider_id or "" for r in results)
    assert all(d.is_receipt and d.message_state == 2 for d in delivered)
    assert len(receiver.batches) < 30
    assert max(len(b) for b in receiver.batches) > 1
    assert session.stats["delivers"] == 30


def test_a_failing_handler_gets_the_receipt_again_later(start_smsc: StartSmsc, open_session: OpenSession) -> None:
    smsc = start_smsc(redeliver_delay_s=0.1)
    session, receiver = open_session(smsc, receiver=Receiver(fail_calls=1))

    [result] = session.submit_many([sms("x")])

    assert wait_until(lambda: smsc.stats.receipts_acked == 1)
    assert smsc.stats.receipts_sent == 2  # answered 0x64 once, then offered again
    assert [d.receipted_message_id for d in receiver.delivered] == [result.provider_id]
    assert session.stats["deliver_failures"] == 1


def test_receipts_may_overtake_their_submit_response(start_smsc: StartSmsc, open_session: OpenSession) -> None:
    smsc = start_smsc(receipt_before_response=True)
    session, receiver = open_session(smsc)

    results = session.submit_many([sms(i) for i in range(5)])

    assert wait_until(lambda: smsc.stats.receipts_acked == 5)
    assert {d.receipted_message_id for d in receiver.delivered} == {r.provider_id for r in results}


def test_transmitter_receiver_mode_binds_twice_and_receives_on_the_receiver(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc()
    session, receiver = open_session(smsc, bind_mode="transmitter_receiver")

    assert smsc.stats.sessions("sys") == 2
    names = {t.name for t in threading.enumerate()}
    assert {
        "smpp-test-tx-reader",
        "smpp-test-rx-reader",
        "smpp-test-supervisor",
        "smpp-test-deliver",
    } <= names
    results = session.submit_many([sms(i) for i in range(5)])

    assert set(outcomes(results)) == {Outcome.OK}
    assert wait_until(lambda: smsc.stats.receipts_acked == 5)
    assert {d.receipted_message_id for d in receiver.delivered} == {r.provider_id for r in results}


def test_mo_messages_arrive_as_non_receipts(start_smsc: StartSmsc, open_session: OpenSession) -> None:
    smsc = start_smsc()
    _, receiver = open_session(smsc)

    smsc.send_mo("sys", "84901234567", "8088", "STOP")

    assert wait_until(lambda: smsc.stats.mo_acked == 1)
    [mo] = receiver.delivered
    assert not mo.is_receipt
    assert mo.short_message == b"STOP"
    assert mo.source_addr == "84901234567"


# --- keeping the link alive --------------------------------------------------------------------


def test_enquire_link_is_sent_when_idle(start_smsc: StartSmsc, open_session: OpenSession) -> None:
    smsc = start_smsc()
    session, _ = open_session(smsc, enquire_link_s=0.1, response_timeout_s=1.0)

    assert wait_until(lambda: smsc.stats.enquire_links >= 3)
    assert session.stats["enquire_links"] >= 3
    assert session.bound
    assert session.stats["reconnects"] == 0


class SilentSmsc:
    """Accepts binds, then never answers anything: a link that died without closing."""

    def __init__(self) -> None:
        self.binds = 0
        self._server = socket.create_server((LOOPBACK, 0))
        self.port = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                self._conns.append(conn)
                _, command_id, _, sequence = struct.unpack(">LLLL", conn.recv(1024)[:16])
                conn.sendall(struct.pack(">LLLL", 18, command_id | 0x80000000, 0, sequence) + b"x\0")
                self.binds += 1

    def close(self) -> None:
        self._server.close()
        for conn in self._conns:
            conn.close()


def test_a_link_that_stops_answering_enquire_link_is_replaced() -> None:
    smsc = SilentSmsc()
    session = SmppSession(make_cfg(smsc.port, enquire_link_s=0.1, response_timeout_s=0.3), Receiver())
    try:
        session.start()
        assert wait_until(lambda: smsc.binds >= 2)
        assert session.stats["enquire_links"] >= 1
        assert "enquire_link_resp" in (session.stats["last_error"] or "")
    finally:
        session.close(timeout=1)
        smsc.close()


def test_a_refused_bind_is_retried_with_backoff_until_it_works(
    start_smsc: StartSmsc, open_session: OpenSession
) -> None:
    smsc = start_smsc(accounts=[Account("sys", "other")])
    session, _ = open_session(smsc, bound=False, reconnect_initial_s=0.1, reconnect_max_s=0.4)

    assert wait_until(lambda: session.stats["bind_failures"] >= 2)
    time.sleep(0.5)
    failures = session.stats["bind_failures"]
    assert 2 <= failures <= 8  # backing off, not a tight loop
    assert "ESME_RINVPASWD" in (session.stats["last_error"] or "")
    assert not session.bound

    smsc.config.accounts[0].password = "pw"
    assert session.wait_bound(5)


def test_close_unbinds_and_stops_every_thread(start_smsc: StartSmsc) -> None:
    smsc = start_smsc()
    session = SmppSession(make_cfg(smsc.port, name="closing"), Receiver())
    session.start()
    assert session.wait_bound(5)

    session.close()

    assert not session.bound
    assert wait_until(lambda: smsc.stats.sessions("sys") == 0)
    assert not [t for t in threading.enumerate() if t.name.startswith("smpp-closing-")]
    assert session.stats["last_error"] is None  # a polite close is not an error


# --- check_bind --------------------------------------------------------------------------------


def test_check_bind_passes_for_good_credentials(start_smsc: StartSmsc) -> None:
    smsc = start_smsc()
    check_bind(make_cfg(smsc.port))
    check_bind(make_cfg(smsc.port, bind_mode="transmitter_receiver"))
    assert wait_until(lambda: smsc.stats.sessions("sys") == 0)
    assert smsc.stats.max_sessions("sys") == 1  # one connection at a time, each unbound


def test_check_bind_names_the_smpp_error_and_the_address(start_smsc: StartSmsc) -> None:
    smsc = start_smsc()
    with pytest.raises(GatewayCheckError, match=rf"127\.0\.0\.1:{smsc.port}.*ESME_RINVPASWD"):
        check_bind(make_cfg(smsc.port, password="wrong"))


def test_check_bind_reports_a_refused_connection() -> None:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(GatewayCheckError, match=rf"cannot connect to 127\.0\.0\.1:{port}"):
            check_bind(make_cfg(port))


def test_logs_never_show_the_password_or_the_message_text(
    start_smsc: StartSmsc, open_session: OpenSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    smsc = start_smsc(accounts=[Account("sys", "Zq9!secr")], drop_after=2)
    with pytest.raises(GatewayCheckError):
        check_bind(make_cfg(smsc.port, password="Xw4!secr"))
    session, receiver = open_session(smsc, password="Zq9!secr", reconnect_initial_s=0.2)
    session.submit_many([sms(i, text=b"OTP-771903") for i in range(4)])
    assert session.wait_bound(5)
    assert wait_until(lambda: smsc.stats.receipts_acked == 2)
    session.close()

    ours = [r for r in caplog.records if r.name.startswith(("gateways.smpp.client", "gateways.smpp.session", "smpp"))]
    assert any("connection lost" in r.getMessage() for r in ours)  # the logs were captured at all
    text = "\n".join(r.getMessage() for r in ours)
    for secret in ("Zq9!secr", "Xw4!secr", "OTP-771903", "771903"):
        assert secret not in text
