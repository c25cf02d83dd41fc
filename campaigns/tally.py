"""Reading the live counters and checking them: a campaign's `Tally` (counts by status, gateway,
carrier, error, counted fields, per minute), several campaigns' status totals, choosing a
recipient field to count live, and the exact recount.

`reconcile` checks the journal against an exact count in one SQL statement (one snapshot), and
appends the correction: it runs when a campaign finishes, on demand, after an import and after
set-based updates. It and `compact` are serialised per campaign by an advisory lock on Postgres
(SQLite has one writer at a time). The write side lives in `campaigns.counters`."""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, delete, func, literal, select, text, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from campaigns.counter_cells import (
    CARRIER,
    DELIVERED_PER_MINUTE,
    ERROR,
    FIELD,
    GATEWAY,
    KEY_MAX,
    SENT_PER_MINUTE,
    STATUS,
    SUM,
    UNKNOWN_CARRIER,
    Cell,
    append,
)
from campaigns.models import PENDING_STATUSES, Campaign, Message, MessageStatus
from campaigns.report_models import CampaignCounter, ReportState
from loa.db import table_of
from loa.errors import Invalid
from loa.timeutil import iso_z, utcnow

log = logging.getLogger(__name__)

MAX_FIELDS = 5
MAX_FIELD_VALUES = 1000


def _zero() -> dict[str, int]:
    return {"total": 0, **{s.value: 0 for s in MessageStatus}}


@dataclass
class Tally:
    """A campaign's counters, as the API and the dashboard show them."""

    cells: dict[Cell, int]
    fields: list[str] = field(default_factory=list)
    reconciled_at: datetime | None = None
    drift: int = 0

    def _grouped(self) -> dict[str, dict[str, dict[str, int]]]:
        grouped: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(_zero))
        for (dim, key, status), n in self.cells.items():
            if status and n:
                counts = grouped[dim][key]
                counts[status] = counts.get(status, 0) + n
                counts["total"] += n
        return grouped

    def counts(self) -> dict[str, int]:
        return dict(self._grouped().get(STATUS, {}).get("", _zero()))

    def by(self, dim: str) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in sorted(self._grouped().get(dim, {}).items())}

    def by_error(self) -> dict[str, int]:
        return {k: v["total"] for k, v in self.by(ERROR).items()}

    def total(self, name: str) -> int:
        return self.cells.get((SUM, name, ""), 0)

    def per_minute(self) -> list[dict[str, Any]]:
        minutes: dict[str, dict[str, int]] = defaultdict(lambda: {"sent": 0, "delivered": 0})
        for (d, k, _), n in self.cells.items():
            if d == SENT_PER_MINUTE and n:
                minutes[k]["sent"] += n
            elif d == DELIVERED_PER_MINUTE and n:
                minutes[k]["delivered"] += n
        return [{"minute": k + ":00Z", **v} for k, v in sorted(minutes.items())]


def read(session: Session, campaign_id: str) -> Tally:
    """A campaign's counters. A campaign never reconciled (no state row yet: counted before
    these counters existed, or just created) is reconciled first."""
    state = state_of(session, campaign_id)
    if state is None or state.reconciled_at is None:
        reconcile(session, campaign_id)
        state = state_of(session, campaign_id)
    cells: dict[Cell, int] = {}
    for dim, key, status, n in session.execute(
        select(
            col(CampaignCounter.dim),
            col(CampaignCounter.key),
            col(CampaignCounter.status),
            func.sum(col(CampaignCounter.n)),
        )
        .where(col(CampaignCounter.campaign_id) == campaign_id)
        .group_by(col(CampaignCounter.dim), col(CampaignCounter.key), col(CampaignCounter.status))
    ):
        if n:
            cells[(str(dim), str(key), str(status))] = int(n)
    if state is None:
        return Tally(cells)
    return Tally(cells, state.fields, state.reconciled_at, state.drift)


def status_totals(session: Session, campaign_ids: Sequence[str]) -> list[tuple[str, str, int]]:
    """(campaign, status, count) for several campaigns at once (metrics, dashboards)."""
    if not campaign_ids:
        return []
    rows = session.execute(
        select(col(CampaignCounter.campaign_id), col(CampaignCounter.status), func.sum(col(CampaignCounter.n)))
        .where(col(CampaignCounter.campaign_id).in_(list(campaign_ids)), col(CampaignCounter.dim) == STATUS)
        .group_by(col(CampaignCounter.campaign_id), col(CampaignCounter.status))
    )
    return [(str(c), str(s), int(n)) for c, s, n in rows if n]


