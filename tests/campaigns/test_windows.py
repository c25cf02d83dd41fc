"""Send windows: local time of the campaign's zone, windows that wrap midnight, and the instants
at which a window closes (validity period) and opens next."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from campaigns.windows import in_window, next_open_utc, window_end_utc

DAY = {"start": "07:00", "end": "22:00", "tz": "Asia/Ho_Chi_Minh"}  # UTC+7, no DST
NIGHT = {"start": "22:00", "end": "06:00", "tz": "Asia/Ho_Chi_Minh"}


def utc(h: int, m: int = 0, day: int = 10) -> datetime:
    return datetime(2026, 3, day, h, m, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "now", "inside"),
    [
        (DAY, utc(0), True),  # 07:00 local: the first minute is inside
        (DAY, utc(23, 59, day=9), False),  # 06:59 local
        (DAY, utc(14, 59), True),  # 21:59 local
        (DAY, utc(15), False),  # 22:00 local: the end is outside
        (NIGHT, utc(15), True),  # 22:00 local
        (NIGHT, utc(20), True),  # 03:00 local, after midnight
        (NIGHT, utc(23), False),  # 06:00 local
        (NIGHT, utc(5), False),  # 12:00 local
        ({"start": "07:00", "end": "22:00"}, utc(15), False),  # zone defaults to Asia/Ho_Chi_Minh
        ({"start": "07:00", "end": "22:00", "tz": "UTC"}, utc(15), True),
        (None, utc(3), True),
    ],
)
def test_in_window_uses_the_campaign_zone_and_wraps_midnight(
    window: dict[str, str] | None, now: datetime, inside: bool
) -> None:
    assert in_window(window, now) is inside


def test_naive_times_are_taken_as_utc() -> None:
    assert in_window(DAY, datetime(2026, 3, 10, 0, 30)) is True
    assert in_window(DAY, datetime(2026, 3, 10, 16, 0)) is False


def test_window_end_is_the_close_of_the_open_window() -> None:
    assert window_end_utc(DAY, utc(3)) == utc(15)
    # A night window open at 23:00 local closes at 06:00 local the next day.
    assert window_end_utc(NIGHT, utc(16)) == utc(23)
    assert window_end_utc(NIGHT, utc(20)) == utc(23)
    assert window_end_utc(DAY, utc(16)) is None  # closed now
    assert window_end_utc(None, utc(3)) is None


def test_next_open_is_today_or_tomorrow() -> None:
    assert next_open_utc(DAY, utc(23, 0, day=9)) == utc(0)  # 06:00 local → 07:00 local the same day
    assert next_open_utc(DAY, utc(16)) == utc(0, day=11)  # 23:00 local → tomorrow 07:00
    assert next_open_utc(NIGHT, utc(5)) == utc(15)
    assert next_open_utc(DAY, utc(3)) is None  # open now
    assert next_open_utc(None, utc(3)) is None
