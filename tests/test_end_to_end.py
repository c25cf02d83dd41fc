"""The whole path on real parts: API → database → dispatcher (Celery worker process, real Redis)
→ SMPP over TCP to the simulator → receipt → `delivered`; and SMTP to aiosmtpd → `sent`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from accounts.models import Role
from api.app import create_app
from gateways.smpp.simulator import Account, SimulatorConfig, run_in_thread
from gateways.smtp.sink import SinkConfig, SmtpSink
from loa.settings import Settings
from loa.stack import builtin_gateways_toml
from tests.conftest import Procs, wait_for
from tests.factories import email_campaign, make_key, sms_campaign

pytestmark = pytest.mark.slow

VIETTEL = ["0961234567", "0971234568", "+84981234569", "84 86 123 4570", "0321234571"]
VINAPHONE = ["0911234567", "0941234568", "0881234569"]
OTHER = ["0901234567", "0921234568"]  # MobiFone, Vietnamobile → the default gateway


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


@pytest.fixture
def stack_settings(
    make_settings: Callable[..., Settings], db: Any, smsc: Any, sink: SmtpSink, tmp_path: Path
) -> Settings:
    gw = tmp_path / "gateways.toml"
    gw.write_text(builtin_gateways_toml(smsc.port, sink.port))
    return make_settings(gateways_file=gw)


def test_sms_and_email_reach_their_final_status(
    stack_settings: Settings, procs: Procs, db: Any, smsc: Any, sink: SmtpSink
) -> None:
    procs.start(stack_settings, "worker", "-c", "4", name="worker")
    procs.start(stack_settings, "scheduler", name="scheduler")
    key = make_key(db, Role.SENDER)
    client = TestClient(create_app(stack_settings), headers={"Authorization": f"Bearer {key}"})

    sms = client.post("/v1/campaigns", json=sms_campaign()).json()
    numbers = VIETTEL + VINAPHONE + OTHER
    up = client.post(
        f"/v1/campaigns/{sms['id']}/recipients",
        json={"recipients": [{"to": n, "fields": {"ten": f"Người {i}"}} for i, n in enumerate(numbers)]},
    )
    assert up.status_code == 200, up.text
    assert up.json()["accepted"] == len(numbers)
    assert client.post(f"/v1/campaigns/{sms['id']}/launch").json()["status"] == "running"

    mail = client.post("/v1/campaigns", json=email_campaign()).json()
    units = [
        {
            "to": f"unit{i}@example.vn",
            "fields": {"don_vi": f"Đơn vị {i}", "username": f"u{i}", "password": f"pw-{i}-secret"},
        }
        for i in range(6)
    ]
    assert client.post(f"/v1/campaigns/{mail['id']}/recipients", json={"recipients": units}).json()["accepted"] == 6
    client.post(f"/v1/campaigns/{mail['id']}/launch")

    def finished(cid: str) -> dict[str, Any] | None:
        c = client.get(f"/v1/campaigns/{cid}").json()
        return c if c["status"] == "completed" else None

    done_sms = wait_for(lambda: finished(sms["id"]), timeout=90, what="SMS campaign completed")
    done_mail = wait_for(lambda: finished(mail["id"]), timeout=60, what="email campaign completed")

    assert done_sms["counts"]["delivered"] == len(numbers) == done_sms["counts"]["total"]
    assert set(done_sms["by_gateway"]) == {"viettel", "vinaphone", "default"}
    assert done_sms["by_gateway"]["viettel"]["delivered"] == len(VIETTEL)
    assert done_sms["by_gateway"]["vinaphone"]["delivered"] == len(VINAPHONE)
    assert smsc.stats.submits == len(numbers)
    assert done_mail["counts"]["sent"] == 6 == done_mail["counts"]["total"]
    assert sink.count == 6

    messages = client.get(f"/v1/campaigns/{sms['id']}/messages").json()["items"]
    assert all(m["provider_message_id"] for m in messages)
    one = client.get(f"/v1/messages/{messages[0]['id']}").json()
    assert [e["kind"] for e in one["events"]][:4] == ["queued", "dispatched", "submitted", "receipt"]
    # The worker moved its start-up objects out of the collector's scans (workers/boot.py).
    worker_log = procs.procs[0][1].read_text(errors="replace")
    frozen = re.search(r"(\d+) start-up objects frozen", worker_log)
    assert frozen is not None
    assert int(frozen.group(1)) > 10_000
