"""The cells live counters count in, and the rows they are read from.

Every message contributes to a set of *cells* (dimension, key, status): `("carrier", "Viettel",
"delivered")`, `("field:province", "Hà Nội", "sent")`, `("sent_per_minute", "2026-11-22T08:31",
"")`, `("sum", "segments", "")`… A count is the sum of a cell's rows in the `campaign_counter`
journal. `contribution` is the one definition of those cells; the exact recount in
`campaigns.tally` mirrors it in SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Select, String, bindparam, cast, exists, insert, select
from sqlmodel import Session, col

from campaigns.bulk import Prebuilt, any_of, any_param, any_value, is_postgres
from campaigns.models import Campaign, Message
from campaigns.report_models import CampaignCounter, ReportState, Webhook
from loa.db import table_of

STATUS, GATEWAY, CARRIER, ERROR = "status", "gateway", "carrier", "error"
SENT_PER_MINUTE, DELIVERED_PER_MINUTE, SUM, FIELD = "sent_per_minute", "delivered_per_minute", "sum", "field:"
UNKNOWN_CARRIER = "unknown"
KEY_MAX = 200
MESSAGE_EVENTS = "message.status"
RECEIPT_FINAL = frozenset({"delivered", "undeliverable", "expired", "rejected"})

Cell = tuple[str, str, str]


@dataclass(frozen=True)
class CampaignInfo:
    org_id: str
    channel: str
    fields: tuple[str, ...]  # recipient fields counted live
    feed: bool  # the organisation wants per-message status webhooks


@dataclass(frozen=True)
class MessageState:
    """What a message counts as. Equal states count in the same cells: the recipient (`to`, kept
    for the status feed) is left out of comparisons, so a batch's changes group into a few kinds."""

    campaign_id: str
    to: str = field(compare=False)
    status: str
    gateway: str | None
    carrier: str | None
    error: str | None
    submitted_at: datetime | None
    delivered_at: datetime | None
    segments: int
    ambiguous: int
    no_receipt: bool
    values: tuple[str, ...] = ()  # values of the campaign's counted fields, in order


