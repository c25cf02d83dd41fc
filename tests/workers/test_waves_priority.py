"""Fairness and priority on one gateway: a 200-message high-priority campaign launched in the
middle of a big wave goes out next, once the few seconds of backlog already queued for the
gateway have drained, instead of after the whole wave."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from campaigns.models import CampaignStatus, Priority
from loa.settings import Settings
from tests.conftest import Procs, wait_for
from tests.workers.wave_kit import (
    Gw,
    act,
    api,
    destinations,
    seed_campaign,
    simulator,
    status,
    wave_settings,
)

pytestmark = pytest.mark.slow

# The gateway's TPS is the bottleneck here (the simulator has none), so the big wave queues up.
VIETTEL = Gw("viettel", carriers=["Viettel"], default=True, tps=100)
BIG = 1500
URGENT = 200


def test_an_urgent_campaign_is_not_starved_by_a_big_wave(
    make_settings: Callable[..., Settings], db: Engine, procs: Procs, tmp_path: Path
) -> None:
    with simulator([VIETTEL]) as smsc:
        settings = wave_settings(make_settings, tmp_path, smsc, [VIETTEL])
        procs.start(settings, "worker", "-Q", "dispatch,receipts,sms", "-c", "6", name="worker")
        procs.start(settings, "scheduler", name="scheduler")
        client = api(settings, db)

        wave = seed_campaign(db, BIG, tag="big")
        urgent = seed_campaign(db, URGENT, tag="urgent", prefix="+8497", priority=Priority.HIGH)
        big_to, urgent_to = destinations(db, wave), destinations(db, urgent)
        act(client, wave, "launch")
        wait_for(lambda: smsc.stats.submits >= 300, 60, what="the big wave under way")
        act(client, urgent, "launch")
        wait_for(lambda: status(db, urgent) is CampaignStatus.COMPLETED, 60, what="the urgent campaign completed")

        log = smsc.stats.log
        urgent_times = [r.received_at for r in log if r.destination_addr in urgent_to]
        assert len(urgent_times) == URGENT
        first_urgent, last_urgent = min(urgent_times), max(urgent_times)
        big_before = sum(1 for r in log if r.destination_addr in big_to and r.received_at < first_urgent)
        big_during = sum(
            1 for r in log if r.destination_addr in big_to and first_urgent <= r.received_at <= last_urgent
        )
        big_after = BIG - big_before - big_during
        seen = f"big-wave submits: {big_before} before, {big_during} during, {big_after} after the urgent campaign"
        # The urgent campaign waited for the big wave's queued backlog only (a few seconds of TPS),
        # then went out ahead of it: most of the wave was still to come when it was done.
        assert big_during <= 4 * VIETTEL.tps, seen
        assert big_after >= BIG // 3, seen
        assert status(db, wave) is CampaignStatus.RUNNING
