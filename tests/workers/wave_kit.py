"""Helpers for the wave and crash tests: SMPP gateways files for the simulator, campaigns seeded
straight into the database (thousands of recipients in one INSERT), the API client for lifecycle
actions, and readings of the database and of the simulator's log."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, insert, select, update
from sqlmodel import col

from accounts.models import Role
from accounts.service import get_or_create_org
from campaigns.models import Campaign, CampaignStatus, Channel, Message, MessageStatus, Priority
from gateways.smpp.simulator import Account, SimulatorConfig, Smsc, run_in_thread
from loa.db import transaction
from loa.settings import Settings
from tests.factories import make_key

PENDING = {MessageStatus.QUEUED.value, MessageStatus.DISPATCHING.value}


@dataclass(frozen=True)
class Gw:
    """One SMPP gateway of the gateways file, pointing at the simulator account of the same name."""

    name: str
    carriers: Sequence[str] = ()
    default: bool = False
    binds: int = 2
    tps: int = 5000
    window: int = 10

    @property
    def password(self) -> str:
        return f"{self.name[:5]}-pw"


def gateways_toml(smsc_port: int, gateways: Sequence[Gw]) -> str:
    blocks = []
    for g in gateways:
        carriers = ", ".join(f'"{c}"' for c in g.carriers)
        blocks.append(
            f'[[smpp]]\nname = "{g.name}"\nhost = "127.0.0.1"\nport = {smsc_port}\nsystem_id = "{g.name}"\n'
            f'password = "{g.password}"\nbinds = {g.binds}\ntps = {g.tps}\nwindow = {g.window}\n'
            f"carriers = [{carriers}]\ndefault = {str(g.default).lower()}\nenquire_link_s = 5\n"
            f'source_addr = "TCTK"\nreceipt_id_base = "hex"\n'
        )
    return "\n".join(blocks)


@contextmanager
def simulator(gateways: Sequence[Gw], **config: Any) -> Iterator[Smsc]:
    """The SMSC simulator with one account per gateway, TPS unlimited, quick receipts."""
    accounts = [Account(g.name, g.password) for g in gateways]
    config.setdefault("receipt_delay_s", (0.01, 0.05))
    with run_in_thread(SimulatorConfig(port=0, accounts=accounts, **config)) as smsc:
        yield smsc


def wave_settings(
    make_settings: Callable[..., Settings], tmp_path: Path, smsc: Smsc, gateways: Sequence[Gw], **overrides: Any
) -> Settings:
    path = tmp_path / "gateways.toml"
    path.write_text(gateways_toml(smsc.port, gateways))
    return make_settings(gateways_file=path, **overrides)


def seed_campaign(
    engine: Engine,
    n: int,
    *,
    tag: str = "w",
    prefix: str = "+8496",
    first: int = 1_000_000,
    carrier: str = "Viettel",
    priority: Priority = Priority.NORMAL,
    window: dict[str, str] | None = None,
    deadline: datetime | None = None,
    start_at: datetime | None = None,
    options: dict[str, Any] | None = None,
    org: str = "test-org",
) -> str:
    """A draft SMS campaign with `n` recipients; each text is unique (`{tag}-{i}`), so the
    simulator's duplicate index counts real resends only."""
    with transaction(engine) as session:
        organisation = get_or_create_org(session, org)
        campaign = Campaign(
            org_id=organisation.id,
            name=f"wave {tag}",
            channel=Channel.SMS,
            sender="TCTK",
            template={"body": "Tong dieu tra {{ n }}"},
            fields=["n"],
            priority=priority,
            window=window,
            deadline=deadline,
            start_at=start_at,
            options=options or {},
        )
        session.add(campaign)
        session.flush()
        rows = [
            {
                "campaign_id": campaign.id,
                "to": f"{prefix}{first + i:07d}",
                "carrier": carrier,
                "fields": {"n": f"{tag}-{i}"},
                "row": i + 2,
            }
            for i in range(n)
        ]
        session.execute(insert(Message), rows)
        return campaign.id


def api(settings: Settings, engine: Engine) -> TestClient:
    from api.app import create_app  # only the tests that drive the API pay for importing it

    key = make_key(engine, Role.SENDER)
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"})


def act(client: TestClient, campaign_id: str, action: str) -> dict[str, Any]:
    response = client.post(f"/v1/campaigns/{campaign_id}/{action}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def counts(engine: Engine, campaign_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(col(Message.status), func.count())
            .where(col(Message.campaign_id) == campaign_id)
            .group_by(col(Message.status))
        )
        return {str(getattr(s, "value", s)): int(c) for s, c in rows}


def campaign_row(engine: Engine, campaign_id: str) -> Campaign:
    with transaction(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        return campaign


def status(engine: Engine, campaign_id: str) -> CampaignStatus:
    return campaign_row(engine, campaign_id).status


def set_campaign(engine: Engine, campaign_id: str, **values: Any) -> None:
    with transaction(engine) as session:
        session.execute(update(Campaign).where(col(Campaign.id) == campaign_id).values(**values))


def ambiguous_resends(engine: Engine, campaign_id: str) -> int:
    with engine.connect() as conn:
        total = conn.scalar(
            select(func.coalesce(func.sum(col(Message.ambiguous_resends)), 0)).where(
                col(Message.campaign_id) == campaign_id
            )
        )
        return int(total or 0)


def all_final(engine: Engine, campaign_id: str) -> bool:
    c = counts(engine, campaign_id)
    return bool(c) and not any(c.get(s, 0) for s in PENDING) and not c.get(MessageStatus.SENT.value, 0)


def submits_by_destination(smsc: Smsc) -> Counter[str]:
    return Counter(r.destination_addr for r in smsc.stats.log)


def last_submit_at(smsc: Smsc, destinations: set[str]) -> float | None:
    times = [r.received_at for r in smsc.stats.log if r.destination_addr in destinations]
    return max(times) if times else None


def destinations(engine: Engine, campaign_id: str) -> set[str]:
    """Recipients as the simulator sees them (E.164 without the `+`)."""
    with engine.connect() as conn:
        rows = conn.scalars(select(col(Message.to)).where(col(Message.campaign_id) == campaign_id))
        return {str(to).lstrip("+") for to in rows}


def wait_quiet(smsc: Smsc, seconds: float, timeout: float = 30.0) -> float:
    """Wait until the simulator accepted nothing for `seconds`; returns the last submit's time."""
    deadline = time.monotonic() + timeout
    last = -1
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        now = smsc.stats.submits
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= seconds:
            log = smsc.stats.log
            return log[-1].received_at if log else 0.0
        time.sleep(0.1)
    raise AssertionError(f"the simulator never went quiet for {seconds}s (submits: {smsc.stats.submits})")
