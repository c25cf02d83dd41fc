"""The scheduler tick: starts due campaigns, opens and closes send windows, expires what passed
its deadline, returns messages whose lease expired (their worker died) and completes campaigns.

Every step is a conditional update, so two ticks at once do no harm (the Celery task also takes a
Redis lock, and only one beat sends ticks; see workers/celery_app.py). Messages waiting for a
retry (`next_attempt_at`) need no step here: the dispatcher claims them once their time came.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, insert, or_, select, text, update
from sqlmodel import Session, col

from campaigns import counters
from campaigns.models import Campaign, CampaignStatus, Channel, Message, MessageEvent, MessageStatus
from campaigns.sending import is_inflight
from campaigns.windows import in_window
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

ACTIVE = [CampaignStatus.SCHEDULED.value, CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value]
PENDING = [MessageStatus.QUEUED.value, MessageStatus.DISPATCHING.value]
# Rows swept per tick: bounded so one tick stays short after a big crash; the next takes the rest.
SWEEP_LIMIT = 5000


def start_due(session: Session) -> int:
    now = utcnow()
    result = session.execute(
        update(Campaign)
        .where(
            col(Campaign.status) == CampaignStatus.SCHEDULED.value,
            or_(col(Campaign.start_at).is_(None), col(Campaign.start_at) <= now),
        )
        .values(status=CampaignStatus.RUNNING.value, updated_at=now)
    )
    started = int(result.rowcount)  # type: ignore[attr-defined]
    if started:
        log.info("started %s due campaigns", started)
    return started


def update_windows(session: Session) -> int:
    """Flag running campaigns outside their send window (they stay `running`, so a user's pause
    and the window never collide); returns how many changed."""
    now = utcnow()
    changed = 0
    for campaign in session.scalars(
        select(Campaign).where(col(Campaign.status) == CampaignStatus.RUNNING.value, col(Campaign.window).is_not(None))
    ):
        waiting = not in_window(campaign.window, now)
        if waiting != campaign.waiting_for_window:
            campaign.waiting_for_window = waiting
            campaign.updated_at = now
            changed += 1
            log.info(
                "campaign %s %s its send window",
                campaign.id,
                "outside" if waiting else "inside",
                extra={"campaign_id": campaign.id},
            )
    session.flush()
    return changed


def expire_past_deadline(session: Session) -> int:
    """Queued messages of campaigns past their deadline expire (in-flight ones finish first)."""
    now = utcnow()
    overdue = select(col(Campaign.id)).where(col(Campaign.status).in_(ACTIVE), col(Campaign.deadline) < now)
    result = session.execute(
        update(Message)
        .where(col(Message.campaign_id).in_(overdue), col(Message.status) == MessageStatus.QUEUED.value)
        .values(
            status=MessageStatus.EXPIRED.value,
            error_code="deadline",
            error_text="deadline passed before sending",
            secrets=None,
            updated_at=now,
        ),
        execution_options={"synchronize_session": False},
    )
    expired = int(result.rowcount)  # type: ignore[attr-defined]
    if expired:  # set-based (maybe millions): feed and recount the campaigns, not row by row
        for campaign_id in list(session.scalars(overdue)):
            counters.bulk_changed(
                session, campaign_id, col(Message.status) == MessageStatus.EXPIRED.value, col(Message.updated_at) == now
            )
    return expired


def sweep_expired_leases(
    session: Session, *, max_attempts: int = 5, limit: int = SWEEP_LIMIT, expired_before: datetime | None = None
) -> dict[str, int]:
    """Messages a dead (or cut-off) worker had claimed go back to the queue.

    Only rows marked in flight (their submit was under way) may have reached the carrier: those
    count as an ambiguous resend and use an attempt, or fail when attempts are used up or their
    campaign's policy is `hold`. Rows the worker never got to are plainly re-queued.
    `expired_before`: sweep only leases that ran out before then (the moment the SMS send
    journals were recovered; a lease that ran out since waits for the next tick)."""
    now = utcnow()
    cutoff = expired_before or now
    pick = (
        select(col(Message.id), col(Message.claim), col(Message.attempts), col(Message.campaign_id))
        .where(col(Message.status) == MessageStatus.DISPATCHING.value, col(Message.lease_until) < cutoff)
        .order_by(col(Message.id))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    rows = session.execute(pick).all()
    if not rows:
        return {}
    before = counters.snapshot(session, (int(r[0]) for r in rows))
    policies = _ambiguous_policies(session, {str(r[3]) for r in rows if is_inflight(r[1])})
    plain: list[int] = []
    resend: list[int] = []
    give_up: list[int] = []
    for mid, claim, attempts, campaign_id in rows:
        if not is_inflight(claim):
            plain.append(int(mid))
        elif policies.get(str(campaign_id)) == "hold" or int(attempts) + 1 >= max_attempts:
            give_up.append(int(mid))
        else:
            resend.append(int(mid))
    back = {"status": MessageStatus.QUEUED.value, "claim": None, "lease_until": None, "updated_at": now}
    if plain:
        session.execute(update(Message).where(col(Message.id).in_(plain)).values(**back))
    if resend:
        session.execute(
            update(Message)
            .where(col(Message.id).in_(resend))
            .values(
                **back,
                attempts=col(Message.attempts) + 1,
                ambiguous_resends=col(Message.ambiguous_resends) + 1,
                next_attempt_at=None,
            )
        )
    if give_up:
        session.execute(
            update(Message)
            .where(col(Message.id).in_(give_up))
            .values(
                status=MessageStatus.FAILED.value,
                claim=None,
                lease_until=None,
                updated_at=now,
                attempts=col(Message.attempts) + 1,
                error_code="ambiguous",
                error_text="the worker sending it was lost; the carrier may or may not have it",
                secrets=None,
            )
        )
    events = [
        {"message_id": mid, "at": now, "kind": "lease_expired", "detail": {"in_flight": in_flight}}
        for ids, in_flight in ((plain, False), (resend, True), (give_up, True))
        for mid in ids
    ]
    session.execute(insert(MessageEvent), events)
    counters.apply_changes(session, before)
    log.warning(
        "lease expired: %s messages re-queued, %s resent as ambiguous, %s failed as ambiguous",
        len(plain),
        len(resend),
        len(give_up),
    )
    return {"requeued": len(plain), "ambiguous": len(resend), "failed": len(give_up)}


def _ambiguous_policies(session: Session, campaign_ids: set[str]) -> dict[str, str]:
    if not campaign_ids:
        return {}
    rows = session.execute(select(col(Campaign.id), col(Campaign.options)).where(col(Campaign.id).in_(campaign_ids)))
    return {str(cid): str((options or {}).get("ambiguous", "resend")) for cid, options in rows}


def complete_finished(session: Session, receipt_timeout: timedelta) -> list[str]:
    """Running campaigns with nothing pending become completed; an SMS `sent` counts as final once
    its receipt timeout passed (it keeps `sent` and is flagged `no_receipt`)."""
    now = utcnow()
    done: list[str] = []
    for campaign in session.scalars(select(Campaign).where(col(Campaign.status) == CampaignStatus.RUNNING.value)):
        mine = col(Message.campaign_id) == campaign.id
        if session.scalar(select(exists().where(mine, col(Message.status).in_(PENDING)))):
            continue
        if campaign.channel is Channel.SMS:
            awaiting = (mine, col(Message.status) == MessageStatus.SENT.value)
            if session.scalar(select(exists().where(*awaiting, col(Message.submitted_at) > now - receipt_timeout))):
                continue
            session.execute(
                update(Message).where(*awaiting).values(no_receipt=True),
                execution_options={"synchronize_session": False},
            )
        campaign.status = CampaignStatus.COMPLETED
        campaign.waiting_for_window = False
        campaign.finished_at = now
        campaign.updated_at = now
        done.append(campaign.id)
        log.info("campaign %s completed", campaign.id, extra={"campaign_id": campaign.id})
    session.flush()
    return done


def purge_retention(session: Session, retention_days: int) -> int:
    """Personal fields of campaigns finished longer than the retention period are deleted."""
    cutoff = utcnow() - timedelta(days=retention_days)
    ended = [CampaignStatus.COMPLETED.value, CampaignStatus.CANCELLED.value, CampaignStatus.FAILED.value]
    purged = 0
    for campaign in session.scalars(
        select(Campaign).where(col(Campaign.status).in_(ended), col(Campaign.finished_at) < cutoff)
    ):
        if campaign.options.get("purged_at"):
            continue
        result = session.execute(
            update(Message).where(col(Message.campaign_id) == campaign.id).values(fields={}, secrets=None),
            execution_options={"synchronize_session": False},
        )
        campaign.options = {**campaign.options, "purged_at": utcnow().isoformat()}
        purged += int(result.rowcount)  # type: ignore[attr-defined]
    return purged


def tick(
    session: Session,
    receipt_timeout: timedelta,
    *,
    max_attempts: int = 5,
    leases_expired_before: datetime | None = None,
) -> dict[str, Any]:
    started = start_due(session)
    windows = update_windows(session)
    expired = expire_past_deadline(session)
    swept = sweep_expired_leases(session, max_attempts=max_attempts, expired_before=leases_expired_before)
    completed = complete_finished(session, receipt_timeout)
    return {
        "started": started,
        "windows": windows,
        "expired": expired,
        "swept": sum(swept.values()),
        "completed": len(completed),
    }


# A wave changes `message` faster than autovacuum's default 10 % threshold notices on a big
# table (10M changes on 100M rows), and the claim's plan goes wrong with statistics that predate
# the wave (see `campaigns.dispatch.claim`). ANALYZE samples ~30k rows (0.3 s on 1M) and blocks
# neither reads nor writes.
ANALYZE_EVERY_S = 60
ANALYZE_AFTER_ROWS = 50_000
_STALE_MESSAGE_STATISTICS = text(
    "SELECT n_mod_since_analyze > greatest(:rows, 0.02 * n_live_tup)"
    " AND coalesce(greatest(last_analyze, last_autoanalyze), '-infinity') < now() - make_interval(secs => :every)"
    " FROM pg_stat_user_tables WHERE relid = 'message'::regclass"
)


def refresh_statistics(session: Session) -> bool:
    """ANALYZE `message` when enough of it changed since the last analysis (Postgres only)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    stale = session.scalar(_STALE_MESSAGE_STATISTICS, {"rows": ANALYZE_AFTER_ROWS, "every": ANALYZE_EVERY_S})
    if stale:
        session.execute(text("ANALYZE message"))
    return bool(stale)
