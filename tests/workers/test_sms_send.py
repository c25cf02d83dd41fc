"""Pieces of the SMS send path with real Redis: concatenation references that cycle per
destination, the token pacer on the shared limiter, and message outcomes from segment results."""

from __future__ import annotations

import time

import redis

from campaigns.sending import LoadedMessage
from campaigns.templates import Rendered
from gateways.ratelimit import RateLimiter
from gateways.smpp.client import Outcome, SubmitResult
from gateways.smpp.errors import ErrorTable
from workers.send_sms import outcome_for, udh_refs
from workers.sms_pacing import TokenPacer


def message(mid: int, to: str, attempts: int = 0) -> LoadedMessage:
    return LoadedMessage(mid, to, attempts, Rendered(subject=None, body="x", html=None))


def test_concatenation_references_cycle_per_destination(redis_client: redis.Redis[bytes]) -> None:
    first = udh_refs(redis_client, [message(1, "+84961"), message(2, "+84962")])
    again = udh_refs(redis_client, [message(3, "+84961")])
    assert first[1] != again[3], "two long messages in a row to one handset share a reference"
    refs = [udh_refs(redis_client, [message(10 + i, "+84963")])[10 + i] for i in range(300)]
    assert all(1 <= r <= 255 for r in refs)
    assert all(a != b for a, b in zip(refs, refs[1:], strict=False))


def test_without_redis_references_come_from_the_message_id() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    refs = udh_refs(dead, [message(7, "+84961")])
    assert refs == {7: 7 * 31 % 255 + 1}


def test_the_pacer_takes_tokens_in_chunks_and_spends_them_at_the_rate(redis_client: redis.Redis[bytes]) -> None:
    limiter = RateLimiter(redis_client)
    pacer = TokenPacer(limiter, [("smpp:pace", 400.0), ("campaign:c", 200.0)])
    start = time.monotonic()
    for _ in range(40):
        pacer.take()
    elapsed = time.monotonic() - start
    # 200/s is the tighter key: 40 tokens need at least 39 intervals of 5 ms.
    assert elapsed >= 39 / 200 * 0.9


def test_outcomes_from_segment_results() -> None:
    table = ErrorTable()

    def r(outcome: Outcome, status: int | None = None, pid: str | None = None) -> SubmitResult:
        return SubmitResult(ref=None, outcome=outcome, provider_id=pid, command_status=status)

    assert outcome_for(1, [r(Outcome.OK, pid="00ab"), r(Outcome.OK, pid="CD")], table).provider_ids == ["AB", "CD"]
    assert outcome_for(1, [r(Outcome.ERROR, 0x0B)], table).kind == "failed"
    assert outcome_for(1, [r(Outcome.ERROR, 0x08)], table).kind == "retry"
    throttled = outcome_for(1, [r(Outcome.ERROR, 0x58)], table)
    assert (throttled.kind, throttled.retry_at is not None) == ("not_sent", True)  # no attempt used
    assert outcome_for(1, [r(Outcome.AMBIGUOUS)], table).kind == "ambiguous"
    # Part of a long message accepted and another part not: resending is a (counted) duplicate.
    assert outcome_for(1, [r(Outcome.OK, pid="A"), r(Outcome.NOT_SENT)], table).kind == "ambiguous"
    assert outcome_for(1, [r(Outcome.NOT_SENT), r(Outcome.NOT_SENT)], table).kind == "not_sent"
    assert outcome_for(1, [r(Outcome.OK, pid="A"), r(Outcome.ERROR, 0x45)], table).error_code == "0x45"
