"""Test sends: the rendered message reaches a few addresses through the real pipeline (worker
process, SMPP to the simulator, SMTP to the sink) while the campaign's counts, reports and
listing never show them; bad test recipients answer 422 before anything is stored."""

from __future__ import annotations

import email
from collections.abc import Callable, Iterator
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from accounts.models import Role
from gateways.smpp.simulator import Account, SimulatorConfig, run_in_thread
from gateways.smtp.sink import SinkConfig, SmtpSink
from loa.settings import Settings
from loa.stack import builtin_gateways_toml
from tests.api.conftest import Api, error_of, ok, recipients
from tests.conftest import Procs, wait_for
from tests.factories import email_campaign, make_key, sms_campaign


def test_bad_test_recipients_answer_422_and_store_nothing(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(
        client.post("/v1/campaigns", json=sms_campaign(encoding="gsm7", template={"body": "Chao {{ ten }}"})), 201
    )["id"]
    missing = error_of(client.post(f"/v1/campaigns/{cid}/test", json={"recipients": [{"to": "0961000001"}]}), 422)
    assert missing["code"] == "unknown_placeholder"
    assert missing["details"] == {"recipient": 1, "placeholders": ["ten"]}
    unfit = {"recipients": [{"to": "0961000001", "fields": {"ten": "Đức"}}]}
    error = error_of(client.post(f"/v1/campaigns/{cid}/test", json=unfit), 422)
    assert error["code"] == "unencodable"
    assert error["details"]["characters"] == ["Đ", "ứ"]
    bad_number = error_of(
        client.post(f"/v1/campaigns/{cid}/test", json={"recipients": [{"to": "12", "fields": {"ten": "A"}}]}), 422
    )
    assert bad_number["code"] == "invalid_recipients"
    assert bad_number["details"]["errors"][0]["row"] == 1
    too_many = error_of(client.post(f"/v1/campaigns/{cid}/test", json=recipients(11)), 422)
    assert too_many["details"][0]["field"] == "recipients"
    assert ok(client.get("/v1/campaigns", params={"test_of": cid}))["items"] == []
    assert len(ok(client.get("/v1/campaigns"))["items"]) == 1


def test_a_test_send_is_its_own_hidden_campaign(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(3)))
    sent = ok(
        client.post(
            f"/v1/campaigns/{cid}/test", json={"recipients": [{"to": "0912 345 678", "fields": {"ten": "Thử"}}]}
        ),
        202,
    )
    assert sent["test_of"] == cid
    assert sent["status"] == "running"
    assert sent["accepted"] == 1
    assert sent["samples"] == [
        {"to": "0912 345 678", "text": "Kính gửi Thử: Tổng điều tra kinh tế 2026.", "encoding": "ucs2", "segments": 1}
    ]
    parent = ok(client.get(f"/v1/campaigns/{cid}"))
    assert parent["status"] == "draft"
    assert parent["counts"]["total"] == 3
    assert [c["id"] for c in ok(client.get("/v1/campaigns"))["items"]] == [cid]
    tests = ok(client.get("/v1/campaigns", params={"test_of": cid}))["items"]
    assert [t["id"] for t in tests] == [sent["test_campaign"]]
    assert tests[0]["test_of"] == cid
    assert tests[0]["priority"] == "high"
    assert tests[0]["counts"]["total"] == 1
    assert "+84912345678" not in client.get(f"/v1/campaigns/{cid}/report.csv").text
    log = ok(api.client(Role.ADMIN).get("/v1/audit", params={"action": "campaign.test"}))["items"]
    assert log[0]["target"] == cid
    assert log[0]["detail"]["test_campaign"] == sent["test_campaign"]


# --- through the real pipeline ---------------------------------------------------------------
@pytest.fixture
def smsc() -> Iterator[Any]:
    accounts = [Account(name, f"{name}-pw") for name in ("viettel", "vinaphone", "default")]
    with run_in_thread(SimulatorConfig(port=0, accounts=accounts, receipt_delay_s=(0.01, 0.05))) as sim:
        yield sim


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    s = SmtpSink(SinkConfig(port=0))
    s.start()
    yield s
    s.stop()


@pytest.mark.slow
def test_test_sends_reach_phones_and_mailboxes_without_counting(
    make_settings: Callable[..., Settings],
    db: Any,
    redis_client: Any,
    smsc: Any,
    sink: SmtpSink,
    procs: Procs,
    tmp_path: Path,
    make_app: Callable[[Settings], FastAPI],
) -> None:
    gateways = tmp_path / "gateways.toml"
    gateways.write_text(builtin_gateways_toml(smsc.port, sink.port))
    settings = make_settings(gateways_file=gateways)
    procs.start(settings, "worker", "-c", "4", name="worker")
    procs.start(settings, "scheduler", name="scheduler")
    client = TestClient(make_app(settings), headers={"Authorization": f"Bearer {make_key(db, Role.SENDER)}"})

    sms = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(client.post(f"/v1/campaigns/{sms}/recipients", json=recipients(5)))
    sms_test = ok(
        client.post(f"/v1/campaigns/{sms}/test", json={"recipients": [{"to": "0912345678", "fields": {"ten": "Thử"}}]}),
        202,
    )

    mail = ok(client.post("/v1/campaigns", json=email_campaign()), 201)["id"]
    unit = {
        "to": "tester@gso.gov.vn",
        "fields": {"don_vi": "Đơn vị thử", "username": "u-test", "password": "pw-Test-91"},
    }
    mail_test = ok(client.post(f"/v1/campaigns/{mail}/test", json={"recipients": [unit]}), 202)
    assert mail_test["samples"][0]["text"] == "User u-test / ******"

    def finished(cid: str) -> dict[str, Any] | None:
        campaign = ok(client.get(f"/v1/campaigns/{cid}"))
        return campaign if campaign["status"] == "completed" else None

    done_sms = wait_for(lambda: finished(sms_test["test_campaign"]), timeout=90, what="SMS test send completed")
    done_mail = wait_for(lambda: finished(mail_test["test_campaign"]), timeout=60, what="email test send completed")
    assert done_sms["counts"]["delivered"] == 1 == done_sms["counts"]["total"]
    assert done_mail["counts"]["sent"] == 1 == done_mail["counts"]["total"]

    [submit] = smsc.stats.log
    assert submit.destination_addr.lstrip("+") == "84912345678"
    assert submit.source_addr == "TCTK"
    assert submit.short_message.decode("utf-16-be") == "Kính gửi Thử: Tổng điều tra kinh tế 2026."
    [received] = sink.received
    assert received.rcpt_tos == ["tester@gso.gov.vn"]
    message = email.message_from_bytes(received.data, policy=default_policy)
    assert message["Subject"] == "Tài khoản Đơn vị thử"
    body = message.get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "User u-test / pw-Test-91"

    for cid, total in ((sms, 5), (mail, 0)):
        campaign = ok(client.get(f"/v1/campaigns/{cid}"))
        assert campaign["status"] == "draft"
        assert campaign["counts"]["total"] == total
        assert campaign["counts"]["delivered"] == campaign["counts"]["sent"] == 0
    assert "84912345678" not in client.get(f"/v1/campaigns/{sms}/report.csv").text
    assert sorted(c["id"] for c in ok(client.get("/v1/campaigns"))["items"]) == sorted([sms, mail])
