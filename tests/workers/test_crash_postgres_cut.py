"""Postgres cut off for 10 s in the middle of a wave: every worker reaches the database through a
TCP proxy that drops all its connections and refuses new ones for the duration. The workers back
off (tenacity), carry on when it is back, and no message is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

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
CUT_S = 10.0


class CuttableProxy:
    """A TCP proxy to the database that can drop every connection and refuse new ones for a while."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.cut_until = 0.0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-proxy", daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def cut(self, seconds: float) -> None:
        """Drop every open connection now and refuse new ones for `seconds`."""
        self.cut_until = time.monotonic() + seconds
        asyncio.run_coroutine_threadsafe(self._drop_all(), self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, as a dead network path or a killed server gives
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.cut_until:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


@pytest.fixture
def proxied_url(database_url: str, engine: Engine) -> Iterator[tuple[str, CuttableProxy]]:
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the database cut needs Postgres (LOA_TEST_DATABASE_URL)")
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
    proxy.stop()


def test_workers_back_off_while_postgres_is_cut_and_lose_nothing(
    make_settings: Callable[..., Settings],
    db: Engine,
    procs: Procs,
    tmp_path: Path,
    proxied_url: tuple[str, CuttableProxy],
) -> None:
    url, proxy = proxied_url
    with simulator([VIETTEL]) as smsc:
        settings = wave_settings(make_settings, tmp_path, smsc, [VIETTEL], database_url=url, lease_seconds=60)
        procs.start(settings, "worker", "-Q", "dispatch,receipts,sms", "-c", "6", name="worker")
        procs.start(settings, "scheduler", name="scheduler")
        client = api(settings, db)

        wave = seed_campaign(db, TOTAL, tag="pg")
        act(client, wave, "launch")
        wait_for(lambda: smsc.stats.submits >= TOTAL // 4, 120, what="a quarter of the wave submitted")
        proxy.cut(CUT_S)
        at_cut = smsc.stats.submits
        time.sleep(CUT_S)
        assert proxy.refused > 0, "nobody tried the database during the cut"
        assert at_cut < TOTAL, "the wave was over before the cut; make it bigger"

        wait_for(lambda: all_final(db, wave), 180, what="every message final after the cut")
        wait_for(lambda: status(db, wave) is CampaignStatus.COMPLETED, 30, what="the wave completed")
        assert counts(db, wave) == {"delivered": TOTAL}
        seen = submits_by_destination(smsc)
        assert set(seen) == destinations(db, wave)
        assert smsc.stats.duplicates() <= ambiguous_resends(db, wave)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert "database unavailable" in logs, "no worker logged a database retry"
