"""Campaign routes: create, list, read, edit, delete, clone, lifecycle actions, preview."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import literal, select, tuple_
from sqlmodel import Session, col

from accounts.service import audit
from api.deps import AnyRole, Sender, SessionDep, StateDep
from api.enqueue import after_commit_dispatch, set_halt_flag
from api.views import campaign_view, decode_cursor, encode_cursor
from campaigns import repository, service
from campaigns.lifecycle import Action
from campaigns.models import Campaign, CampaignStatus, Channel, Message
from campaigns.schemas import CampaignCreate, CampaignUpdate, CloneIn
from campaigns.templates import render
from gateways.smpp.codec import EncodingPolicy, UnencodableError, prepare
from loa.errors import Invalid
from loa.timeutil import to_utc

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

PREVIEW_SAMPLES = 5
PREVIEW_EXACT_LIMIT = 20_000
MASK = "******"


@router.post("", status_code=201, summary="Create a campaign (draft)")
def create(body: CampaignCreate, caller: Sender, session: SessionDep) -> dict[str, Any]:
    campaign = service.create_campaign(session, caller.org, caller.key, body)
    return campaign_view(session, campaign)


@router.get("", summary="List campaigns, newest first")
def list_campaigns(
    caller: AnyRole,
    session: SessionDep,
    status: CampaignStatus | None = None,
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = None,
) -> dict[str, Any]:
    stmt = select(Campaign).where(col(Campaign.org_id) == caller.org.id)
    if status is not None:
        stmt = stmt.where(col(Campaign.status) == status.value)
    after = decode_cursor(cursor)
    if after is not None:
        stmt = stmt.where(
            tuple_(col(Campaign.created_at), col(Campaign.id))
            < tuple_(literal(_cursor_time(after[0])), literal(after[1]))
        )
    rows = list(
        session.scalars(stmt.order_by(col(Campaign.created_at).desc(), col(Campaign.id).desc()).limit(limit + 1))
    )
    items = [campaign_view(session, c) for c in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor([last.created_at.isoformat(), last.id])
    return {"items": items, "next_cursor": next_cursor}


def _cursor_time(value: str) -> datetime:
    try:
        return to_utc(datetime.fromisoformat(value))
    except (TypeError, ValueError):
        raise Invalid("invalid cursor", {"field": "cursor"}) from None


@router.get("/{campaign_id}", summary="A campaign with its counts by status, gateway, carrier and error")
def get(campaign_id: str, caller: AnyRole, session: SessionDep) -> dict[str, Any]:
    return campaign_view(session, repository.get_campaign(session, caller.org.id, campaign_id))


@router.patch("/{campaign_id}", summary="Edit a draft")
def patch(campaign_id: str, body: CampaignUpdate, caller: Sender, session: SessionDep) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    service.update_campaign(session, campaign, body)
    return campaign_view(session, campaign)


@router.delete("/{campaign_id}", status_code=204, summary="Delete a draft")
def delete(campaign_id: str, caller: Sender, session: SessionDep) -> Response:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    service.delete_campaign(session, campaign)
    audit(session, caller.org.id, caller.key.id, "campaign.delete", campaign_id)
    return Response(status_code=204)


@router.post(
    "/{campaign_id}/clone", status_code=201, summary="Clone (optionally with all or the undelivered recipients)"
)
def clone(campaign_id: str, caller: Sender, session: SessionDep, body: CloneIn | None = None) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    copy = service.clone_campaign(session, campaign, caller.key, body or CloneIn())
    return campaign_view(session, copy)


@router.post("/{campaign_id}/approve", summary="Four-eyes approval by a second key")
def approve(campaign_id: str, caller: Sender, session: SessionDep) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    service.approve(session, campaign, caller.key)
    return campaign_view(session, campaign)


@router.post("/{campaign_id}/launch", summary="Launch: scheduled, or running at once when due")
def launch(campaign_id: str, caller: Sender, session: SessionDep, state: StateDep) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id, for_update=True)
    service.launch(session, caller.org, campaign, caller.key)
    return after_commit_dispatch(session, state, campaign)


def _action(action: Action, halt: bool | None) -> Any:
    def handler(campaign_id: str, caller: Sender, session: SessionDep, state: StateDep) -> dict[str, Any]:
        campaign = repository.get_campaign(session, caller.org.id, campaign_id, for_update=True)
        service.transition(session, campaign, action, caller.key)
        if halt is not None:
            set_halt_flag(state, campaign.id, halt)
        return after_commit_dispatch(session, state, campaign)

    return handler


router.post("/{campaign_id}/pause", summary="Pause: no new submits within seconds")(_action(Action.PAUSE, True))
router.post("/{campaign_id}/resume", summary="Resume where it stopped")(_action(Action.RESUME, False))
router.post("/{campaign_id}/cancel", summary="Cancel: the rest becomes cancelled")(_action(Action.CANCEL, True))


@router.get("/{campaign_id}/preview", summary="Rendered samples (secrets masked) with encoding and segments")
def preview(campaign_id: str, caller: AnyRole, session: SessionDep) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    return build_preview(session, campaign)


def build_preview(session: Session, campaign: Campaign) -> dict[str, Any]:
    masked = dict.fromkeys(campaign.secret_fields, MASK)
    stmt = (
        select(col(Message.to), col(Message.fields))
        .where(col(Message.campaign_id) == campaign.id)
        .order_by(col(Message.id))
    )
    samples: list[dict[str, Any]] = []
    messages = segments = 0
    encodings: set[str] = set()
    for to, fields in session.execute(stmt.limit(PREVIEW_EXACT_LIMIT)):
        rendered = render(campaign.template, {**fields, **masked})
        sample: dict[str, Any] = {"to": to}
        if campaign.channel is Channel.SMS:
            try:
                prepared = prepare(rendered.body or "", EncodingPolicy(campaign.encoding))
                sample |= {"text": prepared.text, "encoding": prepared.encoding.value, "segments": prepared.segments}
                segments += prepared.segments
                encodings.add(prepared.encoding.value)
            except UnencodableError as exc:
                sample |= {
                    "text": rendered.body,
                    "encoding": None,
                    "segments": 0,
                    "error": f"characters that do not fit: {' '.join(exc.chars)}",
                }
        else:
            sample |= {"subject": rendered.subject, "text": rendered.body, "html": rendered.html, "segments": 1}
            segments += 1
        messages += 1
        if len(samples) < PREVIEW_SAMPLES:
            samples.append(sample)
    total = repository.count_messages(session, campaign.id)
    estimated = total > messages
    if estimated and messages:
        segments = round(segments * total / messages)
    encoding = (
        (encodings.pop() if len(encodings) == 1 else "mixed")
        if encodings
        else ("email" if campaign.channel is Channel.EMAIL else campaign.encoding)
    )
    return {
        "encoding": encoding,
        "samples": samples,
        "totals": {"messages": total, "segments": segments, "estimated": estimated},
    }
