"""`loa keys create|list|revoke` against the test database: the key alone on stdout, shown once,
usable at once; the listing never shows it; revocation is immediate; both are audited.

`create` and `revoke` run as real processes (what a user's shell sees); the rest goes through
typer's runner in this process, which runs the same commands without paying the start-up again."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session, col
from typer.testing import CliRunner

from accounts.models import ApiKey, AuditEntry
from accounts.service import hash_key
from api.app import create_app
from loa.cli import app as cli
from loa.settings import Settings
from tests.conftest import ROOT, settings_env


def loa(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loa", *args],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_in_process(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=settings_env(settings))


def test_create_list_and_revoke_a_key(settings: Settings, db: Any) -> None:
    created = loa(settings, "keys", "create", "--org", "gso", "--role", "sender", "--name", "telecom")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n"  # the key alone: `KEY=$(loa keys create ...)` works
    assert key.startswith("loa_")
    assert "shown once" in created.stderr
    assert key not in created.stderr
    with Session(db) as session:
        record = session.scalars(select(ApiKey).where(col(ApiKey.key_hash) == hash_key(key))).one()
    assert (record.role, record.name) == ("sender", "telecom")

    app = create_app(settings)
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    assert client.get("/v1/campaigns").status_code == 200

    listed = run_in_process(settings, "keys", "list")
    assert listed.exit_code == 0, listed.output
    assert record.id in listed.stdout
    assert "gso" in listed.stdout
    assert key not in listed.stdout
    assert key[8:] not in listed.stdout

    revoked = loa(settings, "keys", "revoke", record.id)
    assert revoked.returncode == 0, revoked.stderr
    assert client.get("/v1/campaigns").status_code == 401
    app.state.loa.engine.dispose()

    with Session(db) as session:
        actions = [(a.action, a.target, a.detail.get("via")) for a in session.scalars(select(AuditEntry))]
    assert ("key.create", record.id, "local") in actions
    assert ("key.revoke", record.id, "local") in actions


def test_mistakes_end_with_one_line_and_a_non_zero_exit(settings: Settings, db: Any) -> None:
    bad_role = run_in_process(settings, "keys", "create", "--org", "gso", "--role", "root")
    assert bad_role.exit_code == 2
    assert bad_role.stdout == ""
    assert "--role must be admin, sender or operator" in bad_role.stderr
    unknown = run_in_process(settings, "keys", "revoke", "key_doesnotexist")
    assert unknown.exit_code == 1
    assert "key_doesnotexist not found" in unknown.stderr
    assert bad_role.exception is None or isinstance(bad_role.exception, SystemExit)
