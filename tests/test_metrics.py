"""Prometheus metrics: values pushed by separate processes are summed at /metrics (multiprocess
mode), live gauges (queue depths, active campaigns by status) are computed at scrape time, the
metrics token is enforced, and limiter waits are observed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Role
from api.app import create_app
from gateways.ratelimit import RateLimiter
from loa import metrics
from loa.settings import Settings
from tests.conftest import ROOT
from tests.factories import make_key, sms_campaign

PUSH = textwrap.dedent(
    """
    import sys
    from loa import metrics
    from loa.settings import Settings

    metrics.enable_multiprocess(Settings(state_dir=sys.argv[1]))
    m = metrics.get()
    m.transitions.labels("sms", "viettel", "delivered").inc(int(sys.argv[2]))
    m.segments.labels("viettel").inc(2 * int(sys.argv[2]))
    m.receipt_latency.labels("viettel").observe(4.0)
    """
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_values_of_every_process_are_summed(make_settings: Any, tmp_path: Path) -> None:
    settings: Settings = make_settings(state_dir=tmp_path / "state")
    for n in (3, 4):  # two "workers"
        subprocess.run([sys.executable, "-c", PUSH, str(settings.state_dir), str(n)], check=True, cwd=ROOT, timeout=60)
    assert metrics.metrics_dir(settings) == (tmp_path / "state" / "metrics").resolve()
    got = samples(metrics.render(settings).decode())
    assert got[("loa_messages_total", (("channel", "sms"), ("gateway", "viettel"), ("status", "delivered")))] == 7
    assert got[("loa_gateway_accepted_total", (("gateway", "viettel"),))] == 14
    assert got[("loa_receipt_latency_seconds_count", (("gateway", "viettel"),))] == 2
    assert got[("loa_receipt_latency_seconds_sum", (("gateway", "viettel"),))] == 8.0


def test_the_api_serves_live_gauges_behind_the_token(make_settings: Any, db: Any, redis_client: Any) -> None:
    settings: Settings = make_settings(metrics_token="scrape-token-123456")
    app = create_app(settings)
    key = make_key(db, Role.SENDER)
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    cid = client.post("/v1/campaigns", json=sms_campaign()).json()["id"]
    people = [{"to": f"0961{i:06d}", "fields": {"ten": "A"}} for i in range(4)]
    assert client.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": people}).status_code == 200
    assert client.post(f"/v1/campaigns/{cid}/launch").status_code == 200
    redis_client.delete("dispatch")  # the launch kicked a dispatch task: count from a known state
    redis_client.lpush("dispatch", "a", "b", "c")
    redis_client.lpush("dispatch\x06\x169", "d")  # a priority list of the same queue

    assert TestClient(app).get("/metrics").status_code == 401
    wrong = TestClient(app, headers={"Authorization": "Bearer nope"}).get("/metrics")
    assert wrong.status_code == 401
    response = TestClient(app, headers={"Authorization": "Bearer scrape-token-123456"}).get("/metrics")
    assert response.status_code == 200
    got = samples(response.text)
    assert got[("loa_queue_depth", (("queue", "dispatch"),))] == 4
    assert got[("loa_queue_depth", (("queue", "sms.viettel"),))] == 0
    assert got[("loa_campaign_messages", (("campaign_id", cid), ("status", "queued")))] == 4


def test_limiter_waits_are_observed(redis_client: Any) -> None:
    limiter = RateLimiter(redis_client)

    def count() -> float:
        return REGISTRY.get_sample_value("loa_limiter_wait_seconds_count", {"key": "sms:test"}) or 0.0

    def total() -> float:
        return REGISTRY.get_sample_value("loa_limiter_wait_seconds_sum", {"key": "sms:test"}) or 0.0

    before, waited = count(), total()
    for _ in range(3):
        assert limiter.acquire_many([("sms:test", 10.0)])
    # 3 slots at 10/s: the first is free, the others wait ~0.1 s each. On a loaded machine the first
    # may also wait (only waits of 1 ms or more are observed), hence the range.
    assert before + 2 <= count() <= before + 3
    assert total() - waited > 0.1
    campaigns = REGISTRY.get_sample_value("loa_limiter_wait_seconds_count", {"key": "campaign"}) or 0.0
    metrics.observe_wait("campaign:cmp_x", 0.5)  # every campaign cap shares one label
    assert REGISTRY.get_sample_value("loa_limiter_wait_seconds_count", {"key": "campaign"}) == campaigns + 1
