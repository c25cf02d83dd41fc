"""Scale-out: two independent worker groups (as on two hosts: their own processes, names and
roles, sharing only Redis and the database) send one wave through one gateway. Bind slots and TPS
live in Redis, so together they never open more sessions than the carrier allows nor exceed its
TPS. The simulator enforces neither here: its counters judge what the workers did on their own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from campaigns.models import CampaignStatus
from loa.settings import Settings
from tests.conftest import Procs, wait_for
from tests.workers.wave_kit import (
    Gw,
    act,
    api,
    counts,
    destinations,
    seed_campaign,
    simulator,
    status,
    submits_by_destination,
    wave_settings,
)

pytestmark = pytest.mark.slow

VIETTEL = Gw("viettel", carriers=["Viettel"], default=True, binds=2, tps=300)
TOTAL = 2400


def test_two_worker_groups_share_a_gateway_within_its_bind_and_tps_limits(
    make_settings: Callable[..., Settings], db: Engine, procs: Procs, tmp_path: Path
) -> None:
    with simulator([VIETTEL]) as smsc:
        settings = wave_settings(make_settings, tmp_path, smsc, [VIETTEL])
        # Group A: dispatcher, receipts and SMS.   Group B: two more SMS workers and receipts.
        procs.start(settings, "worker", "-Q", "dispatch,receipts,sms", "-c", "4", "-n", "group-a@host-a", name="a")
        procs.start(settings, "worker", "-Q", "sms,receipts", "-c", "4", "-n", "group-b1@host-b", name="b1")
        procs.start(settings, "worker", "-Q", "sms", "-c", "4", "-n", "group-b2@host-b", name="b2")
        procs.start(settings, "scheduler", name="scheduler")
        client = api(settings, db)

        wave = seed_campaign(db, TOTAL, tag="s")
        act(client, wave, "launch")
        wait_for(lambda: status(db, wave) is CampaignStatus.COMPLETED, 120, what="the wave completed")

        assert counts(db, wave) == {"delivered": TOTAL}
        seen = submits_by_destination(smsc)
        assert set(seen) == destinations(db, wave)
        assert max(seen.values()) == 1
        assert smsc.stats.max_sessions(VIETTEL.name) <= VIETTEL.binds
        per_second = smsc.stats.per_second(VIETTEL.name)
        assert max(per_second.values()) <= VIETTEL.tps, per_second
