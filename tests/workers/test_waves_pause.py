"""Pause, resume and cancel on a running wave, with real worker processes, Redis, the database and
the SMSC simulator, judged by the simulator's log: the last submit comes within 5 s of the pause,
resume sends every recipient exactly once, cancel marks the rest `cancelled`."""

from __future__ import annotations

import time
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
    api,
    counts,
    destinations,
    last_submit_at,
    seed_campaign,
    simulator,
    status,
    submits_by_destination,
    wait_quiet,
    wave_settings,
)

pytestmark = pytest.mark.slow

PAUSE_LIMIT_S = 5.0
# A rate that makes the wave last long enough to pause it in the middle.
VIETTEL = Gw("viettel", carriers=["Viettel"], default=True, tps=400)


def test_pause_stops_submits_within_seconds_resume_sends_the_rest_once_and_cancel_ends_it(
    make_settings: Callable[..., Settings], db: Engine, procs: Procs, tmp_path: Path
) -> None:
    with simulator([VIETTEL]) as smsc:
        settings = wave_settings(make_settings, tmp_path, smsc, [VIETTEL])
        procs.start(settings, "worker", "-Q", "dispatch,receipts", "-c", "4", name="dispatch")
        procs.start(settings, "worker", "-Q", "sms", "-c", "4", name="sms")
        procs.start(settings, "scheduler", name="scheduler")
        client = api(settings, db)

        wave = seed_campaign(db, 2500, tag="p")
        wave_to = destinations(db, wave)
        act(client, wave, "launch")
        wait_for(lambda: smsc.stats.submits >= 500, 60, what="the wave under way")

        paused_at = time.time()
        assert act(client, wave, "pause")["status"] == "paused"
        wait_quiet(smsc, 2.0)
        last = last_submit_at(smsc, wave_to)
        assert last is not None
        assert last - paused_at < PAUSE_LIMIT_S, f"last submit {last - paused_at:.1f}s after the pause"
        # Rows the send tasks held go back to the queue; nothing moves while paused.
        wait_for(lambda: counts(db, wave).get("dispatching", 0) == 0, 30, what="in-flight rows given back")
        sent_while_paused = smsc.stats.submits
        assert 0 < sent_while_paused < len(wave_to)
        time.sleep(2.0)
        assert smsc.stats.submits == sent_while_paused
        assert status(db, wave) is CampaignStatus.PAUSED

        assert act(client, wave, "resume")["status"] == "running"
        wait_for(lambda: all_final(db, wave), 120, what="every message of the wave final")
        wait_for(lambda: status(db, wave) is CampaignStatus.COMPLETED, 30, what="the wave completed")
        assert counts(db, wave) == {"delivered": len(wave_to)}
        seen = submits_by_destination(smsc)
        assert set(seen) == wave_to
        assert max(seen.values()) == 1, "a recipient got the message twice"

        # Cancel: a second wave stopped in the middle; the rest ends `cancelled`.
        smsc.stats.reset()
        other = seed_campaign(db, 2500, tag="c", prefix="+8497")
        other_to = destinations(db, other)
        act(client, other, "launch")
        wait_for(lambda: smsc.stats.submits >= 500, 60, what="the second wave under way")
        cancelled_at = time.time()
        assert act(client, other, "cancel")["status"] == "cancelled"
        wait_quiet(smsc, 2.0)
        last = last_submit_at(smsc, other_to)
        assert last is not None
        assert last - cancelled_at < PAUSE_LIMIT_S
        wait_for(lambda: all_final(db, other), 60, what="every message of the cancelled wave final")
        final = counts(db, other)
        submitted = len(submits_by_destination(smsc))
        assert final.get("cancelled", 0) == len(other_to) - submitted
        assert final.get("delivered", 0) == submitted
        assert status(db, other) is CampaignStatus.CANCELLED