def track_field(session: Session, campaign: Campaign, name: str) -> bool:
    """Count this recipient field live from now on (one exact count to start); False if it was."""
    if name in campaign.secret_fields:
        raise Invalid(f"{name!r} is a secret field: it is never counted or shown", {"field": "field"})
    if name not in campaign.fields:
        known = ", ".join(campaign.fields) or "none yet"
        raise Invalid(f"the campaign has no recipient field {name!r} (fields: {known})", {"field": "field"})
    lock(session, campaign.id)
    state = state_of(session, campaign.id)
    fields = list(state.fields) if state else []
    if name in fields:
        return False
    if len(fields) >= MAX_FIELDS:
        raise Invalid(f"at most {MAX_FIELDS} fields are counted per campaign ({', '.join(fields)})", {"field": "field"})
    value = col(Message.fields)[name].as_string()
    distinct = int(
        session.scalar(select(func.count(func.distinct(value))).where(col(Message.campaign_id) == campaign.id)) or 0
    )
    if distinct > MAX_FIELD_VALUES:
        raise Invalid(
            f"{name!r} has {distinct} different values; counts by field are for fields such as a province "
            f"(at most {MAX_FIELD_VALUES} values)",
            {"field": "field", "values": distinct},
        )
    upsert_state(session, campaign.id, fields=[*fields, name])
    reconcile(session, campaign.id)
    return True


def stats_view(t: Tally) -> dict[str, Any]:
    """The contract's `stats` of a campaign."""
    return {
        "segments": t.total("segments"),
        "ambiguous_resends": t.total("ambiguous_resends"),
        "no_receipt": t.total("no_receipt"),
        "by_carrier": t.by(CARRIER),
        "by_error": t.by_error(),
    }


def progress(counts: dict[str, int]) -> dict[str, Any]:
    """How far a campaign is: messages with a final outcome (an SMS `sent` still waits)."""
    total = counts.get("total", 0)
    pending = sum(counts.get(s.value, 0) for s in PENDING_STATUSES)
    waiting = counts.get(MessageStatus.SENT.value, 0)
    done = total - pending - waiting
    return {
        "total": total,
        "pending": pending,
        "awaiting_receipt": waiting,
        "done": done,
        "percent": round(100.0 * done / total, 1) if total else 0.0,
    }


def counts_view(t: Tally) -> dict[str, Any]:
    """Everything the counters know about a campaign (`GET /v1/campaigns/{id}/counts`)."""
    counts = t.counts()
    return {
        "counts": counts,
        "progress": progress(counts),
        "by_gateway": t.by(GATEWAY),
        **stats_view(t),
        "by_field": {name: t.by(FIELD + name) for name in t.fields},
        "per_minute": t.per_minute(),
        "fields_counted": t.fields,
        "reconciled_at": iso_z(t.reconciled_at),
        "drift": t.drift,
    }


