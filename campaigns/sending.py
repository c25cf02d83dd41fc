"""The database halves of a send batch: load and render before the network call, record the
outcomes in bulk after it. The session is closed in between, so a slow carrier never holds a
database connection.

Before rows go on the wire they are marked *in flight* (`begin_submit`: their claim token gets
a suffix), and their outcomes are recorded after it: the SMS path marks a whole batch and journals
the SMSC's answers in Redis meanwhile (workers/sms_journal.py), the email path goes slice by slice
(:class:`BatchLedger`). A worker that dies leaves in-flight rows (maybe accepted by the carrier:
ambiguous) apart from rows it never touched (plainly unsent), and the lease sweep counts only the
former in `ambiguous_resends`. The mark is also an ownership check: a row that was swept,
paused-and-reclaimed or cancelled meanwhile is not sent.

Secrets are decrypted here, in the send worker, only for rendering; the rendered text lives in
memory for the duration of the batch and is never stored.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, bindparam, case, or_, select, text, update
from sqlmodel import Session, col

from campaigns import counters
from campaigns.bulk import any_of, insert_rows
from campaigns.counter_cells import MessageState
from campaigns.models import Campaign, CampaignStatus, Message, MessageEvent, MessageStatus, SmsSegment
from campaigns.recipients import secret_aad
from campaigns.templates import Rendered, render
from campaigns.windows import in_window, window_end_utc
from loa.crypto import SecretBox, SecretDecryptError
from loa.db import table_of, transaction
from loa.timeutil import utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_BASE_S = 30.0
RETRY_MAX_S = 3600.0
INFLIGHT_MARK = "!"
ERROR_TEXT_MAX = 500

# A carrier's "accepted" is the truth whatever happened to the row meanwhile: a pause or a lease
# sweep may have put it back in the queue, a cancel may have marked it cancelled.
SENT_FROM = frozenset({MessageStatus.DISPATCHING, MessageStatus.QUEUED, MessageStatus.CANCELLED})

_messages = table_of(Message)
_events = table_of(MessageEvent)
_segments = table_of(SmsSegment)


@dataclass
class LoadedMessage:
    id: int
    to: str
    attempts: int
    rendered: Rendered


@dataclass
class LoadedBatch:
    campaign: Campaign | None
    messages: list[LoadedMessage] = field(default_factory=list)
    validity: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one message in a batch; `kind` decides the new status."""

    message_id: int
    kind: str  # sent | failed | retry | ambiguous | not_sent
    error_code: str | None = None
    error_text: str | None = None
    provider_ids: Sequence[str] = ()
    segments: int = 1
    suppress: bool = False
    # retry / not_sent: when to try again (None: retry_delay(attempts) for a retry, now for not_sent)
    retry_at: datetime | None = None


def inflight_claim(claim: str) -> str:
    """The claim token of rows whose submit is under way (see the module docstring)."""
    return claim + INFLIGHT_MARK


def is_inflight(claim: str | None) -> bool:
    return bool(claim) and str(claim).endswith(INFLIGHT_MARK)


