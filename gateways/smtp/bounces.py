"""Bounce parsing: RFC 3464 delivery status notifications and the plain-text kind.

:func:`parse_bounce` turns one raw bounce into a :class:`Bounce`: hard or soft, the failed
recipient, status and diagnostic, and the two keys that lead back to our message -- the VERP
token from the address the bounce was sent to (``bounce+<token>@domain``) and the Message-ID of
the original message (from the returned ``message/rfc822`` or ``text/rfc822-headers`` part).

Hard/soft rule: ``Action: failed`` with a 5.x.x status (or none) is hard; ``failed`` with a
4.x.x status (the MTA gave up on a temporary cause, e.g. 4.4.7 expired) and ``delayed`` are soft.
``Bounce.action`` tells a final failure from a delay warning: a *delayed* message may still
arrive, so it must not be marked bounced. Success reports and mail that is no bounce at all raise
:class:`BounceParseError`.
"""

from __future__ import annotations

import binascii
import email
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from enum import StrEnum

__all__ = ["Bounce", "BounceKind", "BounceParseError", "parse_bounce"]

# Enhanced status codes (RFC 3463), not parts of IP addresses or version numbers.
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_ENHANCED_FAILURE = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# A basic reply code where MTAs quote one: at a line start or after "said:".
_BASIC_REPLY = re.compile(r"(?:^|said:)\s*([45])\d\d(?=[\s-])", re.MULTILINE | re.IGNORECASE)
_MESSAGE_ID = re.compile(r"^Message-ID:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
_QMAIL_RECIPIENT = re.compile(r"^<([^<>\s]+@[^<>\s]+)>:\s*$", re.MULTILINE)
_ANGLE_ADDRESS = re.compile(r"<([^<>\s@]+@[^<>\s]+)>")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status )?notification|delivery fail|failure notice|"
    r"returned mail|mail delivery (failed|system)|non[- ]?delivery|could not be delivered|"
    r"delivery has failed|delayed mail|warning: message",
    re.IGNORECASE,
)
_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery (subsystem|system)", re.IGNORECASE)
_VERP_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_FINAL_ACTIONS = ("failed", "delayed")
_MAX_DIAGNOSTIC = 500


class BounceKind(StrEnum):
    HARD = "hard"
    SOFT = "soft"


@dataclass(frozen=True, slots=True)
class Bounce:
    kind: BounceKind
    recipient: str | None
    status: str | None  # enhanced status code, e.g. "5.1.1"
    diagnostic: str | None
    verp_token: str | None
    original_message_id: str | None  # "<...>" as in the original's Message-ID header
    action: str | None = None  # "failed" or "delayed" when the DSN says so


class BounceParseError(ValueError):
    """The input is not a bounce (or only reports successful delivery)."""


def parse_bounce(raw: bytes, *, verp_local_prefix: str = "bounce+", envelope_rcpt: str | None = None) -> Bounce:
    """Parse one bounce message; ``envelope_rcpt`` is RCPT TO when an SMTP receiver got it."""
    message = email.message_from_bytes(raw, policy=policy.compat32)
    verp_token = _verp_token(message, verp_local_prefix, envelope_rcpt)
    report = _find_part(message, "message/delivery-status")
    if report is not None:
        return _from_dsn(message, report, verp_token)
    return _from_plain(message, verp_token, verp_local_prefix)


# -- RFC 3464 ---------------------------------------------------------------------------------


def _from_dsn(message: Message, report: Message, verp_token: str | None) -> Bounce:
    blocks = _status_blocks(report)
    # Block 0 holds the per-message fields; the rest describe one recipient each.
    recipients = blocks[1:] if len(blocks) > 1 else blocks
    chosen: Message | None = None
    for wanted in _FINAL_ACTIONS:
        chosen = next((b for b in recipients if _action(b) == wanted), None)
        if chosen is not None:
            break
    if chosen is None:
        actions = sorted({_action(b) or "none" for b in recipients})
        raise BounceParseError(f"delivery status report without a failed or delayed recipient ({', '.join(actions)})")

    action = _action(chosen)
    diagnostic = _field_value(chosen.get("Diagnostic-Code"))
    status = _status_code(chosen.get("Status")) or _status_code(diagnostic)
    if action == "delayed":
        kind = BounceKind.SOFT
    else:
        kind = BounceKind.SOFT if status is not None and status.startswith("4") else BounceKind.HARD
    recipient = _address(_field_value(chosen.get("Final-Recipient")) or _field_value(chosen.get("Original-Recipient")))
    return Bounce(
        kind=kind,
        recipient=recipient,
        status=status,
        diagnostic=_short(diagnostic),
        verp_token=verp_token,
        original_message_id=_original_message_id(message),
        action=action,
    )


