"""Time helpers: every timestamp is an aware UTC datetime (SQLModel stores them as UTC, and
Postgres as timestamptz); the API speaks ISO 8601 with `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_z(value: datetime | None) -> str | None:
    if value is None:
        return None
    return to_utc(value).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
