"""The reporting side on real parts: a worker process and the scheduler send an SMS wave through the
SMSC simulator while a local receiver takes the webhooks. At the end the live counters equal an
exact recount (the final reconciliation corrects nothing), the receiver holds signed progress
snapshots, the final report and every message's final status, /metrics sums what the worker
process pushed, and an XLSX export job runs on the worker."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from accounts.models import Role
from api.app import create_app
from api.routes import reports as report_routes
from campaigns import counters, repository, webhooks
from gateways.smpp.simulator import Account, SimulatorConfig, run_in_thread
from loa.settings import Settings
from loa.stack import builtin_gateways_toml
from tests.conftest import Procs, wait_for
from tests.factories import make_key, sms_campaign

pytestmark = pytest.mark.slow

N = 150
PROVINCES = ["Hà Nội", "Huế", "Cần Thơ", "Điện Biên"]


@pytest.fixture
def smsc() -> Iterator[Any]:
    accounts = [Account(name, f"{name}-pw") for name in ("viettel", "vinaphone", "default")]
    with run_in_thread(SimulatorConfig(port=0, accounts=accounts, receipt_delay_s=(0.05, 0.3))) as sim:
        yield sim


@pytest.fixture
def hooks() -> Iterator[tuple[str, list[tuple[str, bytes, dict[str, str]]]]]:
    got: list[tuple[str, bytes, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.headers["X-Loa-Event"], body, dict(self.headers)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/loa", got
    server.shutdown()
    server.server_close()


def test_a_wave_reported_live(
    make_settings: Callable[..., Settings],
    db: Any,
    redis_client: Any,
    smsc: Any,
    hooks: tuple[str, list[tuple[str, bytes, dict[str, str]]]],
    procs: Procs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = tmp_path / "gateways.toml"
    gw.write_text(builtin_gateways_toml(smsc.port, 2525))
    settings = make_settings(gateways_file=gw)
    procs.start(settings, "worker", "-c", "6", name="worker")
    procs.start(settings, "scheduler", name="scheduler")
    url, got = hooks
    admin = TestClient(create_app(settings), headers={"Authorization": f"Bearer {make_key(db, Role.ADMIN)}"})
    secret = admin.post(
        "/v1/webhooks",
        json={"url": url, "events": list(webhooks.EVENTS), "progress_interval_s": 10},
    ).json()["secret"]

    cid = admin.post("/v1/campaigns", json=sms_campaign(rate_limit=40)).json()["id"]
    prefixes = ["0961", "0912", "0901"]
    people = [
        {"to": f"{prefixes[i % 3]}{i:06d}", "fields": {"ten": f"Người {i}", "tinh": PROVINCES[i % 4]}} for i in range(N)
    ]
    assert admin.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": people}).status_code == 200
    assert admin.get(f"/v1/campaigns/{cid}/counts", params={"field": "tinh"}).status_code == 200
    assert admin.post(f"/v1/campaigns/{cid}/launch").json()["status"] == "running"

    def finished() -> dict[str, Any] | None:
        c = admin.get(f"/v1/campaigns/{cid}").json()
        return c if c["status"] == "completed" else None

    done = wait_for(finished, timeout=120, what="the campaign completed")
    assert done["counts"]["delivered"] == N == done["counts"]["total"]
    with Session(db) as session:
        exact, by_gateway = repository.status_counts(session, cid)
        stats = repository.campaign_stats(session, cid)
    assert done["counts"] == exact
    assert done["by_gateway"] == by_gateway
    assert done["stats"] == stats
    counts = admin.get(f"/v1/campaigns/{cid}/counts").json()
    expected = Counter(p["fields"]["tinh"] for p in people)
    assert {k: v["delivered"] for k, v in counts["by_field"]["tinh"].items()} == expected
    assert sum(p["delivered"] for p in counts["per_minute"]) == N

    # The final report comes after the exact recount, which found the live counters right.
    wait_for(lambda: any(e == "campaign.report" for e, _, _ in got), timeout=30, what="the final report webhook")
    with Session(db) as session:
        state = counters.state_of(session, cid)
        assert state is not None
        assert state.final_at is not None
        assert state.drift == 0
    wait_for(
        lambda: set(_last_status(got).values()) == {"delivered"} and len(_last_status(got)) == N,
        timeout=30,
        what=f"every message's final status by webhook (so far {Counter(_last_status(got).values())})",
    )
    for event, body, headers in got:
        assert webhooks.verify(secret, headers["X-Loa-Timestamp"], body, headers["X-Loa-Signature"]), event
    events = [e for e, _, _ in got]
    assert "campaign.progress" in events
    report = next(_json(b) for e, b, _ in got if e == "campaign.report")["campaign"]
    assert (report["id"], report["status"], report["counts"]["delivered"]) == (cid, "completed", N)
    assert len(_last_status(got)) == N

    # Metrics pushed by the worker process, summed by the API.
    text = admin.get("/metrics").text
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    delivered = sum(
        v for (name, labels), v in values.items() if name == "loa_messages_total" and ("status", "delivered") in labels
    )
    assert delivered == N
    latency = sum(v for (name, _), v in values.items() if name == "loa_receipt_latency_seconds_count")
    assert latency == N
    assert sum(v for (name, _), v in values.items() if name == "loa_gateway_accepted_total") >= N

    # An XLSX export job, written by the worker.
    monkeypatch.setattr(report_routes, "XLSX_SYNC_ROWS", 10)
    job = admin.get(f"/v1/campaigns/{cid}/report.xlsx")
    assert job.status_code == 202
    view = wait_for(
        lambda: (v := admin.get(f"/v1/exports/{job.json()['id']}").json())["status"] == "done" and v,
        timeout=60,
        what="the export job done",
    )
    path = tmp_path / "report.xlsx"
    path.write_bytes(admin.get(view["download_url"]).content)
    rows = list(load_workbook(path, read_only=True).worksheets[0].iter_rows(values_only=True))
    assert len(rows) == N + 1
    assert {r[rows[0].index("status")] for r in rows[1:]} == {"delivered"}


def _json(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body)
    return value


def _last_status(got: list[tuple[str, bytes, dict[str, str]]]) -> dict[str, str]:
    """Each message's latest status among the `message.status` POSTs (they arrive in any order;
    `seq` orders the changes)."""
    last: dict[str, tuple[int, str]] = {}
    for event, body, _ in list(got):
        if event == "message.status":
            for change in _json(body)["changes"]:
                mid = change["message_id"]
                last[mid] = max(last.get(mid, (0, "")), (change["seq"], change["status"]))
    return {mid: status for mid, (_, status) in last.items()}
