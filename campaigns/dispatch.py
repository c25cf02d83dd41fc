"""The dispatcher: picks queued messages, routes them to a gateway, and claims them in batches
of one gateway each for a send task (never one task per message), in one update per batch.

Picks use `FOR UPDATE SKIP LOCKED` on Postgres so several dispatchers never take the same row;
on SQLite the `BEGIN IMMEDIATE` transaction serialises writers. Each batch's claim carries a
token, so a send task only ever touches the rows of its own claim.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, func, or_, select, update
from sqlmodel import Session, col

from campaigns import counters
from campaigns.bulk import any_of, insert_rows
from campaigns.counter_cells import STATE_COLUMNS
from campaigns.frequency import hold_over_cap
from campaigns.models import (
    PRIORITY_WEIGHT,
    Campaign,
    CampaignStatus,
    Channel,
    Message,
    MessageEvent,
    MessageStatus,
    MnpOverride,
)
from campaigns.sending import INFLIGHT_MARK
from gateways.config import GatewaysConfig
from loa.db import table_of
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

# Seconds of sending that may wait in a gateway's queue: enough to keep binds busy, short enough
# that pause and cancel act within seconds and memory stays flat whatever the campaign's size.
BACKLOG_SECONDS = 4.0
# ... and at most this many batches per bind (per connection for a relay): a gateway configured
# for far more TPS than it really achieves (an unlimited simulator, a slow carrier) must not get a
# queue that takes longer to drain than the claim lease, or its rows are swept while still queued
# (16 x 500 in 120 s: a bind that sends fewer than ~67 a second; only a gateway whose `tps` is far
# above 2,000 per bind reaches this bound before the 4 s one). Fewer starved a fast bind: the
# worker holds four batches, kicks are debounced to 200 ms, and at 4,000 msg/s a queue of four
# batches of 200 ran dry between two dispatch passes (empty in 43 % of samples; with 16, never).
BACKLOG_BATCHES_PER_BIND = 16
NO_ROUTE = "no_route"
# Rounds of one dispatch pass at most (each claims a share of every campaign that still has some).
MAX_ROUNDS = 50
# Campaign → the gateways its last claim in this process was routed to. A campaign whose gateways
# all lack room is not claimed from (rows claimed only to be given back cost two updates each); if
# its later rows go elsewhere they wait at most until one of those gateways has room again.
_last_routes: dict[str, frozenset[str | None]] = {}
# Campaign → (the highest id claimed in this process, when its claims last scanned from the lowest
# id): see `claim`.
_claim_cursor: dict[str, tuple[int, float]] = {}
RESCAN_S = 30.0
_events = table_of(MessageEvent)  # COPY on Postgres: the ORM's bulk path costs far more per row
_messages = table_of(Message)


@dataclass(frozen=True)
class Batch:
    channel: Channel
    gateway: str
    campaign_id: str
    claim: str
    ids: list[int]


@dataclass
class Router:
    """Carrier → gateway, with operator MNP overrides and failover to a fallback gateway."""

    gateways: GatewaysConfig
    is_down: Callable[[str], bool] = lambda _name: False

    def __post_init__(self) -> None:
        self.table, self.default = self.gateways.route_table()
        self.fallback = {g.name: g.fallback for g in self.gateways.smpp}

    def route(self, carrier: str | None) -> str | None:
        name = self.table.get((carrier or "").strip().lower(), self.default)
        if name is not None and self.is_down(name):
            fallback = self.fallback.get(name)
            if fallback is not None and not self.is_down(fallback):
                return fallback
        return name

    def failed_over(self) -> list[str]:
        """Gateways that are down and whose fallback is up: their waiting messages move."""
        return [
            name
            for name, fallback in self.fallback.items()
            if fallback is not None and self.is_down(name) and not self.is_down(fallback)
        ]


@dataclass(frozen=True)
class Capacity:
    """How many rows a gateway's queue may hold, in send tasks of how many rows."""

    rows: int
    batch: int


