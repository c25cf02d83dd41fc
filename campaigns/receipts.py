"""Delivery receipts and replies: committed to the database inbox before the SMSC gets its
deliver_sm_resp, then applied to messages in batches. A receipt whose provider id is not known
yet (it beat its submit_sm_resp) stays parked in the inbox until the id is stored: never dropped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlmodel import Session, col

from campaigns.models import Campaign, Message, MessageEvent, MessageStatus, ReceiptInbox, Reply, SmsSegment
from campaigns.recipients import mark_suppressed
from gateways.config import GatewaysConfig
from gateways.smpp.codec import decode_gsm7
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
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

DEFAULT_OPT_OUT = ("TU CHOI", "TUCHOI", "HUY", "STOP", "UNSUBSCRIBE")
PARKED_REPORT_AFTER = timedelta(days=7)


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


def store_delivers(
    session: Session,
    gateway: str,
    delivers: Sequence[IncomingDeliver],
    opt_out: Sequence[str] = DEFAULT_OPT_OUT,
) -> int:
    """Commit-ready inserts for a batch of deliver_sm: receipts to the inbox, the rest as replies."""
    now = utcnow()
    inbox: list[dict[str, Any]] = []
    for d in delivers:
        if d.is_receipt:
            try:
                info = parse_receipt(
                    d.short_message,
                    receipted_message_id=d.receipted_message_id,
                    message_state=d.message_state,
                )
            except ReceiptParseError:
                log.warning("unparseable receipt on gateway %s", gateway, extra={"gateway": gateway})
                continue
            inbox.append(
                {
                    "gateway": gateway,
                    "provider_id": normalise_id(info.message_id),
                    "state": info.state.value,
                    "raw_stat": info.raw_stat[:16] if info.raw_stat else None,
                    "err": (info.err or None),
                    "received_at": now,
                    "attempts": 0,
                }
            )
        else:
            _store_reply(session, gateway, d, opt_out)
    if inbox:
        session.execute(insert(ReceiptInbox), inbox)
    return len(inbox)


def _store_reply(session: Session, gateway: str, d: IncomingDeliver, opt_out: Sequence[str]) -> None:
    if d.data_coding == 8:
        text = d.short_message.decode("utf-16-be", errors="replace")
    else:
        try:
            text = decode_gsm7(d.short_message)
        except ValueError:
            text = d.short_message.decode("latin-1")
    source = "+" + d.source_addr.lstrip("+")
    last = session.execute(
        select(col(Message.campaign_id), col(Campaign.org_id))
        .join(Campaign, col(Campaign.id) == col(Message.campaign_id))
        .where(col(Message.to) == source)
        .order_by(col(Message.id).desc())
        .limit(1)
    ).first()
    keyword = " ".join(text.upper().split())
    is_opt_out = any(keyword == k or keyword.startswith(k + " ") for k in opt_out)
    session.add(
        Reply(
            gateway=gateway,
            source=source,
            destination=d.destination_addr,
            text=text,
            campaign_id=last[0] if last else None,
            opt_out=is_opt_out,
        )
    )
    if is_opt_out and last is not None:
        mark_suppressed(session, last[1], source, f"opt-out reply: {keyword[:40]}")


def apply_inbox(session: Session, gateways: GatewaysConfig, limit: int = 5000) -> tuple[int, int]:
    """Apply up to `limit` inbox receipts; returns (applied, still parked)."""
    # Fresh receipts first: parked ones (id not known yet) sink as their attempts grow.
    stmt = select(ReceiptInbox).order_by(col(ReceiptInbox.attempts), col(ReceiptInbox.id)).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    receipts = list(session.scalars(stmt))
    if not receipts:
        return 0, 0
    bases = {g.name: g.receipt_id_base for g in gateways.smpp}
    wanted: dict[str, set[str]] = defaultdict(set)
    candidates: dict[int, list[str]] = {}
    for r in receipts:
        assert r.id is not None
        candidates[r.id] = receipt_id_candidates(r.provider_id, bases.get(r.gateway, "auto"))
        wanted[r.gateway].update(candidates[r.id])
    segments: dict[tuple[str, str], SmsSegment] = {}
    for gateway, ids in wanted.items():
        for seg in session.scalars(
            select(SmsSegment).where(col(SmsSegment.gateway) == gateway, col(SmsSegment.provider_id).in_(ids))
        ):
            segments[(gateway, seg.provider_id)] = seg
    now = utcnow()
    done: list[int] = []
    parked: list[int] = []
    touched: set[int] = set()
    events: list[dict[str, Any]] = []
    for r in receipts:
        assert r.id is not None
        found = next((segments[(r.gateway, c)] for c in candidates[r.id] if (r.gateway, c) in segments), None)
        if found is None:
            parked.append(r.id)
            continue
        done.append(r.id)
        state = ReceiptState(r.state)
        events.append(
            {
                "message_id": found.message_id,
                "at": now,
                "kind": "receipt",
                "detail": {
                    "stat": r.raw_stat,
                    "err": r.err,
                    "segment": found.seq,
                    "provider_id": found.provider_id,
                },
            }
        )
        if is_final(state) and found.status is None:  # status only moves forward; duplicates change nothing
            found.status = message_status_for(state)
            if r.err and state is not ReceiptState.DELIVERED:
                found.status += f":{r.err}"
            touched.add(found.message_id)
    session.flush()
    if touched:
        _finish_messages(session, touched, now)
    if events:
        session.execute(insert(MessageEvent), events)
    if done:
        session.execute(delete(ReceiptInbox).where(col(ReceiptInbox.id).in_(done)))
    if parked:
        session.execute(
            update(ReceiptInbox).where(col(ReceiptInbox.id).in_(parked)).values(attempts=col(ReceiptInbox.attempts) + 1)
        )
    return len(done), len(parked)


def _finish_messages(session: Session, message_ids: set[int], now: Any) -> None:
    by_message: dict[int, list[str | None]] = defaultdict(list)
    for mid, status in session.execute(
        select(col(SmsSegment.message_id), col(SmsSegment.status)).where(col(SmsSegment.message_id).in_(message_ids))
    ):
        by_message[int(mid)].append(status)
    expected = {
        int(mid): int(n)
        for mid, n in session.execute(
            select(col(Message.id), col(Message.segments)).where(col(Message.id).in_(message_ids))
        )
    }
    for mid, statuses in by_message.items():
        if len(statuses) < int(expected.get(mid, 1)) or any(s is None for s in statuses):
            continue  # a segment is still waiting for its receipt
        outcomes = [str(s).split(":", 1)[0] for s in statuses]
        final = worst_outcome(outcomes)
        err = next((str(s).split(":", 1)[1] for s in statuses if s and ":" in s), None)
        values: dict[str, Any] = {"status": final, "updated_at": now, "secrets": None}
        if final == MessageStatus.DELIVERED.value:
            values["delivered_at"] = now
        else:
            values |= {"error_code": f"err:{err}" if err else final, "error_text": f"receipt {final}"}
        session.execute(
            update(Message)
            .where(
                col(Message.id) == mid,
                col(Message.status).in_(
                    [
                        MessageStatus.SENT.value,
                        MessageStatus.DISPATCHING.value,  # type: ignore[arg-type, attr-defined]
                        MessageStatus.QUEUED.value,
                    ]
                ),
            )
            .values(**values)
        )


def parked_report(session: Session) -> list[dict[str, Any]]:
    """Receipts parked longer than 7 days: ids no submit of ours ever carried."""
    cutoff = utcnow() - PARKED_REPORT_AFTER
    rows = session.scalars(select(ReceiptInbox).where(col(ReceiptInbox.received_at) < cutoff).limit(1000))
    return [
        {"gateway": r.gateway, "provider_id": r.provider_id, "state": r.state, "received_at": r.received_at}
        for r in rows
    ]
