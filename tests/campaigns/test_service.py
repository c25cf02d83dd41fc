"""Campaign services on a real database, below the API: the daily-quota usage count, the
approval fingerprint, and what a clone keeps of its source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert
from sqlmodel import Session

from accounts.models import Role
from accounts.service import create_key, get_or_create_org
from campaigns.launching import approval_fingerprint, messages_used_today
from campaigns.models import Campaign, CampaignStatus, Channel, Message, MessageStatus
from campaigns.schemas import CloneIn
from campaigns.service import clone_campaign
from loa.db import transaction

NOW = datetime.now(UTC)


def _campaign(session: Session, org_id: str, status: CampaignStatus, **values: Any) -> Campaign:
    campaign = Campaign(
        org_id=org_id, name=status.value, channel=Channel.SMS, sender="TCTK", template={"body": "x"}, status=status
    )
    for name, value in values.items():
        setattr(campaign, name, value)
    session.add(campaign)
    session.flush()
    return campaign


def _messages(
    session: Session, campaign: Campaign, rows: list[tuple[MessageStatus, datetime | None]], start: int = 0
) -> None:
    session.execute(
        insert(Message),
        [
            {
                "campaign_id": campaign.id,
                "to": f"+8496{campaign.id[-4:]}{i:03d}",
                "status": s.value,
                "submitted_at": at,
                "fields": {},
            }
            for i, (s, at) in enumerate(rows, start=start)
        ],
    )


def test_usage_counts_sends_of_the_last_24h_and_what_active_campaigns_still_hold(db: Engine) -> None:
    with transaction(db) as session:
        org = get_or_create_org(session, "gso").id
        other = get_or_create_org(session, "someone-else").id
        running = _campaign(session, org, CampaignStatus.RUNNING)
        _messages(session, running, [(MessageStatus.QUEUED, None)] * 3 + [(MessageStatus.DELIVERED, NOW)] * 2)
        paused = _campaign(session, org, CampaignStatus.PAUSED)
        _messages(session, paused, [(MessageStatus.QUEUED, None), (MessageStatus.DISPATCHING, None)])
        recent = _campaign(session, org, CampaignStatus.COMPLETED, finished_at=NOW - timedelta(hours=1))
        _messages(
            session,
            recent,
            [(MessageStatus.DELIVERED, NOW - timedelta(hours=2)), (MessageStatus.FAILED, NOW - timedelta(hours=30))],
        )
        cancelled = _campaign(session, org, CampaignStatus.CANCELLED, finished_at=NOW)
        _messages(session, cancelled, [(MessageStatus.CANCELLED, None)] * 4)
        old = _campaign(session, org, CampaignStatus.COMPLETED, finished_at=NOW - timedelta(days=3))
        _messages(session, old, [(MessageStatus.DELIVERED, NOW - timedelta(days=3))] * 5)
        draft = _campaign(session, org, CampaignStatus.DRAFT)
        _messages(session, draft, [(MessageStatus.QUEUED, None)] * 7)
        theirs = _campaign(session, other, CampaignStatus.RUNNING)
        _messages(session, theirs, [(MessageStatus.QUEUED, None)] * 9)
    with Session(db) as session:
        # running: 3 waiting + 2 sent now; paused: 2 waiting; recent: 1 sent within 24 h.
        assert messages_used_today(session, org) == 8
        assert messages_used_today(session, other) == 9


def test_the_approval_fingerprint_changes_with_settings_and_recipients(db: Engine) -> None:
    with transaction(db) as session:
        org = get_or_create_org(session, "gso").id
        campaign = _campaign(session, org, CampaignStatus.DRAFT)
        _messages(session, campaign, [(MessageStatus.QUEUED, None)] * 2)
        before = approval_fingerprint(session, campaign)
        assert approval_fingerprint(session, campaign) == before
        campaign.name = "renamed"  # the name is not what an approver vouches for
        assert approval_fingerprint(session, campaign) == before
        campaign.template = {"body": "y"}
        changed = approval_fingerprint(session, campaign)
        assert changed != before
        _messages(session, campaign, [(MessageStatus.QUEUED, None)], start=2)
        assert approval_fingerprint(session, campaign) != changed


def test_a_clone_keeps_settings_but_not_system_state(db: Engine) -> None:
    with transaction(db) as session:
        org = get_or_create_org(session, "gso")
        key = create_key(session, org, Role.SENDER).record
        source = _campaign(
            session,
            org.id,
            CampaignStatus.COMPLETED,
            options={"ambiguous": "hold", "test_of": "cmp_x", "approval": {"by": "k"}, "purged_at": "2026"},
            approved_by="key_someone",
            start_at=NOW - timedelta(days=1),
            deadline=NOW + timedelta(days=1),
            window={"start": "07:00", "end": "22:00", "tz": "Asia/Ho_Chi_Minh"},
        )
        clone = clone_campaign(session, source, key, CloneIn())
        assert clone.status is CampaignStatus.DRAFT
        assert clone.options == {"ambiguous": "hold"}
        assert clone.approved_by is None
        assert clone.start_at is None  # in the past: the clone starts when launched
        assert clone.deadline == source.deadline
        assert clone.window == source.window
        assert clone.created_by == key.id