def _status_blocks(report: Message) -> list[Message]:
    payload = report.get_payload()
    encoding = str(report.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(payload, list):
        blocks = [block for block in payload if isinstance(block, Message)]
        if encoding != "base64":
            return blocks
        # The parser split the base64 text as if it were field blocks: reassemble, decode.
        encoded = "".join(str(block.get_payload()) for block in blocks)
        try:
            text = binascii.a2b_base64(encoded).decode("utf-8", "replace")
        except binascii.Error:
            return []
    else:
        raw = report.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    parser = HeaderParser()
    text = text.replace("\r\n", "\n")
    return [parser.parsestr(block.strip() + "\n") for block in re.split(r"\n\s*\n", text) if block.strip()]


def _action(block: Message) -> str | None:
    value = block.get("Action")
    return str(value).strip().split()[0].lower() if value and str(value).strip() else None


def _original_message_id(message: Message) -> str | None:
    original = _find_part(message, "message/rfc822")
    if original is not None:
        payload = original.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(inner, Message) and inner.get("Message-ID"):
            return _clean_message_id(str(inner["Message-ID"]))
    headers = _find_part(message, "text/rfc822-headers")
    if headers is not None:
        raw = headers.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(headers.get_payload())
        match = _MESSAGE_ID.search(text.replace("\r\n", "\n"))
        if match:
            return match.group(1)
    return None


# -- plain bounces ----------------------------------------------------------------------------


def _from_plain(message: Message, verp_token: str | None, verp_prefix: str) -> Bounce:
    sender = str(message.get("From", ""))
    subject = str(message.get("Subject", ""))
    return_path = str(message.get("Return-Path", "")).strip()
    looks_like_bounce = (
        verp_token is not None
        or return_path == "<>"
        or bool(_BOUNCE_SENDER.search(sender))
        or bool(_BOUNCE_SUBJECT.search(subject))
    )
    if not looks_like_bounce:
        raise BounceParseError("not a bounce: no delivery status report, bounce sender or subject")

    text = _body_text(message)
    status_match = _ENHANCED_FAILURE.search(text)
    reply_match = _BASIC_REPLY.search(text)
    status = ".".join(status_match.groups()) if status_match else None
    hard = status.startswith("5") if status is not None else bool(reply_match and reply_match.group(1) == "5")
    diagnostic_at = status_match or reply_match
    diagnostic = None
    if diagnostic_at is not None:
        line_start = text.rfind("\n", 0, diagnostic_at.start()) + 1
        line_end = text.find("\n", diagnostic_at.end())
        diagnostic = text[line_start : line_end if line_end >= 0 else None].strip()
    # The original headers often come back inline after the explanation.
    message_id_match = _MESSAGE_ID.search(text)
    return Bounce(
        kind=BounceKind.HARD if hard else BounceKind.SOFT,
        recipient=_plain_recipient(text, verp_prefix),
        status=status,
        diagnostic=_short(diagnostic),
        verp_token=verp_token,
        original_message_id=(message_id_match.group(1) if message_id_match else None) or _original_message_id(message),
        action=None,
    )


def _plain_recipient(text: str, verp_prefix: str) -> str | None:
    """qmail's ``<addr>:`` line, else the first quoted address that is not ours or a daemon's."""
    qmail = _QMAIL_RECIPIENT.search(text)
    if qmail:
        return qmail.group(1).lower()
    for match in _ANGLE_ADDRESS.finditer(text):
        address = match.group(1).lower()
        if not address.startswith(verp_prefix.lower()) and not _BOUNCE_SENDER.search(address):
            return address
    return None


def _body_text(message: Message) -> str:
    chunks: list[str] = []
    for part in message.walk():
        if part.get_content_maintype() == "text" and not part.is_multipart():
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    chunks.append(raw.decode(charset, "replace"))
                except LookupError:
                    chunks.append(raw.decode("utf-8", "replace"))
    return "\n".join(chunks).replace("\r\n", "\n")


# -- shared helpers ---------------------------------------------------------------------------


def _find_part(message: Message, content_type: str) -> Message | None:
    """First part of that type, not looking inside returned messages (they are not ours)."""
    if message.get_content_type() == content_type:
        return message
    if message.is_multipart() and message.get_content_type() != "message/rfc822":
        payload = message.get_payload()
        if isinstance(payload, list):
            for part in payload:
                if isinstance(part, Message):
                    found = _find_part(part, content_type)
                    if found is not None:
                        return found
    return None


def _verp_token(message: Message, prefix: str, envelope_rcpt: str | None) -> str | None:
    candidates = [envelope_rcpt] if envelope_rcpt else []
    for header in _VERP_HEADERS:
        candidates.extend(str(value) for value in message.get_all(header, []))
    prefix = prefix.lower()
    for _name, address in getaddresses(candidates):
        local = address.rpartition("@")[0]
        if local.lower().startswith(prefix) and len(local) > len(prefix):
            return local[len(prefix) :]
    return None


def _field_value(value: object) -> str | None:
    """``"rfc822; user@x"`` -> ``"user@x"``; unfolds and trims; ``None`` for empty."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    kind, sep, rest = text.partition(";")
    text = rest.strip() if sep and " " not in kind.strip() else text
    return text or None


def _status_code(value: object) -> str | None:
    match = _ENHANCED.search(str(value)) if value else None
    return ".".join(match.groups()) if match else None


def _address(value: str | None) -> str | None:
    if not value:
        return None
    address = value.strip().strip("<>").strip()
    return address.lower() if "@" in address else None


def _clean_message_id(value: str) -> str:
    value = " ".join(value.split())
    match = re.search(r"<[^>\s]+>", value)
    return match.group(0) if match else value


def _short(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text[:_MAX_DIAGNOSTIC] if text else None
