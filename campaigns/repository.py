"""Queries of the campaign domain. Functions take a session and only flush, never commit."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from campaigns.models import Campaign, Message, MessageStatus
from loa.errors import NotFound


def get_campaign(session: Session, org_id: str, campaign_id: str, *, for_update: bool = False) -> Campaign:
    stmt = select(Campaign).where(col(Campaign.id) == campaign_id, col(Campaign.org_id) == org_id)
    if for_update:
        stmt = stmt.with_for_update()
    campaign = session.scalars(stmt).first()
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


def empty_counts() -> dict[str, int]:
    counts = {status.value: 0 for status in MessageStatus}
    return {"total": 0, **counts}


def status_counts(session: Session, campaign_id: str) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Counts by status, overall and per gateway (one grouped query on an indexed column pair)."""
    rows = session.execute(
        select(col(Message.gateway), col(Message.status), func.count())
        .where(col(Message.campaign_id) == campaign_id)
        .group_by(col(Message.gateway), col(Message.status))
    ).all()
    overall = empty_counts()
    by_gateway: dict[str, dict[str, int]] = defaultdict(empty_counts)
    for gateway, status, count in rows:
        overall[str(status)] += count
        overall["total"] += count
        if gateway:
            by_gateway[gateway][str(status)] += count
            by_gateway[gateway]["total"] += count
    return overall, dict(by_gateway)


def campaign_stats(session: Session, campaign_id: str) -> dict[str, Any]:
    totals = session.execute(
        select(
            func.coalesce(func.sum(col(Message.segments)), 0),
            func.coalesce(func.sum(col(Message.ambiguous_resends)), 0),
            func.count().filter(col(Message.no_receipt).is_(True)),
        ).where(col(Message.campaign_id) == campaign_id)
    ).one()
    by_carrier: dict[str, dict[str, int]] = defaultdict(empty_counts)
    for carrier, status, count in session.execute(
        select(col(Message.carrier), col(Message.status), func.count())
        .where(col(Message.campaign_id) == campaign_id)
        .group_by(col(Message.carrier), col(Message.status))
    ):
        key = carrier or "unknown"
        by_carrier[key][str(status)] += count
        by_carrier[key]["total"] += count
    by_error = {
        str(code): count
        for code, count in session.execute(
            select(col(Message.error_code), func.count())
            .where(col(Message.campaign_id) == campaign_id, col(Message.error_code).is_not(None))
            .group_by(col(Message.error_code))
        )
    }
    return {
        "segments": int(totals[0]),
        "ambiguous_resends": int(totals[1]),
        "no_receipt": int(totals[2]),
        "by_carrier": dict(by_carrier),
        "by_error": by_error,
    }


def count_messages(session: Session, campaign_id: str) -> int:
    return int(session.scalar(select(func.count()).where(col(Message.campaign_id) == campaign_id)) or 0)
