"""The scheduler with real processes: a campaign launched outside its send window stays `running`
with `waiting_for_window: true` and sends nothing until the window includes "now"; a campaign
scheduled a few seconds ahead starts by itself; two schedulers run, one leads, the other stands
by and takes over when the leader is killed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from campaigns.models import CampaignStatus
from loa.settings import Settings
from loa.timeutil import utcnow
from tests.conftest import Procs, wait_for
from tests.workers.wave_kit import (
    Gw,
    act,
    all_final,
    api,
    counts,
    destinations,
    seed_campaign,
    set_campaign,
    simulator,
    status,
    submits_by_destination,
    wave_settings,
)
from workers.celery_app import LEADER_KEY, LeaderLease

VIETTEL = Gw("viettel", carriers=["Viettel"], default=True)


def window_from_now(start_h: float, end_h: float) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "start": (now + timedelta(hours=start_h)).strftime("%H:%M"),
        "end": (now + timedelta(hours=end_h)).strftime("%H:%M"),
        "tz": "UTC",
    }


def test_leader_lease_lets_one_scheduler_lead_and_a_standby_take_over(redis_client: redis.Redis) -> None:
    first = LeaderLease(redis_client, "a", ttl_s=1.0)
    second = LeaderLease(redis_client, "b", ttl_s=1.0)
    assert first.is_leader() is True
    assert second.is_leader() is False
    assert redis_client.get(LEADER_KEY) == b"a"
    first.release()
    assert second.is_leader() is True
    # A leader that stops renewing (it died) loses the lease within its ttl.
    wait_for(lambda: first.is_leader(), 3, what="the lease to pass back after b stopped renewing")
    assert second.is_leader() is False


@pytest.mark.slow
def test_windows_scheduled_starts_and_a_second_scheduler(
    make_settings: Callable[..., Settings], db: Engine, procs: Procs, tmp_path: Path, redis_client: redis.Redis
) -> None:
    with simulator([VIETTEL]) as smsc:
        settings = wave_settings(make_settings, tmp_path, smsc, [VIETTEL])
        procs.start(settings, "worker", "-Q", "dispatch,receipts,sms", "-c", "4", name="worker")
        leader = procs.start(settings, "scheduler", name="scheduler-a")
        wait_for(lambda: redis_client.get(LEADER_KEY), 30, what="a scheduler leading")
        standby = procs.start(settings, "scheduler", name="scheduler-b")
        wait_for(lambda: "standing by" in log_of(tmp_path, "scheduler-b"), 60, what="the second scheduler standing by")
        client = api(settings, db)

        # Outside its window: running, waiting, nothing sent.
        closed = seed_campaign(db, 300, tag="win", window=window_from_now(2, 3))
        assert act(client, closed, "launch")["status"] == "running"
        wait_for(lambda: client.get(f"/v1/campaigns/{closed}").json().get("waiting_for_window"), 20, what="waiting")
        time.sleep(2.0)
        assert smsc.stats.submits == 0
        assert status(db, closed) is CampaignStatus.RUNNING
        assert counts(db, closed) == {"queued": 300}

        # Scheduled a few seconds ahead: the tick starts it.
        later = seed_campaign(db, 200, tag="later", prefix="+8497", start_at=utcnow() + timedelta(seconds=3))
        assert act(client, later, "launch")["status"] == "scheduled"

        # The first scheduler dies; the standby takes over and the scheduled start still happens.
        assert redis_client.get(LEADER_KEY).decode().split(":")[1] == str(leader.pid)
        os.kill(leader.pid, signal.SIGKILL)
        wait_for(lambda: status(db, later) is CampaignStatus.COMPLETED, 60, what="the scheduled campaign completed")
        assert redis_client.get(LEADER_KEY).decode().split(":")[1] == str(standby.pid)
        assert smsc.stats.submits == 200

        # The window now includes "now": the waiting campaign resumes by itself.
        set_campaign(db, closed, window=window_from_now(-1, 1))
        wait_for(lambda: all_final(db, closed), 60, what="the windowed campaign sent")
        wait_for(lambda: status(db, closed) is CampaignStatus.COMPLETED, 30, what="the windowed campaign completed")
        assert client.get(f"/v1/campaigns/{closed}").json().get("waiting_for_window") is False
        seen = submits_by_destination(smsc)
        assert set(seen) == destinations(db, closed) | destinations(db, later)
        assert max(seen.values()) == 1

    # While both ran, only the leader sent ticks.
    assert "leading" in log_of(tmp_path, "scheduler-a")
    b_before_takeover = log_of(tmp_path, "scheduler-b").split("leading")[0]
    assert "standing by" in b_before_takeover
    assert "Sending due task" not in b_before_takeover


def log_of(tmp_path: Path, name: str) -> str:
    return "".join(p.read_text(errors="replace") for p in tmp_path.glob(f"{name}-*.log"))
