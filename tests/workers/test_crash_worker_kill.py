"""kill -9 of the SMS send worker in the middle of a wave: after a new worker starts, every message
reaches a final state, none is lost, and the duplicates the SMSC saw (its log is the judge) are at
most binds x window, each counted in `ambiguous_resends`."""

from __future__ import annotations

import os
import signal
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
    all_final,
    ambiguous_resends,
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

VIETTEL = Gw("viettel", carriers=["Viettel"], default=True, binds=2, window=10)
TOTAL = 3000


def test_kill_9_of_a_send_worker_loses_nothing_and_bounds_duplicates(
    make_settings: Callable[..., Settings], db: Engine, procs: Procs, tmp_path: Path
) -> None:
    with simulator([VIETTEL]) as smsc:
        # A short lease so the sweep returns the dead worker's rows quickly.
        settings = wave_settings(make_settings, tmp_path, smsc, [VIETTEL], lease_seconds=15)
        procs.start(settings, "worker", "-Q", "dispatch,receipts", "-c", "4", name="dispatch")
        victim = procs.start(settings, "worker", "-Q", "sms", "-c", "4", name="sms")
        procs.start(settings, "scheduler", name="scheduler")
        client = api(settings, db)

        wave = seed_campaign(db, TOTAL, tag="k")
        act(client, wave, "launch")
        wait_for(lambda: smsc.stats.submits >= TOTAL // 3, 120, what="a third of the wave submitted")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        at_kill = smsc.stats.submits
        assert at_kill < TOTAL, "the wave was over before the kill; make it bigger"

        procs.start(settings, "worker", "-Q", "sms", "-c", "4", name="sms-restarted")
        wait_for(lambda: all_final(db, wave), 180, what="every message final after the restart")
        wait_for(lambda: status(db, wave) is CampaignStatus.COMPLETED, 30, what="the wave completed")

        assert counts(db, wave) == {"delivered": TOTAL}
        seen = submits_by_destination(smsc)
        assert set(seen) == destinations(db, wave), "a recipient never reached the SMSC"
        duplicates = smsc.stats.duplicates()
        recovery = [
            line[line.index("WARNING") :]
            for log in tmp_path.glob("*.log")
            for line in log.read_text(errors="replace").splitlines()
            if "WARNING" in line and ("send journal" in line or "lease expired" in line)
        ]
        story = f"kill at {at_kill} submits: {duplicates} duplicates; " + " | ".join(recovery)
        assert duplicates == sum(n - 1 for n in seen.values())
        assert duplicates <= VIETTEL.binds * VIETTEL.window, story
        assert duplicates <= ambiguous_resends(db, wave), story
