"""One email batch: render and build (with DKIM) in the worker thread, send through this process's
aiosmtplib pools (one event loop per process), pace by the shared limiter per relay and per
recipient domain, record outcomes in bulk. Tests call `send_email_batch`."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future

from campaigns.models import Campaign, MessageStatus
from campaigns.recipients import mark_suppressed
from campaigns.sending import LoadedBatch, Outcome, load_batch, record, release
from gateways.config import SmtpRelay
from gateways.smtp.dkim import DkimSigner, load_signer
from gateways.smtp.message import EmailTemplateParts, MessageBuilder
from gateways.smtp.pool import SmtpPool
from gateways.smtp.relay import Outcome as SmtpOutcome
from gateways.smtp.relay import RelayConfig, SendResult
from loa.db import transaction
from workers.halts import is_halted
from workers.retrying import with_db_retry
from workers.runtime import Runtime

log = logging.getLogger(__name__)

# Per-recipient-domain caps (messages/s) when the gateways file gives none: big providers accept
# a handful of connections and throttle bursts; everyone else gets the "*" rate.
DEFAULT_DOMAIN_RATES = {
    "gmail.com": 20.0,
    "googlemail.com": 20.0,
    "yahoo.com": 10.0,
    "outlook.com": 10.0,
    "hotmail.com": 10.0,
    "*": 50.0,
}


class EmailRuntime:
    """The event loop thread and one SmtpPool per relay for this worker process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="smtp-loop", daemon=True)
        self._thread.start()
        self._pools: dict[str, SmtpPool] = {}
        self._signers: dict[str, DkimSigner | None] = {}
        self._lock = threading.Lock()

    def pool(self, relay: SmtpRelay) -> SmtpPool:
        with self._lock:
            if relay.name not in self._pools:
                self._pools[relay.name] = SmtpPool(relay_config(relay))
            return self._pools[relay.name]

    def signer(self, relay: SmtpRelay) -> DkimSigner | None:
        with self._lock:
            if relay.name not in self._signers:
                d = relay.dkim
                self._signers[relay.name] = load_signer(d.domain, d.selector, d.key_file) if d else None
            return self._signers[relay.name]

    def submit(self, relay: SmtpRelay, envelope_from: str, to: str, data: bytes) -> Future[SendResult]:
        return asyncio.run_coroutine_threadsafe(self.pool(relay).send(envelope_from, to, data), self.loop)

    def close(self) -> None:
        async def close_all() -> None:
            for pool in self._pools.values():
                await pool.close()

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def relay_config(relay: SmtpRelay) -> RelayConfig:
    return RelayConfig(
        name=relay.name,
        host=relay.host,
        port=relay.port,
        tls=relay.tls,
        username=relay.username,
        password=relay.resolved_password(),
        connections=relay.connections,
        local_hostname=relay.local_hostname or (relay.dkim.domain if relay.dkim else "localhost"),
        validate_certs=relay.validate_certs,
    )


_email_runtime: EmailRuntime | None = None
_email_lock = threading.Lock()


def email_runtime(rt: Runtime) -> EmailRuntime:
    global _email_runtime
    with _email_lock:
        if _email_runtime is None:
            _email_runtime = EmailRuntime(rt)
        return _email_runtime


def outcome_for(message_id: int, message_ref: str, result: SendResult) -> Outcome:
    code = f"smtp:{result.code}" if result.code else "smtp"
    if result.outcome is SmtpOutcome.SENT:
        return Outcome(message_id, "sent", provider_ids=[message_ref])
    if result.outcome is SmtpOutcome.PERMANENT:
        return Outcome(message_id, "failed", code, result.text[:500], suppress=result.suppress)
    if result.outcome is SmtpOutcome.AMBIGUOUS:
        return Outcome(message_id, "ambiguous", code, result.text[:500])
    return Outcome(message_id, "retry", code, result.text[:500])


def _domain_rate(relay: SmtpRelay, domain: str) -> float:
    rates = {**DEFAULT_DOMAIN_RATES, **relay.domain_rates}
    return float(rates.get(domain, rates.get("*", 50.0)))


def send_email_batch(
    rt: Runtime, er: EmailRuntime, relay: SmtpRelay, campaign_id: str, claim: str, ids: Sequence[int]
) -> dict[str, int]:
    def load() -> LoadedBatch:
        with transaction(rt.engine) as session:
            return load_batch(session, rt.box, campaign_id, ids, claim)

    batch = with_db_retry(load)
    campaign = batch.campaign
    if campaign is None or not batch.messages:
        return {}
    builder = _builder(campaign)
    signer = er.signer(relay)
    # One queue per recipient domain, served round robin: a slow or throttled domain waits on its
    # own limiter key while the others go on.
    by_domain: dict[str, deque[tuple[int, str, bytes, str, str]]] = {}
    for msg in batch.messages:
        parts = EmailTemplateParts(subject=msg.rendered.subject or "", text=msg.rendered.body, html=msg.rendered.html)
        built = builder.build(msg.to, parts, message_key=f"{msg.id}")
        data = signer.sign(built.data) if signer else built.data
        domain = msg.to.rsplit("@", 1)[-1].lower()
        by_domain.setdefault(domain, deque()).append((msg.id, msg.to, data, built.envelope_from, built.message_id))
    futures: list[tuple[int, str, Future[SendResult]]] = []
    outcomes: list[Outcome] = []
    relay_key = (f"smtp:{relay.name}", float(relay.rate))
    cap = (f"campaign:{campaign.id}", float(campaign.rate_limit)) if campaign.rate_limit else None
    halted = False
    while by_domain and not halted:
        soonest = 1.0
        progressed = False
        for domain in list(by_domain):
            keys = [relay_key, (f"smtp:{relay.name}:{domain}", _domain_rate(relay, domain))]
            if cap:
                keys.append(cap)
            wait = rt.limiter.reserve_many(keys)
            if wait > 0:
                soonest = min(soonest, wait)
                continue
            mid, to, data, env_from, message_id = by_domain[domain].popleft()
            futures.append((mid, message_id, er.submit(relay, env_from, to, data)))
            progressed = True
            if not by_domain[domain]:
                del by_domain[domain]
        if not progressed:
            time.sleep(soonest)
            halted = is_halted(rt.redis, campaign.id)
    for queue in by_domain.values():
        outcomes.extend(Outcome(mid, "not_sent") for mid, *_ in queue)
    for mid, message_id, future in futures:
        outcomes.append(outcome_for(mid, message_id, future.result()))
    to_suppress = [m.to for m in batch.messages if any(o.suppress and o.message_id == m.id for o in outcomes)]
    policy = str(campaign.options.get("ambiguous", "resend"))

    def save() -> dict[str, int]:
        with transaction(rt.engine) as session:
            counts = record(
                session,
                outcomes,
                claim,
                max_attempts=rt.settings.max_attempts,
                sent_status=MessageStatus.SENT,
                ambiguous_policy=policy,
            )
            for address in to_suppress:
                mark_suppressed(session, campaign.org_id, address, "mailbox unknown (5xx at RCPT)")
            release(session, ids, claim)
            return counts

    return with_db_retry(save)


def _builder(campaign: Campaign) -> MessageBuilder:
    options = campaign.options
    verp_domain = campaign.sender.rsplit("@", 1)[-1].rstrip(">").strip() if options.get("verp") else None
    return MessageBuilder(campaign.sender, list_unsubscribe=options.get("list_unsubscribe"), verp_domain=verp_domain)