def _capacity(per_second: float, sessions: int, batch_size: int) -> Capacity:
    # A batch holds at most half the backlog's seconds: a slow gateway keeps small batches, so its
    # queue still holds ~4 s of sending and an urgent campaign is not stuck behind two big batches.
    batch = max(1, min(batch_size, int(per_second * BACKLOG_SECONDS / 2)))
    per_sessions = BACKLOG_BATCHES_PER_BIND * sessions * batch
    return Capacity(max(2 * batch, min(int(per_second * BACKLOG_SECONDS), per_sessions)), batch)


def gateway_capacity(gateways: GatewaysConfig, batch_size: int) -> dict[tuple[Channel, str], Capacity]:
    caps = {(Channel.SMS, g.name): _capacity(g.tps, g.binds, batch_size) for g in gateways.smpp}
    caps.update({(Channel.EMAIL, r.name): _capacity(r.rate, r.connections, batch_size) for r in gateways.smtp})
    return caps


def inflight(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(col(Message.gateway), func.count())
        .where(col(Message.status) == MessageStatus.DISPATCHING.value)
        .group_by(col(Message.gateway))
    )
    return {str(g): int(n) for g, n in rows if g}


def dispatchable_campaigns(session: Session) -> list[Campaign]:
    stmt = select(Campaign).where(
        col(Campaign.status) == CampaignStatus.RUNNING.value,
        col(Campaign.waiting_for_window).is_(False),
    )
    campaigns = list(session.scalars(stmt))
    # Weighted round robin: higher priority first, then whoever waited longest for a turn.
    campaigns.sort(key=lambda c: (-PRIORITY_WEIGHT[c.priority], c.dispatch_turn))
    return campaigns


def pick(session: Session, campaign: Campaign, limit: int) -> list[Row[Any]]:
    """Up to `limit` of the campaign's ready messages (rows of `STATE_COLUMNS`: the counters'
    snapshot is built from them), lowest ids first, locked until the transaction ends (`FOR
    UPDATE SKIP LOCKED`) but not changed: the dispatcher claims and routes the ones it sends in
    one update per batch, and those it has no room for stay as they were.

    The scan starts above the highest id this process picked last time (`_claim_cursor`), and
    from the lowest id when that comes up short or every `RESCAN_S` (rows given back to the queue
    meanwhile: retries, sweeps, a pause). Without it every pick walked past all the rows already
    claimed: their old index entries stay until vacuum, and a planner whose statistics predate
    the wave walks the primary key through them (0.3-1.7 s a claim half-way through 1M rows)."""
    ticks = time.monotonic()
    after, scanned_at = _claim_cursor.get(campaign.id, (0, ticks))
    start = 0 if ticks - scanned_at > RESCAN_S else after
    rows = _pick_above(session, campaign, start, limit)
    if start and len(rows) < limit:
        taken = {r.id for r in rows}  # locked by us, so the scan from the bottom sees them
        below = _pick_above(session, campaign, 0, limit, skip=taken)[: limit - len(rows)]
        rows = sorted(rows + below, key=lambda r: int(r.id))
        start = 0
    if len(_claim_cursor) > 10_000:  # campaigns come and go: keep this bounded
        _claim_cursor.clear()
    top = max((int(r.id) for r in rows), default=0)
    _claim_cursor[campaign.id] = (max(top, after), ticks if start == 0 else scanned_at)
    return rows