def load_batch(
    session: Session,
    box: SecretBox,
    campaign_id: str,
    ids: Sequence[int],
    claim: str,
    *,
    template_of: Callable[[Campaign], Mapping[str, str | None]] | None = None,
    inflight_lease_s: float | None = None,
) -> LoadedBatch:
    """Claimed rows with secrets decrypted and the template rendered, in memory only.

    `template_of` may give the parts to render instead of `campaign.template` (the email path
    adds a text part derived from the HTML once per campaign rather than once per message).
    With `inflight_lease_s` the rows are marked in flight as they are read (the SMS path marks a
    whole batch before it goes out). Rows already in flight are not loaded again: a task
    redelivered after its worker died must not resend what the dead worker may have submitted
    (the send journal and the lease sweep decide about those)."""
    campaign = session.get(Campaign, campaign_id)
    if (
        campaign is None
        or campaign.status is not CampaignStatus.RUNNING
        or campaign.waiting_for_window
        # The tick flags a closed window within seconds; a campaign launched or resumed outside
        # its window must not send in the meantime.
        or not in_window(campaign.window, utcnow())
    ):
        release(session, ids, claim)
        return LoadedBatch(campaign=None)
    t = _messages  # Core, not the ORM: its bulk-update machinery cost ~10 % of an SMS worker
    columns = (t.c.id, t.c.to, t.c.fields, t.c.secrets, t.c.attempts)
    if inflight_lease_s is None:
        rows = session.execute(
            select(*columns).where(
                any_of(session, t.c.id, ids),
                t.c.claim == claim,
                t.c.status == MessageStatus.DISPATCHING.value,
            )
        ).all()
    else:
        mark = _mark_inflight(session, ids, [claim], claim, inflight_lease_s)
        rows = sorted(session.execute(mark.returning(*columns)).all())
    batch = LoadedBatch(campaign=campaign, validity=_validity(campaign))
    template = template_of(campaign) if template_of is not None else campaign.template
    failures: list[Outcome] = []
    for mid, to, fields, token, attempts in rows:
        values: dict[str, Any] = dict(fields)
        if token:
            try:
                values.update(box.decrypt_fields(token, secret_aad(campaign.org_id, to)))
            except SecretDecryptError as exc:
                failures.append(Outcome(mid, "failed", "secret_unreadable", str(exc)))
                continue
        try:
            rendered = render(template, values)
        except Exception as exc:  # a template error names the field, never a value
            failures.append(Outcome(mid, "failed", "template_error", type(exc).__name__ + ": " + str(exc)[:200]))
            continue
        batch.messages.append(LoadedMessage(int(mid), str(to), int(attempts), rendered))
    if failures:
        record(session, failures, claim, max_attempts=1)
    return batch


def _validity(campaign: Campaign) -> datetime | None:
    ends = [t for t in (campaign.deadline, window_end_utc(campaign.window, utcnow())) if t is not None]
    return min(ends) if ends else None


def release(session: Session, ids: Iterable[int], claim: str) -> None:
    """Give claimed rows that were never submitted back to the queue (paused, window closed, halt)."""
    mine = (
        any_of(session, col(Message.id), list(ids)),
        col(Message.claim) == claim,
        col(Message.status) == MessageStatus.DISPATCHING.value,
    )
    before = counters.snapshot_where(session, *mine)
    session.execute(
        update(Message).where(*mine).values(status=MessageStatus.QUEUED.value, claim=None, lease_until=None)
    )
    counters.apply_changes(session, before)


def _mark_inflight(session: Session, ids: Sequence[int], held_as: list[str], claim: str, lease_s: float) -> Any:
    """The in-flight mark: the claim token gets its suffix, and a lease with less than two thirds
    of `lease_s` left is renewed (the batch renews every third of it from here on).

    A lease with more left is kept as it is, on purpose: then the update changes no indexed column
    (`lease_until` is in `ix_message_dispatching`) and Postgres can make it a HOT update, a new
    row version on the same page with no index entries, in the room migration 0007 leaves free.
    Renewing every lease made it cost as much as a status change: one entry in each of six indexes
    per message."""
    now, t = utcnow(), _messages
    short = or_(t.c.lease_until.is_(None), t.c.lease_until < now + timedelta(seconds=lease_s * 2 / 3))
    return (
        update(t)
        .where(
            any_of(session, t.c.id, list(ids)),
            t.c.claim.in_(held_as),
            t.c.status == MessageStatus.DISPATCHING.value,
        )
        .values(
            claim=inflight_claim(claim),
            lease_until=case((short, now + timedelta(seconds=lease_s)), else_=t.c.lease_until),
            updated_at=now,
        )
    )


