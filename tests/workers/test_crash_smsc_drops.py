"""The SMSC drops every session every 500 submits (no unbind; what was in flight is never
answered): the workers rebind, resend what was ambiguous, and no message is lost."""

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

VIETTEL = Gw("viettel", carriers=["Viettel"], default=True)
TOTAL = 2000
DROP_EVERY = 500


def test_sessions_dropped_every_500_submits_lose_nothing(
    make_settings: Callable[..., Settings], db: Engine, procs: Procs, tmp_path: Path
) -> None:
    with simulator([VIETTEL], drop_after=DROP_EVERY) as smsc:
        settings = wave_settings(make_settings, tmp_path, smsc, [VIETTEL])
        procs.start(settings, "worker", "-Q", "dispatch,receipts,sms", "-c", "4", name="worker")
        procs.start(settings, "scheduler", name="scheduler")
        client = api(settings, db)

        wave = seed_campaign(db, TOTAL, tag="d")
        act(client, wave, "launch")
        wait_for(lambda: all_final(db, wave), 180, what="every message final")
        wait_for(lambda: status(db, wave) is CampaignStatus.COMPLETED, 30, what="the wave completed")

        assert counts(db, wave) == {"delivered": TOTAL}
        seen = submits_by_destination(smsc)
        assert set(seen) == destinations(db, wave)
        # Sessions really were dropped, several times over, and the workers rebound each time.
        log = (tmp_path / "worker-0.log").read_text(errors="replace")
        assert log.count("connection lost") >= TOTAL // DROP_EVERY - 1
        # A dropped session's in-flight submits were never read by the SMSC: resending them is not a
        # duplicate, but each resend is counted as ambiguous.
        assert smsc.stats.duplicates() <= ambiguous_resends(db, wave)