def _pick_above(
    session: Session, campaign: Campaign, after: int, limit: int, skip: Iterable[int] = ()
) -> list[Row[Any]]:
    pick = (
        select(*STATE_COLUMNS)
        .where(
            _messages.c.campaign_id == campaign.id,
            _messages.c.status == MessageStatus.QUEUED.value,
            _messages.c.id > after,
            or_(_messages.c.next_attempt_at.is_(None), _messages.c.next_attempt_at <= utcnow()),
        )
        .order_by(_messages.c.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)  # our own locks are not skipped: `skip`
    skip = set(skip)
    return [r for r in session.execute(pick).all() if int(r.id) not in skip]


def mnp_overrides(session: Session, org_id: str, numbers: Iterable[str]) -> dict[str, str]:
    numbers = list(numbers)
    if not numbers:
        return {}
    rows = session.execute(
        select(col(MnpOverride.number), col(MnpOverride.carrier)).where(
            col(MnpOverride.org_id) == org_id,
            any_of(session, col(MnpOverride.number), numbers, text=True),  # IN of 200: compiled each time
        )
    )
    return dict(rows.tuples().all())


def dispatch_pass(
    session: Session,
    gateways: GatewaysConfig,
    router: Router,
    *,
    batch_size: int,
    lease_s: int,
    max_rows: int | None = None,
) -> list[Batch]:
    """Weighted rounds over the dispatchable campaigns until the gateways' queues are full, no
    campaign has more ready, or the rounds have claimed `max_rows` (the round that reaches it is
    finished); returns the batches to enqueue after commit.

    One round alone (two batches of a normal campaign) could not keep a fast gateway's queue
    filled between kicks: the queue ran dry and the bind sat idle between passes."""
    hand_over(session, router.failed_over())
    caps = gateway_capacity(gateways, batch_size)
    busy = inflight(session)
    room = {key: cap.rows - busy.get(key[1], 0) for key, cap in caps.items()}
    sizes = {key: cap.batch for key, cap in caps.items()}
    turn = _Turn(session, gateways, router, room, sizes, batch_size, lease_s)
    campaigns = dispatchable_campaigns(session)
    for _ in range(MAX_ROUNDS):
        campaigns = [c for c in campaigns if turn.take(c)]
        if not campaigns or (max_rows is not None and turn.claimed >= max_rows):
            break
    return turn.batches


@dataclass
class _Turn:
    """One campaign's turn in a dispatch round: claim, route, give back what has no room."""

    session: Session
    gateways: GatewaysConfig
    router: Router
    room: dict[tuple[Channel, str], int]
    sizes: dict[tuple[Channel, str], int]  # rows per send task, per gateway
    batch_size: int
    lease_s: int
    batches: list[Batch] = field(default_factory=list)

    @property
    def claimed(self) -> int:
        """Rows claimed for send tasks so far in this pass."""
        return sum(len(b.ids) for b in self.batches)

    def take(self, campaign: Campaign) -> bool:
        """Send the campaign's share of this round; True when it may have more for another."""
        session, room, batch_size = self.session, self.room, self.batch_size
        # Only gateways with room count: one over its cap must not eat another's room.
        channel_room = sum(max(0, v) for (ch, _), v in room.items() if ch is campaign.channel)
        want = min(PRIORITY_WEIGHT[campaign.priority] * batch_size, channel_room)
        routes = [g for g in _last_routes.get(campaign.id, ()) if g is not None]
        if want <= 0 or (routes and all(room.get((campaign.channel, g), 0) <= 0 for g in routes)):
            return False
        picked = pick(session, campaign, want)
        campaign.dispatch_turn += 1
        more = len(picked) == want
        # Recipients at the organisation's frequency cap wait.
        rows = hold_over_cap(session, campaign, [(int(r.id), str(r.to), r.carrier) for r in picked])
        if not rows:
            return more
        by_gateway: dict[str | None, list[int]] = defaultdict(list)
        if campaign.channel is Channel.SMS:
            overrides = mnp_overrides(session, campaign.org_id, (to for _, to, _ in rows))
            for mid, to, carrier in rows:
                by_gateway[self.router.route(overrides.get(to, carrier))].append(mid)
        else:
            by_gateway[self.gateways.default_relay()] = [mid for mid, _, _ in rows]
        if len(_last_routes) > 10_000:  # campaigns come and go: keep this bounded
            _last_routes.clear()
        _last_routes[campaign.id] = frozenset(by_gateway)
        by_gateway = _within_room(by_gateway, room, self.sizes, campaign.channel)
        if not by_gateway:
            return more
        kept = {i for ids in by_gateway.values() for i in ids}
        counted = counters.snapshot_of(session, [r for r in picked if int(r.id) in kept])
        # The rows are locked since the pick: their new states follow from the updates below.
        after = dict(counted.states)
        now = utcnow()
        lease_until = now + timedelta(seconds=self.lease_s)
        for gateway, ids in by_gateway.items():
            if gateway is None:
                _fail_unroutable(session, ids)
                counters.derive(after, counted, ids, status=MessageStatus.FAILED.value, error=NO_ROUTE)
                continue
            counters.derive(after, counted, ids, status=MessageStatus.DISPATCHING.value, gateway=gateway)
            insert_rows(
                session,
                _events,
                [{"message_id": i, "at": now, "kind": "dispatched", "detail": {"gateway": gateway}} for i in ids],
            )
            room[(campaign.channel, gateway)] = room.get((campaign.channel, gateway), 0) - len(ids)
            size = self.sizes.get((campaign.channel, gateway), batch_size)
            for start in range(0, len(ids), size):
                # A claim token of its own per batch: a send task, its lease and its send journal
                # then own exactly the rows of its batch, never those of a sibling batch. One
                # update claims and routes them (each update of a message row costs a new row
                # version and an entry in each of its indexes).
                chunk, batch_claim = ids[start : start + size], secrets.token_hex(8)
                session.execute(
                    update(_messages)
                    .where(any_of(session, _messages.c.id, chunk))
                    .values(
                        status=MessageStatus.DISPATCHING.value,
                        gateway=gateway,
                        claim=batch_claim,
                        lease_until=lease_until,
                        updated_at=now,
                    )
                )
                self.batches.append(Batch(campaign.channel, gateway, campaign.id, batch_claim, chunk))
        counters.apply_states(session, counted, after)
        return more


def _within_room(
    by_gateway: dict[str | None, list[int]],
    room: dict[tuple[Channel, str], int],
    sizes: dict[tuple[Channel, str], int],
    channel: Channel,
) -> dict[str | None, list[int]]:
    """What each gateway's queue has room for (rounded up to whole batches); the rest of the
    pick stays queued, untouched. Without this a campaign routed to a full gateway fills it past
    its cap on another gateway's room, and that gateway starves."""
    kept: dict[str | None, list[int]] = {}
    for gateway, ids in by_gateway.items():
        left = room.get((channel, gateway)) if gateway is not None else None
        if gateway is None or left is None:  # unroutable (failed below) or not configured: no cap
            kept[gateway] = ids
            continue
        size = sizes[(channel, gateway)]
        n = 0 if left <= 0 else min(len(ids), -(-left // size) * size)
        if n:
            kept[gateway] = ids[:n]
    return kept


def hand_over(session: Session, down: list[str]) -> int:
    """Messages waiting in a down gateway's queue go back to be routed again (to its fallback).

    Only rows no send task has started on (not marked in flight): a task already submitting
    them finishes, and the queued task that would have taken the others later finds its claim
    gone and does nothing."""
    if not down:
        return 0
    waiting = (
        col(Message.status) == MessageStatus.DISPATCHING.value,
        col(Message.gateway).in_(down),
        col(Message.claim).not_like(f"%{INFLIGHT_MARK}"),
    )
    before = counters.snapshot_where(session, *waiting)
    if not before.ids:
        return 0
    now = utcnow()
    session.execute(
        update(Message)
        .where(col(Message.id).in_(before.ids), *waiting)
        .values(status=MessageStatus.QUEUED.value, claim=None, lease_until=None, next_attempt_at=None, updated_at=now)
    )
    insert_rows(
        session,
        _events,
        [
            {"message_id": i, "at": now, "kind": "failover", "detail": {"from": state.gateway}}
            for i, state in before.states.items()
        ],
    )
    counters.apply_changes(session, before)
    log.warning("handed %d waiting messages of down gateways %s back for rerouting", len(before.ids), down)
    return len(before.ids)


def _fail_unroutable(session: Session, ids: list[int]) -> None:
    session.execute(
        update(Message)
        .where(col(Message.id).in_(ids))
        .values(
            status=MessageStatus.FAILED.value,
            error_code=NO_ROUTE,
            error_text="no gateway claims this number's carrier and there is no default gateway",
            secrets=None,
            claim=None,
            updated_at=utcnow(),
        )
    )
