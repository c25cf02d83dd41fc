"""API shapes of the campaign domain (requests in, responses out)."""

from __future__ import annotations

import re
from datetime import datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from campaigns.models import Channel, Priority

DEFAULT_TZ = "Asia/Ho_Chi_Minh"
_ALNUM_SENDER = re.compile(r"^[A-Za-z0-9 ._&-]{1,11}$")
_NUMERIC_SENDER = re.compile(r"^\+?[0-9]{3,15}$")
_EMAIL_SENDER = re.compile(r"^(?:(?P<name>[^<>]*?)\s*<(?P<addr>[^<>\s]+@[^<>\s]+)>|(?P<bare>[^<>\s]+@[^<>\s]+))$")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TemplateIn(_In):
    body: str | None = None
    subject: str | None = None
    html: str | None = None


class WindowIn(_In):
    start: str = Field(examples=["07:00"])
    end: str = Field(examples=["22:00"])
    tz: str = DEFAULT_TZ

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        try:
            return time.fromisoformat(value).strftime("%H:%M")
        except ValueError:
            raise ValueError("must be HH:MM") from None

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> WindowIn:
        if self.start == self.end:
            raise ValueError("window start and end must differ")
        return self


class ScheduleIn(_In):
    start_at: datetime | None = None
    window: WindowIn | None = None
    deadline: datetime | None = None

    @model_validator(mode="after")
    def _order(self) -> ScheduleIn:
        if self.start_at and self.deadline and _aware(self.deadline) <= _aware(self.start_at):
            raise ValueError("deadline must be after start_at")
        return self


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


class CampaignOptions(_In):
    ambiguous: Literal["resend", "hold"] = "resend"
    list_unsubscribe: str | None = None
    verp: bool = False


class CampaignCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "Census 2026 wave 1",
                    "channel": "sms",
                    "sender": "TCTK",
                    "template": {"body": "Kính gửi {{ name }}: Tổng điều tra dân số bắt đầu 1/4."},
                    "encoding": "auto",
                    "schedule": {"window": {"start": "07:00", "end": "22:00"}},
                    "rate_limit": 200,
                    "priority": "normal",
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    channel: Channel
    sender: str = Field(min_length=1, max_length=320)
    template: TemplateIn
    encoding: Literal["auto", "gsm7", "ucs2", "strip_diacritics"] = "auto"
    secret_fields: list[str] = Field(default_factory=list)
    schedule: ScheduleIn = Field(default_factory=ScheduleIn)
    rate_limit: float | None = Field(default=None, gt=0)
    priority: Priority = Priority.NORMAL
    options: CampaignOptions = Field(default_factory=CampaignOptions)

    @model_validator(mode="after")
    def _channel_rules(self) -> CampaignCreate:
        validate_channel_fields(self.channel, self.sender, self.template)
        return self


class CampaignUpdate(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    sender: str | None = Field(default=None, min_length=1, max_length=320)
    template: TemplateIn | None = None
    encoding: Literal["auto", "gsm7", "ucs2", "strip_diacritics"] | None = None
    secret_fields: list[str] | None = None
    schedule: ScheduleIn | None = None
    rate_limit: float | None = Field(default=None, gt=0)
    priority: Priority | None = None
    options: CampaignOptions | None = None


def validate_channel_fields(channel: Channel, sender: str, template: TemplateIn) -> None:
    if channel is Channel.SMS:
        if not template.body:
            raise ValueError("template.body is required for SMS")
        if not (_ALNUM_SENDER.match(sender) and not sender.isdigit()) and not _NUMERIC_SENDER.match(sender):
            raise ValueError("sender must be alphanumeric of at most 11 characters, or a numeric short code or MSISDN")
    else:
        if not template.subject:
            raise ValueError("template.subject is required for email")
        if not (template.body or template.html):
            raise ValueError("template needs body or html for email")
        if not _EMAIL_SENDER.match(sender):
            raise ValueError("sender must be an address or 'Display Name <addr@domain>'")


def sender_address(sender: str) -> str:
    match = _EMAIL_SENDER.match(sender)
    if not match:
        raise ValueError("not an email sender")
    return match.group("addr") or match.group("bare")


class RecipientIn(_In):
    to: str = Field(min_length=1, max_length=320)
    fields: dict[str, Any] = Field(default_factory=dict)


class RecipientsIn(_In):
    recipients: list[RecipientIn] = Field(max_length=100_000)


class TestSendIn(_In):
    recipients: list[RecipientIn] = Field(min_length=1, max_length=10)


class CloneIn(_In):
    name: str | None = None
    recipients: Literal["none", "all", "undelivered"] = "none"


class ApprovalOut(BaseModel):
    approved_by: str | None
