"""The import pipeline's moving parts: a reader thread ahead of the database by a bounded number
of chunks, and errors on either side stopping both."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from campaigns.recipients import MAX_ERRORS, ImportResult, normalise_email
from campaigns.staging import run_pipelined


class Source:
    """A chunk generator that records how far it got and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at
        self.produced = 0
        self.closed = False
        self.thread: str | None = None

    def chunks(self) -> Iterator[int]:
        try:
            for n in range(self.count):
                self.thread = threading.current_thread().name
                if n == self.fail_at:
                    raise ValueError(f"bad chunk {n}")
                self.produced += 1
                yield n
        finally:
            self.closed = True


def test_chunks_arrive_in_order_from_a_reader_thread() -> None:
    source = Source(50)
    seen: list[int] = []
    run_pipelined(source.chunks(), seen.append)
    assert seen == list(range(50))
    assert source.thread == "loa-import-reader"
    assert source.closed


def test_the_reader_stays_at_most_a_few_chunks_ahead() -> None:
    source = Source(100)
    lead: list[int] = []

    def slow(n: int) -> None:
        time.sleep(0.002)
        lead.append(source.produced - n)

    run_pipelined(source.chunks(), slow, depth=2)
    assert max(lead) <= 4  # the queue (2), the one being put, the one being consumed


def test_a_reader_error_is_raised_to_the_caller() -> None:
    source = Source(100, fail_at=7)
    seen: list[int] = []
    with pytest.raises(ValueError, match="bad chunk 7"):
        run_pipelined(source.chunks(), seen.append)
    assert seen == list(range(7))
    assert source.closed


def test_a_database_error_stops_the_reader() -> None:
    source = Source(10_000)

    def fail(n: int) -> None:
        if n == 3:
            raise RuntimeError("database went away")

    with pytest.raises(RuntimeError, match="went away"):
        run_pipelined(source.chunks(), fail)
    assert source.produced < 10
    assert source.closed


def test_error_list_is_capped() -> None:
    result = ImportResult(upload="upl_x")
    for row in range(2, MAX_ERRORS + 12):
        result.error(row, "phone", "too short")
    assert result.rejected == MAX_ERRORS + 10
    assert len(result.errors) == MAX_ERRORS
    assert result.errors_truncated


def test_email_addresses_are_compared_in_lower_case() -> None:
    assert normalise_email("  Nguyen.An@GSO.gov.VN ") == "nguyen.an@gso.gov.vn"
