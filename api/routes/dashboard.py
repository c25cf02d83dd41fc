"""The operator dashboard (`/`, plain HTML + JS in `api/static/`, uPlot vendored: no CDN at run
time), `GET /v1/me` that tells the page which role the key has, and Prometheus `/metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from sqlmodel import Session, col

from api.deps import AnyRole, StateDep
from api.state import AppState
from campaigns import tally
from campaigns.models import Campaign, CampaignStatus
from loa import metrics
from workers.queues import DISPATCH_QUEUE, RECEIPTS_QUEUE, email_queue, sms_queue

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter()
ACTIVE = [CampaignStatus.SCHEDULED.value, CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value]
# kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in lists of their own.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
# Scripts and styles from this server only (the chart library is vendored); uPlot sets sizes
# through style attributes, hence 'unsafe-inline' for styles alone.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


@router.get("/", include_in_schema=False)
def dashboard() -> HTMLResponse:
    # The page holds no data: it asks for an API key and reads everything from /v1.
    return HTMLResponse(
        (STATIC / "index.html").read_text(encoding="utf-8"),
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get("/v1/me", tags=["dashboard"], summary="The calling key: its role and organisation")
def me(caller: AnyRole) -> dict[str, Any]:
    return {
        "key": {"id": caller.key.id, "name": caller.key.name, "role": caller.role.value, "prefix": caller.key.prefix},
        "org": {"id": caller.org.id, "name": caller.org.name},
    }


@router.get("/metrics", tags=["health"], summary="Prometheus metrics (bearer LOA_METRICS_TOKEN if set)")
def prometheus(request: Request, state: StateDep) -> Response:
    token = state.settings.metrics_token
    if token is not None:
        presented = request.headers.get("authorization", "").partition(" ")[2]
        if presented != token.get_secret_value():
            body = {"error": {"code": "unauthorized", "message": "metrics need the metrics token"}}
            return JSONResponse(body, status_code=401)
    live = metrics.LiveCollector(lambda: queue_depths(state), lambda: active_messages(state))
    return Response(metrics.render(state.settings, live), media_type=metrics.CONTENT_TYPE)


def queue_depths(state: AppState) -> dict[str, int]:
    if state.redis is None:
        return {}
    queues = [DISPATCH_QUEUE, RECEIPTS_QUEUE]
    queues += [sms_queue(g.name) for g in state.gateways.smpp]
    queues += [email_queue(r.name) for r in state.gateways.smtp]
    try:
        pipe = state.redis.pipeline(transaction=False)
        for q in queues:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(q + suffix)
        lengths = pipe.execute()
    except redis.RedisError:
        return {}
    per = len(PRIORITY_SUFFIXES)
    return {q: int(sum(lengths[i * per : (i + 1) * per])) for i, q in enumerate(queues)}


def active_messages(state: AppState) -> list[tuple[str, str, int]]:
    with Session(state.engine) as session:
        ids = list(session.scalars(select(col(Campaign.id)).where(col(Campaign.status).in_(ACTIVE))))
        return tally.status_totals(session, ids)
