"""Send windows (e.g. advertising SMS only 07:00–22:00 Asia/Ho_Chi_Minh), in local time of the
campaign's zone; a window may wrap midnight (22:00–06:00)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

DEFAULT_TZ = "Asia/Ho_Chi_Minh"


def _parse(window: dict[str, Any]) -> tuple[time, time, ZoneInfo]:
    return (
        time.fromisoformat(window["start"]),
        time.fromisoformat(window["end"]),
        ZoneInfo(window.get("tz") or DEFAULT_TZ),
    )


def _local(now_utc: datetime, tz: ZoneInfo) -> datetime:
    aware = now_utc if now_utc.tzinfo else now_utc.replace(tzinfo=UTC)
    return aware.astimezone(tz)


def in_window(window: dict[str, Any] | None, now_utc: datetime) -> bool:
    if not window:
        return True
    start, end, tz = _parse(window)
    t = _local(now_utc, tz).time()
    if start < end:
        return start <= t < end
    return t >= start or t < end


def window_end_utc(window: dict[str, Any] | None, now_utc: datetime) -> datetime | None:
    """When the window that is open now closes (UTC), or None without a window / outside it."""
    if not window or not in_window(window, now_utc):
        return None
    start, end, tz = _parse(window)
    local = _local(now_utc, tz)
    end_local = datetime.combine(local.date(), end, tzinfo=tz)
    if end_local <= local:
        end_local += timedelta(days=1)
    return end_local.astimezone(UTC)


def next_open_utc(window: dict[str, Any] | None, now_utc: datetime) -> datetime | None:
    """When the window next opens (UTC); None if it is open now or there is none."""
    if not window or in_window(window, now_utc):
        return None
    start, _end, tz = _parse(window)
    local = _local(now_utc, tz)
    opens = datetime.combine(local.date(), start, tzinfo=tz)
    if opens <= local:
        opens += timedelta(days=1)
    return opens.astimezone(UTC)
