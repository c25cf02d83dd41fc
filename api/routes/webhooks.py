"""Webhooks of the caller's organisation: register (the signing secret is shown once), list,
delete, see recent deliveries, send a test event. Admin keys only: a webhook receives every
campaign's figures."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import insert, select
from sqlmodel import col

from accounts.service import audit
from api.deps import Admin, SessionDep, StateDep
from campaigns import webhooks
from campaigns.report_models import Webhook, WebhookDelivery
from loa.errors import NotFound
from loa.timeutil import iso_z, utcnow

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookIn(BaseModel):
    url: str = Field(max_length=2000, description="http(s) URL that receives the POSTs")
    events: list[str] = Field(
        default_factory=lambda: [webhooks.PROGRESS, webhooks.REPORT],
        description=f"any of {', '.join(webhooks.EVENTS)}",
    )
    secret: str | None = Field(
        default=None, min_length=16, max_length=200, description="signing secret (generated if not given)"
    )
    progress_interval_s: int = Field(60, ge=webhooks.MIN_INTERVAL_S, le=86400)
    description: str = Field("", max_length=200)


def webhook_view(hook: Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": hook.events,
        "progress_interval_s": hook.progress_interval_s,
        "description": hook.description,
        "created_at": iso_z(hook.created_at),
    }


def delivery_view(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": str(d.id),
        "event": d.event,
        "status": d.status,
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": iso_z(d.created_at),
        "next_attempt_at": iso_z(d.next_attempt_at) if d.status == "pending" else None,
        "delivered_at": iso_z(d.delivered_at),
    }


@router.get("", summary="Webhooks of the organisation (never their secrets)")
def list_webhooks(caller: Admin, session: SessionDep) -> dict[str, Any]:
    return {"items": [webhook_view(h) for h in webhooks.active(session, caller.org.id)]}


@router.post("", status_code=201, summary="Register a callback URL; the signing secret is shown only here")
def create(body: WebhookIn, caller: Admin, session: SessionDep, state: StateDep) -> dict[str, Any]:
    hook, secret = webhooks.register(
        session,
        state.box,
        caller.org.id,
        body.url,
        body.events,
        secret=body.secret,
        progress_interval_s=body.progress_interval_s,
        description=body.description,
        created_by=caller.key.id,
    )
    audit(session, caller.org.id, caller.key.id, "webhook.create", hook.id, url=hook.url, events=hook.events)
    return {**webhook_view(hook), "secret": secret}


@router.delete("/{webhook_id}", status_code=204, summary="Delete a webhook (pending deliveries are dropped)")
def delete(webhook_id: str, caller: Admin, session: SessionDep) -> Response:
    webhooks.remove(session, caller.org.id, webhook_id)
    audit(session, caller.org.id, caller.key.id, "webhook.delete", webhook_id)
    return Response(status_code=204)


def _hook(session: SessionDep, org_id: str, webhook_id: str) -> Webhook:
    hook = session.scalars(
        select(Webhook).where(
            col(Webhook.id) == webhook_id, col(Webhook.org_id) == org_id, col(Webhook.deleted_at).is_(None)
        )
    ).first()
    if hook is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return hook


@router.get("/{webhook_id}/deliveries", summary="Recent deliveries, newest first")
def deliveries(
    webhook_id: str, caller: Admin, session: SessionDep, limit: int = Query(50, ge=1, le=500)
) -> dict[str, Any]:
    hook = _hook(session, caller.org.id, webhook_id)
    rows = session.scalars(
        select(WebhookDelivery)
        .where(col(WebhookDelivery.webhook_id) == hook.id)
        .order_by(col(WebhookDelivery.id).desc())
        .limit(limit)
    )
    return {"items": [delivery_view(d) for d in rows]}


@router.post("/{webhook_id}/test", status_code=202, summary="Queue a `webhook.test` POST to this webhook")
def test(webhook_id: str, caller: Admin, session: SessionDep) -> dict[str, Any]:
    hook = _hook(session, caller.org.id, webhook_id)
    now = utcnow()
    payload = {"event": "webhook.test", "at": iso_z(now), "webhook_id": hook.id}
    session.execute(
        insert(WebhookDelivery),
        [{"webhook_id": hook.id, "event": "webhook.test", "payload": payload, "next_attempt_at": now}],
    )
    return {"queued": True}
