"""Credential email through real `loa worker` processes (Celery on real Redis, real database) to a
real aiosmtpd sink: DKIM ed25519 from the gateways file verified by dkimpy, MIME structure and
headers, pool reuse across processes, STARTTLS + AUTH with per-recipient faults (5xx, greylisting,
a connection cut during DATA), and one slow domain not holding up the others."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from accounts.models import Role
from api.app import create_app
from gateways.smtp.sink import SinkConfig, SinkFaults, SmtpSink
from loa.settings import Settings
from tests.conftest import Procs, wait_for
from tests.factories import make_key
from tests.workers.email_support import (
    DKIM_DOMAIN,
    SENDER_ADDRESS,
    dkim_verifies,
    messages_by_address,
    parse,
    start_campaign,
    text_of,
    units,
    wait_completed,
    write_dkim_key,
    write_gateways,
)

pytestmark = pytest.mark.slow

AUTH = ("loa-relay", "relay-pass-0123")


@pytest.fixture
def client(make_settings: Callable[..., Settings], db: Engine, redis_client: Any) -> Callable[[Settings], TestClient]:
    def build(settings: Settings) -> TestClient:
        return TestClient(create_app(settings), headers={"Authorization": f"Bearer {make_key(db, Role.SENDER)}"})

    return build


@pytest.fixture
def plain_sink() -> Iterator[SmtpSink]:
    with SmtpSink(SinkConfig(port=0)) as running:
        yield running


def start_workers(procs: Procs, settings: Settings, workers: int = 1) -> None:
    for i in range(workers):
        procs.start(settings, "worker", "-Q", "email,dispatch", "-c", "4", name=f"worker{i}")
    procs.start(settings, "scheduler", name="scheduler")


def test_credential_campaign_through_two_worker_processes(
    make_settings: Callable[..., Settings],
    client: Callable[[Settings], TestClient],
    procs: Procs,
    plain_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    _, record = write_dkim_key(tmp_path / "keys", "ed25519")
    gateways = write_gateways(
        tmp_path / "gateways.toml", plain_sink, connections=2, domain_rates={"*": 1000}, dkim_key="keys/ed25519.pem"
    )
    settings = make_settings(gateways_file=gateways, dispatch_batch=40)
    start_workers(procs, settings, workers=2)
    api = client(settings)
    recipients = units(160, ["dn1.example.vn", "dn2.example.vn", "So-Tai-Chinh.example.vn"])
    cid = start_campaign(api, recipients)

    done = wait_completed(api, cid)
    assert done["counts"]["sent"] == done["counts"]["total"] == 160
    assert plain_sink.count == 160
    # Pool reuse: each process keeps `connections` connections and reuses them for every batch.
    assert plain_sink.connections_opened <= 2 * 2, plain_sink.connections_opened

    stored = messages_by_address(api, cid)
    by_address = {r["to"].lower(): r["fields"] for r in recipients}
    for mail in plain_sink.received:
        (to,) = mail.rcpt_tos
        fields = by_address[to]
        assert dkim_verifies(mail.data, record), mail.data[:600]
        assert b"a=ed25519-sha256" in mail.data.split(b"\r\n\r\n", 1)[0]
        assert mail.envelope_from == SENDER_ADDRESS  # no VERP: SPF aligns with From
        message = parse(mail.data)
        assert parseaddr(str(message["From"])) == ("Tổng cục Thống kê", SENDER_ADDRESS)
        assert message["To"] == to
        assert message["Subject"] == f"Tài khoản khai báo TĐT kinh tế 2026 - {fields['don_vi']}"
        assert parsedate_to_datetime(str(message["Date"])).tzinfo is not None
        assert str(message["Message-ID"]).endswith(f"@{DKIM_DOMAIN}>")
        assert message["Message-ID"] == stored[to]["provider_message_id"]
        assert message["List-Unsubscribe"] is None  # credential mail is no subscription
        assert message.get_content_type() == "multipart/alternative"
        html, text = text_of(message, "html"), text_of(message, "plain")
        for part in (html, text):  # Vietnamese intact in both; the text is derived from the HTML
            assert fields["don_vi"] in part
            assert fields["password"] in part
        assert f"Tên đăng nhập: {fields['username']}" in text
        assert "<b>" not in text
        # The rendered body is delivered, never kept: the API has no trace of the password.
        assert fields["password"] not in str(stored[to])


def test_relay_faults_over_starttls_and_auth(
    make_settings: Callable[..., Settings],
    client: Callable[[Settings], TestClient],
    procs: Procs,
    tmp_path: Path,
) -> None:
    faults = SinkFaults(
        rcpt_replies={"gone@x.example.vn": (550, "5.1.1 User unknown")},
        fail_first_n={"grey@y.example.vn": 1},
        drop_first_n={"flaky@z.example.vn": 1},
        drop_during_data={"lost@z.example.vn"},
    )
    with SmtpSink(SinkConfig(port=0, require_starttls=True, auth=AUTH, faults=faults)) as sink:
        gateways = write_gateways(tmp_path / "gateways.toml", sink, auth=AUTH, retry_after_s=1)
        settings = make_settings(gateways_file=gateways)
        start_workers(procs, settings)
        api = client(settings)
        special = ["gone@x.example.vn", "grey@y.example.vn", "flaky@z.example.vn", "lost@z.example.vn"]
        recipients = units(20, ["ok.example.vn"]) + [
            {"to": a, "fields": {"don_vi": "Đơn vị", "username": "u", "password": "p"}} for a in special
        ]
        cid = start_campaign(api, recipients)

        done = wait_completed(api, cid)
        view = messages_by_address(api, cid)
        assert done["counts"]["sent"] == 22
        assert done["counts"]["failed"] == 2
        gone = view["gone@x.example.vn"]
        assert (gone["status"], gone["error"]["code"]) == ("failed", "smtp:550")
        grey = view["grey@y.example.vn"]
        assert (grey["status"], grey["attempts"]) == ("sent", 2)  # 451, then accepted ~1 s later
        assert (view["flaky@z.example.vn"]["status"], view["flaky@z.example.vn"]["ambiguous_resends"]) == ("sent", 1)
        lost = view["lost@z.example.vn"]
        assert (lost["status"], lost["error"]["code"], lost["ambiguous_resends"]) == ("failed", "smtp:ambiguous", 1)
        assert done["stats"]["ambiguous_resends"] == 2
        suppressed = {i["address"] for i in api.get("/v1/suppressions").json()["items"]}
        assert suppressed == {"gone@x.example.vn"}
        events = api.get(f"/v1/messages/{grey['id']}").json()["events"]
        assert [e["kind"] for e in events if e["kind"] not in ("queued", "dispatched")] == ["retry", "submitted"]
        assert (sink.count, sink.drops) == (22, 3)


def test_a_slow_domain_does_not_hold_up_the_others(
    make_settings: Callable[..., Settings],
    client: Callable[[Settings], TestClient],
    procs: Procs,
    plain_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    gateways = write_gateways(
        tmp_path / "gateways.toml", plain_sink, connections=4, domain_rates={"slow.example.vn": 2, "*": 1000}
    )
    settings = make_settings(gateways_file=gateways, dispatch_batch=50)
    start_workers(procs, settings)
    api = client(settings)
    # The slow domain's messages come first (lowest ids), so they are claimed first.
    fields = {"don_vi": "A", "username": "u", "password": "p"}
    slow = [{"to": f"s{i}@slow.example.vn", "fields": fields} for i in range(10)]
    cid = start_campaign(api, slow + units(200, ["fast1.example.vn", "fast2.example.vn"]))

    wait_for(
        lambda: sum(1 for m in plain_sink.received if not m.rcpt_tos[0].endswith("@slow.example.vn")) == 200,
        timeout=90,
        what="every fast-domain message delivered",
    )
    slow_so_far = sum(1 for m in plain_sink.received if m.rcpt_tos[0].endswith("@slow.example.vn"))
    # At 2/s the slow domain needs ~5 s for its 10; the 200 others did not wait for them.
    assert slow_so_far < 10, slow_so_far
    done = wait_completed(api, cid)
    assert done["counts"]["sent"] == 210
    arrivals = [m.rcpt_tos[0] for m in plain_sink.received]
    assert arrivals.index(next(a for a in arrivals if a.startswith("s9@"))) > len(arrivals) - 10
