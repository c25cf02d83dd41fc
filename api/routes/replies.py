"""Replies (MO messages) that arrived on the SMPP binds, shown per campaign: the campaign that last
wrote to the number they came from. Opt-out replies are flagged; their numbers are suppressed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlmodel import col

from api.deps import AnyRole, SessionDep
from api.views import encode_cursor, int_cursor
from campaigns.models import Reply
from campaigns.repository import get_campaign
from loa.timeutil import iso_z

router = APIRouter(prefix="/v1", tags=["campaigns"])


_EXAMPLE = {
    "items": [
        {
            "from": "+84961234567",
            "to": "TCTK",
            "text": "Từ chối",
            "opt_out": True,
            "gateway": "viettel",
            "received_at": "2026-11-22T08:31:02Z",
        }
    ],
    "next_cursor": None,
}


@router.get(
    "/campaigns/{campaign_id}/replies",
    summary="Replies to a campaign's SMS, newest first",
    responses={200: {"content": {"application/json": {"example": _EXAMPLE}}}},
)
def replies(
    campaign_id: str,
    caller: AnyRole,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
    opt_out: Annotated[bool | None, Query(description="only opt-outs (true) or only the others (false)")] = None,
) -> dict[str, Any]:
    campaign = get_campaign(session, caller.org.id, campaign_id)
    stmt = select(Reply).where(col(Reply.campaign_id) == campaign.id)
    if opt_out is not None:
        stmt = stmt.where(col(Reply.opt_out).is_(opt_out))
    before = int_cursor(cursor)
    if before is not None:
        stmt = stmt.where(col(Reply.id) < before)
    rows = list(session.scalars(stmt.order_by(col(Reply.id).desc()).limit(limit + 1)))
    return {
        "items": [
            {
                "from": r.source,
                "to": r.destination,
                "text": r.text,
                "opt_out": r.opt_out,
                "gateway": r.gateway,
                "received_at": iso_z(r.received_at),
            }
            for r in rows[:limit]
        ],
        "next_cursor": encode_cursor(rows[limit - 1].id) if len(rows) > limit else None,
    }
