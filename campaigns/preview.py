"""The campaign preview: a few rendered samples (secret fields masked) with their encoding and
segment count, and totals of messages and segments.

Totals are exact up to `EXACT_LIMIT` messages; beyond that the segment total is extrapolated from
the first `EXACT_LIMIT` (and says `estimated: true`), so a preview of a million-row wave answers
in well under a second. Suppressed recipients are never sent, so they are left out.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from campaigns.models import Campaign, Channel, Message, MessageStatus
from campaigns.templates import render, render_error
from gateways.smpp.codec import EncodingPolicy, UnencodableError, prepare

SAMPLES = 5
EXACT_LIMIT = 10_000
MASK = "******"  # GSM-7 safe, so a masked preview counts like the real text


def masked(campaign: Campaign) -> dict[str, str]:
    return dict.fromkeys(campaign.secret_fields, MASK)


def sample_for(campaign: Campaign, to: str, values: dict[str, Any]) -> dict[str, Any]:
    """One rendered message as the preview and the test send show it; problems become `error`."""
    sample: dict[str, Any] = {"to": to}
    try:
        rendered = render(campaign.template, values)
    except Exception as exc:  # any template failure is the user's to fix, never a 500
        return sample | {"text": None, "encoding": None, "segments": 0, "error": render_error(exc)}
    if campaign.channel is Channel.SMS:
        try:
            prepared = prepare(rendered.body or "", EncodingPolicy(campaign.encoding))
        except UnencodableError as exc:
            return sample | {
                "text": rendered.body,
                "encoding": None,
                "segments": 0,
                "error": f"characters that do not fit {campaign.encoding}: {' '.join(exc.chars)}",
                "characters": list(exc.chars),
            }
        return sample | {"text": prepared.text, "encoding": prepared.encoding.value, "segments": prepared.segments}
    return sample | {
        "subject": rendered.subject,
        "text": rendered.body,
        "html": rendered.html,
        "encoding": "email",
        "segments": 1,
    }


def build_preview(session: Session, campaign: Campaign) -> dict[str, Any]:
    sendable = (col(Message.campaign_id) == campaign.id, col(Message.status) != MessageStatus.SUPPRESSED.value)
    rows = session.execute(
        select(col(Message.to), col(Message.fields)).where(*sendable).order_by(col(Message.id)).limit(EXACT_LIMIT)
    )
    hidden = masked(campaign)
    samples: list[dict[str, Any]] = []
    rendered = segments = errors = 0
    encodings: set[str] = set()
    for to, fields in rows:
        sample = sample_for(campaign, to, {**fields, **hidden})
        rendered += 1
        segments += sample["segments"]
        if sample.get("error"):
            errors += 1
        elif sample["encoding"]:
            encodings.add(sample["encoding"])
        if len(samples) < SAMPLES:
            samples.append(sample)
    total = int(session.scalar(select(func.count()).select_from(Message).where(*sendable)) or 0)
    estimated = total > rendered
    if estimated and rendered:
        segments = round(segments * total / rendered)
    if len(encodings) == 1:
        encoding = encodings.pop()
    elif encodings:
        encoding = "mixed"
    else:
        encoding = "email" if campaign.channel is Channel.EMAIL else campaign.encoding
    return {
        "encoding": encoding,
        "policy": campaign.encoding if campaign.channel is Channel.SMS else None,
        "samples": samples,
        "totals": {"messages": total, "segments": segments, "errors": errors, "estimated": estimated},
    }
