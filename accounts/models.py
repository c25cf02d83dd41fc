"""Tables for organisations, API keys, the audit log and idempotent POST replays."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from loa.timeutil import utcnow


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Role(StrEnum):
    ADMIN = "admin"
    SENDER = "sender"
    OPERATOR = "operator"


class Organisation(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("org"), primary_key=True, max_length=40)
    name: str = Field(max_length=200, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    # Launch rules: four-eyes approval above this many recipients, and a daily message quota.
    approval_threshold: int | None = None
    daily_quota: int | None = None
    # At most this many messages per recipient per 24 h across campaigns (None = off).
    frequency_cap: int | None = None


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: str = Field(default_factory=lambda: new_id("key"), primary_key=True, max_length=40)
    org_id: str = Field(foreign_key="organisation.id", index=True, max_length=40)
    name: str = Field(default="", max_length=200)
    role: Role = Field(
        sa_column=Column(
            SAEnum(
                Role,
                native_enum=False,
                create_constraint=False,
                length=16,
                values_callable=lambda e: [m.value for m in e],
            ),
            nullable=False,
        )
    )
    # SHA-256 of the whole key: keys are 32 random bytes, so a slow KDF adds nothing.
    key_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_entry"

    id: int | None = Field(default=None, primary_key=True)
    org_id: str = Field(foreign_key="organisation.id", index=True, max_length=40)
    key_id: str | None = Field(default=None, max_length=40)
    action: str = Field(max_length=64)
    target: str | None = Field(default=None, max_length=80)
    at: datetime = Field(default_factory=utcnow, index=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("org_id", "key", name="uq_idempotency_record_org_key"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: str = Field(max_length=40)
    key: str = Field(max_length=200)
    request_hash: str = Field(max_length=64)
    status_code: int
    body: str
    created_at: datetime = Field(default_factory=utcnow, index=True)
