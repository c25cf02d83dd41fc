"""Tables of the campaign domain: campaigns, uploads, messages (one per recipient), their events,
SMPP segments with provider ids, the receipt inbox, replies, suppressions and MNP overrides."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, Text, UniqueConstraint, text
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from accounts.models import new_id
from loa.timeutil import utcnow


class Channel(StrEnum):
    SMS = "sms"
    EMAIL = "email"


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class MessageStatus(StrEnum):
    QUEUED = "queued"
    DISPATCHING = "dispatching"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"
    BOUNCED = "bounced"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"


# Statuses from which a message never moves again (an email `sent` may still become `bounced`,
# an SMS `sent` waits for its receipt).
FINAL_STATUSES = frozenset(
    {
        MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERABLE,
        MessageStatus.EXPIRED,
        MessageStatus.REJECTED,
        MessageStatus.FAILED,
        MessageStatus.BOUNCED,
        MessageStatus.CANCELLED,
        MessageStatus.SUPPRESSED,
    }
)
PENDING_STATUSES = frozenset({MessageStatus.QUEUED, MessageStatus.DISPATCHING})


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITY_WEIGHT = {Priority.HIGH: 4, Priority.NORMAL: 2, Priority.LOW: 1}


# SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres needs 64 bits for billion-message waves.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")
_DISPATCHING = text("status = 'dispatching'")


def enum_column(enum: type[StrEnum], default: str | None = None, length: int = 16) -> Any:
    """A VARCHAR that reads back as the enum (no native Postgres enum types to migrate)."""
    return Column(
        SAEnum(
            enum,
            native_enum=False,
            create_constraint=False,
            length=length,
            values_callable=lambda e: [m.value for m in e],
        ),
        nullable=False,
        default=default,
        server_default=default,
    )


class Campaign(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("cmp"), primary_key=True, max_length=40)
    org_id: str = Field(foreign_key="organisation.id", index=True, max_length=40)
    name: str = Field(max_length=200)
    channel: Channel = Field(sa_column=enum_column(Channel))
    status: CampaignStatus = Field(default=CampaignStatus.DRAFT, sa_column=enum_column(CampaignStatus, "draft"))
    sender: str = Field(max_length=320)
    template: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    encoding: str = Field(default="auto", max_length=20)
    secret_fields: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Column names seen in uploads, in order (template placeholders are checked against them).
    fields: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    start_at: datetime | None = None
    window: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    deadline: datetime | None = None
    rate_limit: float | None = None
    priority: Priority = Field(default=Priority.NORMAL, sa_column=enum_column(Priority, "normal"))
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    waiting_for_window: bool = False
    failure_reason: str | None = Field(default=None, max_length=500)
    created_by: str | None = Field(default=None, max_length=40)
    approved_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    launched_at: datetime | None = None
    finished_at: datetime | None = None
    # Bumped on every dispatch pass; weighted round robin across campaigns uses it.
    dispatch_turn: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class Upload(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("upl"), primary_key=True, max_length=40)
    campaign_id: str = Field(foreign_key="campaign.id", index=True, max_length=40)
    filename: str | None = Field(default=None, max_length=255)
    total_rows: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    suppressed: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("campaign_id", "to", name="uq_message_campaign_to"),
        # With `id` last, the dispatcher's claim (a campaign's queued rows in id order) is a range
        # scan of this index whatever share of the campaign is already sent (see migration 0003).
        Index("ix_message_campaign_status_id", "campaign_id", "status", "id"),
        # Partial (migration 0004): a freshly imported message (queued) is not in it, so an import
        # does not maintain it, nor do `sent` and `delivered`. The queries over one gateway's
        # queue (depth, hand-over) say `status = 'dispatching'` (migration 0009 dropped the
        # `(gateway, status)` index they never used).
        Index("ix_message_dispatching", "lease_until", postgresql_where=_DISPATCHING, sqlite_where=_DISPATCHING),
        Index("ix_message_to", "to"),
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    # No foreign key (migration 0004): Postgres would check it with a query per imported row.
    # Deleting a campaign deletes its messages (campaigns.service.delete_campaign).
    campaign_id: str = Field(max_length=40)
    upload_id: str | None = Field(default=None, max_length=40)
    row: int | None = None
    to: str = Field(max_length=320)
    carrier: str | None = Field(default=None, max_length=40)
    gateway: str | None = Field(default=None, max_length=64)
    status: MessageStatus = Field(default=MessageStatus.QUEUED, sa_column=enum_column(MessageStatus, "queued"))
    fields: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # AES-GCM token of the secret fields (JSON); deleted once the message is final.
    secrets: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    segments: int = 1
    attempts: int = 0
    ambiguous_resends: int = 0
    next_attempt_at: datetime | None = None
    lease_until: datetime | None = None
    # Token of the dispatch that claimed this message: a send task only touches rows it claimed,
    # so a batch that was swept back and claimed again cannot be sent twice by a late task.
    claim: str | None = Field(default=None, max_length=32)
    provider_ids: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error_code: str | None = Field(default=None, max_length=40)
    error_text: str | None = Field(default=None, max_length=500)
    no_receipt: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    submitted_at: datetime | None = None
    delivered_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class MessageEvent(SQLModel, table=True):
    __tablename__ = "message_event"

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    message_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    at: datetime = Field(default_factory=utcnow)
    kind: str = Field(max_length=32)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class SmsSegment(SQLModel, table=True):
    """One submit_sm accepted by an SMSC: the provider id that its receipt will name."""

    __tablename__ = "sms_segment"
    __table_args__ = (UniqueConstraint("gateway", "provider_id", name="uq_sms_segment_gateway_provider_id"),)

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    message_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    gateway: str = Field(max_length=64)
    seq: int
    provider_id: str = Field(max_length=80)
    status: str | None = Field(default=None, max_length=16)
    submitted_at: datetime = Field(default_factory=utcnow)
    # Its final receipt (the first; later ones change nothing): the timeline's entry (migration 0006).
    receipt_at: datetime | None = None
    receipt_stat: str | None = Field(default=None, max_length=16)
    receipt_err: str | None = Field(default=None, max_length=16)


class ReceiptInbox(SQLModel, table=True):
    """Receipts committed before deliver_sm_resp goes back; applied in batches, parked if early."""

    __tablename__ = "receipt_inbox"
    # The applier reads fresh receipts first (migration 0005): a range scan, not a sort of the
    # whole inbox each batch when a backlog of parked receipts builds up. Nothing looks a receipt
    # up by its provider id here (the applier matches segments by theirs), so that index went in
    # migration 0008: every receipt of a wave is written here once and deleted once.
    __table_args__ = (Index("ix_receipt_inbox_attempts_id", "attempts", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    gateway: str = Field(max_length=64)
    provider_id: str = Field(max_length=80)
    state: str = Field(max_length=16)
    raw_stat: str | None = Field(default=None, max_length=16)
    err: str | None = Field(default=None, max_length=16)
    received_at: datetime = Field(default_factory=utcnow, index=True)
    attempts: int = 0


class Reply(SQLModel, table=True):
    """A mobile-originated message (not a receipt) that arrived on one of our binds."""

    id: int | None = Field(default=None, primary_key=True)
    gateway: str = Field(max_length=64)
    source: str = Field(max_length=32, index=True)
    destination: str = Field(max_length=32)
    text: str = Field(sa_column=Column(Text, nullable=False))
    campaign_id: str | None = Field(default=None, max_length=40, index=True)
    opt_out: bool = False
    received_at: datetime = Field(default_factory=utcnow)


class Suppression(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("org_id", "address", name="uq_suppression_org_address"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: str = Field(foreign_key="organisation.id", max_length=40)
    address: str = Field(max_length=320)
    reason: str = Field(default="manual", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class MnpOverride(SQLModel, table=True):
    __tablename__ = "mnp_override"
    __table_args__ = (UniqueConstraint("org_id", "number", name="uq_mnp_override_org_number"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: str = Field(foreign_key="organisation.id", max_length=40)
    number: str = Field(max_length=32)
    carrier: str = Field(max_length=40)
    created_at: datetime = Field(default_factory=utcnow)
