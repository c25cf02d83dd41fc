"""One SMS batch from claim to recorded outcome: load, render and mark in flight (one transaction),
submit over the gateway's sessions (network, no database connection held), record every outcome
in bulk (one transaction). Tests call `send_sms_batch`.

While the batch is on the wire, what the SMSC accepted is journaled in Redis (see
`workers/sms_journal.py`), so one commit per batch is as crash-safe as one per window. A segment
answered with a transient error (0x58 throttled, 0x14 queue full, 0x08 system error, ...) is
submitted again within the task, after the gateway's shared rate backed off, so it keeps its place
and a long message is not sent twice; what still fails goes back to the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis

from campaigns.models import Campaign
from campaigns.sending import LoadedBatch, LoadedMessage, Outcome, load_batch, record, renew_lease
from gateways import health
from gateways.config import SmppGateway
from gateways.ratelimit import safe_rate
from gateways.smpp.client import Outcome as SubmitOutcome
from gateways.smpp.client import Submit, SubmitResult
from gateways.smpp.codec import (
    Encoding,
    EncodingPolicy,
    UnencodableError,
    concatenated,
    data_coding,
    prepare,
    split_parts,
)
from gateways.smpp.errors import ErrorClass, ErrorTable, is_throttle
from gateways.smpp.receipts import normalise_id
from loa.db import transaction
from loa.timeutil import utcnow
from workers import sms_metrics
from workers.halts import HALT_KEY
from workers.retrying import with_db_retry
from workers.runtime import Runtime
from workers.smpp_runtime import GatewaySessions, limiter_key
from workers.sms_journal import Intents, journal_key
from workers.sms_pacing import ResultSink, StopSending

log = logging.getLogger(__name__)

BIND_WAIT_S = 5.0  # a batch that finds no bound session waits this long for one
NOT_BOUND_RETRY_S = 5.0  # ... and then goes back to the queue for at least this long
TRANSIENT_ROUNDS = 4  # resubmissions of segments that got a transient error other than throttling
THROTTLE_BUDGET_S = 30.0  # time a batch keeps resubmitting throttled segments itself
THROTTLE_RETRY_S = 2.0
UDH_REF_KEY = "loa:udh:{}"
UDH_REF_TTL_S = 86_400


def udh_refs(client: redis.Redis[bytes], messages: Sequence[LoadedMessage]) -> dict[int, int]:
    """Concatenation references (1..255) cycling per destination: a handset reassembling one long
    message must not mix in parts of the previous long message sent to it. One pipelined round
    trip per batch; without Redis the reference is derived from the message id and attempt."""
    if not messages:
        return {}
    fallback = {m.id: (m.id * 31 + m.attempts) % 255 + 1 for m in messages}
    try:
        pipe = client.pipeline(transaction=False)
        for m in messages:
            pipe.incr(UDH_REF_KEY.format(m.to))
            pipe.expire(UDH_REF_KEY.format(m.to), UDH_REF_TTL_S)
        counters = pipe.execute()[::2]
    except redis.RedisError as exc:
        log.debug("concatenation references from message ids: %s", exc)
        return fallback
    return {m.id: int(n) % 255 + 1 for m, n in zip(messages, counters, strict=True)}


@dataclass
class _Parts:
    """A message split for the wire, before its concatenation reference is known."""

    msg: LoadedMessage
    encoding: Encoding
    payloads: list[bytes]


def split_message(campaign: Campaign, msg: LoadedMessage) -> _Parts | Outcome:
    """The message's payloads in the campaign's encoding, or why it cannot be sent."""
    try:
        prepared = prepare(msg.rendered.body or "", EncodingPolicy(campaign.encoding))
    except UnencodableError as exc:
        return Outcome(msg.id, "failed", "unencodable", f"characters that do not fit GSM-7: {' '.join(exc.chars)}")
    try:
        return _Parts(msg, prepared.encoding, split_parts(prepared.text, prepared.encoding))
    except ValueError as exc:
        return Outcome(msg.id, "failed", "too_long", str(exc))


def build_submits(
    campaign: Campaign, gateway: SmppGateway, parts: _Parts, validity: datetime | None, ref: int
) -> list[Submit]:
    short_messages = concatenated(parts.payloads, ref)
    source = campaign.sender or gateway.source_addr or ""
    return [
        Submit(
            ref=(parts.msg.id, i),
            source_addr=source,
            destination=parts.msg.to,
            short_message=part,
            data_coding=data_coding(parts.encoding),
            esm_class=0x40 if len(short_messages) > 1 else 0,
            validity_period=validity,
        )
        for i, part in enumerate(short_messages)
    ]


def outcome_for(message_id: int, results: Sequence[SubmitResult], table: ErrorTable) -> Outcome:
    """A message's outcome from its segments' (final) results."""
    errors = [r for r in results if r.outcome is SubmitOutcome.ERROR]
    permanent = [r for r in errors if table.classify(r.command_status or 0) is ErrorClass.PERMANENT]
    accepted = [r for r in results if r.outcome is SubmitOutcome.OK]
    if permanent:
        code = permanent[0].command_status or 0
        return Outcome(message_id, "failed", f"0x{code:02X}", table.describe(code))
    unsent = any(r.outcome is SubmitOutcome.NOT_SENT for r in results)
    if any(r.outcome is SubmitOutcome.AMBIGUOUS for r in results) or (accepted and (unsent or errors)):
        # Some segment may be (or is) at the SMSC while another is not: resending is a duplicate.
        return Outcome(message_id, "ambiguous", "ambiguous", "no submit_sm_resp before the session ended")
    if errors:
        code = errors[0].command_status or 0
        if is_throttle(code):  # the carrier's capacity, not the message: no attempt used
            return Outcome(
                message_id, "not_sent", f"0x{code:02X}", table.describe(code), retry_at=utcnow() + _throttle_wait()
            )
        return Outcome(message_id, "retry", f"0x{code:02X}", table.describe(code))
    if unsent:
        return Outcome(message_id, "not_sent")
    ids = [normalise_id(r.provider_id or "") for r in results]
    return Outcome(message_id, "sent", provider_ids=ids, segments=len(results))


def _throttle_wait() -> timedelta:
    return timedelta(seconds=THROTTLE_RETRY_S)


def _load(rt: Runtime, campaign_id: str, ids: Sequence[int], claim: str) -> LoadedBatch:
    """Load, render and mark the rows in flight, in one transaction."""
    with transaction(rt.engine) as session:
        return load_batch(session, rt.box, campaign_id, ids, claim, inflight_lease_s=rt.settings.lease_seconds)


@dataclass
class _Wire:
    """One batch on the wire: the journal hooks, halts and lease renewal for `GatewaySessions.send`."""

    rt: Runtime
    sessions: GatewaySessions
    campaign_id: str
    claim: str
    work: list[tuple[LoadedMessage, list[Submit]]]
    renewed: float = field(default_factory=time.monotonic)
    halted: bool = False
    intents: Intents | None = None

    def __post_init__(self) -> None:
        journal = self.sessions.journal
        if journal is not None:
            self.intents = Intents(journal, self.key, self.stop_keys)

    @property
    def key(self) -> str:
        return journal_key(self.sessions.gateway.name, self.claim)

    @property
    def stop_keys(self) -> list[str]:
        # A paused or cancelled campaign stops within two groups; so does a gateway that just
        # went down (failover): the rest goes back to the queue and is routed to the fallback.
        stops = [HALT_KEY.format(self.campaign_id)]
        if self.sessions.gateway.fallback is not None:
            stops.append(health.DOWN_KEY.format(self.sessions.gateway.name))
        return stops

    def before_group(self, indexes: list[int], following: list[int]) -> None:
        if self.intents is not None:
            halted = self.intents.before([self.work[i][0].id for i in indexes], [self.work[i][0].id for i in following])
        else:
            halted = bool(self.rt.redis.exists(*self.stop_keys))
        if halted:
            self.halted = True
            raise StopSending(f"campaign {self.campaign_id} halted or gateway down")
        lease_s = self.rt.settings.lease_seconds
        if time.monotonic() - self.renewed > lease_s / 3:  # a slow gateway or a low campaign cap
            self.renewed = time.monotonic()

            def renew() -> int:
                with transaction(self.rt.engine) as session:
                    return renew_lease(session, self.claim, lease_s)

            with_db_retry(renew)

    def on_result(self, i: int, j: int, result: SubmitResult) -> None:
        journal = self.sessions.journal
        if journal is not None and result.outcome is SubmitOutcome.OK:
            msg, segs = self.work[i]
            journal.accepted(self.key, msg.id, j, len(segs), normalise_id(result.provider_id or ""))


def _remapped(wire: _Wire, order: list[int], by_message: dict[int, list[int]]) -> ResultSink:
    """The result hook of a resubmission: its (message, segment) back to the batch's indexes."""

    def hook(k: int, n: int, result: SubmitResult) -> None:
        wire.on_result(order[k], by_message[order[k]][n], result)

    return hook


