"""One email batch from claim to recorded outcome, and the per-process SMTP machinery.

:class:`EmailRuntime` is what an email worker process holds for its lifetime: one asyncio event
loop in its own thread and, on it, one :class:`~gateways.smtp.pool.SmtpPool` per relay (so
``connections`` per relay per process, each reused for many messages), the DKIM signers, and the
keys that sign message keys for bounce matching.

:func:`send_email_batch` runs in a Celery thread. It loads and renders the batch (secrets are
decrypted there, in memory only), then, slice by slice as the shared limiter allows
(:class:`~gateways.smtp.pacing.DomainPacer`: relay rate, per-domain caps, campaign cap), builds
and signs each message, marks the slice in flight (:class:`~campaigns.sending.BatchLedger`),
sends it through the pool and records the outcomes -- no database connection is held while the
relay talks. What the relay said decides the outcome:

* 2xx -> ``sent`` with the Message-ID as provider id (final for email unless a bounce comes);
* 4xx -> retried after ``retry_after_s`` (minutes: greylisting), doubled per attempt, stored as
  ``next_attempt_at`` (never a Celery countdown); the domain is slowed down for every worker;
* 5xx -> ``failed`` with code and text; mailbox unknown also suppresses the address;
* connection lost during DATA -> ambiguous: queued again once (counted in
  ``ambiguous_resends``), failed if it happens again; campaigns with ``ambiguous: hold`` fail it
  at once.

Messages of a domain that must wait long leave the batch with a ``next_attempt_at`` of when they
fit; a pause or cancel stops the batch between slices and gives the rest back. The rendered body
exists only in this function's memory: it is never stored, logged or returned.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from celery import signals
from sqlalchemy import select
from sqlmodel import col

from campaigns.bounces import BounceKeys
from campaigns.models import Campaign, Message
from campaigns.recipients import mark_suppressed
from campaigns.sending import BatchLedger, LoadedBatch, LoadedMessage, Outcome, load_batch
from gateways.config import SmtpRelay
from gateways.smtp.dkim import DkimSigner, load_signer
from gateways.smtp.html_text import text_template_from_html
from gateways.smtp.message import EmailTemplateParts, MessageBuilder
from gateways.smtp.pacing import DomainPacer, DomainRates, domain_of
from gateways.smtp.pool import SmtpPool
from gateways.smtp.relay import Outcome as SmtpOutcome
from gateways.smtp.relay import RelayConfig, SendResult
from loa.db import transaction
from loa.timeutil import utcnow
from workers.halts import is_halted
from workers.retrying import with_db_retry
from workers.runtime import Runtime

log = logging.getLogger(__name__)

# A connection lost during DATA is resent this many times (default policy "resend"), then failed.
AMBIGUOUS_RESENDS = 1
RETRY_MAX_S = 3600.0
# A slice is marked in flight and recorded in one transaction each: large slices keep the database
# work per message low, and a pause still acts within one slice (the pacer also cuts slices by
# rate: at most ~0.1 s of a domain's cap at a time).
SLICE_PER_CONNECTION = 50
MAX_SLICE = 200


@dataclass(frozen=True, slots=True)
class PreparedMail:
    """One built and signed message, ready for the relay (holds the rendered body: memory only)."""

    message_id: int
    attempts: int
    domain: str
    recipient: str
    envelope_from: str
    data: bytes
    ref: str  # the Message-ID header, stored as the provider id


@dataclass(frozen=True)
class Composer:
    """Builds and signs one campaign's messages; made once per batch."""

    builder: MessageBuilder
    signer: DkimSigner | None
    keys: BounceKeys

    def compose(self, msg: LoadedMessage, domain: str) -> PreparedMail:
        rendered = msg.rendered
        parts = EmailTemplateParts(subject=rendered.subject or "", text=rendered.body, html=rendered.html)
        built = self.builder.build(msg.to, parts, message_key=self.keys.message_key(msg.id))
        data = self.signer.sign(built.data) if self.signer is not None else built.data
        return PreparedMail(msg.id, msg.attempts, domain, built.recipient, built.envelope_from, data, built.message_id)


