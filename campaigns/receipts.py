"""Delivery receipts and replies: committed to the database inbox before the SMSC gets its
deliver_sm_resp, then applied to messages in batches. A receipt whose provider id is not known
yet (it beat its submit_sm_resp) stays parked in the inbox until the id is stored: never dropped;
receipts parked longer than 7 days are reported (`parked_counts`, `GET /v1/gateways`).

Applying is set-based: one read of the inbox, one of the segments the receipts name, one UPDATE
per distinct outcome for segments and for messages, one multi-row INSERT of events, one DELETE.
A status only moves forward: a segment takes its first final receipt, and a duplicate receipt
changes nothing (not even the timeline).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select, text, update
from sqlmodel import Session, col

from campaigns import counters
from campaigns.bulk import any_of, array_literal, insert_rows, is_postgres
from campaigns.models import Campaign, Message, MessageEvent, MessageStatus, ReceiptInbox, Reply, SmsSegment
from campaigns.recipients import mark_suppressed
from campaigns.timeline import receipt_detail
from gateways.config import DEFAULT_OPT_OUT, GatewaysConfig
from gateways.smpp.codec import decode_gsm7, strip_diacritics
from gateways.smpp.receipts import (
    ReceiptParseError,
    ReceiptState,
    is_final,
    message_status_for,
    normalise_id,
    parse_receipt,
    receipt_id_candidates,
    worst_outcome,
)
from loa.db import is_sqlite, table_of, transaction
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

PARKED_REPORT_AFTER = timedelta(days=7)
LANES = 2  # inbox passes in flight at once on Postgres (see drain_inbox)
_inbox = table_of(ReceiptInbox)
_messages = table_of(Message)
_segments = table_of(SmsSegment)
_events = table_of(MessageEvent)
# Rows a message in one of these may move from on its final receipt (a late `sent` record may
# still be on its way for a receipt that beat its submit_sm_resp).
_RECEIPT_FROM = [MessageStatus.SENT.value, MessageStatus.DISPATCHING.value, MessageStatus.QUEUED.value]


@dataclass(frozen=True)
class IncomingDeliver:
    """What the SMPP adapter hands over for one deliver_sm (kept free of smpplib types)."""

    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes
    receipted_message_id: str | None = None
    message_state: int | None = None

    @property
    def is_receipt(self) -> bool:
        return bool(self.esm_class & 0x04)


@dataclass
class Stored:
    """What `store_delivers` kept: receipt states (for metrics), replies and opt-outs among them."""

    states: list[str] = field(default_factory=list)
    replies: int = 0
    opt_outs: int = 0
    unreadable: int = 0


def store_delivers(
    session: Session,
    gateway: str,
    delivers: Sequence[IncomingDeliver],
    opt_out: Sequence[str] = DEFAULT_OPT_OUT,
) -> Stored:
    """Commit-ready inserts for a batch of deliver_sm: receipts to the inbox, the rest as replies."""
    now = utcnow()
    stored = Stored()
    inbox: list[dict[str, Any]] = []
    for d in delivers:
        if not d.is_receipt:
            stored.replies += 1
            stored.opt_outs += _store_reply(session, gateway, d, opt_out)
            continue
        try:
            info = parse_receipt(
                d.short_message, receipted_message_id=d.receipted_message_id, message_state=d.message_state
            )
        except ReceiptParseError:
            # Acknowledged all the same: it names no message, and a redelivery would not either.
            log.warning("unparseable receipt on gateway %s dropped", gateway, extra={"gateway": gateway})
            stored.unreadable += 1
            continue
        inbox.append(
            {
                "gateway": gateway,
                "provider_id": normalise_id(info.message_id)[:80],
                "state": info.state.value,
                "raw_stat": info.raw_stat[:16] if info.raw_stat else None,
                "err": (info.err or None) and info.err[:16],
                "received_at": now,
                "attempts": 0,
            }
        )
        stored.states.append(info.state.value)
    insert_rows(session, _inbox, inbox)  # COPY on Postgres: this runs on the session's deliver thread
    return stored


def _reply_text(d: IncomingDeliver) -> str:
    if d.data_coding == 8:
        return d.short_message.decode("utf-16-be", errors="replace")
    if d.data_coding in (1, 3):  # IA5 / Latin-1
        return d.short_message.decode("latin-1")
    try:
        return decode_gsm7(d.short_message)
    except ValueError:
        return d.short_message.decode("latin-1")


def is_opt_out(text: str, keywords: Iterable[str]) -> bool:
    """The reply is one of the keywords, or starts with one (case and Vietnamese marks ignored)."""
    said = " ".join(strip_diacritics(text).upper().split())
    for keyword in keywords:
        k = " ".join(strip_diacritics(keyword).upper().split())
        if k and (said == k or said.startswith(k + " ")):
            return True
    return False


def _store_reply(session: Session, gateway: str, d: IncomingDeliver, opt_out: Sequence[str]) -> int:
    """Store an MO message, tied to the campaign that last wrote to the number; 1 if it opts out."""
    text = _reply_text(d)
    source = "+" + d.source_addr.lstrip("+")
    last = session.execute(
        select(col(Message.campaign_id), col(Campaign.org_id))
        .join(Campaign, col(Campaign.id) == col(Message.campaign_id))
        .where(col(Message.to) == source)
        .order_by(col(Message.id).desc())
        .limit(1)
    ).first()
    opted_out = is_opt_out(text, opt_out)
    session.add(
        Reply(
            gateway=gateway,
            source=source[:32],
            destination=d.destination_addr[:32],
            text=text,
            campaign_id=last[0] if last else None,
            opt_out=opted_out,
        )
    )
    if opted_out and last is not None:
        keyword = " ".join(strip_diacritics(text).upper().split())[:40]
        mark_suppressed(session, last[1], source, f"opt-out reply: {keyword}")
    return int(opted_out)


@dataclass
class _Segment:
    id: int
    message_id: int
    seq: int
    provider_id: str
    status: str | None


def apply_inbox(session: Session, gateways: GatewaysConfig, limit: int = 5000) -> tuple[int, int]:
    """Apply up to `limit` inbox receipts; returns (applied, still parked)."""
    # Fresh receipts first: parked ones (id not known yet) sink as their attempts grow.
    stmt = (
        select(_inbox.c.id, _inbox.c.gateway, _inbox.c.provider_id, _inbox.c.state, _inbox.c.raw_stat, _inbox.c.err)
        .order_by(_inbox.c.attempts, _inbox.c.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    receipts = session.execute(stmt).all()
    if not receipts:
        return 0, 0
    bases = {g.name: g.receipt_id_base for g in gateways.smpp}
    candidates: dict[int, list[str]] = {}
    wanted: dict[str, set[str]] = defaultdict(set)
    for rid, gateway, provider_id, *_ in receipts:
        candidates[rid] = receipt_id_candidates(provider_id, bases.get(gateway, "auto"))
        wanted[gateway].update(candidates[rid][:1])
    # The id as written first (nearly always the one stored); the other bases only for the rest.
    segments = _segments_named(session, wanted)
    wanted.clear()
    for rid, gateway, *_ in receipts:
        if candidates[rid][:1] and (gateway, candidates[rid][0]) not in segments:
            wanted[gateway].update(candidates[rid][1:])
    if any(wanted.values()):
        segments.update(_segments_named(session, wanted))
    now = utcnow()
    done: list[int] = []
    parked: list[int] = []
    # segment id → (its final status, the receipt's stat and err): the first final receipt wins
    new_status: dict[int, tuple[str, str, str | None]] = {}
    events: list[dict[str, Any]] = []
    for rid, gateway, _, state_text, raw_stat, err in receipts:
        seg = next((segments[(gateway, c)] for c in candidates[rid] if (gateway, c) in segments), None)
        if seg is None:
            parked.append(rid)
            continue
        done.append(rid)
        state = ReceiptState(state_text)
        stat = raw_stat or state.value
        if not is_final(state):  # ENROUTE, ACCEPTD: an event on the timeline, the status stays
            detail = receipt_detail(stat, err, seg.seq, seg.provider_id)
            events.append({"message_id": seg.message_id, "at": now, "kind": "receipt", "detail": detail})
        elif seg.status is None and seg.id not in new_status:  # else a duplicate: status only moves forward
            status = message_status_for(state)
            if err and state is not ReceiptState.DELIVERED:
                status = f"{status}:{err}"
            new_status[seg.id] = (status[:16], stat[:16], err)
    # The segment keeps its final receipt for the timeline (campaigns/timeline.py): no event row.
    by_receipt: dict[tuple[str, str, str | None], list[int]] = defaultdict(list)
    for seg_id, receipt in new_status.items():
        by_receipt[receipt].append(seg_id)
    for (status, stat, err), seg_ids in by_receipt.items():
        session.execute(
            update(_segments)
            .where(any_of(session, _segments.c.id, seg_ids), _segments.c.status.is_(None))
            .values(status=status, receipt_at=now, receipt_stat=stat, receipt_err=err)
        )
    if new_status:
        settled = {seg.message_id: new_status[seg.id][0] for seg in segments.values() if seg.id in new_status}
        _finish_messages(session, settled, now)
    insert_rows(session, _events, events)
    if done:
        session.execute(delete(_inbox).where(any_of(session, _inbox.c.id, done)))
    if parked:
        session.execute(
            update(_inbox).where(any_of(session, _inbox.c.id, parked)).values(attempts=_inbox.c.attempts + 1)
        )
    return len(done), len(parked)


def drain_inbox(
    engine: Engine,
    gateways: GatewaysConfig,
    *,
    lanes: int = LANES,
    budget_s: float = float("inf"),
    retry: Callable[[Callable[[], tuple[int, int]]], tuple[int, int]] = lambda fn: fn(),
    limit: int = 5000,
) -> tuple[int, bool]:
    """Apply inbox passes (`limit` receipts each, one transaction each) until a pass finds
    less than a full pass waiting; returns (applied, whether the budget ran out first).

    What arrives meanwhile waits for the next drain (the next kick, at most a second later while
    receipts keep coming, or the scheduler's tick) instead of being chased in passes of a few
    hundred: a pass costs less per receipt the more it holds.

    On Postgres `lanes` passes are in flight at once. One pass waits on Postgres about half
    its time, so a second one keeps both cores busy (~1.6x the receipts per second). They
    take different receipts (`SKIP LOCKED`) and lock message rows in id order; a message whose
    segments' receipts are in two passes is decided by the second to lock it, which then sees
    the first's segments. Two passes holding duplicate receipts of each other's segments can
    deadlock: Postgres ends one, and `retry` (the workers' DB retry) runs it again. SQLite
    writes one transaction at a time: one lane."""
    started = time.monotonic()

    def step() -> tuple[int, int]:
        with transaction(engine) as session:
            return apply_inbox(session, gateways, limit=limit)

    def lane() -> tuple[int, bool]:
        applied = 0
        while True:
            done, parked = retry(step)
            applied += done
            if not done or done + parked < limit:
                return applied, False
            if time.monotonic() - started > budget_s:
                return applied, True

    lanes = 1 if is_sqlite(engine) else max(1, lanes)
    if lanes == 1:
        return lane()
    with ThreadPoolExecutor(lanes, thread_name_prefix="receipts") as pool:
        results = [f.result() for f in [pool.submit(lane) for _ in range(lanes)]]
    return sum(n for n, _ in results), any(more for _, more in results)


def _segments_named(session: Session, wanted: dict[str, set[str]]) -> dict[tuple[str, str], _Segment]:
    found: dict[tuple[str, str], _Segment] = {}
    for gateway, ids in wanted.items():
        ordered = sorted(ids)
        for start in range(0, len(ordered), 10_000):  # SQLite caps bound parameters per statement
            for sid, mid, seq, pid, status in _segment_rows(session, gateway, ordered[start : start + 10_000]):
                found[(gateway, pid)] = _Segment(int(sid), int(mid), int(seq), str(pid), status)
    return found


# One probe of the unique (gateway, provider_id) index per id. `provider_id = ANY(...)` left the
# plan to the statistics, and a table that grows by millions of segments during a wave often has
# none yet: Postgres then read every segment of the gateway into a hash (8-24 ms a batch, the
# largest share of its CPU per message). The LIMIT keeps the subquery from being flattened.
_SEGMENTS_BY_PROVIDER_ID = text(
    "SELECT s.id, s.message_id, s.seq, s.provider_id, s.status"
    " FROM unnest(CAST(:ids AS varchar[])) AS p(pid) CROSS JOIN LATERAL"
    " (SELECT * FROM sms_segment AS x WHERE x.gateway = :gateway AND x.provider_id = p.pid LIMIT 1) AS s"
)


def _segment_rows(session: Session, gateway: str, provider_ids: list[str]) -> Iterable[Any]:
    if is_postgres(session):
        params = {"ids": array_literal(provider_ids, text=True), "gateway": gateway}
        return session.execute(_SEGMENTS_BY_PROVIDER_ID, params)
    return session.execute(
        select(
            _segments.c.id, _segments.c.message_id, _segments.c.seq, _segments.c.provider_id, _segments.c.status
        ).where(_segments.c.gateway == gateway, _segments.c.provider_id.in_(provider_ids))
    )


def _finish_messages(session: Session, settled: dict[int, str], now: datetime) -> None:
    """Messages whose segments all have a final status take the worst of them (bulk, per outcome).

    `settled`: message id → the final status one of its segments just took. A message of one
    segment (nearly all) is decided by it; only longer ones read their other segments."""
    before = counters.snapshot(session, settled)  # live counters: what these rows count as now
    by_message: dict[int, list[str | None]] = {}
    longer: list[int] = []
    for mid, status in settled.items():
        state = before.states.get(mid)
        if state is not None and state.segments <= 1:
            by_message[mid] = [status]
        else:
            longer.append(mid)
    if longer:
        for mid, status in session.execute(
            select(_segments.c.message_id, _segments.c.status).where(
                any_of(session, _segments.c.message_id, sorted(longer))
            )
        ):
            by_message.setdefault(int(mid), []).append(status)
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for mid, statuses in by_message.items():
        state = before.states.get(mid)
        if len(statuses) < (state.segments if state else 1) or any(s is None for s in statuses):
            continue  # a segment is still waiting for its receipt
        final = worst_outcome(str(s).split(":", 1)[0] for s in statuses)
        err = next((str(s).split(":", 1)[1] for s in statuses if s and ":" in s), None)
        groups[(final, err)].append(mid)
    after = dict(before.states)
    for (final, err), mids in groups.items():
        values: dict[str, Any] = {"status": final, "updated_at": now, "secrets": None}
        if final == MessageStatus.DELIVERED.value:
            values["delivered_at"] = now
            counted: dict[str, Any] = {"status": final, "delivered_at": now}
        else:
            values |= {"error_code": f"err:{err}" if err else final, "error_text": f"receipt {final}"}
            counted = {"status": final, "error": values["error_code"]}
        changed = session.execute(
            update(_messages)
            .where(any_of(session, _messages.c.id, mids), _messages.c.status.in_(_RECEIPT_FROM))
            .values(**values)
            .returning(_messages.c.id)
        ).scalars()
        counters.derive(after, before, changed, **counted)  # locked since the snapshot
    counters.apply_states(session, before, after)


def parked_counts(session: Session, older_than: timedelta = PARKED_REPORT_AFTER) -> dict[str, int]:
    """Gateway → receipts parked longer than `older_than`: ids no submit of ours ever carried."""
    cutoff = utcnow() - older_than
    rows = session.execute(
        select(_inbox.c.gateway, func.count()).where(_inbox.c.received_at < cutoff).group_by(_inbox.c.gateway)
    )
    return {str(g): int(n) for g, n in rows}


def parked_report(session: Session, older_than: timedelta = PARKED_REPORT_AFTER) -> list[dict[str, Any]]:
    """The oldest receipts parked longer than `older_than` (up to 1000), for an operator to look at."""
    cutoff = utcnow() - older_than
    rows = session.execute(
        select(_inbox.c.gateway, _inbox.c.provider_id, _inbox.c.state, _inbox.c.received_at)
        .where(_inbox.c.received_at < cutoff)
        .order_by(_inbox.c.received_at)
        .limit(1000)
    )
    return [{"gateway": g, "provider_id": p, "state": s, "received_at": at} for g, p, s, at in rows]
