"""SmtpPool against a real aiosmtpd sink: reuse, classification, faults, TLS and AUTH."""

from __future__ import annotations

import asyncio

import pytest

from gateways.smtp.pool import Outcome, PoolClosedError, RelayConfig, SendResult, SmtpPool
from gateways.smtp.sink import SinkConfig, SmtpSink
from tests.gateways.smtp.conftest import MESSAGE, SENDER, free_port, relay_for


def send_all(pool: SmtpPool, recipients: list[str], *, concurrent: bool = False) -> list[SendResult]:
    """Send MESSAGE to each recipient in one event loop, then close the pool."""

    async def main() -> list[SendResult]:
        try:
            if concurrent:
                return list(await asyncio.gather(*(pool.send(SENDER, r, MESSAGE) for r in recipients)))
            return [await pool.send(SENDER, r, MESSAGE) for r in recipients]
        finally:
            await pool.close()

    return asyncio.run(main())


def test_hundred_messages_share_at_most_four_connections(sink: SmtpSink) -> None:
    pool = SmtpPool(relay_for(sink, connections=4))
    recipients = [f"user{i}@example.vn" for i in range(100)]

    results = send_all(pool, recipients, concurrent=True)

    assert [r.outcome for r in results] == [Outcome.SENT] * 100
    assert sink.count == 100
    assert 1 <= sink.connections_opened <= 4
    assert pool.stats.opened == sink.connections_opened
    assert pool.stats.sent == 100
    assert sorted(rcpt for mail in sink.received for rcpt in mail.rcpt_tos) == sorted(recipients)
    # Dot-stuffing and CRLF survive the trip: the sink got exactly what we sent.
    assert {mail.data for mail in sink.received} == {MESSAGE}


def test_sequential_sends_reuse_one_connection(sink: SmtpSink) -> None:
    results = send_all(SmtpPool(relay_for(sink)), [f"u{i}@example.vn" for i in range(10)])

    assert all(r.outcome is Outcome.SENT and r.code == 250 for r in results)
    assert sink.connections_opened == 1
    assert len({mail.connection_id for mail in sink.received}) == 1


@pytest.mark.parametrize(
    ("reply", "outcome", "suppress"),
    [
        ((550, "5.1.1 <x>: Recipient address rejected: User unknown"), Outcome.PERMANENT, True),
        ((550, "5.7.1 Relaying denied"), Outcome.PERMANENT, False),
        ((553, "Requested action not taken: mailbox name not allowed"), Outcome.PERMANENT, True),
        ((554, "Transaction failed"), Outcome.PERMANENT, False),
        ((450, "4.2.1 Mailbox busy, try later"), Outcome.TRANSIENT, False),
        ((452, "4.5.3 Too many recipients"), Outcome.TRANSIENT, False),
    ],
)
def test_rcpt_replies_are_classified_and_connection_kept(
    sink: SmtpSink, reply: tuple[int, str], outcome: Outcome, suppress: bool
) -> None:
    sink.config.faults.rcpt_replies["victim@example.vn"] = reply

    refused, after = send_all(SmtpPool(relay_for(sink)), ["victim@example.vn", "fine@example.vn"])

    assert (refused.outcome, refused.code, refused.suppress) == (outcome, reply[0], suppress)
    assert reply[1] in refused.text
    # RSET ended the refused transaction; the next message went over the same connection.
    assert after.outcome is Outcome.SENT
    assert sink.connections_opened == 1
    assert [mail.rcpt_tos for mail in sink.received] == [["fine@example.vn"]]


def test_domain_wide_fault_and_421_closing_connection(sink: SmtpSink) -> None:
    sink.config.faults.rcpt_replies["@busy.vn"] = (421, "4.7.0 Too many connections, closing")

    results = send_all(SmtpPool(relay_for(sink)), ["a@busy.vn", "b@example.vn"])

    assert results[0].outcome is Outcome.TRANSIENT
    assert results[0].code == 421
    assert results[1].outcome is Outcome.SENT
    # 421 closes the session, so the second message needed a new connection.
    assert sink.connections_opened == 2


def test_greylisting_fails_first_n_then_accepts(sink: SmtpSink) -> None:
    sink.config.faults.fail_first_n["grey@example.vn"] = 2

    results = send_all(SmtpPool(relay_for(sink)), ["grey@example.vn"] * 3)

    assert [(r.outcome, r.code) for r in results] == [
        (Outcome.TRANSIENT, 451),
        (Outcome.TRANSIENT, 451),
        (Outcome.SENT, 250),
    ]
    assert sink.count == 1


def test_connection_dropped_during_data_is_ambiguous(sink: SmtpSink) -> None:
    sink.config.faults.drop_during_data.add("cut@example.vn")
    pool = SmtpPool(relay_for(sink))

    cut, after = send_all(pool, ["cut@example.vn", "next@example.vn"])

    assert cut.outcome is Outcome.AMBIGUOUS
    assert cut.code is None
    assert "DATA" in cut.text
    assert sink.drops == 1
    assert after.outcome is Outcome.SENT
    assert pool.stats.opened == 2  # the broken connection was discarded, not reused
    assert pool.stats.by_outcome == {Outcome.AMBIGUOUS: 1, Outcome.SENT: 1}


def test_relay_down_is_transient_and_fails_fast_during_cooldown() -> None:
    pool = SmtpPool(RelayConfig(name="down", host="127.0.0.1", port=free_port(), connect_attempts=2))

    first, second = send_all(pool, ["a@example.vn", "b@example.vn"])

    assert first.outcome is Outcome.TRANSIENT
    assert first.code is None
    assert "unavailable" in first.text
    # The second send did not try to connect again: the pool remembers the relay is down.
    assert second == first
    assert pool.stats.connect_failures == 1
    assert pool.stats.opened == 0


