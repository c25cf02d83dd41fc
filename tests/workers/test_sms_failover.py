"""Routing when gateways fail, through a real `loa worker` and the simulator: a gateway that cannot
bind, or whose submits mostly fail, hands its traffic to its `fallback` and takes it back once it
recovers; a number no gateway claims fails with `no_route`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, select
from sqlmodel import col

from campaigns.models import Message
from tests.conftest import wait_for
from tests.workers.sms_kit import Gw, SmsStack, by_gateway, sms_stack, truncate_all, wait_settled
from tests.workers.wave_kit import act, api, seed_campaign

pytestmark = pytest.mark.slow

PRIMARY = Gw("primary", carriers=["Viettel"], tps=100, fallback="backup", failover="{ after_s = 2, error_rate = 0.5 }")
BACKUP = Gw("backup", carriers=["Vinaphone"])


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str, engine: Engine
) -> Iterator[SmsStack]:
    with sms_stack(tmp_path_factory.mktemp("sms-failover"), database_url, redis_url, [PRIMARY, BACKUP]) as s:
        yield s


@pytest.fixture
def db(engine: Engine, stack: SmsStack) -> Engine:
    return truncate_all(engine)


@pytest.fixture
def smsc(stack: SmsStack, db: Engine) -> SmsStack:
    stack.reset()
    return stack


def test_a_number_no_gateway_claims_fails_with_no_route(smsc: SmsStack, db: Engine) -> None:
    wave = seed_campaign(db, 3, tag="mobi", prefix="+8490", carrier="MobiFone")
    act(api(smsc.settings, db), wave, "launch")
    assert wait_settled(db, wave) == {"failed": 3}
    with db.connect() as conn:
        assert set(conn.scalars(select(col(Message.error_code)))) == {"no_route"}
    assert smsc.smsc.stats.submits == 0


def test_a_gateway_that_cannot_bind_hands_over_to_its_fallback_and_takes_back_after(smsc: SmsStack, db: Engine) -> None:
    client = api(smsc.settings, db)
    smsc.account("primary").fail_bind = True
    smsc.smsc.disconnect("primary")  # the carrier's side goes away; rebinding is refused
    wait_for(lambda: smsc.smsc.stats.sessions("primary") == 0, 10, what="primary disconnected")
    during = seed_campaign(db, 200, tag="down", carrier="Viettel")
    act(client, during, "launch")
    assert wait_settled(db, during, timeout=120) == {"delivered": 200}
    assert by_gateway(db, during) == {"backup": 200}

    smsc.account("primary").fail_bind = False  # back: the worker's next rebind works
    wait_for(lambda: smsc.smsc.stats.sessions("primary") == 1, 90, what="primary bound again")
    r = redis.Redis.from_url(smsc.settings.redis_url or "")
    # The worker lifts the down mark within a health round (a second) of binding.
    wait_for(lambda: not r.exists("loa:gw:down:primary"), 10, what="the down mark lifted")
    after = seed_campaign(db, 100, tag="up", first=2_000_000, carrier="Viettel")
    act(client, after, "launch")
    assert wait_settled(db, after, timeout=120) == {"delivered": 100}
    assert by_gateway(db, after) == {"primary": 100}


def test_a_gateway_whose_submits_mostly_fail_hands_over_until_it_recovers(smsc: SmsStack, db: Engine) -> None:
    smsc.account("primary").reject_status = 0x45  # ESME_RSUBMITFAIL: a broken route at the carrier
    wave = seed_campaign(db, 600, tag="errors", carrier="Viettel")
    act(api(smsc.settings, db), wave, "launch")
    final = wait_settled(db, wave, timeout=180)
    routed = by_gateway(db, wave)
    # The first batch fails whole (its results are judged when it ends), then the batch waiting
    # for the session stops within a few groups and the rest goes to the fallback.
    assert final.get("failed", 0) >= 20
    assert final.get("delivered", 0) > 0
    assert routed.get("backup", 0) == final["delivered"]
    assert sum(final.values()) == 600
    too_late = smsc.settings.dispatch_batch + 50  # half a second of the primary's 100 TPS
    assert final["failed"] < too_late, f"the fallback took over too late: {final}, {routed}"
