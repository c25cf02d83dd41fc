"""Organisations, API keys (random, shown once, stored hashed) and the audit log."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from accounts.models import ApiKey, AuditEntry, Organisation, Role
from loa.errors import NotFound
from loa.timeutil import utcnow

KEY_PREFIX = "loa_"
DEFAULT_ORG = "default"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 32 random bytes


def get_or_create_org(session: Session, name: str) -> Organisation:
    org = session.scalars(select(Organisation).where(col(Organisation.name) == name)).first()
    if org is None:
        org = Organisation(name=name)
        session.add(org)
        session.flush()
    return org


@dataclass(frozen=True)
class IssuedKey:
    key: str  # the only time the plain key exists
    record: ApiKey


def create_key(
    session: Session, org: Organisation, role: Role, name: str = "", *, value: str | None = None
) -> IssuedKey:
    key = value or generate_key()
    record = ApiKey(org_id=org.id, role=role, name=name, key_hash=hash_key(key), prefix=key[:10])
    session.add(record)
    session.flush()
    return IssuedKey(key=key, record=record)


def ensure_key(session: Session, value: str, org_name: str = DEFAULT_ORG) -> ApiKey:
    """Make sure an admin key with exactly this value exists (LOA_BOOTSTRAP_ADMIN_KEY)."""
    existing = session.scalars(select(ApiKey).where(col(ApiKey.key_hash) == hash_key(value))).first()
    if existing is not None:
        if existing.revoked_at is not None:
            existing.revoked_at = None
        return existing
    org = get_or_create_org(session, org_name)
    return create_key(session, org, Role.ADMIN, "bootstrap", value=value).record


def authenticate(session: Session, presented: str) -> ApiKey | None:
    digest = hash_key(presented)
    record = session.scalars(select(ApiKey).where(col(ApiKey.key_hash) == digest)).first()
    if record is None or record.revoked_at is not None:
        return None
    # The lookup is by hash already; compare again in constant time for good measure.
    if not hmac.compare_digest(record.key_hash, digest):
        return None
    return record


def revoke_key(session: Session, key_id: str, org_id: str | None = None) -> ApiKey:
    stmt = select(ApiKey).where(col(ApiKey.id) == key_id)
    if org_id is not None:
        stmt = stmt.where(col(ApiKey.org_id) == org_id)
    record = session.scalars(stmt).first()
    if record is None:
        raise NotFound(f"key {key_id} not found")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


def list_keys(session: Session, org_id: str | None = None) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(col(ApiKey.created_at))
    if org_id is not None:
        stmt = stmt.where(col(ApiKey.org_id) == org_id)
    return list(session.scalars(stmt))


def audit(
    session: Session, org_id: str, key_id: str | None, action: str, target: str | None = None, **detail: Any
) -> None:
    session.add(AuditEntry(org_id=org_id, key_id=key_id, action=action, target=target, detail=detail))


def any_key_exists(session: Session) -> bool:
    return session.scalars(select(col(ApiKey.id)).limit(1)).first() is not None
