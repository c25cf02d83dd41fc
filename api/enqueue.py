"""Work the API hands to the workers, always after the commit that makes it valid (a worker must
never look for a row that is not committed yet)."""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlmodel import Session

from api.state import AppState
from api.views import campaign_view
from campaigns.models import Campaign, CampaignStatus
from workers.celery_app import app as celery_app
from workers.halts import set_halt
from workers.queues import DISPATCH_QUEUE

log = logging.getLogger(__name__)


def after_commit_dispatch(session: Session, state: AppState, campaign: Campaign) -> dict[str, Any]:
    session.commit()
    if campaign.status is CampaignStatus.RUNNING and state.redis is not None:
        try:
            celery_app.send_task("loa.dispatch", queue=DISPATCH_QUEUE)
        except Exception:  # the scheduler tick dispatches within seconds anyway
            log.warning("could not enqueue a dispatch; the scheduler tick will pick the campaign up")
    return campaign_view(session, campaign)


def set_halt_flag(state: AppState, campaign_id: str, halted: bool) -> None:
    if state.redis is None:
        return
    try:
        set_halt(state.redis, campaign_id, halted)
    except redis.RedisError:
        log.warning("halt flag for %s not set: redis unavailable (workers re-check the database)", campaign_id)
