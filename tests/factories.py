"""Plain factory functions with defaults for tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from accounts.models import Role
from accounts.service import create_key, get_or_create_org
from loa.db import transaction


def make_key(engine: Engine, role: Role = Role.ADMIN, org: str = "test-org", name: str = "test") -> str:
    with transaction(engine) as session:
        return create_key(session, get_or_create_org(session, org), role, name).key


def sms_campaign(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Census wave 1",
        "channel": "sms",
        "sender": "TCTK",
        "template": {"body": "Kính gửi {{ ten }}: Tổng điều tra kinh tế 2026."},
    }
    body.update(overrides)
    return body


def email_campaign(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Credentials",
        "channel": "email",
        "sender": "Tổng cục Thống kê <dieutra@gso.gov.vn>",
        "template": {"subject": "Tài khoản {{ don_vi }}", "body": "User {{ username }} / {{ password }}"},
        "secret_fields": ["password"],
    }
    body.update(overrides)
    return body
