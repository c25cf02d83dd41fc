"""Bounces mapped back to their message, and the signed keys that make that mapping safe.

Every email carries a *message key* ``<message id>-<tag>`` in its Message-ID
(``<key.random@sender-domain>``) and, with VERP on, in its envelope sender
(``bounce+<key>@domain``). The tag is an HMAC of the message id under a key derived from
``LOA_SECRET_KEY``: the bounce receiver listens on the open internet, and without the tag anyone
could mail it forged DSNs for sequential ids and put a census' recipients on the suppression list.
Keys written under an earlier secret (``LOA_OLD_SECRET_KEYS``) still verify.

What a bounce does (DESIGN "Email facts", RFC 3464):

* hard (``Action: failed`` with 5.x.x, or a plain bounce quoting a 5xx) -> the message becomes
  ``bounced`` and the address is suppressed;
* ``Action: failed`` with 4.x.x -> the reporting MTA gave up for a temporary cause (4.4.7 message
  expired, 4.2.2 mailbox full): final non-delivery, so the message becomes ``bounced``, but the
  address is valid and is *not* suppressed;
* ``Action: delayed`` and soft plain bounces -> recorded on the message's timeline only; the
  message may still arrive.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import insert, select, update
from sqlmodel import Session, col

from campaigns import counters
from campaigns.models import Campaign, Message, MessageEvent, MessageStatus
from campaigns.recipients import mark_suppressed
from gateways.smtp.bounces import Bounce, BounceKind, BounceParseError, parse_bounce
from gateways.smtp.message import message_key_from_message_id
from loa.errors import Invalid
from loa.timeutil import utcnow

__all__ = ["BounceKeys", "apply_bounce"]

_INFO = b"loa bounce message keys v1"
_TAG_CHARS = 12  # 48 bits of HMAC: forging one key takes ~2^47 tries against a rate-limited receiver
_KEY = re.compile(r"^(\d{1,18})-([0-9a-f]{12})$")
# A bounce can come back for a message that is sent, delivered (SMS-style statuses never apply
# to email, but a late bounce must still land) or queued again after an ambiguous send.
_BOUNCEABLE = [MessageStatus.SENT.value, MessageStatus.DELIVERED.value, MessageStatus.QUEUED.value]


@dataclass(frozen=True)
class BounceKeys:
    """Signs message ids into message keys and verifies them; built from the secret keys."""

    _keys: tuple[bytes, ...]

    @classmethod
    def from_secrets(cls, current: str, old: Sequence[str] = ()) -> BounceKeys:
        return cls(tuple(_derive(secret) for secret in (current, *old)))

    def message_key(self, message_id: int) -> str:
        return f"{message_id}-{_tag(self._keys[0], message_id)}"

    def message_id(self, key: str | None) -> int | None:
        """The message id a key was made for, or ``None`` when it is not one of ours."""
        match = _KEY.match(key or "")
        if match is None:
            return None
        message_id = int(match.group(1))
        if any(hmac.compare_digest(_tag(k, message_id), match.group(2)) for k in self._keys):
            return message_id
        return None


def _derive(secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode())


def _tag(key: bytes, message_id: int) -> str:
    return hmac.new(key, str(message_id).encode("ascii"), hashlib.sha256).hexdigest()[:_TAG_CHARS]


def apply_bounce(
    session: Session,
    raw: bytes,
    keys: BounceKeys,
    *,
    org_id: str | None = None,
    envelope_rcpt: str | None = None,
) -> dict[str, Any]:
    """Parse one bounce, find its message (within ``org_id`` when given) and apply it.

    Raises :class:`loa.errors.Invalid` (``not_a_bounce``) for mail that is no bounce. An
    unmatched bounce is not an error: the result says ``matched: false``.
    """
    try:
        bounce = parse_bounce(raw, envelope_rcpt=envelope_rcpt)
    except BounceParseError as exc:
        raise Invalid(f"not a bounce: {exc}", code="not_a_bounce") from None
    message = _find_message(session, bounce, keys, org_id)
    final = bounce.kind is BounceKind.HARD or bounce.action == "failed"
    result: dict[str, Any] = {
        "matched": message is not None,
        "kind": bounce.kind.value,
        "action": bounce.action,
        "status": bounce.status,
        "message_id": str(message.id) if message else None,
        "applied": None,
        "suppressed": False,
    }
    if message is None:
        return result
    now = utcnow()
    detail = {
        "kind": bounce.kind.value,
        "action": bounce.action,
        "status": bounce.status,
        "diagnostic": (bounce.diagnostic or "")[:300],
    }
    session.execute(insert(MessageEvent), [{"message_id": message.id, "at": now, "kind": "bounce", "detail": detail}])
    result["applied"] = "recorded"
    if not final:
        return result
    default_status = "5.0.0" if bounce.kind is BounceKind.HARD else "4.0.0"
    assert message.id is not None
    before = counters.snapshot(session, [message.id])
    changed = session.execute(
        update(Message)
        .where(col(Message.id) == message.id, col(Message.status).in_(_BOUNCEABLE))
        .values(
            status=MessageStatus.BOUNCED.value,
            error_code=f"bounce:{bounce.status or default_status}",
            error_text=(bounce.diagnostic or f"{bounce.kind.value} bounce")[:500],
            secrets=None,
            claim=None,
            next_attempt_at=None,
            updated_at=now,
        )
    )
    counters.apply_changes(session, before)
    if changed.rowcount:  # type: ignore[attr-defined]
        result["applied"] = "bounced"  # else it had failed or bounced already: the event says it
    if bounce.kind is BounceKind.HARD:
        campaign = session.get(Campaign, message.campaign_id)
        if campaign is not None:
            mark_suppressed(session, campaign.org_id, message.to, f"hard bounce {bounce.status or ''}".strip())
            result["suppressed"] = True
    return result


def _find_message(session: Session, bounce: Bounce, keys: BounceKeys, org_id: str | None) -> Message | None:
    # The VERP token is the stronger key (the bounce was addressed to it); the Message-ID is what
    # is left when VERP is off or a relay rewrote the envelope sender.
    candidates = [bounce.verp_token]
    if bounce.original_message_id:
        candidates.append(message_key_from_message_id(bounce.original_message_id))
    for key in candidates:
        message_id = keys.message_id(key)
        if message_id is None:
            continue
        stmt = select(Message).where(col(Message.id) == message_id)
        if org_id is not None:
            stmt = stmt.join(Campaign, col(Campaign.id) == col(Message.campaign_id)).where(
                col(Campaign.org_id) == org_id
            )
        message = session.scalars(stmt).first()
        if message is not None:
            return message
    return None