def minute(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if value is not None else None


def contribution(s: MessageState, fields: Sequence[str]) -> dict[Cell, int]:
    """The cells one message counts in (mirrored in SQL by `_exact_parts`)."""
    cells: dict[Cell, int] = {
        (STATUS, "", s.status): 1,
        (CARRIER, (s.carrier or UNKNOWN_CARRIER)[:KEY_MAX], s.status): 1,
        (SUM, "segments", ""): s.segments,
        (SUM, "ambiguous_resends", ""): s.ambiguous,
        (SUM, "no_receipt", ""): int(s.no_receipt),
    }
    if s.gateway:
        cells[(GATEWAY, s.gateway[:KEY_MAX], s.status)] = 1
    if s.error:
        cells[(ERROR, s.error[:KEY_MAX], s.status)] = 1
    if (m := minute(s.submitted_at)) is not None:
        cells[(SENT_PER_MINUTE, m, "")] = 1
    if (m := minute(s.delivered_at)) is not None:
        cells[(DELIVERED_PER_MINUTE, m, "")] = 1
    for name, value in zip(fields, s.values, strict=False):
        cells[(FIELD + name, value[:KEY_MAX], s.status)] = 1
    return cells


# --- reading message rows -------------------------------------------------------------------------
# Core columns: a batch's rows are read twice per write, the ORM layer adds nothing here. A
# writer that reads its rows anyway selects these and builds the snapshot from them (`build_states`).
_MESSAGES = table_of(Message)
STATE_COLUMNS = (
    _MESSAGES.c.id,
    _MESSAGES.c.campaign_id,
    _MESSAGES.c.to,
    _MESSAGES.c.status,
    _MESSAGES.c.gateway,
    _MESSAGES.c.carrier,
    _MESSAGES.c.error_code,
    _MESSAGES.c.submitted_at,
    _MESSAGES.c.delivered_at,
    _MESSAGES.c.segments,
    _MESSAGES.c.ambiguous_resends,
    _MESSAGES.c.no_receipt,
    # Not counted; read in the same locked pass for writers that check who holds a row.
    _MESSAGES.c.claim,
    _MESSAGES.c.attempts,
)

# message id → (claim, attempts) as read with the states
Holds = dict[int, tuple[str | None, int]]


def field_text(value: Any) -> str:
    return "" if value is None else str(value)


def _campaign_info(_postgres: bool) -> Select[Any]:
    feed = (
        exists()
        .where(
            col(Webhook.org_id) == col(Campaign.org_id),
            col(Webhook.deleted_at).is_(None),
            cast(col(Webhook.events), String).like(f'%"{MESSAGE_EVENTS}"%'),
        )
        .correlate(Campaign)
    )
    return (
        select(col(Campaign.id), col(Campaign.org_id), col(Campaign.channel), col(ReportState.fields), feed)
        .outerjoin(ReportState, col(ReportState.campaign_id) == col(Campaign.id))
        .where(col(Campaign.id).in_(bindparam("cids", expanding=True)))
    )


def _states(lock: bool) -> Callable[[bool], Select[Any]]:
    def build(postgres: bool) -> Select[Any]:
        stmt = (
            select(*STATE_COLUMNS).where(any_param(_MESSAGES.c.id, "ids", postgres=postgres)).order_by(_MESSAGES.c.id)
        )
        # In id order: writers that lock batches cannot deadlock.
        return stmt.with_for_update() if lock and postgres else stmt

    return build


_CAMPAIGN_INFO = Prebuilt(_campaign_info)
_STATES = Prebuilt(_states(lock=False))
_STATES_LOCKED = Prebuilt(_states(lock=True))


def campaign_info(session: Session, campaign_ids: Iterable[str]) -> dict[str, CampaignInfo]:
    ids = sorted(set(campaign_ids))
    if not ids:
        return {}
    rows = session.execute(_CAMPAIGN_INFO(session), {"cids": ids})
    return {
        cid: CampaignInfo(org, str(channel), tuple(fields or ()), bool(wants))
        for cid, org, channel, fields, wants in rows
    }


def read_states(
    session: Session,
    ids: Sequence[int],
    campaigns: Mapping[str, CampaignInfo] | None,
    *,
    lock: bool,
) -> tuple[dict[int, MessageState], dict[str, CampaignInfo], Holds]:
    """The counted states of these messages."""
    if not ids:
        return {}, dict(campaigns or {}), {}
    stmt = (_STATES_LOCKED if lock else _STATES)(session)
    rows = session.execute(stmt, {"ids": any_value(ids, postgres=is_postgres(session))}).all()
    return build_states(session, rows, campaigns)


def build_states(
    session: Session, rows: Sequence[Row[Any]], campaigns: Mapping[str, CampaignInfo] | None
) -> tuple[dict[int, MessageState], dict[str, CampaignInfo], Holds]:
    """The counted states of rows of `STATE_COLUMNS`."""
    info = dict(campaigns) if campaigns is not None else campaign_info(session, {r[1] for r in rows})
    wanted = {cid for cid, i in info.items() if i.fields}
    values: dict[int, dict[str, Any]] = {}
    if any(r[1] in wanted for r in rows):
        for mid, fields in session.execute(
            select(_MESSAGES.c.id, _MESSAGES.c.fields).where(
                any_of(session, _MESSAGES.c.id, [r[0] for r in rows if r[1] in wanted])
            )
        ):
            values[int(mid)] = fields or {}
    states: dict[int, MessageState] = {}
    holds: Holds = {}
    for mid, cid, to, row_status, gateway, carrier, error, sub, dlv, segs, amb, norc, claim, attempts in rows:
        names = info[cid].fields if cid in info else ()
        fv = values.get(int(mid), {}) if names else {}
        holds[int(mid)] = (claim, int(attempts or 0))
        states[int(mid)] = MessageState(
            cid,
            str(to),
            str(row_status),
            gateway,
            carrier,
            error,
            sub,
            dlv,
            int(segs or 0),
            int(amb or 0),
            bool(norc),
            tuple(field_text(fv.get(n)) for n in names) if names else (),
        )
    return states, info, holds


def append(session: Session, deltas: Mapping[str, Mapping[Cell, int]]) -> None:
    rows = [
        {"campaign_id": cid, "dim": dim, "key": key, "status": status, "n": n}
        for cid, cells in sorted(deltas.items())
        for (dim, key, status), n in sorted(cells.items())
        if n
    ]
    if rows:
        session.execute(insert(table_of(CampaignCounter)), rows)  # Core: cheaper per row than the ORM bulk path
