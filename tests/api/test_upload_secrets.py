"""Secret fields (census credentials): AES-GCM at rest with a key id, readable after a key
rotation through LOA_OLD_SECRET_KEYS, never returned by the API or logged, deleted once a message
is final; and the retention purge of personal fields (LOA_RETENTION_DAYS)."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text, update
from sqlmodel import Session, col

from accounts.models import Role
from api.app import build_state
from campaigns.models import Campaign
from campaigns.recipients import secret_aad
from campaigns.scheduling import purge_retention
from gateways.smtp.sink import SinkConfig, SmtpSink
from loa.crypto import SecretBox, SecretDecryptError
from loa.settings import Settings
from loa.stack import builtin_gateways_toml
from loa.timeutil import utcnow
from tests.api.test_upload import api_client, csv_bytes, new_campaign, post_file
from tests.conftest import SECRET, settings_env, wait_for
from tests.factories import email_campaign, make_key

PASSWORDS = ["Mk-7f3Q-unit1", "Mk-9xZ2-unit2", "Mk-Ωé4-unit3"]


@pytest.fixture
def client(settings: Settings, db: Engine) -> Iterator[TestClient]:
    with api_client(settings, make_key(db, Role.SENDER)) as c:
        yield c


def units_csv(passwords: list[str] = PASSWORDS) -> bytes:
    rows = [["email", "don_vi", "username", "password"]]
    rows += [[f"unit{i}@example.vn", f"Đơn vị {i}", f"u{i}", pw] for i, pw in enumerate(passwords, start=1)]
    return csv_bytes(rows)


def stored_secrets(db: Engine, campaign: str) -> list[tuple[str, str | None, Any]]:
    with db.connect() as conn:
        rows = conn.execute(
            text('SELECT "to", secrets, fields FROM message WHERE campaign_id = :c ORDER BY "row"'), {"c": campaign}
        ).all()
    return [(to, token, json.loads(f) if isinstance(f, str) else f) for to, token, f in rows]


def org_of(db: Engine, campaign: str) -> str:
    with db.connect() as conn:
        return str(conn.scalar(text("SELECT org_id FROM campaign WHERE id = :c"), {"c": campaign}))


def test_secrets_are_encrypted_with_a_key_id_and_never_shown(
    client: TestClient, db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    campaign = new_campaign(client, email_campaign())
    answer = post_file(client, campaign, "units.csv", units_csv())
    assert answer.json()["accepted"] == 3
    box = SecretBox(SECRET)
    org = org_of(db, campaign)
    for (to, token, fields), password in zip(stored_secrets(db, campaign), PASSWORDS, strict=True):
        assert token is not None
        assert token.startswith(box.key_id + ".")
        assert password not in token
        assert "password" not in fields
        assert fields["username"]
        assert box.decrypt_fields(token, secret_aad(org, to)) == {"password": password}
        with pytest.raises(SecretDecryptError):  # bound to its recipient: useless on another row
            box.decrypt_fields(token, secret_aad(org, "someone@else.vn"))

    # Nowhere in what the API answers, to a sender or an operator, nor in the logs.
    operator = {"Authorization": f"Bearer {make_key(db, Role.OPERATOR)}"}
    messages = client.get(f"/v1/campaigns/{campaign}/messages").json()["items"]
    assert all(m["has_secrets"] for m in messages)
    answers = [
        answer.text,
        client.get(f"/v1/campaigns/{campaign}").text,
        client.get(f"/v1/campaigns/{campaign}/messages").text,
        client.get(f"/v1/campaigns/{campaign}/messages", headers=operator).text,
        client.get(f"/v1/messages/{messages[0]['id']}").text,
        client.get(f"/v1/messages?to={messages[0]['to']}").text,
        client.get(f"/v1/campaigns/{campaign}/preview").text,
        client.get(f"/v1/campaigns/{campaign}/report.csv").text,
    ]
    everything = "\n".join(answers + [record.getMessage() for record in caplog.records])
    for password in PASSWORDS:
        assert password not in everything


def test_rotation_reads_old_tokens_with_loa_old_secret_keys(
    client: TestClient, db: Engine, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    campaign = new_campaign(client, email_campaign())
    post_file(client, campaign, "units.csv", units_csv())
    old_token = stored_secrets(db, campaign)[0][1]
    assert old_token is not None
    org = org_of(db, campaign)

    # The key is rotated: the new one encrypts, the old one (listed with another) still reads.
    new_key = "rotated-secret-key-9876543210"
    monkeypatch.setenv("LOA_SECRET_KEY", new_key)
    monkeypatch.setenv("LOA_OLD_SECRET_KEYS", f"some-even-older-key-000000, {SECRET}")
    rotated = Settings(database_url=settings.database_url, redis_url=settings.redis_url, state_dir=settings.state_dir)
    box = build_state(rotated).box
    assert box.key_id == SecretBox(new_key).key_id != SecretBox(SECRET).key_id
    assert box.decrypt_fields(old_token, secret_aad(org, "unit1@example.vn")) == {"password": PASSWORDS[0]}

    # Without the old key, the old tokens cannot be read: the key id names the missing key.
    monkeypatch.delenv("LOA_OLD_SECRET_KEYS")
    forgetful = build_state(Settings(database_url=settings.database_url, redis_url=settings.redis_url)).box
    with pytest.raises(SecretDecryptError, match=SecretBox(SECRET).key_id):
        forgetful.decrypt_fields(old_token, secret_aad(org, "unit1@example.vn"))

    # New uploads use the new key.
    key = make_key(db, Role.SENDER)
    with api_client(rotated, key) as new_client:
        second = new_campaign(new_client, email_campaign())
        post_file(new_client, second, "units.csv", units_csv())
    assert all(token and token.startswith(box.key_id + ".") for _, token, _ in stored_secrets(db, second))


def test_secrets_are_deleted_when_messages_become_final(client: TestClient, db: Engine) -> None:
    campaign = new_campaign(client, email_campaign())
    response = client.post("/v1/suppressions", json={"address": "UNIT2@example.vn", "reason": "opted out"})
    assert response.status_code == 201, response.text
    body = post_file(client, campaign, "units.csv", units_csv()).json()
    assert (body["accepted"], body["suppressed"]) == (2, 1)
    tokens = {to: token for to, token, _ in stored_secrets(db, campaign)}
    assert tokens["unit2@example.vn"] is None  # suppressed at import: final, so nothing kept
    assert tokens["unit1@example.vn"]
    assert tokens["unit3@example.vn"]
    assert client.post(f"/v1/campaigns/{campaign}/cancel").status_code == 200
    assert [token for _, token, _ in stored_secrets(db, campaign)] == [None, None, None]


def test_retention_purges_personal_fields_of_campaigns_finished_long_enough_ago(
    client: TestClient, db: Engine, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("LOA_RETENTION_DAYS", "7")
    retention = Settings(database_url=settings.database_url).retention_days
    assert retention == 7
    assert Settings.model_fields["retention_days"].default == 30
    old, recent, running = (new_campaign(client, email_campaign(name=n)) for n in ("old", "recent", "draft"))
    for campaign in (old, recent, running):
        post_file(client, campaign, "units.csv", units_csv())
    for campaign, age in ((old, 8), (recent, 6)):
        assert client.post(f"/v1/campaigns/{campaign}/cancel").status_code == 200
        with Session(db) as session:
            session.execute(
                update(Campaign).where(col(Campaign.id) == campaign).values(finished_at=utcnow() - timedelta(days=age))
            )
            session.commit()
    with Session(db) as session:
        assert purge_retention(session, retention) == 3
        session.commit()
        assert purge_retention(session, retention) == 0  # once is enough
    purged = client.get(f"/v1/campaigns/{old}/messages").json()["items"]
    assert [(m["to"], m["status"], m["fields"], m["has_secrets"]) for m in purged] == [
        (f"unit{i}@example.vn", "cancelled", {}, False) for i in (1, 2, 3)
    ]
    for campaign in (recent, running):
        kept = [fields for _, _, fields in stored_secrets(db, campaign)]
        assert [f["username"] for f in kept] == ["u1", "u2", "u3"]
    assert all(token for _, token, _ in stored_secrets(db, running))


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(SinkConfig(port=0)) as s:
        yield s


@pytest.mark.slow
def test_a_worker_with_the_rotated_key_decrypts_sends_and_forgets(
    make_settings: Callable[..., Settings], db: Engine, sink: SmtpSink, tmp_path: Path
) -> None:
    gateways = tmp_path / "gateways.toml"
    gateways.write_text(builtin_gateways_toml(9, sink.port))  # SMPP unused here
    settings = make_settings(gateways_file=gateways)
    key = make_key(db, Role.SENDER)
    with api_client(settings, key) as client:
        campaign = new_campaign(client, email_campaign())
        assert post_file(client, campaign, "units.csv", units_csv()).json()["accepted"] == 3
        env = settings_env(settings) | {
            "LOA_SECRET_KEY": "rotated-secret-key-9876543210",
            "LOA_OLD_SECRET_KEYS": SECRET,
        }
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "loa", "worker", "-Q", "dispatch,email", "-c", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            assert client.post(f"/v1/campaigns/{campaign}/launch").status_code == 200
            wait_for(lambda: sink.count >= 3, timeout=60, what="three credential mails")
            wait_for(
                lambda: all(t is None for _, t, _ in stored_secrets(db, campaign)), timeout=30, what="secrets deleted"
            )
        except AssertionError as exc:
            log.flush()
            tail = (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"{exc}\n--- worker log\n{tail}") from None
        finally:
            worker.terminate()
            worker.wait(20)
            log.close()
    bodies = {}
    for mail in sink.received:
        message = email.message_from_bytes(mail.data, policy=email.policy.default)
        part = message.get_body(("plain",))
        assert part is not None
        bodies[mail.rcpt_tos[0]] = part.get_content()  # type: ignore[attr-defined]
    assert {to: PASSWORDS[int(to[4]) - 1] in body for to, body in bodies.items()} == {
        f"unit{i}@example.vn": True for i in (1, 2, 3)
    }
