"""The receipt inbox on the real database: receipts stored before deliver_sm_resp, applied in bulk,
parked while their id is unknown and applied once it is stored, ids in either base, duplicates,
intermediate states, the worst outcome of a long message, the 7-day report, and replies."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, func, select, update
from sqlmodel import Session, col

from campaigns import counters, timeline
from campaigns.models import Message, MessageEvent, ReceiptInbox, Reply, SmsSegment, Suppression
from campaigns.receipts import IncomingDeliver, apply_inbox, drain_inbox, is_opt_out, parked_counts, store_delivers
from campaigns.sending import Outcome, begin_submit, record
from gateways.config import GatewaysConfig, SmppGateway
from loa.db import transaction
from loa.timeutil import utcnow
from tests.workers.wave_kit import seed_campaign
from workers.retrying import with_db_retry

GATEWAYS = GatewaysConfig(
    smpp=[
        SmppGateway(name="hexgw", host="h", port=1, system_id="a", password="p", receipt_id_base="hex"),  # type: ignore[arg-type]
        SmppGateway(name="decgw", host="h", port=1, system_id="b", password="p", receipt_id_base="decimal"),  # type: ignore[arg-type]
    ]
)


def receipt(rid: str, stat: str = "DELIVRD", err: str = "000", *, tlv: bool = False) -> IncomingDeliver:
    text = f"id:{rid} sub:001 dlvrd:001 submit date:2611220800 done date:2611220801 stat:{stat} err:{err} text:x"
    states = {"DELIVRD": 2, "UNDELIV": 5, "ENROUTE": 1, "EXPIRED": 3, "REJECTD": 8}
    return IncomingDeliver(
        "84961000000", "TCTK", 0x04, 0, text.encode(), rid if tlv else None, states[stat] if tlv else None
    )


def sent(engine: Engine, campaign_id: str, gateway: str, provider_ids: dict[int, list[str]]) -> None:
    """Mark messages submitted and accepted with these provider ids (as a send task records them)."""
    with transaction(engine) as session:
        ids = list(provider_ids)
        session.execute(
            update(Message).where(col(Message.id).in_(ids)).values(status="dispatching", claim="c1", gateway=gateway)
        )
        begin_submit(session, ids, "c1", 60)
        outcomes = [Outcome(mid, "sent", provider_ids=pids, segments=len(pids)) for mid, pids in provider_ids.items()]
        record(session, outcomes, "c1", max_attempts=5, gateway=gateway)


def store(engine: Engine, gateway: str, *delivers: IncomingDeliver) -> None:
    with transaction(engine) as session:
        store_delivers(session, gateway, list(delivers))


def apply(engine: Engine) -> tuple[int, int]:
    with transaction(engine) as session:
        return apply_inbox(session, GATEWAYS)


def statuses(engine: Engine, campaign_id: str) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(col(Message.id), col(Message.status)).where(col(Message.campaign_id) == campaign_id))
        return {int(i): str(getattr(s, "value", s)) for i, s in rows}


def message_ids(engine: Engine, campaign_id: str) -> list[int]:
    return sorted(statuses(engine, campaign_id))


def test_a_receipt_before_its_response_is_parked_then_applied(db: Engine) -> None:
    cid = seed_campaign(db, 1, tag="early")
    (mid,) = message_ids(db, cid)
    store(db, "hexgw", receipt("1a2b"))
    assert apply(db) == (0, 1)  # the id is not known yet: parked, never dropped
    assert statuses(db, cid) == {mid: "queued"}
    sent(db, cid, "hexgw", {mid: ["1A2B"]})
    assert apply(db) == (1, 0)
    assert statuses(db, cid) == {mid: "delivered"}
    with db.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ReceiptInbox)) == 0


def test_ids_in_the_other_base_and_zero_padded_find_their_segment(db: Engine) -> None:
    cid = seed_campaign(db, 3, tag="ids")
    a, b, c = message_ids(db, cid)
    sent(db, cid, "hexgw", {a: ["1A2B"], b: ["FF"]})
    sent(db, cid, "decgw", {c: ["6699"]})
    # hexgw writes hex in submit_sm_resp; its receipts say 6699 (decimal) or 0000ff (padded, lower case).
    store(db, "hexgw", receipt(str(0x1A2B)), receipt("0000ff", tlv=True))
    # decgw writes decimal in submit_sm_resp; its receipt says 1A2B (hex of 6699).
    store(db, "decgw", receipt("1a2b"))
    assert apply(db) == (3, 0)
    assert statuses(db, cid) == {a: "delivered", b: "delivered", c: "delivered"}


def test_status_only_moves_forward_and_duplicates_change_nothing(db: Engine) -> None:
    cid = seed_campaign(db, 2, tag="dup")
    a, b = message_ids(db, cid)
    sent(db, cid, "hexgw", {a: ["A1"], b: ["B1"]})
    store(db, "hexgw", receipt("A1", "ENROUTE"), receipt("A1"), receipt("A1"), receipt("B1", "UNDELIV", "0B"))
    assert apply(db) == (4, 0)
    store(db, "hexgw", receipt("A1", "UNDELIV"), receipt("B1"))  # late and contradicting
    assert apply(db) == (2, 0)
    assert statuses(db, cid) == {a: "delivered", b: "undeliverable"}
    with Session(db) as session:
        receipts = {
            m.id: [(e.detail["stat"], e.detail["err"]) for e in timeline.entries(session, m) if e.kind == "receipt"]
            for m in session.scalars(select(Message).where(col(Message.id).in_([a, b])))
        }
        error = session.scalar(select(col(Message.error_code)).where(col(Message.id) == b))
    # The final receipt is kept on the segment, ENROUTE is an event; both are on the timeline.
    assert sorted(receipts[a]) == [("DELIVRD", "000"), ("ENROUTE", "000")], "a duplicate or late receipt left a trace"
    assert receipts[b] == [("UNDELIV", "0B")]
    assert error == "err:0B"
    with db.connect() as conn:
        events = conn.scalars(select(col(MessageEvent.detail)).where(col(MessageEvent.kind) == "receipt")).all()
    assert [d["stat"] for d in events] == ["ENROUTE"]  # one event row: the receipt that is not final


def test_passes_in_flight_together_apply_each_receipt_once_and_keep_the_counters_exact(db: Engine) -> None:
    """drain_inbox as the receipts task runs it (two lanes on Postgres), in passes of 7 receipts:
    a message's segments and a segment's duplicates land in different passes."""
    cid = seed_campaign(db, 60, tag="lanes")
    ids = message_ids(db, cid)
    segments = {mid: [f"{mid:X}{k}" for k in range(1 + i % 3)] for i, mid in enumerate(ids)}
    sent(db, cid, "hexgw", segments)
    with transaction(db) as session:
        counters.reconcile(session, cid)  # the seeded rows were never counted live
    failing = set(ids[::7])  # their last segment is undeliverable: the message takes the worst
    delivers = [
        receipt(pid, "UNDELIV" if mid in failing and k == len(pids) - 1 else "DELIVRD", "0B")
        for mid, pids in segments.items()
        for k, pid in enumerate(pids)
    ]
    delivers += delivers[::4]  # duplicates
    random.Random(7).shuffle(delivers)
    store(db, "hexgw", *delivers)
    applied, more = drain_inbox(db, GATEWAYS, lanes=2, limit=7, retry=with_db_retry)
    assert (applied, more) == (len(delivers), False)
    assert statuses(db, cid) == {mid: "undeliverable" if mid in failing else "delivered" for mid in ids}
    with Session(db) as session:
        assert counters.reconcile(session, cid) == 0, "the live counters drifted from the rows"
        entries = [e for m in session.scalars(select(Message)) for e in timeline.entries(session, m)]
        assert sum(e.kind == "receipt" for e in entries) == sum(len(p) for p in segments.values())
        assert session.scalar(select(func.count()).select_from(ReceiptInbox)) == 0


def test_a_drain_leaves_what_arrives_after_a_short_pass_to_the_next_drain(db: Engine) -> None:
    """A pass that finds less than a full pass waiting ends the drain: receipts arriving all the
    time are applied in a few big passes (one per kick), not chased in passes of a few."""
    cid = seed_campaign(db, 9, tag="chase")
    ids = message_ids(db, cid)
    sent(db, cid, "hexgw", {mid: [f"{mid:X}"] for mid in ids})
    store(db, "hexgw", *(receipt(f"{mid:X}") for mid in ids[:5]))
    passes: list[tuple[int, int]] = []

    def receipts_arrive_meanwhile(step: Callable[[], tuple[int, int]]) -> tuple[int, int]:
        result = step()
        passes.append(result)
        if len(passes) == 1:
            store(db, "hexgw", *(receipt(f"{mid:X}") for mid in ids[5:]))
        return result

    assert drain_inbox(db, GATEWAYS, lanes=1, limit=7, retry=receipts_arrive_meanwhile) == (5, False)
    assert passes == [(5, 0)]
    assert drain_inbox(db, GATEWAYS, lanes=1, limit=7) == (4, False)  # the next kick's drain
    assert set(statuses(db, cid).values()) == {"delivered"}


def test_a_long_message_takes_the_worst_outcome_of_its_segments(db: Engine) -> None:
    cid = seed_campaign(db, 2, tag="long")
    a, b = message_ids(db, cid)
    sent(db, cid, "hexgw", {a: ["A1", "A2", "A3"], b: ["B1", "B2"]})
    store(db, "hexgw", receipt("A1"), receipt("A2"), receipt("B1"), receipt("B2"))
    apply(db)
    assert statuses(db, cid) == {a: "sent", b: "delivered"}  # a still waits for its third segment
    store(db, "hexgw", receipt("A3", "EXPIRED"))
    apply(db)
    assert statuses(db, cid) == {a: "expired", b: "delivered"}
    with db.connect() as conn:
        segs = conn.execute(select(col(SmsSegment.provider_id), col(SmsSegment.status)).order_by(col(SmsSegment.id)))
        assert [str(s).split(":")[0] for _, s in segs][:3] == ["delivered", "delivered", "expired"]


def test_receipts_parked_over_seven_days_are_reported_per_gateway(db: Engine) -> None:
    store(db, "hexgw", receipt("DEAD"), receipt("BEEF"))
    store(db, "decgw", receipt("1234"))
    apply(db)
    assert parked_counts_now(db) == {}
    with transaction(db) as session:
        session.execute(
            update(ReceiptInbox)
            .where(col(ReceiptInbox.provider_id) != "1234")
            .values(received_at=utcnow() - timedelta(days=8))
        )
    assert parked_counts_now(db) == {"hexgw": 2}


def parked_counts_now(engine: Engine) -> dict[str, int]:
    with transaction(engine) as session:
        return parked_counts(session)


def test_replies_are_stored_and_opt_out_keywords_suppress_the_number(db: Engine) -> None:
    cid = seed_campaign(db, 2, tag="mo")
    ucs2 = "Từ chối".encode("utf-16-be")
    with transaction(db) as session:
        stored = store_delivers(
            session,
            "hexgw",
            [
                IncomingDeliver("84961000000", "TCTK", 0, 8, ucs2),
                IncomingDeliver("84961000001", "TCTK", 0, 1, b"Cam on nhe"),
                IncomingDeliver("84999999999", "TCTK", 0, 0, b"STOP"),  # a number we never wrote to
            ],
        )
    assert (stored.replies, stored.opt_outs) == (3, 2)
    with db.connect() as conn:
        replies = sorted(conn.execute(select(col(Reply.source), col(Reply.opt_out), col(Reply.campaign_id))).all())
        suppressed = list(conn.scalars(select(col(Suppression.address))))
    assert replies == [
        ("+84961000000", True, cid),
        ("+84961000001", False, cid),
        ("+84999999999", True, None),
    ]
    assert suppressed == ["+84961000000"]


def test_opt_out_keywords_ignore_case_marks_and_trailing_words() -> None:
    keywords = ["TU CHOI", "HUY", "STOP"]
    assert is_opt_out("từ chối", keywords)
    assert is_opt_out("  Hủy   dịch vụ", keywords)
    assert is_opt_out("stop", keywords)
    assert not is_opt_out("stopped", keywords)
    assert not is_opt_out("xin huy bo", keywords)
