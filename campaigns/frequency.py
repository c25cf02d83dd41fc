"""Frequency cap: at most N messages per recipient per 24 hours across an organisation's campaigns
(Decree 91/2020 allows advertisers three a day). Off unless the organisation sets
``frequency_cap`` (``PATCH /v1/org``).

It is enforced where a message is about to leave, when the dispatcher claims a batch, so it holds
whatever order campaigns are launched in and however long ago recipients were uploaded. A message
counts from the moment it is submitted (``submitted_at``); messages claimed by another batch and
not yet submitted count too, as if sent now, so two campaigns dispatched together cannot both slip
under the cap.

A recipient at the cap is **held, not skipped**: its message goes back to ``queued`` with
``next_attempt_at`` at the moment enough of its last-24-hour messages age out, ``error_code``
``frequency_cap`` and a reason, plus a ``held`` event on its timeline. The dispatcher leaves it
alone until then; if the campaign's deadline comes first, the scheduler expires it as it does any
unsent message. A census reminder that arrives a few hours late still does its job; one dropped
silently does not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, or_, select, update
from sqlmodel import Session, col

from accounts.models import Organisation
from campaigns.models import Campaign, Message, MessageEvent, MessageStatus
from loa.db import table_of
from loa.timeutil import iso_z, to_utc, utcnow

__all__ = ["CODE", "WINDOW", "hold_over_cap"]

WINDOW = timedelta(hours=24)
CODE = "frequency_cap"

Claimed = tuple[int, str, str | None]  # (message id, to, carrier) as the dispatcher picks them


def hold_over_cap(session: Session, campaign: Campaign, rows: Sequence[Claimed]) -> list[Claimed]:
    """The picked rows that may be sent now; the others wait in the queue until the cap allows
    them (see the module docstring)."""
    if not rows:
        return list(rows)
    cap = session.scalar(select(col(Organisation.frequency_cap)).where(col(Organisation.id) == campaign.org_id))
    if not cap or cap <= 0:
        return list(rows)
    now = utcnow()
    ids = [mid for mid, _, _ in rows]
    recent = (
        select(col(Message.to), col(Message.submitted_at))
        .join(Campaign, col(Campaign.id) == col(Message.campaign_id))
        .where(
            col(Campaign.org_id) == campaign.org_id,
            col(Message.to).in_({to for _, to, _ in rows}),
            or_(
                col(Message.submitted_at) > now - WINDOW,
                col(Message.status) == MessageStatus.DISPATCHING.value,
            ),
            col(Message.id).not_in(ids),
        )
    )
    sent_at: dict[str, list[datetime]] = defaultdict(list)
    for to, submitted in session.execute(recent):
        sent_at[to].append(now if submitted is None else to_utc(submitted))
    allowed: list[Claimed] = []
    held: list[_Held] = []
    for row in rows:
        times = sorted(sent_at.get(row[1], ()))
        if len(times) < cap:
            allowed.append(row)
        else:
            # One more fits once all but cap - 1 of them are older than the window.
            held.append(_Held(row[0], times[len(times) - cap] + WINDOW, len(times)))
    if held:
        _hold(session, held, cap, now)
    return allowed


@dataclass(frozen=True)
class _Held:
    message_id: int
    until: datetime
    recent: int  # messages to the recipient in the last 24 h


def _hold(session: Session, held: list[_Held], cap: int, now: datetime) -> None:
    table = table_of(Message)  # Core: an executemany of one UPDATE per held row
    session.execute(
        update(table)
        .where(table.c.id == bindparam("mid"), table.c.status == MessageStatus.QUEUED.value)
        .values(
            next_attempt_at=bindparam("until"),
            error_code=CODE,
            error_text=bindparam("reason"),
            updated_at=now,
        ),
        [
            {
                "mid": h.message_id,
                "until": h.until,
                "reason": f"frequency cap: {h.recent} messages in the last 24 h (cap {cap}); "
                f"held until {iso_z(h.until)}",
            }
            for h in held
        ],
    )
    session.execute(
        insert(MessageEvent),
        [
            {
                "message_id": h.message_id,
                "at": now,
                "kind": "held",
                "detail": {"reason": CODE, "until": iso_z(h.until), "cap": cap, "recent": h.recent},
            }
            for h in held
        ],
    )
