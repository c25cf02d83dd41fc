"""Campaign routes: create, list, read, edit, delete, clone, approve, launch, pause, resume,
cancel, preview and test sends. Handlers only translate HTTP to the campaign services."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from sqlmodel import Session

from api.deps import AnyRole, Caller, Sender, SessionDep, StateDep
from api.enqueue import after_commit_dispatch, set_halt_flag
from api.state import AppState
from api.views import campaign_view, encode_cursor, time_id_cursor
from campaigns import launching, repository, service
from campaigns.lifecycle import Action
from campaigns.models import CampaignStatus
from campaigns.preview import build_preview
from campaigns.schemas import CampaignCreate, CampaignUpdate, CloneIn, SendTestIn
from campaigns.testsend import start_test_send

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])


@router.post("", status_code=201, summary="Create a campaign (a draft)")
def create(body: CampaignCreate, caller: Sender, session: SessionDep) -> dict[str, Any]:
    campaign = service.create_campaign(session, caller.org, caller.key, body)
    return campaign_view(session, campaign)


@router.get("", summary="List campaigns, newest first (test sends only with `test_of`)")
def list_campaigns(
    caller: AnyRole,
    session: SessionDep,
    status: CampaignStatus | None = None,
    test_of: Annotated[str | None, Query(max_length=40, description="list the test sends of this campaign")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    rows = service.list_campaigns(
        session, caller.org.id, status=status, test_of=test_of, after=time_id_cursor(cursor), limit=limit + 1
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor([last.created_at.isoformat(), last.id])
    return {"items": [campaign_view(session, c) for c in rows[:limit]], "next_cursor": next_cursor}


@router.get("/{campaign_id}", summary="A campaign with its counts by status, gateway, carrier and error")
def get(campaign_id: str, caller: AnyRole, session: SessionDep) -> dict[str, Any]:
    return campaign_view(session, repository.get_campaign(session, caller.org.id, campaign_id))


@router.patch("/{campaign_id}", summary="Edit a draft (fields left out keep their value)")
def patch(campaign_id: str, body: CampaignUpdate, caller: Sender, session: SessionDep) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id, for_update=True)
    service.update_campaign(session, campaign, caller.key, body)
    return campaign_view(session, campaign)


@router.delete("/{campaign_id}", status_code=204, summary="Delete a draft and its recipients")
def delete(campaign_id: str, caller: Sender, session: SessionDep) -> Response:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id, for_update=True)
    service.delete_campaign(session, campaign, caller.key)
    return Response(status_code=204)


@router.post(
    "/{campaign_id}/clone",
    status_code=201,
    summary="Clone into a new draft: settings only, or with all or the undelivered recipients",
)
def clone(
    campaign_id: str, caller: Sender, session: SessionDep, body: Annotated[CloneIn | None, Body()] = None
) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    copy = service.clone_campaign(session, campaign, caller.key, body or CloneIn())
    return campaign_view(session, copy)


@router.post(
    "/{campaign_id}/approve",
    summary="Four-eyes approval by a key other than the creator's (needed above the approval threshold)",
)
def approve(campaign_id: str, caller: Sender, session: SessionDep) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id, for_update=True)
    launching.approve(session, campaign, caller.key)
    return campaign_view(session, campaign)


@router.post("/{campaign_id}/launch", summary="Launch: running at once when due, else scheduled")
def launch(campaign_id: str, caller: Sender, session: SessionDep, state: StateDep) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id, for_update=True)
    launching.launch(session, caller.org, campaign, caller.key)
    return after_commit_dispatch(session, state, campaign)


def _act(
    campaign_id: str, caller: Caller, session: Session, state: AppState, action: Action, halt: bool
) -> dict[str, Any]:
    """Pause, resume and cancel: one transition, then the workers' halt flag, then a dispatch kick."""
    campaign = repository.get_campaign(session, caller.org.id, campaign_id, for_update=True)
    launching.transition(session, campaign, action, caller.key)
    set_halt_flag(state, campaign.id, halt)
    return after_commit_dispatch(session, state, campaign)


@router.post("/{campaign_id}/pause", summary="Pause: no new submits within seconds")
def pause(campaign_id: str, caller: Sender, session: SessionDep, state: StateDep) -> dict[str, Any]:
    return _act(campaign_id, caller, session, state, Action.PAUSE, halt=True)


@router.post("/{campaign_id}/resume", summary="Resume where it stopped (scheduled again if start_at is ahead)")
def resume(campaign_id: str, caller: Sender, session: SessionDep, state: StateDep) -> dict[str, Any]:
    return _act(campaign_id, caller, session, state, Action.RESUME, halt=False)


@router.post("/{campaign_id}/cancel", summary="Cancel: every message not sent yet becomes cancelled")
def cancel(campaign_id: str, caller: Sender, session: SessionDep, state: StateDep) -> dict[str, Any]:
    return _act(campaign_id, caller, session, state, Action.CANCEL, halt=True)


@router.get("/{campaign_id}/preview", summary="Rendered samples (secrets masked) with encoding and segments")
def preview(campaign_id: str, caller: AnyRole, session: SessionDep) -> dict[str, Any]:
    return build_preview(session, repository.get_campaign(session, caller.org.id, campaign_id))


@router.post(
    "/{campaign_id}/test",
    status_code=202,
    summary="Test send: the rendered message to a few addresses now, not counted in the campaign",
)
def send_test(
    campaign_id: str, body: SendTestIn, caller: Sender, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    sent = start_test_send(session, campaign, caller.key, body.recipients, state.box)
    view = after_commit_dispatch(session, state, sent.campaign)
    return {
        "test_campaign": view["id"],
        "test_of": campaign.id,
        "status": view["status"],
        "accepted": sent.result.accepted,
        "suppressed": sent.result.suppressed,
        "duplicates": sent.result.duplicates,
        "samples": sent.samples,
    }
