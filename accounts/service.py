"""Organisations, API keys (random, shown once, stored hashed) and the audit log.

Creating and revoking a key is audited here, whoever does it (API, CLI, bootstrap), so no path
can skip the record.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from accounts.models import ApiKey, AuditEntry, Organisation, Role
from accounts.schemas import OrgSettingsIn
from loa.errors import NotFound
from loa.timeutil import utcnow

KEY_PREFIX = "loa_"
KEY_BYTES = 32
DEFAULT_ORG = "default"
ORG_SETTINGS = ("approval_threshold", "daily_quota", "frequency_cap")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def get_or_create_org(session: Session, name: str) -> Organisation:
    org = session.scalars(select(Organisation).where(col(Organisation.name) == name)).first()
    if org is None:
        org = Organisation(name=name)
        session.add(org)
        session.flush()
    return org


def audit(
    session: Session, org_id: str, key_id: str | None, action: str, target: str | None = None, **detail: Any
) -> None:
    session.add(AuditEntry(org_id=org_id, key_id=key_id, action=action, target=target, detail=detail))


@dataclass(frozen=True)
class IssuedKey:
    key: str  # the only time the plain key exists
    record: ApiKey


def create_key(
    session: Session,
    org: Organisation,
    role: Role,
    name: str = "",
    *,
    value: str | None = None,
    actor: str | None = None,
    via: str = "local",
) -> IssuedKey:
    """A new key; `actor` is the key that asked for it (None from the command line: `via`)."""
    key = value or generate_key()
    # The prefix identifies a key in listings; it is the public "loa_" plus four characters.
    record = ApiKey(org_id=org.id, role=role, name=name, key_hash=hash_key(key), prefix=key[:8])
    session.add(record)
    session.flush()
    audit(session, org.id, actor, "key.create", record.id, role=role.value, name=name, via=via)
    return IssuedKey(key=key, record=record)


def ensure_key(session: Session, value: str, org_name: str = DEFAULT_ORG) -> ApiKey:
    """Make sure an admin key with exactly this value exists (LOA_BOOTSTRAP_ADMIN_KEY)."""
    existing = session.scalars(select(ApiKey).where(col(ApiKey.key_hash) == hash_key(value))).first()
    if existing is not None:
        if existing.revoked_at is not None:
            existing.revoked_at = None
            audit(session, existing.org_id, None, "key.restore", existing.id, via="bootstrap")
        return existing
    org = get_or_create_org(session, org_name)
    return create_key(session, org, Role.ADMIN, "bootstrap", value=value, via="bootstrap").record


def authenticate(session: Session, presented: str) -> ApiKey | None:
    digest = hash_key(presented)
    record = session.scalars(select(ApiKey).where(col(ApiKey.key_hash) == digest)).first()
    if record is None or record.revoked_at is not None:
        return None
    # The lookup is by hash already; compare again in constant time for good measure.
    if not hmac.compare_digest(record.key_hash, digest):
        return None
    return record


def revoke_key(
    session: Session, key_id: str, org_id: str | None = None, *, actor: str | None = None, via: str = "local"
) -> ApiKey:
    """Revoke at once: every request authenticates against the database, so the next one fails."""
    stmt = select(ApiKey).where(col(ApiKey.id) == key_id)
    if org_id is not None:
        stmt = stmt.where(col(ApiKey.org_id) == org_id)
    record = session.scalars(stmt).first()
    if record is None:
        raise NotFound(f"key {key_id} not found")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        audit(session, record.org_id, actor, "key.revoke", record.id, via=via)
    return record


def list_keys(session: Session, org_id: str | None = None) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.id))
    if org_id is not None:
        stmt = stmt.where(col(ApiKey.org_id) == org_id)
    return list(session.scalars(stmt))


def any_key_exists(session: Session) -> bool:
    return session.scalars(select(col(ApiKey.id)).limit(1)).first() is not None


def org_settings(org: Organisation) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, **{name: getattr(org, name) for name in ORG_SETTINGS}}


def update_org_settings(session: Session, org: Organisation, key_id: str, data: OrgSettingsIn) -> Organisation:
    changes = {
        name: {"from": getattr(org, name), "to": getattr(data, name)}
        for name in data.model_fields_set
        if getattr(org, name) != getattr(data, name)
    }
    for name, change in changes.items():
        setattr(org, name, change["to"])
    if changes:
        audit(session, org.id, key_id, "org.update", org.id, **changes)
    return org
