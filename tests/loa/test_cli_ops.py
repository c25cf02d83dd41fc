"""`loa campaign list|show|report` as an operator runs them: subprocesses talking to a real
`loa api` process with LOA_API_URL and LOA_API_KEY; reports read back with csv and openpyxl."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from accounts.models import Role
from loa.settings import Settings
from loa.stack import free_port, wait_port
from tests.conftest import Procs, settings_env
from tests.factories import make_key, sms_campaign

pytestmark = pytest.mark.slow


@pytest.fixture
def server(settings: Settings, procs: Procs, redis_client: Any) -> str:
    port = free_port()
    procs.start(settings, "api", "--port", str(port), name="api")
    assert wait_port(port, 90), procs.logs()
    return f"http://127.0.0.1:{port}"


def loa(settings: Settings, url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**settings_env(settings), "LOA_API_URL": url, "LOA_API_KEY": key, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "loa", "campaign", *args], env=env, capture_output=True, text=True, timeout=120
    )


def campaign(url: str, key: str, name: str, n: int, *, cancel: bool = False) -> str:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        cid = str(client.post("/v1/campaigns", json=sms_campaign(name=name)).json()["id"])
        people = [{"to": f"0912{i:06d}", "fields": {"ten": f"=Người {i}", "tinh": "Huế"}} for i in range(n)]
        assert client.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": people}).status_code == 200
        assert client.post(f"/v1/campaigns/{cid}/launch").status_code == 200
        if cancel:
            assert client.post(f"/v1/campaigns/{cid}/cancel").status_code == 200
        return cid


def test_list_show_and_reports(settings: Settings, server: str, db: Any, tmp_path: Path) -> None:
    sender = make_key(db, Role.SENDER)
    operator = make_key(db, Role.OPERATOR)
    running = campaign(server, sender, "Điều tra dân số – đợt 2", 12)
    ended = campaign(server, sender, "Đợt thử", 3, cancel=True)

    listed = loa(settings, server, operator, "list")
    assert listed.returncode == 0, listed.stderr
    assert "Điều tra dân số – đợt 2" in listed.stdout
    assert running in listed.stdout
    assert ended in listed.stdout
    assert listed.stdout.index(ended) < listed.stdout.index(running)  # newest first

    shown = loa(settings, server, operator, "show", running)
    assert shown.returncode == 0, shown.stderr
    assert "0 / 12 final" in shown.stdout
    assert "Vinaphone" in shown.stdout
    assert "queued" in shown.stdout

    # --watch ends by itself once the campaign is finished.
    watched = loa(settings, server, operator, "show", ended, "--watch", "--interval", "0.5")
    assert watched.returncode == 0, watched.stderr
    assert "3 / 3 final" in watched.stdout

    out = tmp_path / "bao-cao.csv"
    done = loa(settings, server, operator, "report", running, "-o", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(out.read_bytes().decode("utf-8-sig"))))
    assert len(rows) == 13
    assert rows[1][rows[0].index("ten")].startswith("'=Người")

    xlsx = tmp_path / "bao-cao.xlsx"
    done = loa(settings, server, operator, "report", running, "-o", str(xlsx))
    assert done.returncode == 0, done.stderr
    sheet = load_workbook(xlsx, read_only=True).worksheets[0]
    assert len(list(sheet.iter_rows(values_only=True))) == 13


def test_errors_are_one_line(settings: Settings, server: str, db: Any, tmp_path: Path) -> None:
    bad_key = loa(settings, server, "loa_wrong", "list")
    assert bad_key.returncode == 1
    assert "401" in bad_key.stderr
    assert "Traceback" not in bad_key.stderr
    missing = loa(settings, server, make_key(db, Role.OPERATOR), "show", "cmp_nope")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    down = loa(settings, f"http://127.0.0.1:{free_port()}", "loa_x", "list")
    assert down.returncode == 2
    assert "cannot reach the API" in down.stderr
    wrong = loa(settings, server, "loa_x", "report", "cmp_x", "-o", str(tmp_path / "r.pdf"))
    assert wrong.returncode == 2
