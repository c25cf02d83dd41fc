"""Reply classification, relay settings and check_relay against real sinks."""

from __future__ import annotations

import asyncio

import pytest

from gateways.smtp.pool import Outcome, RelayCheckError, RelayConfig, check_relay
from gateways.smtp.relay import classify_reply, enhanced_status
from gateways.smtp.sink import SinkConfig, SmtpSink
from tests.gateways.smtp.conftest import free_port, relay_for


@pytest.mark.parametrize(
    ("code", "text", "stage", "outcome", "suppress"),
    [
        (250, "2.0.0 Ok: queued as 4Xyz", "data", Outcome.SENT, False),
        (451, "4.3.0 Temporary lookup failure", "rcpt", Outcome.TRANSIENT, False),
        (421, "4.7.0 Try again later, closing connection", "mail", Outcome.TRANSIENT, False),
        (
            550,
            "5.1.1 The email account that you tried to reach does not exist",
            "rcpt",
            Outcome.PERMANENT,
            True,
        ),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; not found", "rcpt", Outcome.PERMANENT, True),
        (551, "User not local; please try <forward@example.vn>", "rcpt", Outcome.PERMANENT, True),
        (553, "mailbox name not allowed", "rcpt", Outcome.PERMANENT, True),
        (550, "5.7.1 Message rejected as spam", "data", Outcome.PERMANENT, False),
        (550, "Message content rejected", "data", Outcome.PERMANENT, False),  # no code: not at RCPT
        (550, "5.1.1 mailbox unknown (reported after DATA)", "data", Outcome.PERMANENT, True),
        (553, "5.1.8 Sender address domain does not exist", "rcpt", Outcome.PERMANENT, False),
        (550, "5.1.0 Sender rejected", "mail", Outcome.PERMANENT, False),  # MAIL FROM: our side
        (552, "5.3.4 Message size exceeds fixed limit", "data", Outcome.PERMANENT, False),
        (530, "5.7.0 Authentication required", "mail", Outcome.TRANSIENT, False),
        (354, "go ahead", "data", Outcome.TRANSIENT, False),
    ],
)
def test_classify_reply(code: int, text: str, stage: str, outcome: Outcome, suppress: bool) -> None:
    result = classify_reply(code, text, stage)  # type: ignore[arg-type]

    assert (result.outcome, result.code, result.suppress) == (outcome, code, suppress)


def test_enhanced_status_only_at_the_start() -> None:
    assert enhanced_status("5.1.1 user unknown") == "5.1.1"
    assert enhanced_status("  4.7.0 later") == "4.7.0"
    assert enhanced_status("user unknown 5.1.1") is None
    assert enhanced_status("550 no") is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls": "ssl"}, "tls must be"),
        ({"connections": 0}, "connections"),
        ({"password": "x"}, "password given without username"),
    ],
)
def test_relay_config_validation(overrides: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"name": "r", "host": "127.0.0.1", "port": 25}
    with pytest.raises(ValueError, match=message):
        RelayConfig(**(base | overrides))  # type: ignore[arg-type]


def test_check_relay_plain(sink: SmtpSink) -> None:
    summary = asyncio.run(check_relay(relay_for(sink)))

    assert summary.startswith(f"relay test-relay (127.0.0.1:{sink.port}): ok")
    assert "no TLS" in summary
    assert "no AUTH" in summary
    assert sink.count == 0  # a check sends nothing


def test_check_relay_starttls_and_auth(secure_sink: SmtpSink) -> None:
    summary = asyncio.run(check_relay(relay_for(secure_sink)))

    assert "TLS TLSv1." in summary
    assert "AUTH as loa-relay" in summary


def test_check_relay_wrong_password(secure_sink: SmtpSink) -> None:
    with pytest.raises(RelayCheckError, match=r"test-relay .*authentication as 'loa-relay' rejected: 535") as info:
        asyncio.run(check_relay(relay_for(secure_sink, password="wrong")))

    assert "wrong" not in str(info.value)


def test_check_relay_untrusted_certificate(secure_sink: SmtpSink) -> None:
    with pytest.raises(RelayCheckError, match="certificate not trusted.*ca_file"):
        asyncio.run(check_relay(relay_for(secure_sink, ca_file=None)))


def test_check_relay_untrusted_certificate_implicit_tls() -> None:
    with SmtpSink(SinkConfig(port=0, implicit_tls=True)) as tls_sink:
        cfg = relay_for(tls_sink, ca_file=None)
        with pytest.raises(RelayCheckError, match="certificate not trusted"):
            asyncio.run(check_relay(cfg))


def test_check_relay_auth_without_tls(secure_sink: SmtpSink) -> None:
    # The sink offers AUTH only after STARTTLS; a relay configured without TLS cannot log in.
    with pytest.raises(RelayCheckError, match="AUTH"):
        asyncio.run(check_relay(relay_for(secure_sink, tls="none")))


def test_check_relay_plain_client_on_tls_port_times_out_with_hint() -> None:
    with SmtpSink(SinkConfig(port=0, implicit_tls=True)) as tls_sink:
        cfg = relay_for(tls_sink, tls="none", timeout_s=0.5)
        with pytest.raises(RelayCheckError, match="no answer within 0.5 s.*tls = 'tls'"):
            asyncio.run(check_relay(cfg))


def test_check_relay_nobody_listening() -> None:
    cfg = RelayConfig(name="gone", host="127.0.0.1", port=free_port())

    with pytest.raises(RelayCheckError, match="relay gone .*cannot connect"):
        asyncio.run(check_relay(cfg))
