"""Tables of the reporting side: live counters and their per-campaign state, the message change
feed for webhooks, webhook subscriptions and their delivery outbox, and export jobs.

None of these tables has a foreign key to `campaign`: writers append counter rows while an API
request may hold the campaign row `FOR UPDATE` (pause, cancel), and a key-share lock taken by a
foreign-key check would make those two wait on each other. Rows of deleted campaigns are removed
by the code that deletes them (`counters.forget`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, Text
from sqlmodel import Field, SQLModel

from accounts.models import new_id
from campaigns.models import BIG_ID
from loa.timeutil import utcnow


class CampaignCounter(SQLModel, table=True):
    """An append-only journal of counter deltas: a campaign's count in a cell (dimension, key,
    status) is the sum of its rows. Writers append one row per changed cell per batch (no hot row
    to update); compaction folds them, reconciliation appends the correction to an exact count."""

    __tablename__ = "campaign_counter"

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    campaign_id: str = Field(max_length=40, index=True)
    dim: str = Field(max_length=80)
    key: str = Field(max_length=200)
    status: str = Field(max_length=16)
    n: int = Field(sa_column=Column(BigInteger, nullable=False))


class ReportState(SQLModel, table=True):
    """Per campaign: the recipient fields counted live, and when the counters were last checked
    against an exact count, the last progress webhook and the final report."""

    __tablename__ = "report_state"

    campaign_id: str = Field(primary_key=True, max_length=40)
    fields: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    reconciled_at: datetime | None = None
    # How far the status counts were off at the last reconciliation (0: the deltas were exact).
    drift: int = 0
    progress_at: datetime | None = None
    final_at: datetime | None = None


class MessageChange(SQLModel, table=True):
    """Status changes of messages whose organisation asked for `message.status` webhooks; the
    webhook sender batches them and deletes what it has handed to the outbox."""

    __tablename__ = "message_change"
    # Ids order a message's changes (`seq` in the webhook): SQLite must never reuse one.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    org_id: str = Field(max_length=40, index=True)
    campaign_id: str = Field(max_length=40)
    message_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    to: str = Field(max_length=320)
    status: str = Field(max_length=16)
    error_code: str | None = Field(default=None, max_length=40)
    at: datetime = Field(default_factory=utcnow)


class Webhook(SQLModel, table=True):
    """A callback URL of an organisation. The signing secret is stored encrypted (AES-GCM)."""

    id: str = Field(default_factory=lambda: new_id("whk"), primary_key=True, max_length=40)
    org_id: str = Field(max_length=40, index=True)
    url: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret: str = Field(sa_column=Column(Text, nullable=False))
    progress_interval_s: int = 60
    description: str = Field(default="", max_length=200)
    created_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None


class WebhookDelivery(SQLModel, table=True):
    """One POST to make (and retry): the outbox of webhooks."""

    __tablename__ = "webhook_delivery"
    # The id is the X-Loa-Delivery header receivers deduplicate on: never reused (SQLite too).
    __table_args__ = (
        Index("ix_webhook_delivery_status_next", "status", "next_attempt_at"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    webhook_id: str = Field(max_length=40, index=True)
    event: str = Field(max_length=40)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending | delivered | failed
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


class ExportJob(SQLModel, table=True):
    """A report written in the background (XLSX of a large campaign); its file lives in chunks."""

    __tablename__ = "export_job"

    id: str = Field(default_factory=lambda: new_id("exp"), primary_key=True, max_length=40)
    org_id: str = Field(max_length=40, index=True)
    campaign_id: str = Field(max_length=40, index=True)
    format: str = Field(default="xlsx", max_length=8)
    status: str = Field(default="pending", max_length=16)  # pending | running | done | failed
    rows_total: int = 0
    rows_done: int = 0
    sheets: int = 0
    size: int = 0
    error: str | None = Field(default=None, max_length=500)
    created_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None


class ExportChunk(SQLModel, table=True):
    """1 MiB pieces of an export's file, so API and workers need no shared disk."""

    __tablename__ = "export_chunk"

    export_id: str = Field(primary_key=True, max_length=40)
    seq: int = Field(primary_key=True)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