class EmailRuntime:
    """The event loop thread, the pools and the signers of this worker process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.keys = BounceKeys.from_secrets(*rt.settings.secret_keys())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="smtp-loop", daemon=True)
        self._thread.start()
        self._pools: dict[str, SmtpPool] = {}
        self._signers: dict[str, DkimSigner | None] = {}
        self._lock = threading.Lock()

    def pool(self, relay: SmtpRelay) -> SmtpPool:
        with self._lock:
            if relay.name not in self._pools:
                self._pools[relay.name] = SmtpPool(relay_config(relay, self.rt.gateways.source))
            return self._pools[relay.name]

    def signer(self, relay: SmtpRelay) -> DkimSigner | None:
        with self._lock:
            if relay.name not in self._signers:
                d = relay.dkim
                key_file = resolve_path(d.key_file, self.rt.gateways.source) if d else None
                self._signers[relay.name] = load_signer(d.domain, d.selector, key_file) if d and key_file else None
            return self._signers[relay.name]

    def send(self, relay: SmtpRelay, mails: Sequence[PreparedMail]) -> list[SendResult]:
        """Send a slice concurrently over the relay's pool; one result per mail, in order."""
        pool = self.pool(relay)

        async def run() -> list[SendResult | BaseException]:
            sends = (pool.send(m.envelope_from, m.recipient, m.data) for m in mails)
            return await asyncio.gather(*sends, return_exceptions=True)

        results: list[SendResult] = []
        for mail, result in zip(mails, asyncio.run_coroutine_threadsafe(run(), self.loop).result(), strict=True):
            if isinstance(result, BaseException):
                # A bug, not relay trouble (the pool classifies that): the message may or may not
                # have gone out, so it is ambiguous, like a lost connection.
                log.error("relay %s: send of message %s raised %r", relay.name, mail.message_id, result)
                result = SendResult(SmtpOutcome.AMBIGUOUS, None, f"internal error: {type(result).__name__}")
            results.append(result)
        return results

    def close(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(pool.close() for pool in self._pools.values()), return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)


def resolve_path(path: Path, gateways_source: str) -> Path:
    """A relative path in the gateways file is relative to the file, not to the worker's cwd."""
    if path.is_absolute():
        return path
    source = Path(gateways_source)
    return source.parent / path if source.suffix == ".toml" else path


def relay_config(relay: SmtpRelay, gateways_source: str = "") -> RelayConfig:
    return RelayConfig(
        name=relay.name,
        host=relay.host,
        port=relay.port,
        tls=relay.tls,
        username=relay.username,
        password=relay.resolved_password(),
        connections=relay.connections,
        # EHLO names the sending host: without local_hostname, the DKIM domain, else our FQDN.
        local_hostname=relay.local_hostname or (relay.dkim.domain if relay.dkim else socket.getfqdn()),
        validate_certs=relay.validate_certs,
        ca_file=str(resolve_path(relay.ca_file, gateways_source)) if relay.ca_file else None,
    )


_email_runtime: EmailRuntime | None = None
_email_lock = threading.Lock()


def email_runtime(rt: Runtime) -> EmailRuntime:
    """This process's EmailRuntime, made on first use; its pools QUIT when the worker stops."""
    global _email_runtime
    with _email_lock:
        if _email_runtime is None:
            _email_runtime = EmailRuntime(rt)
            signals.worker_shutdown.connect(_close_email_runtime, weak=False)
        return _email_runtime


def _close_email_runtime(**_: object) -> None:
    global _email_runtime
    with _email_lock:
        runtime, _email_runtime = _email_runtime, None
    if runtime is not None:
        runtime.close()