# --- exact counts ---------------------------------------------------------------------------------
def lock(session: Session, campaign_id: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"loa.counters:{campaign_id}".encode())
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _minute_sql(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI')
    return func.strftime("%Y-%m-%dT%H:%M", column)


def _exact_parts(session: Session, campaign_id: str, fields: Sequence[str]) -> list[Any]:
    """One grouped SELECT per dimension, all with columns (dim, key, status, n)."""
    m = col(Message.campaign_id) == campaign_id
    status = cast(col(Message.status), String)
    two, three = text("2"), text("3")

    def lit(value: str) -> Any:
        return cast(literal(value), String)

    parts: list[Any] = [
        select(lit(STATUS), lit(""), status, func.count()).where(m).group_by(three),
        select(lit(GATEWAY), func.substr(col(Message.gateway), 1, KEY_MAX), status, func.count())
        .where(m, col(Message.gateway).is_not(None), col(Message.gateway) != "")
        .group_by(two, three),
        select(
            lit(CARRIER),
            func.substr(func.coalesce(col(Message.carrier), UNKNOWN_CARRIER), 1, KEY_MAX),
            status,
            func.count(),
        )
        .where(m)
        .group_by(two, three),
        select(lit(ERROR), func.substr(col(Message.error_code), 1, KEY_MAX), status, func.count())
        .where(m, col(Message.error_code).is_not(None), col(Message.error_code) != "")
        .group_by(two, three),
        select(lit(SENT_PER_MINUTE), _minute_sql(session, col(Message.submitted_at)), lit(""), func.count())
        .where(m, col(Message.submitted_at).is_not(None))
        .group_by(two),
        select(lit(DELIVERED_PER_MINUTE), _minute_sql(session, col(Message.delivered_at)), lit(""), func.count())
        .where(m, col(Message.delivered_at).is_not(None))
        .group_by(two),
        select(lit(SUM), lit("segments"), lit(""), func.coalesce(func.sum(col(Message.segments)), 0)).where(m),
        select(
            lit(SUM), lit("ambiguous_resends"), lit(""), func.coalesce(func.sum(col(Message.ambiguous_resends)), 0)
        ).where(m),
        select(lit(SUM), lit("no_receipt"), lit(""), func.count()).where(m, col(Message.no_receipt).is_(True)),
    ]
    for name in fields:
        value = func.substr(func.coalesce(col(Message.fields)[name].as_string(), ""), 1, KEY_MAX)
        parts.append(select(lit(FIELD + name), value, status, func.count()).where(m).group_by(two, three))
    return parts


# Postgres counts every dimension in one pass over the campaign's messages (GROUPING SETS);
# the journal rides along in the same statement (gid -1, its dim and key in gateway and carrier).
_PG_EXACT = """
WITH m AS (
    SELECT status, substr(gateway, 1, {key_max}) AS gateway,
           substr(coalesce(carrier, '{unknown}'), 1, {key_max}) AS carrier, substr(error_code, 1, {key_max}) AS error,
           date_trunc('minute', submitted_at AT TIME ZONE 'UTC') AS sm,
           date_trunc('minute', delivered_at AT TIME ZONE 'UTC') AS dm,
           segments, ambiguous_resends, no_receipt{field_columns}
    FROM message WHERE campaign_id = :cid
)
SELECT GROUPING(status, gateway, carrier, error, sm, dm{field_names}) AS gid,
       status, gateway, carrier, error, sm, dm{field_names},
       count(*) AS n, sum(segments) AS seg, sum(ambiguous_resends) AS amb, count(*) FILTER (WHERE no_receipt) AS norc
FROM m
GROUP BY GROUPING SETS ((status), (gateway, status), (carrier, status), (error, status), (sm), (dm), (){field_sets})
UNION ALL
SELECT -1, status, dim, key, NULL, NULL, NULL{field_nulls}, -sum(n), NULL, NULL, NULL
FROM campaign_counter WHERE campaign_id = :cid AND NOT (dim = ANY(:excluded))
GROUP BY dim, key, status
"""


def _exact_postgres(
    session: Session, campaign_id: str, fields: Sequence[str], excluded: list[str], diff: dict[Cell, int]
) -> None:
    names = [f"f{i}" for i in range(len(fields))]
    sql = _PG_EXACT.format(
        key_max=KEY_MAX,
        unknown=UNKNOWN_CARRIER,
        field_columns="".join(
            f", substr(coalesce(fields ->> CAST(:{n} AS text), ''), 1, {KEY_MAX}) AS {n}" for n in names
        ),
        field_names="".join(f", {n}" for n in names),
        field_sets="".join(f", ({n}, status)" for n in names),
        field_nulls=", NULL" * len(names),
    )
    params: dict[str, Any] = {"cid": campaign_id, "excluded": excluded, **dict(zip(names, fields, strict=True))}
    width = 6 + len(names)

    def grouped(gid: int, *positions: int) -> bool:
        """Exactly these columns (0 status, 1 gateway, … 6+ fields) form the row's grouping set."""
        wanted = sum(1 << (width - 1 - p) for p in positions)
        return gid == (1 << width) - 1 - wanted

    for row in session.execute(text(sql), params):
        gid, status, gateway, carrier, error, sm, dm = row[:7]
        values = row[7 : 7 + len(names)]
        n, seg, amb, norc = (int(v or 0) for v in row[7 + len(names) :])
        if gid == -1:  # the journal: dim and key ride in gateway and carrier
            diff[(str(gateway), str(carrier), str(status))] += n
        elif grouped(gid, 0):
            diff[(STATUS, "", str(status))] += n
        elif grouped(gid, 1, 0):
            if gateway:
                diff[(GATEWAY, str(gateway), str(status))] += n
        elif grouped(gid, 2, 0):
            diff[(CARRIER, str(carrier), str(status))] += n
        elif grouped(gid, 3, 0):
            if error:
                diff[(ERROR, str(error), str(status))] += n
        elif grouped(gid, 4):
            if sm is not None:
                diff[(SENT_PER_MINUTE, sm.strftime("%Y-%m-%dT%H:%M"), "")] += n
        elif grouped(gid, 5):
            if dm is not None:
                diff[(DELIVERED_PER_MINUTE, dm.strftime("%Y-%m-%dT%H:%M"), "")] += n
        elif grouped(gid):
            for name, total in (("segments", seg), ("ambiguous_resends", amb), ("no_receipt", norc)):
                diff[(SUM, name, "")] += total
        else:
            for i, name in enumerate(fields):
                if grouped(gid, 6 + i, 0):
                    diff[(FIELD + name, str(values[i]), str(status))] += n


def reconcile(session: Session, campaign_id: str) -> int:
    """Make the journal agree with an exact count; returns how far the status counts were off
    (the sum of the absolute corrections of the status cells; 0: the deltas were exact)."""
    lock(session, campaign_id)
    options = session.scalar(select(col(Campaign.options)).where(col(Campaign.id) == campaign_id))
    if options is None:
        return 0
    state = state_of(session, campaign_id)
    fields = list(state.fields) if state else []
    # Retention purge blanks the fields: keep the counts by field taken while they existed.
    counted = [] if options.get("purged_at") else fields
    journal = (
        select(
            col(CampaignCounter.dim),
            col(CampaignCounter.key),
            col(CampaignCounter.status),
            -func.sum(col(CampaignCounter.n)),
        )
        .where(col(CampaignCounter.campaign_id) == campaign_id)
        .where(~col(CampaignCounter.dim).in_([FIELD + f for f in fields if f not in counted]))
        .group_by(col(CampaignCounter.dim), col(CampaignCounter.key), col(CampaignCounter.status))
    )
    # One statement, so the exact count and the journal come from the same snapshot: a batch
    # committing meanwhile is either in both or in neither.
    diff: dict[Cell, int] = defaultdict(int)
    if session.get_bind().dialect.name == "postgresql":
        excluded = [FIELD + f for f in fields if f not in counted]
        _exact_postgres(session, campaign_id, counted, excluded, diff)
    else:
        for dim, key, status, n in session.execute(union_all(*_exact_parts(session, campaign_id, counted), journal)):
            diff[(str(dim), str(key or ""), str(status or ""))] += int(n or 0)
    corrections = {cell: n for cell, n in diff.items() if n}
    append(session, {campaign_id: corrections})
    drift = sum(abs(n) for (dim, _, _), n in corrections.items() if dim == STATUS)
    upsert_state(session, campaign_id, reconciled_at=utcnow(), drift=drift)
    if corrections:
        # Expected for a campaign counted for the first time; otherwise a write path bypassed them.
        log.info(
            "counters of campaign %s corrected (status counts off by %s)",
            campaign_id,
            drift,
            extra={"campaign_id": campaign_id},
        )
    return drift


@dataclass(frozen=True)
class State:
    fields: list[str]
    reconciled_at: datetime | None
    drift: int
    progress_at: datetime | None
    final_at: datetime | None


def state_of(session: Session, campaign_id: str) -> State | None:
    # Core, not the ORM: the row changes through upserts, and an identity map would go stale.
    row = session.execute(
        select(
            col(ReportState.fields),
            col(ReportState.reconciled_at),
            col(ReportState.drift),
            col(ReportState.progress_at),
            col(ReportState.final_at),
        ).where(col(ReportState.campaign_id) == campaign_id)
    ).first()
    return State(list(row[0] or []), row[1], int(row[2] or 0), row[3], row[4]) if row else None


def upsert_state(session: Session, campaign_id: str, **values: Any) -> None:
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = ins(table_of(ReportState)).values({"campaign_id": campaign_id, "fields": [], "drift": 0, **values})
    session.execute(stmt.on_conflict_do_update(index_elements=["campaign_id"], set_=values))


def compact(session: Session, campaign_id: str) -> int:
    """Fold a campaign's journal into one row per non-zero cell; returns rows removed."""
    lock(session, campaign_id)
    sums: dict[Cell, int] = defaultdict(int)
    removed = 0
    for dim, key, status, n in session.execute(
        delete(CampaignCounter)
        .where(col(CampaignCounter.campaign_id) == campaign_id)
        .returning(
            col(CampaignCounter.dim), col(CampaignCounter.key), col(CampaignCounter.status), col(CampaignCounter.n)
        )
    ):
        sums[(dim, key, status)] += int(n)
        removed += 1
    append(session, {campaign_id: sums})
    return removed - sum(1 for n in sums.values() if n)


def forget(session: Session, campaign_id: str) -> None:
    """A deleted campaign's counters and state go with it."""
    session.execute(delete(CampaignCounter).where(col(CampaignCounter.campaign_id) == campaign_id))
    session.execute(delete(ReportState).where(col(ReportState.campaign_id) == campaign_id))
