"""Worker roles and the queues each one consumes: the one place that names queues.

Roles: `dispatch` (scheduler tick, dispatcher, maintenance), `sms` (one queue per SMPP gateway),
`email` (one queue per SMTP relay), `receipts` (receipt inbox, bounces, webhooks).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from gateways.config import GatewaysConfig


class Role(StrEnum):
    DISPATCH = "dispatch"
    SMS = "sms"
    EMAIL = "email"
    RECEIPTS = "receipts"


DISPATCH_QUEUE = "dispatch"
RECEIPTS_QUEUE = "receipts"
ALL_ROLES = tuple(Role)


def sms_queue(gateway: str) -> str:
    return f"sms.{gateway}"


def email_queue(relay: str) -> str:
    return f"email.{relay}"


def parse_roles(text: str | None) -> list[Role]:
    """`dispatch,sms` → roles; None or empty → every role. Raises ValueError naming a bad role."""
    if not text:
        return list(ALL_ROLES)
    roles: list[Role] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        try:
            role = Role(name)
        except ValueError:
            raise ValueError(f"unknown worker role {name!r} (choose from {', '.join(r.value for r in Role)})") from None
        if role not in roles:
            roles.append(role)
    return roles or list(ALL_ROLES)


def queues_for_roles(roles: Iterable[Role], gateways: GatewaysConfig) -> list[str]:
    queues: list[str] = []
    for role in roles:
        if role is Role.DISPATCH:
            queues.append(DISPATCH_QUEUE)
        elif role is Role.SMS:
            queues.extend(sms_queue(g.name) for g in gateways.smpp)
        elif role is Role.EMAIL:
            queues.extend(email_queue(r.name) for r in gateways.smtp)
        elif role is Role.RECEIPTS:
            queues.append(RECEIPTS_QUEUE)
    return queues


def is_send_queue(queue: str) -> bool:
    return queue.startswith(("sms.", "email."))