def retry_after(relay: SmtpRelay, attempts: int) -> timedelta:
    """When to try a 4xx again: ``retry_after_s`` doubled per attempt, at most an hour, +-10 %."""
    base = min(RETRY_MAX_S, relay.retry_after_s * 2 ** max(0, attempts - 1))
    return timedelta(seconds=base * random.uniform(0.9, 1.1))  # jitter, not crypto


def outcome_for(mail: PreparedMail, result: SendResult, relay: SmtpRelay) -> Outcome:
    code = f"smtp:{result.code}" if result.code else "smtp"
    text = result.text[:500]
    if result.outcome is SmtpOutcome.SENT:
        return Outcome(mail.message_id, "sent", provider_ids=[mail.ref])
    if result.outcome is SmtpOutcome.PERMANENT:
        return Outcome(mail.message_id, "failed", code, text, suppress=result.suppress)
    if result.outcome is SmtpOutcome.AMBIGUOUS:
        return Outcome(mail.message_id, "ambiguous", "smtp:ambiguous", text)
    if result.code is not None and 400 <= result.code < 500:
        # The relay or the recipient's server said "later" (greylisting, rate limits): minutes.
        return Outcome(mail.message_id, "retry", code, text, retry_at=utcnow() + retry_after(relay, mail.attempts + 1))
    # Relay unreachable or misbehaving: the default backoff (seconds to minutes) applies.
    return Outcome(mail.message_id, "retry", code, text)


def send_email_batch(
    rt: Runtime, er: EmailRuntime, relay: SmtpRelay, campaign_id: str, claim: str, ids: Sequence[int]
) -> dict[str, int]:
    def load() -> LoadedBatch:
        with transaction(rt.engine) as session:
            return load_batch(session, rt.box, campaign_id, ids, claim, template_of=email_template)

    started = time.perf_counter()
    batch = with_db_retry(load)
    campaign = batch.campaign
    if campaign is None or not batch.messages:
        return {}
    # Where a batch's time goes (logged with its outcome): database, building + signing, relay.
    spent = {"load": time.perf_counter() - started, "build": 0.0, "db": 0.0, "smtp": 0.0}
    ledger = BatchLedger(
        rt.engine,
        claim,
        lease_s=rt.settings.lease_seconds,
        max_attempts=rt.settings.max_attempts,
        ambiguous_policy=str(campaign.options.get("ambiguous", "resend")),
        retry=with_db_retry,
    )
    composer = Composer(_builder(campaign), er.signer(relay), er.keys)
    shared = [(f"smtp:{relay.name}", float(relay.rate))]
    if campaign.rate_limit:
        shared.append((f"campaign:{campaign.id}", float(campaign.rate_limit)))
    pacer: DomainPacer[LoadedMessage] = DomainPacer(
        rt.limiter,
        domain_key=lambda domain: f"smtp:{relay.name}:domain:{domain}",
        rates=DomainRates(relay.domain_rates),
        shared=shared,
        max_slice=min(MAX_SLICE, relay.connections * SLICE_PER_CONNECTION),
    )
    for msg in batch.messages:
        pacer.add(domain_of(msg.to), msg)
    while not is_halted(rt.redis, campaign.id):
        granted = pacer.next_slice()
        if not granted:
            break
        _send_slice(rt, er, relay, campaign, ledger, composer, pacer, granted, spent)
    now = utcnow()
    later = [Outcome(msg.id, "not_sent", retry_at=now + timedelta(seconds=wait)) for msg, wait in pacer.deferred]
    with _timed(spent, "db"):
        counts = ledger.finish(ids, later)  # also gives back whatever a halt left unsent
    log.info(
        "relay %s: campaign %s batch of %s: %s in %.2f s (%s)",
        relay.name,
        campaign.id,
        len(ids),
        ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing sent",
        time.perf_counter() - started,
        ", ".join(f"{k} {v:.2f}" for k, v in spent.items()),
        extra={"campaign_id": campaign.id},
    )
    return counts