def begin_submit(session: Session, ids: Sequence[int], claim: str, lease_s: float) -> set[int]:
    """Mark rows in flight right before their submit; returns the ids this claim still owns.

    Idempotent (a retried transaction finds its rows already marked); their lease then has at
    least two thirds of `lease_s` left."""
    held_as = [claim, inflight_claim(claim)]
    result = session.execute(_mark_inflight(session, ids, held_as, claim, lease_s).returning(_messages.c.id))
    return {int(i) for i in result.scalars()}


def renew_lease(session: Session, claim: str, lease_s: float) -> int:
    """Push the lease of every row still held by this claim (a long batch must not be swept)."""
    result = session.execute(
        update(Message)
        .where(
            col(Message.claim).in_([claim, inflight_claim(claim)]),
            col(Message.status) == MessageStatus.DISPATCHING.value,
        )
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempts - 1)))


def _final_kind(o: Outcome, tried: int, max_attempts: int, ambiguous_policy: str) -> str:
    kind = o.kind
    if kind == "ambiguous" and ambiguous_policy == "hold":
        return "failed"
    if kind in ("retry", "ambiguous") and tried >= max_attempts:
        return "failed"
    return kind


def _update_statement(kind: str, sent_status: MessageStatus) -> Any:
    """One executemany-able UPDATE per outcome kind; per-row values are `b_*` parameters."""
    t = _messages
    common: dict[str, Any] = {
        "claim": None,
        "lease_until": None,
        "updated_at": bindparam("b_now"),
        "attempts": bindparam("b_attempts"),
    }
    values: dict[str, Any]
    if kind == "sent":
        values = {
            "status": sent_status.value,
            "provider_ids": bindparam("b_provider_ids"),
            "submitted_at": bindparam("b_now"),
            "segments": bindparam("b_segments"),
            "error_code": None,
            "error_text": None,
            "next_attempt_at": None,
            "secrets": None,  # never needed again once the carrier or relay has the message
        }
    elif kind == "failed":
        values = {
            "status": MessageStatus.FAILED.value,
            "error_code": bindparam("b_error_code"),
            "error_text": bindparam("b_error_text"),
            "secrets": None,
        }
    elif kind == "retry":
        values = {
            "status": MessageStatus.QUEUED.value,
            "error_code": bindparam("b_error_code"),
            "error_text": bindparam("b_error_text"),
            "next_attempt_at": bindparam("b_next"),
        }
    elif kind == "ambiguous":
        values = {
            "status": MessageStatus.QUEUED.value,
            "next_attempt_at": None,
            "ambiguous_resends": t.c.ambiguous_resends + 1,
        }
    else:  # not_sent: back to the queue, no attempt used
        values = {"status": MessageStatus.QUEUED.value, "next_attempt_at": bindparam("b_next")}
    return update(t).where(t.c.id == bindparam("b_id")).values(**common, **values)


def _update_sent_pg(session: Session, rows: Sequence[dict[str, Any]], sent_status: MessageStatus) -> None:
    """`_update_statement("sent")` for many rows in one Postgres statement (unnest of arrays)."""
    session.execute(
        text(
            "UPDATE message AS m SET status = :status, provider_ids = v.provider_ids, submitted_at = :now,"
            " updated_at = :now, segments = v.segments, attempts = v.attempts, claim = NULL, lease_until = NULL,"
            " error_code = NULL, error_text = NULL, next_attempt_at = NULL, secrets = NULL"
            " FROM unnest(CAST(:ids AS bigint[]), CAST(:provider_ids AS text[]), CAST(:segments AS int[]),"
            " CAST(:attempts AS int[])) AS v(id, provider_ids, segments, attempts) WHERE m.id = v.id"
        ),
        {
            "status": sent_status.value,
            "now": rows[0]["b_now"],
            "ids": [r["b_id"] for r in rows],
            "provider_ids": [r["b_provider_ids"] for r in rows],
            "segments": [r["b_segments"] for r in rows],
            "attempts": [r["b_attempts"] for r in rows],
        },
    )


