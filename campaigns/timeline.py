"""A message's timeline: its events, and the entries its rows record instead of an event each.

The hot path of a wave writes as few rows per message as it can (1.5 billion messages a wave):
- `queued`: the message row's `created_at`;
- `submitted`: the segment rows of an accepted SMS, one per submit_sm with the provider id its
  receipt names; the segments of one submission (same time) make one entry (a resend after an
  ambiguous submit is a second one);
- `receipt`: a segment's final receipt (the first one; later ones change nothing) is kept on the
  segment row; receipts that are not final (ENROUTE, ACCEPTD) are events.
Everything else (dispatched, retries, failover, bounces, lease expiry, e-mail submits) is an event.
Entries come in time order; entries of one instant keep the order above, events by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from campaigns.models import Message, MessageEvent, SmsSegment
from loa.timeutil import to_utc


@dataclass(frozen=True)
class Entry:
    at: datetime
    kind: str
    detail: dict[str, Any]


def receipt_detail(stat: str | None, err: str | None, seq: int, provider_id: str) -> dict[str, Any]:
    """What a receipt entry shows: the raw `stat` and `err` words, and the segment it names."""
    return {"stat": stat, "err": err, "segment": seq, "provider_id": provider_id}


def entries(session: Session, message: Message) -> list[Entry]:
    events = session.scalars(
        select(MessageEvent).where(col(MessageEvent.message_id) == message.id).order_by(col(MessageEvent.id))
    )
    segments = session.scalars(select(SmsSegment).where(col(SmsSegment.message_id) == message.id))
    return build(message, list(events), list(segments))


def build(message: Message, events: list[MessageEvent], segments: list[SmsSegment]) -> list[Entry]:
    found = [Entry(message.created_at, "queued", {"upload": message.upload_id, "row": message.row})]
    # An SMS sent by a release before migration 0006 has its `submitted` event as well.
    logged = [e.detail.get("provider_ids") for e in events if e.kind == "submitted"]
    ordered = sorted(segments, key=lambda s: (s.submitted_at, s.seq))
    for at, group in groupby(ordered, key=lambda s: s.submitted_at):
        ids = [s.provider_id for s in group]
        if ids not in logged:
            found.append(Entry(at, "submitted", {"provider_ids": ids}))
    found.extend(
        Entry(s.receipt_at, "receipt", receipt_detail(s.receipt_stat, s.receipt_err, s.seq, s.provider_id))
        for s in ordered
        if s.receipt_at is not None
    )
    found.extend(Entry(e.at, e.kind, e.detail) for e in events)
    return sorted(found, key=lambda e: to_utc(e.at))  # stable