@contextmanager
def _timed(spent: dict[str, float], phase: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        spent[phase] += time.perf_counter() - started


def _send_slice(
    rt: Runtime,
    er: EmailRuntime,
    relay: SmtpRelay,
    campaign: Campaign,
    ledger: BatchLedger,
    composer: Composer,
    pacer: DomainPacer[LoadedMessage],
    granted: Sequence[tuple[str, LoadedMessage]],
    spent: dict[str, float],
) -> None:
    outcomes: list[Outcome] = []
    mails: list[PreparedMail] = []
    with _timed(spent, "build"):
        for domain, msg in granted:
            try:
                mails.append(composer.compose(msg, domain))
            except ValueError as exc:  # an address SMTP cannot carry; the error names no secret
                outcomes.append(Outcome(msg.id, "failed", "invalid_address", str(exc)[:200]))
    with _timed(spent, "db"):
        owned = ledger.begin([m.message_id for m in mails])
    mails = [m for m in mails if m.message_id in owned]
    with _timed(spent, "smtp"):
        results = er.send(relay, mails) if mails else []
    deferred_domains: set[str] = set()
    ok_domains: set[str] = set()
    for mail, result in zip(mails, results, strict=True):
        outcomes.append(outcome_for(mail, result, relay))
        if result.outcome is SmtpOutcome.SENT:
            ok_domains.add(mail.domain)
        elif result.code is not None and 400 <= result.code < 500:
            deferred_domains.add(mail.domain)
    for domain in deferred_domains:
        pacer.penalise(domain)
    for domain in ok_domains - deferred_domains:
        pacer.recover(domain)
    with _timed(spent, "db"):
        outcomes = _limit_ambiguous(rt, outcomes)
        ledger.record(outcomes)
    suppress_ids = {o.message_id for o in outcomes if o.suppress}
    if suppress_ids:
        _suppress(rt, campaign, sorted({msg.to for _, msg in granted if msg.id in suppress_ids}))


def _limit_ambiguous(rt: Runtime, outcomes: list[Outcome]) -> list[Outcome]:
    """A message already resent after an ambiguous send fails instead of going out a third time."""
    ids = [o.message_id for o in outcomes if o.kind == "ambiguous"]
    if not ids:
        return outcomes

    def read() -> dict[int, int]:
        with transaction(rt.engine) as session:
            rows = session.execute(
                select(col(Message.id), col(Message.ambiguous_resends)).where(col(Message.id).in_(ids))
            )
            return {int(i): int(n) for i, n in rows}

    resends = with_db_retry(read)
    limited: list[Outcome] = []
    for o in outcomes:
        if o.kind == "ambiguous" and resends.get(o.message_id, 0) >= AMBIGUOUS_RESENDS:
            text = f"{o.error_text}; already resent {AMBIGUOUS_RESENDS}x after a lost connection, the relay may have it"
            o = Outcome(o.message_id, "failed", "smtp:ambiguous", text[:500])
        limited.append(o)
    return limited


def _suppress(rt: Runtime, campaign: Campaign, addresses: Sequence[str]) -> None:
    def save() -> None:
        with transaction(rt.engine) as session:
            for address in addresses:
                mark_suppressed(session, campaign.org_id, address, "mailbox unknown (5xx from the relay)")

    with_db_retry(save)


def email_template(campaign: Campaign) -> Mapping[str, str | None]:
    """The campaign's template, with the text part derived from the HTML once when it has none."""
    template: Mapping[str, str | None] = campaign.template
    html = template.get("html")
    if html and not template.get("body"):
        text = _derived_text(html)
        if text is not None:
            return {**template, "body": text}
    return template  # the builder derives the text per message, as for templates with {% %}


@lru_cache(maxsize=64)
def _derived_text(html: str) -> str | None:
    return text_template_from_html(html)


def _builder(campaign: Campaign) -> MessageBuilder:
    options = campaign.options
    return MessageBuilder(
        campaign.sender, list_unsubscribe=options.get("list_unsubscribe") or None, verp=bool(options.get("verp"))
    )
