"""SMS waves through real `loa worker` processes, real Redis and the SMSC simulator over TCP: the
window, receipts early, late, twice and in the other number base, dropped sessions, a throttling
storm, and what the SMSC saw of each submit_sm (segments, UDH, data_coding, addresses, validity).

One simulator and one worker process serve the whole module; each test resets the simulator's
faults and counters and works on its own campaign."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from campaigns import timeline
from campaigns.models import Message, ReceiptInbox
from gateways.smpp.session_util import smpp_absolute_time
from loa.timeutil import utcnow
from tests.conftest import wait_for
from tests.workers.sms_kit import Gw, SmsStack, counts, settled, sms_stack, truncate_all, wait_settled
from tests.workers.wave_kit import act, ambiguous_resends, api, destinations, seed_campaign, submits_by_destination

pytestmark = pytest.mark.slow

VIETTEL = Gw("viettel", carriers=["Viettel"], binds=2, window=7)
VINA = Gw("vina", carriers=["Vinaphone"])
OTHER = Gw("other", default=True)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str, engine: Engine
) -> Iterator[SmsStack]:
    with sms_stack(tmp_path_factory.mktemp("sms-wave"), database_url, redis_url, [VIETTEL, VINA, OTHER]) as s:
        yield s


@pytest.fixture
def db(engine: Engine, stack: SmsStack) -> Engine:
    """The tables emptied (with the workers running: see `truncate_all`)."""
    return truncate_all(engine)


@pytest.fixture
def smsc(stack: SmsStack, db: Engine) -> SmsStack:
    stack.reset()
    return stack


def launch(stack: SmsStack, db: Engine, campaign_id: str) -> None:
    act(api(stack.settings, db), campaign_id, "launch")


def test_each_session_keeps_exactly_its_window_of_submits_outstanding(smsc: SmsStack, db: Engine) -> None:
    smsc.smsc.config.response_delay_s = 0.05  # a slow SMSC: the window fills and must hold
    wave = seed_campaign(db, 300, tag="win")
    launch(smsc, db, wave)
    assert wait_settled(db, wave) == {"delivered": 300}
    assert smsc.smsc.stats.max_outstanding("viettel") == VIETTEL.window


def test_receipts_before_their_response_and_twice_are_applied_once(smsc: SmsStack, db: Engine) -> None:
    smsc.smsc.config.receipt_before_response = True
    smsc.smsc.config.duplicate_receipts = True
    wave = seed_campaign(db, 200, tag="early")
    launch(smsc, db, wave)
    assert wait_settled(db, wave) == {"delivered": 200}
    assert smsc.smsc.stats.receipts_sent == 400

    def inbox() -> int:
        with db.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(ReceiptInbox)) or 0)

    # A duplicate stored after the pass that applied its first copy waits for the next pass
    # (the next receipts' kick or the scheduler's tick): then it must go, changing nothing.
    wait_for(lambda: inbox() == 0, 30, what="the parked duplicates applied")
    with Session(db) as session:
        messages = session.scalars(select(Message).where(col(Message.campaign_id) == wave)).all()
        per_message = [sum(e.kind == "receipt" for e in timeline.entries(session, m)) for m in messages]
    assert len(per_message) == 200
    assert set(per_message) == {1}, "a duplicate receipt changed the timeline"
    assert counts(db, wave) == {"delivered": 200}


@pytest.mark.parametrize(
    ("id_base", "receipt_id_base", "pad"), [("decimal", "hex", 0), ("hex", "decimal", 0), ("hex", "same", 16)]
)
def test_receipt_ids_in_the_other_base_or_zero_padded_find_their_message(
    smsc: SmsStack, db: Engine, id_base: str, receipt_id_base: str, pad: int
) -> None:
    config = smsc.smsc.config
    config.id_base = id_base  # type: ignore[assignment]
    config.receipt_id_base = receipt_id_base  # type: ignore[assignment]
    config.receipt_id_zero_pad = pad
    wave = seed_campaign(db, 60, tag=f"ids-{id_base}-{pad}")
    launch(smsc, db, wave)
    assert wait_settled(db, wave) == {"delivered": 60}


def test_a_session_dropped_every_500_submits_loses_nothing(smsc: SmsStack, db: Engine) -> None:
    smsc.smsc.config.drop_after = 500
    wave = seed_campaign(db, 1500, tag="drop")
    launch(smsc, db, wave)
    assert wait_settled(db, wave, timeout=180) == {"delivered": 1500}
    seen = submits_by_destination(smsc.smsc)
    assert set(seen) == destinations(db, wave)
    duplicates = smsc.smsc.stats.duplicates()
    assert duplicates == sum(n - 1 for n in seen.values())
    assert duplicates <= ambiguous_resends(db, wave), "a resend was not counted"


def test_a_throttling_storm_backs_the_rate_off_loses_nothing_and_recovers(smsc: SmsStack, db: Engine) -> None:
    import redis as redis_lib

    r = redis_lib.Redis.from_url(smsc.settings.redis_url or "")
    smsc.account("viettel").tps = 40  # the carrier's real limit is far below the configured 5000
    wave = seed_campaign(db, 400, tag="storm")
    launch(smsc, db, wave)

    def backed_off() -> bool:
        raw = r.hget("loa:rl:smpp:viettel", "f")
        return raw is not None and float(raw) < 0.5

    wait_for(backed_off, 60, interval=0.1, what="the gateway's rate factor to back off")
    assert wait_settled(db, wave, timeout=180) == {"delivered": 400}
    assert smsc.smsc.stats.throttled > 0
    assert counts(db, wave) == {"delivered": 400}

    def factor() -> float:
        raw = r.hget("loa:rl:smpp:viettel", "f")
        return float(raw) if raw is not None else 1.0

    after_storm = factor()
    assert after_storm < 1.0
    smsc.account("viettel").tps = None  # the storm is over: successful sends raise the rate again
    calm = seed_campaign(db, 600, tag="calm", first=2_000_000)
    launch(smsc, db, calm)
    assert wait_settled(db, calm) == {"delivered": 600}
    assert factor() > after_storm, "the rate did not recover after the storm"


def test_what_the_smsc_sees_long_vietnamese_ucs2_gsm_euro_boundary_senders_validity(smsc: SmsStack, db: Engine) -> None:
    client = api(smsc.settings, db)
    deadline = (utcnow() + timedelta(hours=3)).replace(microsecond=0)
    vietnamese = "Kính gửi Ông/Bà {{ ten }}: Tổng cục Thống kê trân trọng thông báo lịch phỏng vấn điều tra " * 2
    long_vi = client.post(
        "/v1/campaigns",
        json={
            "name": "long vi",
            "channel": "sms",
            "sender": "TCTK",
            "template": {"body": vietnamese.strip()},
            "schedule": {"deadline": deadline.isoformat().replace("+00:00", "Z")},
        },
    ).json()
    euro = client.post(
        "/v1/campaigns",
        json={
            "name": "euro",
            "channel": "sms",
            "sender": "19001234",
            "encoding": "gsm7",
            "template": {"body": "a" * 152 + "€ {{ ten }} xin cam on"},  # 168 septets: two parts
        },
    ).json()
    for cid, number in ((long_vi["id"], "+84961000001"), (euro["id"], "+84961000002")):
        up = client.post(
            f"/v1/campaigns/{cid}/recipients", json={"recipients": [{"to": number, "fields": {"ten": "An"}}]}
        )
        assert up.json()["accepted"] == 1, up.text
        act(client, cid, "launch")
    for cid in (long_vi["id"], euro["id"]):
        assert wait_settled(db, cid) == {"delivered": 1}

    log = smsc.smsc.stats.log
    vi = [r for r in log if r.destination_addr == "84961000001"]
    text = vietnamese.strip().replace("{{ ten }}", "An")
    assert len(vi) == 3
    assert {(r.data_coding, r.esm_class, r.source_addr, r.source_addr_ton, r.source_addr_npi) for r in vi} == {
        (8, 0x40, "TCTK", 5, 0)
    }
    ref = vi[0].short_message[3]
    assert [r.short_message[:6] for r in vi] == [bytes([5, 0, 3, ref, 3, i]) for i in (1, 2, 3)]
    assert b"".join(r.short_message[6:] for r in vi).decode("utf-16-be") == text
    assert {r.registered_delivery for r in vi} == {1}
    assert {r.validity_period for r in vi} == {smpp_absolute_time(deadline)}

    eu = [r for r in log if r.destination_addr == "84961000002"]
    assert len(eu) == 2
    assert {(r.data_coding, r.esm_class, r.source_addr_ton, r.source_addr_npi) for r in eu} == {(0, 0x40, 1, 1)}
    first, second = (r.short_message[6:] for r in eu)
    assert first == b"a" * 152, "the escape pair of the euro sign was split across segments"
    assert second.startswith(b"\x1b\x65")
    assert {r.validity_period for r in eu} == {""}
    with db.connect() as conn:
        segments = {str(to): int(n) for to, n in conn.execute(select(col(Message.to), col(Message.segments)))}
    assert segments == {"+84961000001": 3, "+84961000002": 2}


def test_mnp_overrides_route_numbers_that_moved_and_the_rest_goes_by_prefix(smsc: SmsStack, db: Engine) -> None:
    client = api(smsc.settings, db)
    moved_json, moved_csv, stays, other = "+84961234567", "+84971234568", "+84981234569", "+84901234567"
    assert client.post("/v1/mnp", json={"number": moved_json, "carrier": "Vinaphone"}).status_code == 201
    csv = f"number,carrier\n{moved_csv.removeprefix('+')},Vinaphone\n".encode()
    up = client.post("/v1/mnp", files={"file": ("mnp.csv", csv, "text/csv")})
    assert up.status_code == 201, up.text
    cid = client.post(
        "/v1/campaigns", json={"name": "mnp", "channel": "sms", "sender": "TCTK", "template": {"body": "x"}}
    )
    campaign = cid.json()["id"]
    recipients = [{"to": n} for n in (moved_json, moved_csv, stays, other)]
    assert client.post(f"/v1/campaigns/{campaign}/recipients", json={"recipients": recipients}).json()["accepted"] == 4
    act(client, campaign, "launch")
    assert wait_settled(db, campaign) == {"delivered": 4}
    with db.connect() as conn:
        routed = {str(to): gw for to, gw in conn.execute(select(col(Message.to), col(Message.gateway)))}
    assert routed == {moved_json: "vina", moved_csv: "vina", stays: "viettel", other: "other"}


def test_replies_are_stored_per_campaign_and_opt_outs_suppress_the_number(smsc: SmsStack, db: Engine) -> None:
    from campaigns.models import Reply, Suppression

    wave = seed_campaign(db, 2, tag="mo", first=3_000_000)
    launch(smsc, db, wave)
    wait_settled(db, wave)
    smsc.smsc.send_mo("viettel", "84963000000", "TCTK", "Từ chối nhận tin")
    smsc.smsc.send_mo("viettel", "84963000001", "TCTK", "cảm ơn")

    def replies() -> list[tuple[str, bool, str | None]]:
        with db.connect() as conn:
            return [
                (str(s), bool(o), c)
                for s, o, c in conn.execute(select(col(Reply.source), col(Reply.opt_out), col(Reply.campaign_id)))
            ]

    got = wait_for(lambda: len(replies()) == 2 and replies(), 30, what="two replies stored")
    assert sorted(got) == [("+84963000000", True, wave), ("+84963000001", False, wave)]
    with db.connect() as conn:
        suppressed = list(conn.scalars(select(col(Suppression.address))))
    assert suppressed == ["+84963000000"]
    shown = api(smsc.settings, db).get(f"/v1/campaigns/{wave}/replies").json()["items"]
    assert sorted((r["from"], r["text"], r["opt_out"]) for r in shown) == [
        ("+84963000000", "Từ chối nhận tin", True),
        ("+84963000001", "cảm ơn", False),
    ]


def test_a_campaign_rate_cap_holds_on_top_of_the_gateways_tps(smsc: SmsStack, db: Engine) -> None:
    from tests.workers.wave_kit import set_campaign

    wave = seed_campaign(db, 90, tag="capped")
    set_campaign(db, wave, rate_limit=20.0)
    launch(smsc, db, wave)
    assert wait_settled(db, wave) == {"delivered": 90}
    per_second = smsc.smsc.stats.per_second("viettel")
    assert max(per_second.values()) <= 20, sorted(per_second.items())


def test_gateway_status_and_metrics_show_binds_rates_queues_and_parked_receipts(smsc: SmsStack, db: Engine) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import insert

    from accounts.models import Role
    from api.app import create_app
    from tests.factories import make_key

    wave = seed_campaign(db, 100, tag="status")
    launch(smsc, db, wave)
    wait_settled(db, wave)
    with db.begin() as conn:
        conn.execute(
            insert(ReceiptInbox),
            [
                {
                    "gateway": "viettel",
                    "provider_id": "DEAD",
                    "state": "DELIVRD",
                    "received_at": utcnow() - timedelta(days=8),
                }
            ],
        )
    admin = TestClient(
        create_app(smsc.settings), headers={"Authorization": f"Bearer {make_key(db, Role.ADMIN, name='admin')}"}
    )

    def status() -> dict[str, dict[str, object]]:
        body = admin.get("/v1/gateways").json()
        return {item["name"]: item for item in body["items"]}

    viettel = wait_for(lambda: (s := status()["viettel"])["bound"] == 2 and s, 15, what="viettel bound twice")
    assert viettel["queue_depth"] == 0
    assert viettel["parked_receipts_over_7_days"] == 1
    assert 0 < float(viettel["rate_factor"]) <= 1.0  # type: ignore[arg-type]
    factor = float(viettel["rate_factor"])  # type: ignore[arg-type]
    assert viettel["allowed_rate"] == pytest.approx(4850 * factor, abs=0.1)
    assert isinstance(viettel["current_rate"], float)
    assert [s["state"] for s in viettel["sessions"]] == ["bound", "bound"]  # type: ignore[union-attr]
    assert status()["vina"]["parked_receipts_over_7_days"] == 0

    text = admin.get("/metrics").text
    assert 'loa_smpp_submits_total{gateway="viettel"}' in text
    assert 'loa_smpp_receipts_total{gateway="viettel",state="delivered"}' in text
    assert 'loa_smpp_bound_sessions{gateway="viettel"} 2.0' in text
    assert "loa_smpp_window_occupancy" in text
    assert 'loa_receipt_latency_seconds_count{gateway="viettel"}' in text
    assert settled(db, wave)
    assert counts(db, wave) == {"delivered": 100}
