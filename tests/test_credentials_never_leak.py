"""A credential campaign runs to the end through real worker processes (DEBUG logging) and the API;
then every password is searched for in everything that persists or comes back: worker and
scheduler logs, the API's logs, a dump of the database (pg_dump on Postgres, and a SELECT of every
table on either database), Redis, the CSV and XLSX reports and the API's answers. Zero hits.

A search that cannot find anything proves nothing: the same search must find every password in
the raw bytes the SMTP sink received (where the Vietnamese HTML part is base64-encoded)."""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import string
import subprocess
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from accounts.models import Role
from api.app import create_app
from gateways.smtp.sink import SinkConfig, SinkFaults, SmtpSink
from loa.db import metadata
from loa.settings import Settings
from tests.conftest import Procs
from tests.factories import make_key
from tests.workers.email_support import start_campaign, wait_completed, write_gateways

pytestmark = pytest.mark.slow

ALPHABET = string.ascii_letters + string.digits


def password() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(18))


def forms(secret: str) -> list[bytes]:
    """The password as it could appear: plain, and inside base64 of a longer text at any offset
    (only the characters that do not depend on the neighbouring bytes)."""
    raw = secret.encode()
    found = [raw]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        # Characters 6 bits wide: keep those made of the password's bits alone.
        start = -(-offset * 8 // 6)
        stop = (offset + len(raw)) * 8 // 6
        found.append(encoded[start:stop])
    return found


def hits(haystacks: dict[str, bytes], passwords: Iterable[str]) -> list[tuple[str, str]]:
    """(where, password) for every password found; line breaks are removed for base64 forms."""
    found = []
    flattened = {name: data.replace(b"\r", b"").replace(b"\n", b"") for name, data in haystacks.items()}
    for secret in passwords:
        needles = forms(secret)
        for name, data in haystacks.items():
            if any(n in data or n in flattened[name] for n in needles):
                found.append((name, secret))
    return found


def table_dump(engine: Engine) -> bytes:
    """Every row of every table, as text."""
    out = io.StringIO()
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                out.write(f"{table.name}: {tuple(row)!r}\n")
    return out.getvalue().encode()


def pg_dump(database_url: str) -> bytes:
    url = make_url(database_url)
    command = ["pg_dump", "--data-only", "-h", url.host or "127.0.0.1", "-U", url.username or "postgres"]
    if url.port:
        command += ["-p", str(url.port)]
    result = subprocess.run([*command, url.database or ""], capture_output=True, check=True, timeout=120)
    return result.stdout


def redis_dump(client: redis.Redis[bytes]) -> bytes:
    """Every key and value; kombu message bodies are base64 JSON, so those are decoded too."""
    out = io.BytesIO()
    for key in client.scan_iter(count=1000):
        kind = client.type(key)  # type: ignore[no-untyped-call]
        values: list[bytes] = []
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"list":
            values = list(client.lrange(key, 0, -1))
        elif kind == b"hash":
            values = [k + b"=" + v for k, v in client.hgetall(key).items()]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = list(client.zrange(key, 0, -1))
        for value in values:
            out.write(key + b" " + value + b"\n")
            try:
                body = json.loads(value).get("body")
                out.write(base64.b64decode(body) + b"\n")
            except (ValueError, AttributeError, TypeError):
                pass
    return out.getvalue()


def xlsx_text(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return b"\n".join(archive.read(name) for name in archive.namelist())


def test_passwords_never_leave_the_send_path(
    make_settings: Callable[..., Settings],
    db: Engine,
    redis_client: redis.Redis[bytes],
    procs: Procs,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The sink plays the recipient's mail server in this process; aiosmtpd's own protocol trace
    # ("DATA readline: ...") is that server's business, not Loa's. (`loa bounces` and the
    # built-in sink silence it in production.)
    caplog.set_level(logging.WARNING, logger="mail.log")
    faults = SinkFaults(
        rcpt_replies={"gone@x.example.vn": (550, "5.1.1 User unknown")},
        fail_first_n={"grey@y.example.vn": 1},
        drop_first_n={"flaky@z.example.vn": 1},
    )
    with SmtpSink(SinkConfig(port=0, faults=faults)) as sink:
        settings = make_settings(gateways_file=write_gateways(tmp_path / "gateways.toml", sink, retry_after_s=1))
        procs.start(settings, "worker", "-Q", "email,dispatch,receipts", "-c", "4", "-l", "DEBUG", name="worker")
        procs.start(settings, "scheduler", "-l", "DEBUG", name="scheduler")
        sender = TestClient(create_app(settings), headers={"Authorization": f"Bearer {make_key(db, Role.SENDER)}"})
        admin = TestClient(create_app(settings), headers={"Authorization": f"Bearer {make_key(db, Role.ADMIN)}"})
        addresses = [f"unit{i:03d}@dn{i % 3}.example.vn" for i in range(40)]
        addresses += ["gone@x.example.vn", "grey@y.example.vn", "flaky@z.example.vn"]
        passwords = {a: password() for a in addresses}
        recipients = [
            {
                "to": a,
                "fields": {"don_vi": f"Hợp tác xã Nông sản Tây Nguyên {i}", "username": f"HTX{i:04d}", "password": p},
            }
            for i, (a, p) in enumerate(passwords.items())
        ]
        cid = start_campaign(sender, recipients)
        answers = [sender.get(f"/v1/campaigns/{cid}/preview").content]
        done = wait_completed(sender, cid)
        assert (done["counts"]["sent"], done["counts"]["failed"]) == (42, 1)

        # Everything an operator can get back from the API.
        page = sender.get(f"/v1/campaigns/{cid}/messages", params={"limit": 1000}).json()
        answers += [sender.get(f"/v1/campaigns/{cid}").content, json.dumps(page).encode()]
        answers += [sender.get(f"/v1/messages/{m['id']}").content for m in page["items"]]
        answers += [sender.get("/v1/messages", params={"to": a}).content for a in addresses[:5]]
        answers += [admin.get("/v1/audit").content, sender.get("/v1/suppressions").content]
        csv_report = sender.get(f"/v1/campaigns/{cid}/report.csv")
        xlsx_report = sender.get(f"/v1/campaigns/{cid}/report.xlsx")
        assert csv_report.status_code == xlsx_report.status_code == 200
        assert "unit000@dn0.example.vn" in csv_report.text  # the reports are real, not empty
        received = b"\n".join(m.data for m in sink.received)

    procs.stop_all()  # logs complete, nothing writing any more
    haystacks = {
        "api answers": b"\n".join(answers),
        "report.csv": csv_report.content,
        "report.xlsx": xlsx_text(xlsx_report.content),
        "database (every table)": table_dump(db),
        "redis": redis_dump(redis_client),
        "api and test-process logs": caplog.text.encode(),
    }
    for _proc, log in procs.procs:
        haystacks[f"log {log.name}"] = log.read_bytes()
    if db.dialect.name == "postgresql":
        haystacks["pg_dump"] = pg_dump(settings.effective_database_url)
    # Each place searched holds something (the API may well log nothing at all).
    assert [name for name, data in haystacks.items() if not data] in ([], ["api and test-process logs"])
    assert b"unit000@dn0.example.vn" in haystacks["log worker-0.log"] + haystacks["database (every table)"]

    # The control: the same search finds every delivered password in what the sink received.
    delivered = {a: p for a, p in passwords.items() if a != "gone@x.example.vn"}
    assert len(hits({"sink": received}, delivered.values())) == len(delivered)
    assert hits(haystacks, passwords.values()) == []