def _submit_all(wire: _Wire, keys: list[tuple[str, float]], table: ErrorTable) -> list[list[SubmitResult]]:
    """Submit, then resubmit the segments that got a transient error, within the budget."""
    rt, sessions, gateway = wire.rt, wire.sessions, wire.sessions.gateway
    messages = [segs for _, segs in wire.work]
    results = sessions.send(messages, keys, on_result=wire.on_result, before_group=wire.before_group)
    all_results = [r for res in results for r in res]
    started = time.monotonic()
    for round_no in range(1, 1000):
        todo = [
            (i, j)
            for i, res in enumerate(results)
            for j, r in enumerate(res)
            if r.outcome is SubmitOutcome.ERROR and table.classify(r.command_status or 0) is ErrorClass.TRANSIENT
        ]
        if not todo or wire.halted:
            break
        throttled = any(is_throttle(results[i][j].command_status or 0) for i, j in todo)
        if throttled:
            factor = rt.limiter.penalise(limiter_key(gateway.name))
            log.warning("gateway %s throttled %d submits; rate factor now %.2f", gateway.name, len(todo), factor)
            if time.monotonic() - started > THROTTLE_BUDGET_S:
                break
        else:
            if round_no > TRANSIENT_ROUNDS:
                break
            time.sleep(min(5.0, 0.5 * round_no))
        if not sessions.bound_sessions():
            break
        by_message: dict[int, list[int]] = {}
        for i, j in todo:
            by_message.setdefault(i, []).append(j)
        order = sorted(by_message)
        again = sessions.send(
            [[messages[i][j] for j in by_message[i]] for i in order],
            keys,
            on_result=_remapped(wire, order, by_message),
        )
        for k, i in enumerate(order):
            for n, j in enumerate(by_message[i]):
                results[i][j] = again[k][n]
                all_results.append(again[k][n])
    t = sms_metrics.tally(all_results)
    sms_metrics.observe_results(gateway.name, t)
    try:
        health.count_results(rt.redis, gateway, t.submits, t.errors, t.throttles)
        if not t.throttles:
            rt.limiter.recover(limiter_key(gateway.name))
    except redis.RedisError as exc:
        log.debug("gateway %s: statistics not counted: %s", gateway.name, exc)
    return results


