"""One SMS batch from claim to recorded outcome: load and render (DB), submit over the gateway's
sessions (network, no DB connection held), record in bulk (DB). Tests call `send_sms_batch`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from campaigns.models import Campaign
from campaigns.sending import LoadedBatch, LoadedMessage, Outcome, load_batch, record, release
from gateways.config import SmppGateway
from gateways.smpp.client import Outcome as SubmitOutcome
from gateways.smpp.client import Submit, SubmitResult
from gateways.smpp.codec import EncodingPolicy, UnencodableError, build_short_messages, data_coding, prepare
from gateways.smpp.errors import ErrorClass, ErrorTable, is_throttle
from gateways.smpp.receipts import normalise_id
from loa.db import transaction
from workers.halts import is_halted
from workers.retrying import with_db_retry
from workers.runtime import Runtime
from workers.smpp_runtime import GatewaySessions, limiter_key

log = logging.getLogger(__name__)


def build_submits(
    campaign: Campaign, gateway: SmppGateway, msg: LoadedMessage, validity: object
) -> tuple[list[Submit], Outcome | None]:
    text = msg.rendered.body or ""
    try:
        prepared = prepare(text, EncodingPolicy(campaign.encoding))
    except UnencodableError as exc:
        return [], Outcome(msg.id, "failed", "unencodable", f"characters that do not fit GSM-7: {' '.join(exc.chars)}")
    ref = (msg.id * 31 + msg.attempts) % 255 + 1  # cycles per destination between attempts and campaigns
    parts = build_short_messages(prepared.text, prepared.encoding, ref)
    source = campaign.sender or gateway.source_addr or ""
    submits = [
        Submit(
            ref=(msg.id, i),
            source_addr=source,
            destination=msg.to,
            short_message=part,
            data_coding=data_coding(prepared.encoding),
            esm_class=0x40 if len(parts) > 1 else 0,
            validity_period=validity,  # type: ignore[arg-type]
        )
        for i, part in enumerate(parts)
    ]
    return submits, None


def outcome_for(message_id: int, results: Sequence[SubmitResult], table: ErrorTable) -> Outcome:
    errors = [r for r in results if r.outcome is SubmitOutcome.ERROR]
    permanent = [r for r in errors if table.classify(r.command_status or 0) is ErrorClass.PERMANENT]
    if permanent:
        code = permanent[0].command_status or 0
        return Outcome(message_id, "failed", f"0x{code:02X}", table.describe(code))
    if any(r.outcome is SubmitOutcome.AMBIGUOUS for r in results):
        return Outcome(message_id, "ambiguous", "ambiguous", "no submit_sm_resp before the session ended")
    if errors:
        code = errors[0].command_status or 0
        return Outcome(message_id, "retry", f"0x{code:02X}", table.describe(code))
    if any(r.outcome is SubmitOutcome.NOT_SENT for r in results):
        return Outcome(message_id, "not_sent")
    ids = [normalise_id(r.provider_id or "") for r in results]
    return Outcome(message_id, "sent", provider_ids=ids, segments=len(results))


def send_sms_batch(
    rt: Runtime, sessions: GatewaySessions, campaign_id: str, claim: str, ids: Sequence[int]
) -> dict[str, int]:
    gateway = sessions.gateway

    def load() -> LoadedBatch:
        with transaction(rt.engine) as session:
            return load_batch(session, rt.box, campaign_id, ids, claim)

    batch = with_db_retry(load)
    campaign = batch.campaign
    if campaign is None or not batch.messages:
        return {}
    table = ErrorTable(gateway.error_overrides())
    outcomes: list[Outcome] = []
    work: list[tuple[LoadedMessage, list[Submit]]] = []
    for msg in batch.messages:
        submits, failure = build_submits(campaign, gateway, msg, batch.validity)
        if failure is not None:
            outcomes.append(failure)
        else:
            work.append((msg, submits))
    rate_cap = (f"campaign:{campaign.id}", float(campaign.rate_limit)) if campaign.rate_limit else None
    # Submit in slices so a pause or cancel is seen within a second or two, not after the batch.
    slice_size = max(1, gateway.window * gateway.binds)
    throttled = 0
    for start in range(0, len(work), slice_size):
        chunk = work[start : start + slice_size]
        if is_halted(rt.redis, campaign.id):
            outcomes.extend(Outcome(m.id, "not_sent") for m, _ in work[start:])
            break
        results = sessions.submit([s for _, s in chunk], rate_cap)
        for (msg, _), res in zip(chunk, results, strict=True):
            outcomes.append(outcome_for(msg.id, res, table))
            throttled += sum(1 for r in res if r.outcome is SubmitOutcome.ERROR and is_throttle(r.command_status or 0))
    key = limiter_key(gateway.name)
    if throttled:
        rt.limiter.penalise(key)
        log.warning("gateway %s throttled %s submits; slowing down", gateway.name, throttled)
    else:
        rt.limiter.recover(key)
    policy = str(campaign.options.get("ambiguous", "resend"))

    def save() -> dict[str, int]:
        with transaction(rt.engine) as session:
            counts = record(
                session,
                outcomes,
                claim,
                max_attempts=rt.settings.max_attempts,
                gateway=gateway.name,
                ambiguous_policy=policy,
            )
            release(session, ids, claim)
            return counts

    return with_db_retry(save)
