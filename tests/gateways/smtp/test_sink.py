"""The SMTP sink itself: storage, counting, own certificates, start errors, ``serve`` and signals."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateways.smtp.pool import Outcome, SmtpPool
from gateways.smtp.sink import SinkConfig, SmtpSink, generate_self_signed
from tests.gateways.smtp.conftest import MESSAGE, SENDER, free_port, relay_for

REPO = Path(__file__).resolve().parents[3]


def send(sink: SmtpSink, recipients: list[str], **overrides: object) -> list[Outcome]:
    async def main() -> list[Outcome]:
        pool = SmtpPool(relay_for(sink, **overrides))
        try:
            return [(await pool.send(SENDER, r, MESSAGE)).outcome for r in recipients]
        finally:
            await pool.close()

    return asyncio.run(main())


def test_received_mail_records_envelope_and_connection(sink: SmtpSink) -> None:
    # The stdlib client is a second, independent SMTP implementation talking to the sink.
    with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="gso.gov.vn") as client:
        client.sendmail("bounce+m1@gso.gov.vn", ["a@example.vn", "b@example.vn"], MESSAGE)
        client.sendmail("bounce+m2@gso.gov.vn", ["c@example.vn"], MESSAGE)

    first, second = sink.received
    assert first.envelope_from == "bounce+m1@gso.gov.vn"
    assert first.rcpt_tos == ["a@example.vn", "b@example.vn"]
    assert first.data == MESSAGE
    assert first.connection_id == second.connection_id
    assert sink.count == 2
    assert sink.connections_opened == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b".\r\n",
        b"..two dots\r\n.\r\nend.\r\n",
        # Far longer than aiosmtpd's 1001-octet reader limit, lines ending in dots, no CRLF at the end.
        b"".join(b"line %d ends with a dot.\r\n.%d\r\n" % (i, i) for i in range(400)) + b"x" * 999,
    ],
    ids=["empty", "only-a-dot", "dots", "long"],
)
def test_data_arrives_exactly_as_sent(sink: SmtpSink, data: bytes) -> None:
    # smtplib dot-stuffs and ends the data with CRLF; the sink must give back the original.
    with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="gso.gov.vn") as client:
        client.sendmail("a@gso.gov.vn", ["b@example.vn"], data)
        client.sendmail("a@gso.gov.vn", ["c@example.vn"], MESSAGE)  # the session is still in step

    first, second = sink.received
    expected = data if data.endswith(b"\r\n") else data + b"\r\n"
    assert first.data == expected
    assert second.data == MESSAGE


def test_unusual_addresses_and_too_much_data() -> None:
    with SmtpSink(SinkConfig(port=0)) as small:
        with smtplib.SMTP("127.0.0.1", small.port, local_hostname="gso.gov.vn") as client:
            client.ehlo()
            # A quoted local part and a comment after the address go through aiosmtpd's parser.
            assert client.docmd('MAIL FROM:<"a b"@gso.gov.vn> (bounces)')[0] == 250
            assert client.docmd("RCPT TO:<x@example.vn>")[0] == 250
            assert client.docmd("RSET")[0] == 250
            client.sendmail("a@gso.gov.vn", ["b@example.vn"], b"x" * 100)
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@gso.gov.vn", ["b@example.vn"], b"y" * 1002 + b"\r\n")
            assert refused.value.smtp_code == 500  # a line over 1,000 octets
            for session in list(small._sessions):
                session.data_size_limit = 64
            client.mail("a@gso.gov.vn")  # no SIZE, which would be refused at MAIL already
            client.rcpt("b@example.vn")
            assert client.data(b"y\r\n" * 100)[0] == 552
            client.sendmail("a@gso.gov.vn", ["c@example.vn"], b"ok\r\n")  # still in step after the refusals

        assert [m.rcpt_tos for m in small.received] == [["b@example.vn"], ["c@example.vn"]]


def test_store_false_only_counts() -> None:
    with SmtpSink(SinkConfig(port=0, store=False)) as counting:
        assert send(counting, ["a@example.vn", "b@example.vn"]) == [Outcome.SENT, Outcome.SENT]

        assert counting.count == 2
        assert counting.received == []


def test_clear_resets_what_was_received(sink: SmtpSink) -> None:
    send(sink, ["a@example.vn"])
    sink.clear()

    assert sink.count == 0
    assert sink.received == []


def test_faults_can_change_while_running(sink: SmtpSink) -> None:
    assert send(sink, ["a@example.vn"]) == [Outcome.SENT]
    sink.config.faults.rcpt_replies["a@example.vn"] = (550, "5.1.1 gone")
    assert send(sink, ["A@Example.VN"]) == [Outcome.PERMANENT]  # matching ignores case
    sink.config.faults.rcpt_replies.clear()
    assert send(sink, ["a@example.vn"]) == [Outcome.SENT]


def test_configured_certificate_is_used(tmp_path: Path) -> None:
    cert, key = generate_self_signed(tmp_path)
    assert oct(key.stat().st_mode & 0o777) == "0o600"

    with SmtpSink(SinkConfig(port=0, require_starttls=True, tls_cert=cert, tls_key=key)) as tls_sink:
        assert tls_sink.tls_cert_path == cert
        assert send(tls_sink, ["a@example.vn"]) == [Outcome.SENT]


def test_require_starttls_refuses_plain_mail() -> None:
    with SmtpSink(SinkConfig(port=0, require_starttls=True)) as tls_sink:
        assert send(tls_sink, ["a@example.vn"], tls="none", ca_file=None) == [Outcome.TRANSIENT]
        assert tls_sink.count == 0


def test_generated_certificate_is_removed_on_stop() -> None:
    tls_sink = SmtpSink(SinkConfig(port=0, implicit_tls=True))
    tls_sink.start()
    cert = tls_sink.tls_cert_path
    assert cert is not None
    assert cert.exists()

    tls_sink.stop()

    assert not cert.exists()


def test_port_in_use_is_a_clear_error(sink: SmtpSink) -> None:
    with pytest.raises(RuntimeError, match=f"could not listen on 127.0.0.1:{sink.port}"):
        SmtpSink(SinkConfig(port=sink.port)).start()


def test_stop_cuts_open_sessions(sink: SmtpSink) -> None:
    client = smtplib.SMTP("127.0.0.1", sink.port)
    client.ehlo("gso.gov.vn")

    sink.stop()

    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()


def test_serve_runs_until_sigterm() -> None:
    port = free_port()
    code = (
        "import logging, sys; from gateways.smtp.sink import SinkConfig, serve;"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
        f"serve(SinkConfig(port={port}))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(SENDER, ["a@example.vn"], MESSAGE)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, stderr
    assert "stopped after 1 messages" in stderr


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve() exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"serve() did not listen on port {port} within {timeout:.0f} s")


def test_loa_simulate_smtp_writes_its_counts_for_the_demo(tmp_path: Path) -> None:
    from gateways.smtp.sink import read_stats

    port, stats = free_port(), tmp_path / "sink.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "loa", "simulate", "smtp", "--port", str(port), "--stats-file", str(stats)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process, timeout=60)
        with smtplib.SMTP("127.0.0.1", port) as client:
            for rcpt in ("a@example.vn", "b@example.vn", "c@example.vn"):
                client.sendmail(SENDER, [rcpt], MESSAGE)
        deadline = time.monotonic() + 15
        while (read_stats(stats) or {}).get("received") != 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        # Two connections: the readiness probe and the client.
        assert read_stats(stats) == {"received": 3, "connections": 2, "drops": 0}
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert read_stats(stats) == {"received": 3, "connections": 2, "drops": 0}  # final write on exit
    assert read_stats(tmp_path / "missing.json") is None