def send_sms_batch(
    rt: Runtime, sessions: GatewaySessions, campaign_id: str, claim: str, ids: Sequence[int]
) -> dict[str, int]:
    gateway = sessions.gateway
    journal = sessions.journal
    key = journal_key(gateway.name, claim)
    fresh = journal.open(key) if journal is not None else False
    batch = with_db_retry(lambda: _load(rt, campaign_id, ids, claim))
    campaign = batch.campaign
    if campaign is None or not batch.messages:
        # A redelivered task (its worker was killed) finds the rows in flight and loads nothing:
        # the journal is then the dead worker's account of what the SMSC accepted, which the
        # scheduler's recovery needs. Deleting it here made the sweep resend accepted messages.
        if journal is not None and fresh:
            journal.forget(key)
        return {}
    table = ErrorTable(gateway.error_overrides())
    outcomes: list[Outcome] = []
    split: list[_Parts] = []
    for msg in batch.messages:
        parts = split_message(campaign, msg)
        if isinstance(parts, Outcome):
            outcomes.append(parts)
        else:
            split.append(parts)
    # Only a message of several parts needs a concatenation reference (a Redis counter per number).
    refs = udh_refs(rt.redis, [p.msg for p in split if len(p.payloads) > 1])
    work = [(p.msg, build_submits(campaign, gateway, p, batch.validity, refs.get(p.msg.id, 0))) for p in split]
    wire = _Wire(rt, sessions, campaign.id, claim, work)
    if work:
        keys = [(limiter_key(gateway.name), safe_rate(gateway.tps))]
        if campaign.rate_limit:
            keys.append((f"campaign:{campaign.id}", float(campaign.rate_limit)))
        live = sessions.wait_bound(BIND_WAIT_S)
        if not live:
            later = utcnow() + timedelta(seconds=NOT_BOUND_RETRY_S)
            outcomes.extend(Outcome(m.id, "not_sent", retry_at=later) for m, _ in work)
        else:
            results = _submit_all(wire, keys, table)
            outcomes.extend(outcome_for(m.id, res, table) for (m, _), res in zip(work, results, strict=True))
    policy = str(campaign.options.get("ambiguous", "resend"))

    def save() -> dict[str, int]:
        with transaction(rt.engine) as session:
            return record(
                session,
                outcomes,
                claim,
                max_attempts=rt.settings.max_attempts,
                gateway=gateway.name,
                ambiguous_policy=policy,
            )

    counts = with_db_retry(save)
    if journal is not None:
        try:
            journal.forget(key)
        except redis.RedisError as exc:  # it expires on its own; recovery skips finished claims
            log.debug("send journal of %s not deleted: %s", claim, exc)
    return counts