def record(
    session: Session,
    outcomes: Sequence[Outcome],
    claim: str,
    *,
    max_attempts: int,
    gateway: str | None = None,
    sent_status: MessageStatus = MessageStatus.SENT,
    ambiguous_policy: str = "resend",
) -> dict[str, int]:
    """Apply outcomes in bulk; returns how many of each kind were applied.

    Rows are locked and read once, the rules are applied here, and each kind is one executemany.
    Only `sent` may touch a row this claim no longer holds (the carrier has it, that is the
    truth); every other outcome applies only to rows still dispatching under this claim, so a
    late task never undoes the work of the claim that followed it."""
    if not outcomes:
        return {}
    now = utcnow()
    ids = sorted({o.message_id for o in outcomes})
    # One locked read: what the rows count as now (live counters) and who holds them.
    before = counters.snapshot(session, ids)
    current = {mid: (MessageStatus(state.status), *before.holds[mid]) for mid, state in before.states.items()}
    ours = {claim, inflight_claim(claim)}
    params: dict[str, list[dict[str, Any]]] = defaultdict(list)
    events: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    after = dict(before.states)
    made: dict[tuple[MessageState, str, int, str | None], MessageState] = {}
    for o in outcomes:
        row = current.pop(o.message_id, None)  # a second outcome for one message is ignored
        if row is None:
            continue
        status, row_claim, attempts = row
        tried = attempts + (0 if o.kind == "not_sent" else 1)
        kind = _final_kind(o, tried, max_attempts, ambiguous_policy)
        if kind == "sent":
            if status not in SENT_FROM:
                continue
        elif status is not MessageStatus.DISPATCHING or row_claim not in ours:
            continue
        error_code = o.error_code or ("ambiguous" if o.kind == "ambiguous" else None)
        # Made once per kind of change (a batch has few; `apply_states` takes each recipient from
        # `before`): `dataclasses.replace` per message was 3.6 % of an SMS worker's time.
        old = before.states[o.message_id]
        change = (old, kind, o.segments, error_code)
        new = made.get(change)
        if new is None:
            new = made[change] = _counted_after(old, kind, sent_status, now, o.segments, error_code)
        after[o.message_id] = new
        params[kind].append(
            {
                "b_id": o.message_id,
                "b_now": now,
                "b_attempts": tried,
                "b_provider_ids": ";".join(o.provider_ids) or None,
                "b_segments": o.segments,
                "b_error_code": error_code,
                "b_error_text": (o.error_text or "")[:ERROR_TEXT_MAX] or None,
                "b_next": o.retry_at or (now + retry_delay(tried) if kind == "retry" else None),
            }
        )
        if kind == "sent" and gateway is not None:
            # An accepted SMS is its segment rows; the timeline's `submitted` entry is read from
            # them (campaigns/timeline.py), so no event row repeats them on the hot path.
            segments.extend(
                {"message_id": o.message_id, "gateway": gateway, "seq": i, "provider_id": pid, "submitted_at": now}
                for i, pid in enumerate(o.provider_ids)
            )
            continue
        detail: dict[str, Any] = {}
        if o.error_code:
            detail = {"error": o.error_code, "text": o.error_text}
        if o.provider_ids:
            detail["provider_ids"] = list(o.provider_ids)
        events.append(
            {"message_id": o.message_id, "at": now, "kind": "submitted" if kind == "sent" else kind, "detail": detail}
        )
    postgres = session.get_bind().dialect.name == "postgresql"
    for kind, rows in params.items():
        if kind == "sent" and postgres:
            _update_sent_pg(session, rows, sent_status)  # the hot path: one statement, not one per row
        else:
            session.execute(_update_statement(kind, sent_status), rows)
    # COPY on Postgres: the ORM's bulk path costs far more per row on the send hot path.
    insert_rows(session, _events, events)
    insert_rows(session, _segments, segments)
    # The rows are locked since the snapshot: their new states follow from the updates above.
    counters.apply_states(session, before, after)
    return {kind: len(rows) for kind, rows in params.items()}


