"""Redis restarts in the middle of a wave, losing everything it held (broker queues, bind leases,
rate limiter, halt flags): the wave still finishes and no message is lost, because the database is
the only source of truth. The test runs its own redis-server on a free port for this."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from campaigns.models import CampaignStatus
from loa.settings import Settings
from loa.stack import free_port
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


class OwnRedis:
    """A throwaway redis-server that keeps nothing on disk, restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), 10, what="redis-server up")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def test_a_redis_restart_mid_wave_loses_nothing(
    make_settings: Callable[..., Settings], db: Engine, procs: Procs, tmp_path: Path, own_redis: OwnRedis
) -> None:
    with simulator([VIETTEL]) as smsc:
        settings = wave_settings(make_settings, tmp_path, smsc, [VIETTEL], redis_url=own_redis.url, lease_seconds=15)
        procs.start(settings, "worker", "-Q", "dispatch,receipts,sms", "-c", "6", name="worker")
        procs.start(settings, "scheduler", name="scheduler")
        client = api(settings, db)

        wave = seed_campaign(db, TOTAL, tag="r")
        act(client, wave, "launch")
        wait_for(lambda: smsc.stats.submits >= TOTAL // 4, 120, what="a quarter of the wave submitted")
        own_redis.kill()
        at_restart = smsc.stats.submits
        time.sleep(1.0)
        own_redis.start()  # empty: queues, leases, limiter state and flags are gone
        assert at_restart < TOTAL, "the wave was over before the restart; make it bigger"

        wait_for(lambda: all_final(db, wave), 180, what="every message final after the restart")
        wait_for(lambda: status(db, wave) is CampaignStatus.COMPLETED, 30, what="the wave completed")
        assert counts(db, wave) == {"delivered": TOTAL}
        seen = submits_by_destination(smsc)
        assert set(seen) == destinations(db, wave)
        assert smsc.stats.duplicates() <= ambiguous_resends(db, wave)
