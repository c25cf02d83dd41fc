"""Templates, encodings, senders and the preview through the API: each bad input answers 422
naming the problem (the line of a syntax error, the unknown placeholder, the characters that do
not fit, the sender) and stores nothing; the preview answers as the contract says."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from accounts.models import Role
from campaigns.models import Campaign
from tests.api.conftest import Api, error_of, ok, recipients
from tests.factories import email_campaign, sms_campaign


def _count(api: Api) -> int:
    return len(ok(api.client(Role.ADMIN).get("/v1/campaigns"))["items"])


def test_a_template_syntax_error_answers_422_with_the_line(api: Api) -> None:
    body = "Kính gửi {{ ten }},\nTổng điều tra 2026.\nMã: {{ ma_ho }"
    error = error_of(api.client(Role.SENDER).post("/v1/campaigns", json=sms_campaign(template={"body": body})), 422)
    assert error["code"] == "template_error"
    assert error["message"].startswith("template.body line 3:")
    assert error["details"] == {"part": "body", "line": 3}
    assert _count(api) == 0


def test_an_email_subject_error_names_its_part(api: Api) -> None:
    template = {"subject": "{% if don_vi %}Tài khoản", "body": "x"}
    error = error_of(api.client(Role.SENDER).post("/v1/campaigns", json=email_campaign(template=template)), 422)
    assert error["details"]["part"] == "subject"
    assert error["details"]["line"] == 1


def test_an_unknown_placeholder_is_named_at_upload(api: Api) -> None:
    client = api.client(Role.SENDER)
    template = {"body": "Kính gửi {{ ten }} ở {{ tinh }}"}
    cid = ok(client.post("/v1/campaigns", json=sms_campaign(template=template)), 201)["id"]
    error = error_of(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(2)), 422)
    assert error["code"] == "unknown_placeholder"
    assert "{{ tinh }}" in error["message"]
    assert ok(client.get(f"/v1/campaigns/{cid}"))["counts"]["total"] == 0


def test_an_unknown_placeholder_is_named_at_launch(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(2)))
    with Session(api.engine) as session:  # e.g. a template written before the columns were known
        session.execute(
            update(Campaign).where(col(Campaign.id) == cid).values(template={"body": "{{ ten }} {{ huyen }}"})
        )
        session.commit()
    error = error_of(client.post(f"/v1/campaigns/{cid}/launch"), 422)
    assert error["code"] == "unknown_placeholder"
    assert error["details"]["placeholders"] == ["huyen"]
    assert ok(client.get(f"/v1/campaigns/{cid}"))["status"] == "draft"


@pytest.mark.parametrize(
    ("sender", "accepted"),
    [
        ("TCTK", True),
        ("GSO-VN 2026", True),
        ("TONGCUCTHONGKE", False),
        ("Tổng cục", False),
        ("8088", True),
        ("+84912345678", True),
        ("12", False),
        ("", False),
    ],
)
def test_sms_sender_is_a_brandname_short_code_or_msisdn(api: Api, sender: str, accepted: bool) -> None:
    response = api.client(Role.SENDER).post("/v1/campaigns", json=sms_campaign(sender=sender))
    if accepted:
        assert ok(response, 201)["sender"] == sender
    else:
        error = error_of(response, 422)
        assert error["details"][0]["field"] == "sender"


def test_sender_too_long_names_the_rule(api: Api) -> None:
    error = error_of(api.client(Role.SENDER).post("/v1/campaigns", json=sms_campaign(sender="TONGCUCTHONGKE")), 422)
    assert error["message"].startswith("sender: ")
    assert "at most 11 characters" in error["message"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sender": "no-at-sign"}, "sender"),
        ({"template": {"body": "x"}}, "template"),
        ({"template": {"subject": "s"}}, "template"),
        ({"secret_fields": ["email"]}, "secret_fields"),
    ],
)
def test_email_campaign_rules(api: Api, overrides: dict[str, Any], field: str) -> None:
    error = error_of(api.client(Role.SENDER).post("/v1/campaigns", json=email_campaign(**overrides)), 422)
    assert error["details"][0]["field"] == field


def test_an_sms_template_has_only_a_body(api: Api) -> None:
    body = sms_campaign(template={"body": "x", "subject": "y"})
    assert error_of(api.client(Role.SENDER).post("/v1/campaigns", json=body), 422)["details"][0]["field"] == "template"


@pytest.mark.parametrize("policy", ["gsm7", "strip_diacritics"])
def test_characters_that_do_not_fit_the_policy_are_listed(api: Api, policy: str) -> None:
    body = sms_campaign(encoding=policy, template={"body": "Xin chào {{ ten }} 中文 ☎"})
    error = error_of(api.client(Role.SENDER).post("/v1/campaigns", json=body), 422)
    assert error["code"] == "unencodable"
    assert error["details"]["characters"] == ["中", "文", "☎"]
    assert "中 文 ☎" in error["message"]


def test_gsm7_refuses_vietnamese_that_strip_diacritics_accepts(api: Api) -> None:
    client = api.client(Role.SENDER)
    text = "Kính gửi {{ ten }} – “Tổng điều tra” …"
    error = error_of(client.post("/v1/campaigns", json=sms_campaign(encoding="gsm7", template={"body": text})), 422)
    assert error["details"]["characters"][:3] == ["í", "ử", "–"]
    cid = ok(
        client.post("/v1/campaigns", json=sms_campaign(encoding="strip_diacritics", template={"body": text})), 201
    )["id"]
    ok(
        client.post(
            f"/v1/campaigns/{cid}/recipients", json={"recipients": [{"to": "0961000001", "fields": {"ten": "Đức"}}]}
        )
    )
    sample = ok(client.get(f"/v1/campaigns/{cid}/preview"))["samples"][0]
    assert sample == {
        "to": "+84961000001",
        "text": 'Kinh gui Duc - "Tong dieu tra" ...',
        "encoding": "gsm7",
        "segments": 1,
    }


def test_templates_are_stored_in_nfc(api: Api) -> None:
    decomposed = "Kie\u0302\u0301m tra {{ ten }}"  # ế typed as e + two combining marks
    campaign = ok(api.client(Role.SENDER).post("/v1/campaigns", json=sms_campaign(template={"body": decomposed})), 201)
    assert campaign["template"]["body"] == "Ki\u1ebfm tra {{ ten }}"  # one precomposed ế


def test_preview_shows_samples_with_encoding_segments_and_totals(api: Api) -> None:
    client = api.client(Role.OPERATOR)
    sender = api.client(Role.SENDER)
    long_text = "Kính gửi {{ ten }}: " + "Tổng điều tra dân số và nhà ở năm 2026. " * 3
    cid = ok(sender.post("/v1/campaigns", json=sms_campaign(template={"body": long_text})), 201)["id"]
    ok(sender.post(f"/v1/campaigns/{cid}/recipients", json=recipients(7)))
    preview = ok(client.get(f"/v1/campaigns/{cid}/preview"))
    assert preview["encoding"] == "ucs2"
    assert len(preview["samples"]) == 5
    first = preview["samples"][0]
    assert first["to"] == "+84961000000"
    assert first["text"].startswith("Kính gửi Người 0: Tổng điều tra")
    assert first["encoding"] == "ucs2"
    assert first["segments"] == 3  # 141 UCS-2 characters: 67 per part
    assert preview["totals"] == {"messages": 7, "segments": 21, "errors": 0, "estimated": False}


def test_email_preview_renders_subject_text_and_html(api: Api) -> None:
    sender = api.client(Role.SENDER)
    template = {"subject": "Tài khoản {{ don_vi }}", "body": "Mật khẩu: {{ password }}", "html": "<b>{{ don_vi }}</b>"}
    cid = ok(sender.post("/v1/campaigns", json=email_campaign(template=template)), 201)["id"]
    unit = {"to": "unit1@example.vn", "fields": {"don_vi": "Hà & Nội", "password": "s3cret-x"}}
    ok(sender.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": [unit]}))
    sample = ok(sender.get(f"/v1/campaigns/{cid}/preview"))["samples"][0]
    assert sample["subject"] == "Tài khoản Hà & Nội"
    assert sample["text"] == "Mật khẩu: ******"
    assert sample["html"] == "<b>Hà &amp; Nội</b>"