def _counted_after(
    old: MessageState, kind: str, sent_status: MessageStatus, now: datetime, segments: int, error_code: str | None
) -> MessageState:
    """What a message counts as after `_update_statement(kind)` (mirrors its values)."""
    if kind == "sent":
        return replace(old, status=sent_status.value, error=None, submitted_at=now, segments=segments)
    if kind == "failed":
        return replace(old, status=MessageStatus.FAILED.value, error=error_code)
    if kind == "retry":
        return replace(old, status=MessageStatus.QUEUED.value, error=error_code)
    if kind == "ambiguous":
        return replace(old, status=MessageStatus.QUEUED.value, ambiguous=old.ambiguous + 1)
    return replace(old, status=MessageStatus.QUEUED.value)  # not_sent


Retry = Callable[[Callable[[], Any]], Any]


def _no_retry(fn: Callable[[], Any]) -> Any:
    return fn()


@dataclass
class BatchLedger:
    """The bookkeeping of one claimed batch, sent slice by slice (see the module docstring).

    `begin(ids)` before a slice goes out, `record(outcomes)` right after it, `finish(ids)` at the
    end (gives back what was never submitted). Each call is its own short transaction, run
    through `retry` (the workers pass tenacity's DB retry), so a dropped connection is retried
    without losing the outcomes in hand."""

    engine: Engine
    claim: str
    lease_s: float
    max_attempts: int
    gateway: str | None = None
    ambiguous_policy: str = "resend"
    sent_status: MessageStatus = MessageStatus.SENT
    retry: Retry = _no_retry
    counts: dict[str, int] = field(default_factory=dict)
    _renewed: float = field(default_factory=time.monotonic)
    # Rows `begin` or `record` already handled: never back to the queue by `finish` (they are in
    # flight, recorded, or no longer this claim's), so a batch that went out whole skips `release`.
    _handled: set[int] = field(default_factory=set)

    def _run(self, fn: Callable[[Session], T]) -> T:
        def attempt() -> T:
            with transaction(self.engine) as session:
                return fn(session)

        result: T = self.retry(attempt)
        return result

    def begin(self, ids: Sequence[int]) -> set[int]:
        """Mark these rows in flight; returns those still ours (only those may be submitted)."""
        renew = time.monotonic() - self._renewed > self.lease_s / 3

        def step(session: Session) -> set[int]:
            owned = begin_submit(session, ids, self.claim, self.lease_s)
            if renew:
                renew_lease(session, self.claim, self.lease_s)
            return owned

        owned = self._run(step)
        self._handled.update(ids)
        if renew:
            self._renewed = time.monotonic()
        if len(owned) < len(ids):
            log.info(
                "claim %s: %s of %s rows were taken back before their submit",
                self.claim,
                len(ids) - len(owned),
                len(ids),
            )
        return owned

    def record(self, outcomes: Sequence[Outcome]) -> dict[str, int]:
        if not outcomes:
            return {}
        applied = self._run(
            lambda session: record(
                session,
                outcomes,
                self.claim,
                max_attempts=self.max_attempts,
                gateway=self.gateway,
                sent_status=self.sent_status,
                ambiguous_policy=self.ambiguous_policy,
            )
        )
        self._handled.update(o.message_id for o in outcomes)
        for kind, n in applied.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        return applied

    def finish(self, ids: Sequence[int], outcomes: Sequence[Outcome] = ()) -> dict[str, int]:
        """Record the last outcomes and give every row never submitted back to the queue."""

        def step(session: Session) -> dict[str, int]:
            applied = record(
                session,
                outcomes,
                self.claim,
                max_attempts=self.max_attempts,
                gateway=self.gateway,
                sent_status=self.sent_status,
                ambiguous_policy=self.ambiguous_policy,
            )
            if unhandled:
                release(session, unhandled, self.claim)
            return applied

        handled = self._handled | {o.message_id for o in outcomes}
        unhandled = [i for i in ids if i not in handled]
        if not outcomes and not unhandled:
            return dict(self.counts)
        for kind, n in self._run(step).items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        return dict(self.counts)
