"""The timeline merges events with what the message and segment rows record, in time order."""

from __future__ import annotations

from datetime import datetime, timedelta

from campaigns.models import Message, MessageEvent, SmsSegment
from campaigns.timeline import build

T0 = datetime(2026, 12, 6, 8, 0, 0)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def segment(seq: int, pid: str, submitted: int, receipt: int | None = None, stat: str | None = None) -> SmsSegment:
    return SmsSegment(
        message_id=1,
        gateway="viettel",
        seq=seq,
        provider_id=pid,
        submitted_at=at(submitted),
        status="delivered" if receipt is not None else None,
        receipt_at=at(receipt) if receipt is not None else None,
        receipt_stat=stat,
        receipt_err="000" if receipt is not None else None,
    )


def test_segments_make_one_submitted_entry_per_submission_and_a_receipt_each() -> None:
    message = Message(id=1, campaign_id="c", to="+84961000001", created_at=at(0), upload_id="u", row=2)
    events = [
        MessageEvent(message_id=1, at=at(1), kind="dispatched", detail={"gateway": "viettel"}),
        MessageEvent(message_id=1, at=at(2), kind="ambiguous", detail={}),
        MessageEvent(message_id=1, at=at(4), kind="receipt", detail={"stat": "ENROUTE"}),
    ]
    segments = [
        segment(1, "B2", 3, receipt=6, stat="DELIVRD"),
        segment(0, "B1", 3, receipt=5, stat="DELIVRD"),
    ]
    entries = build(message, events, segments)
    assert [(e.kind, e.at) for e in entries] == [
        ("queued", at(0)),
        ("dispatched", at(1)),
        ("ambiguous", at(2)),
        ("submitted", at(3)),
        ("receipt", at(4)),
        ("receipt", at(5)),
        ("receipt", at(6)),
    ]
    assert entries[3].detail == {"provider_ids": ["B1", "B2"]}  # in segment order
    assert entries[5].detail == {"stat": "DELIVRD", "err": "000", "segment": 0, "provider_id": "B1"}


def test_a_message_sent_by_an_earlier_release_keeps_one_submitted_entry() -> None:
    message = Message(id=1, campaign_id="c", to="+84961000001", created_at=at(0))
    logged = MessageEvent(message_id=1, at=at(3), kind="submitted", detail={"provider_ids": ["A1"]})
    entries = build(message, [logged], [segment(0, "A1", 3), segment(0, "A9", 8)])
    assert [(e.kind, e.detail.get("provider_ids")) for e in entries] == [
        ("queued", None),
        ("submitted", ["A1"]),
        ("submitted", ["A9"]),
    ]
