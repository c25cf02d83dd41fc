"""Live campaign counters, the write side: counts by status, gateway, carrier, error code and
chosen recipient fields, sent and delivered per minute, and a few sums — without recounting the
messages (the cells are defined in `campaigns.counter_cells`).

A write site that changes messages takes a `snapshot` of their rows (locked on Postgres, so
nothing else changes them meanwhile), makes its changes, then `apply_changes` reads the rows
again and appends the difference of their contributions to the `campaign_counter` journal: one
row per changed cell per batch, never one hot row per message. A set-based update of many rows
(cancel, deadline expiry) calls `bulk_changed`, and an import `reconcile`: one exact recount.

The same pass feeds `message.status` webhooks (the `message_change` table) for organisations that
asked for them, and the Prometheus metrics of status changes, counted once the transaction
commits. `reconcile`, `compact` and the state helpers live in `campaigns.tally` and are named
here too, so write sites need one module.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, String, cast, event, func, insert, literal, select
from sqlmodel import Session, col

from campaigns.counter_cells import (
    FIELD,
    GATEWAY,
    MESSAGE_EVENTS,
    RECEIPT_FINAL,
    CampaignInfo,
    Cell,
    Holds,
    MessageState,
    append,
    build_states,
    campaign_info,
    contribution,
    read_states,
)
from campaigns.models import Message, MessageStatus
from campaigns.report_models import MessageChange
from campaigns.tally import compact, forget, reconcile, state_of, upsert_state
from loa import metrics
from loa.db import table_of
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

__all__ = [
    "FIELD",
    "GATEWAY",
    "MESSAGE_EVENTS",
    "Snapshot",
    "apply_changes",
    "apply_states",
    "bulk_changed",
    "derive",
    "compact",
    "forget",
    "reconcile",
    "snapshot",
    "snapshot_of",
    "snapshot_where",
    "state_of",
    "upsert_state",
]


@dataclass
class Snapshot:
    ids: list[int]
    states: dict[int, MessageState]
    campaigns: dict[str, CampaignInfo]
    holds: Holds = field(default_factory=dict)  # (claim, attempts) of each row, read with it


def snapshot(session: Session, ids: Iterable[int]) -> Snapshot:
    """The counted state of these messages before a change (rows locked on Postgres)."""
    id_list = sorted({int(i) for i in ids})
    states, info, holds = read_states(session, id_list, None, lock=True)
    return Snapshot(id_list, states, info, holds)


def snapshot_of(session: Session, rows: Sequence[Row[Any]]) -> Snapshot:
    """`snapshot` of rows of `STATE_COLUMNS` the caller selected and locked itself (one read of
    them less: the dispatcher's pick)."""
    rows = sorted(rows, key=lambda r: int(r[0]))
    states, info, holds = build_states(session, rows, None)
    return Snapshot([int(r[0]) for r in rows], states, info, holds)


def snapshot_where(session: Session, *criteria: ColumnElement[bool]) -> Snapshot:
    """`snapshot` of the messages matching a condition (for set-based updates of a few rows).
    A row that starts to match between this and the update is not counted by it; the next
    reconciliation (the campaign's end at the latest) corrects that."""
    ids = [int(i) for i in session.scalars(select(col(Message.id)).where(*criteria)) if i is not None]
    return snapshot(session, ids)


def apply_changes(session: Session, before: Snapshot) -> int:
    """Append the counter deltas of what changed since `before`; returns messages changed."""
    after, _, _ = read_states(session, before.ids, before.campaigns, lock=False)
    return apply_states(session, before, after)


def derive(after: dict[int, MessageState], before: Snapshot, ids: Iterable[int], **values: Any) -> None:
    """Set `after` of these messages to their state in `before` with `values` changed: for a
    writer whose rows are locked since the snapshot and that knows what its update wrote. Made
    once per kind of state (`apply_states` takes each recipient from `before`)."""
    made: dict[MessageState, MessageState] = {}
    for mid in ids:
        old = before.states[mid]
        new = made.get(old)
        after[mid] = new if new is not None else made.setdefault(old, replace(old, **values))


def apply_states(session: Session, before: Snapshot, after: Mapping[int, MessageState]) -> int:
    """`apply_changes` for a writer that knows the rows' new states (`after`, by message id;
    a missing id is a deleted row) without reading them again. A new state may be shared by
    several messages: the recipient of a change is taken from `before`."""
    kinds: Counter[tuple[MessageState | None, MessageState | None]] = Counter()
    changes: list[dict[str, Any]] = []
    now = utcnow()
    for mid in before.ids:
        old, new = before.states.get(mid), after.get(mid)
        if old == new:
            continue
        kinds[(old, new)] += 1  # equal states count alike (`to` aside): a batch has few kinds
        if new is not None and (old is None or old.status != new.status):
            info = before.campaigns.get(new.campaign_id)
            if info is not None and info.feed:
                changes.append(
                    {
                        "org_id": info.org_id,
                        "campaign_id": new.campaign_id,
                        "message_id": mid,
                        "to": new.to if old is None else old.to,
                        "status": new.status,
                        "error_code": new.error,
                        "at": now,
                    }
                )
    deltas: dict[str, dict[Cell, int]] = defaultdict(lambda: defaultdict(int))
    for (old, new), n in kinds.items():
        cid = (new or old).campaign_id  # type: ignore[union-attr]
        info = before.campaigns.get(cid)
        names = info.fields if info else ()
        d = deltas[cid]
        if old is not None:
            for cell, k in contribution(old, names).items():
                d[cell] -= k * n
        if new is not None:
            for cell, k in contribution(new, names).items():
                d[cell] += k * n
        if new is not None and (old is None or old.status != new.status):
            _observe(session, info, old, new, now, n)
    append(session, deltas)
    if changes:
        session.execute(insert(table_of(MessageChange)), changes)
    return sum(kinds.values())


def bulk_changed(session: Session, campaign_id: str, *changed: ColumnElement[bool]) -> None:
    """After a set-based update of a campaign's messages (cancel, deadline expiry; maybe millions
    of rows), matched now by `changed`: feed their new status to `message.status` webhooks and
    count them with one exact recount instead of row by row."""
    info = campaign_info(session, [campaign_id]).get(campaign_id)
    if info is None:
        return
    now = utcnow()
    if info.feed:
        rows = select(
            literal(info.org_id),
            literal(campaign_id),
            col(Message.id),
            col(Message.to),
            cast(col(Message.status), String),
            col(Message.error_code),
            literal(now, type_=table_of(MessageChange).c.at.type),
        ).where(col(Message.campaign_id) == campaign_id, *changed)
        columns = ["org_id", "campaign_id", "message_id", "to", "status", "error_code", "at"]
        session.execute(insert(MessageChange).from_select(columns, rows))
    pending: list[tuple[str, tuple[str, ...], float]] = _pending_metrics(session)
    for gateway, status, n in session.execute(
        select(col(Message.gateway), cast(col(Message.status), String), func.count())
        .where(col(Message.campaign_id) == campaign_id, *changed)
        .group_by(col(Message.gateway), col(Message.status))
    ):
        pending.append(("transitions", (info.channel, gateway or "", str(status)), float(n)))
    reconcile(session, campaign_id)


def _observe(
    session: Session, info: CampaignInfo | None, old: MessageState | None, new: MessageState, now: datetime, n: int
) -> None:
    """Metrics of `n` alike status changes, counted once the transaction commits (a rollback
    counts none)."""
    pending = _pending_metrics(session)
    channel = info.channel if info else ""
    gateway = new.gateway or ""
    pending.append(("transitions", (channel, gateway, new.status), float(n)))
    if new.status == MessageStatus.SENT.value and gateway:
        pending.append(("segments", (gateway,), float((new.segments or 1) * n)))
    if (
        old is not None
        and old.status == MessageStatus.SENT.value
        and new.status in RECEIPT_FINAL
        and new.submitted_at is not None
    ):
        pending.extend([("receipt_latency", (gateway,), (now - new.submitted_at).total_seconds())] * n)


def _pending_metrics(session: Session) -> list[tuple[str, tuple[str, ...], float]]:
    pending: list[tuple[str, tuple[str, ...], float]] = session.info.setdefault("loa.metrics", [])
    if not session.info.get("loa.metrics.hooked"):
        event.listen(session, "after_commit", _flush_metrics)
        event.listen(session, "after_rollback", lambda s: s.info.pop("loa.metrics", None))
        session.info["loa.metrics.hooked"] = True
    return pending


def _flush_metrics(session: Session) -> None:
    pending = session.info.pop("loa.metrics", None)
    if not pending:
        return
    try:
        m = metrics.get()
        totals: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        latencies: dict[tuple[str, ...], list[float]] = defaultdict(list)
        for name, labels, value in pending:
            if name == "receipt_latency":
                latencies[labels].append(value)
            else:
                totals[(name, labels)] += value
        for (name, labels), value in totals.items():
            getattr(m, name).labels(*labels).inc(value)
        for labels, values in latencies.items():
            histogram = m.receipt_latency.labels(*labels)
            for value in values:
                histogram.observe(max(0.0, value))
    except Exception:  # the data is committed: a metrics failure must not look like a failed write
        log.exception("metrics not recorded")
