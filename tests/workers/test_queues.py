"""Roles expand to queues (one per gateway), and docker-compose has a worker for every role."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateways.config import builtin_gateways
from workers.queues import ALL_ROLES, Role, parse_roles, queues_for_roles

ROOT = Path(__file__).resolve().parents[2]


def test_roles_expand_to_queues_per_gateway() -> None:
    gw = builtin_gateways()
    assert queues_for_roles([Role.SMS], gw) == ["sms.viettel", "sms.vinaphone", "sms.default"]
    assert queues_for_roles([Role.EMAIL], gw) == ["email.sink"]
    assert set(queues_for_roles(parse_roles(None), gw)) == {
        "dispatch",
        "receipts",
        "sms.viettel",
        "sms.vinaphone",
        "sms.default",
        "email.sink",
    }


def test_parse_roles() -> None:
    assert parse_roles("sms, receipts") == [Role.SMS, Role.RECEIPTS]
    assert parse_roles("") == list(ALL_ROLES)
    with pytest.raises(ValueError, match="unknown worker role 'smtp'"):
        parse_roles("sms,smtp")


def test_every_role_has_a_compose_worker() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    consumed: set[str] = set()
    for service in compose["services"].values():
        cmd = service.get("command") or []
        if cmd[:2] == ["loa", "worker"]:
            roles = cmd[cmd.index("-Q") + 1] if "-Q" in cmd else ""
            consumed.update(r.value for r in parse_roles(roles))
    assert consumed == {r.value for r in Role}