def test_parked_connection_closed_by_relay_is_replaced_without_loss() -> None:
    first_sink = SmtpSink(SinkConfig(port=0))
    first_sink.start()
    port = first_sink.port
    cfg = relay_for(first_sink)
    pool = SmtpPool(cfg)

    async def main() -> tuple[SendResult, SendResult, SmtpSink]:
        before = await pool.send(SENDER, "a@example.vn", MESSAGE)
        first_sink.stop()  # cuts the parked connection, like a relay restart
        second_sink = SmtpSink(SinkConfig(port=port))
        second_sink.start()
        after = await pool.send(SENDER, "b@example.vn", MESSAGE)
        await pool.close()
        return before, after, second_sink

    before, after, second_sink = asyncio.run(main())
    try:
        assert before.outcome is Outcome.SENT
        assert after.outcome is Outcome.SENT
        assert [mail.rcpt_tos for mail in second_sink.received] == [["b@example.vn"]]
        assert pool.stats.opened == 2
    finally:
        second_sink.stop()


def test_relay_closing_a_reused_connection_at_mail_is_retried_on_a_new_one(sink: SmtpSink) -> None:
    # Exchange-style per-connection limit: the 3rd MAIL on a connection gets 421 and a hang-up.
    sink.config.faults.messages_per_connection = 2
    pool = SmtpPool(relay_for(sink))

    results = send_all(pool, [f"u{i}@example.vn" for i in range(5)])

    assert [r.outcome for r in results] == [Outcome.SENT] * 5
    assert sink.count == 5
    assert sink.connections_opened == 3
    assert pool.stats.opened == 3


def test_idle_connection_is_checked_with_noop(sink: SmtpSink) -> None:
    pool = SmtpPool(relay_for(sink, noop_after_idle_s=0.0))

    results = send_all(pool, ["a@example.vn", "b@example.vn", "c@example.vn"])

    assert all(r.outcome is Outcome.SENT for r in results)
    assert sink.noops == 2  # before each reuse, none before the first message
    assert sink.connections_opened == 1


def test_connection_recycled_after_max_messages(sink: SmtpSink) -> None:
    pool = SmtpPool(relay_for(sink, max_messages_per_connection=3))

    send_all(pool, [f"u{i}@example.vn" for i in range(7)])

    assert sink.count == 7
    assert sink.connections_opened == 3


def test_close_quits_and_refuses_further_sends(sink: SmtpSink) -> None:
    pool = SmtpPool(relay_for(sink))
    send_all(pool, ["a@example.vn"])

    assert pool.idle_connections == 0
    with pytest.raises(PoolClosedError):
        asyncio.run(pool.send(SENDER, "b@example.vn", MESSAGE))


def test_pool_refuses_a_second_event_loop(sink: SmtpSink) -> None:
    pool = SmtpPool(relay_for(sink))
    asyncio.run(pool.send(SENDER, "a@example.vn", MESSAGE))

    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(pool.send(SENDER, "b@example.vn", MESSAGE))


def test_starttls_and_auth_with_validated_certificate(secure_sink: SmtpSink) -> None:
    cfg = relay_for(secure_sink)
    assert cfg.tls == "starttls"
    assert cfg.validate_certs
    assert cfg.ca_file

    results = send_all(SmtpPool(cfg), ["a@example.vn", "b@example.vn"])

    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert secure_sink.count == 2
    assert secure_sink.connections_opened == 1


def test_starttls_without_validation(secure_sink: SmtpSink) -> None:
    results = send_all(SmtpPool(relay_for(secure_sink, ca_file=None, validate_certs=False)), ["a@example.vn"])

    assert results[0].outcome is Outcome.SENT


def test_wrong_password_is_transient_with_the_relay_reply(secure_sink: SmtpSink) -> None:
    pool = SmtpPool(relay_for(secure_sink, password="wrong"))

    (result,) = send_all(pool, ["a@example.vn"])

    assert result.outcome is Outcome.TRANSIENT
    assert result.code == 535
    assert "test-relay" in result.text
    assert "535" in result.text
    assert "wrong" not in result.text
    assert secure_sink.count == 0
    assert pool.stats.connect_failures == 1


def test_untrusted_certificate_is_not_retried(secure_sink: SmtpSink) -> None:
    pool = SmtpPool(relay_for(secure_sink, ca_file=None, connect_attempts=3))

    (result,) = send_all(pool, ["a@example.vn"])

    assert result.outcome is Outcome.TRANSIENT
    assert "CERTIFICATE_VERIFY_FAILED" in result.text
    # One TLS attempt only: a certificate problem does not fix itself between retries.
    assert secure_sink.connections_opened == 1


def test_missing_auth_is_transient_not_permanent(secure_sink: SmtpSink) -> None:
    (result,) = send_all(SmtpPool(relay_for(secure_sink, username="", password="")), ["a@example.vn"])

    assert result.outcome is Outcome.TRANSIENT
    assert result.code == 530


def test_implicit_tls_with_auth() -> None:
    with SmtpSink(SinkConfig(port=0, implicit_tls=True, auth=("u", "p"))) as tls_sink:
        cfg = relay_for(tls_sink)
        assert cfg.tls == "tls"

        (result,) = send_all(SmtpPool(cfg), ["a@example.vn"])

        assert result.outcome is Outcome.SENT
        assert tls_sink.count == 1


def test_password_is_hidden_from_repr(secure_sink: SmtpSink) -> None:
    cfg = relay_for(secure_sink)

    assert cfg.password not in repr(cfg)
    assert "password" not in repr(cfg)
