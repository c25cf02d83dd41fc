"""API shapes of the campaign domain (requests in). Every text is normalised to NFC on the way in,
so Vietnamese typed with combining marks renders and counts like the precomposed form."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from campaigns.models import Channel, Priority
from campaigns.windows import DEFAULT_TZ

ADDRESS_COLUMNS = ("phone", "email")
MAX_SECRET_FIELDS = 50
MAX_TEST_RECIPIENTS = 10
# Alphanumeric brandname: GSM-safe letters, digits and a little punctuation, at most 11 characters
# (the SMPP source_addr limit for TON 5); not all digits, which would be a number.
_ALNUM_SENDER = re.compile(r"^[A-Za-z0-9 ._&-]{1,11}$")
# Short code (3-8 digits) or an MSISDN in international form (up to 15 digits, E.164).
_NUMERIC_SENDER = re.compile(r"^\+?[0-9]{3,15}$")
_EMAIL_SENDER = re.compile(r"^(?:(?P<name>[^<>]*?)\s*<(?P<addr>[^<>\s]+@[^<>\s]+)>|(?P<bare>[^<>\s]+@[^<>\s]+))$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_FIELD_NAME = re.compile(r"^[^\x00-\x1f]{1,100}$")

Encoding = Literal["auto", "gsm7", "ucs2", "strip_diacritics"]


def nfc(value: Any) -> Any:
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _nfc(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return nfc(value)


class TemplateIn(_In):
    # Template text keeps its whitespace: a trailing newline or indentation can be meant.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    body: str | None = Field(default=None, max_length=100_000, examples=["Kính gửi {{ ten }}: ..."])
    subject: str | None = Field(default=None, max_length=998)
    html: str | None = Field(default=None, max_length=1_000_000)


class WindowIn(_In):
    start: str = Field(examples=["07:00"], description="local time HH:MM when sending may start")
    end: str = Field(examples=["22:00"], description="local time HH:MM when sending stops (may wrap midnight)")
    tz: str = Field(DEFAULT_TZ, description="IANA time zone of start and end", max_length=64)

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("must be HH:MM (00:00-23:59)")
        return value

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (KeyError, ValueError, OSError):  # not found is a KeyError; "Asia" is a directory
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> WindowIn:
        if self.start == self.end:
            raise ValueError("window start and end must differ")
        return self


def _in_range(value: datetime | None) -> datetime | None:
    """UTC, refusing instants that do not exist in UTC (year 1 at +01:00, year 9999 at -01:00)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


class ScheduleIn(_In):
    start_at: AwareDatetime | None = Field(
        default=None, description="when to start (ISO 8601 with offset); omitted or past = at launch"
    )
    window: WindowIn | None = Field(default=None, description="opt-in daily send window; none = any time")
    deadline: AwareDatetime | None = Field(
        default=None, description="after this instant unsent messages become `expired`"
    )

    @field_validator("start_at", "deadline")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _in_range(value)

    @model_validator(mode="after")
    def _order(self) -> ScheduleIn:
        if self.start_at and self.deadline and self.deadline <= self.start_at:
            raise ValueError("deadline must be after start_at")
        return self


class CampaignOptions(_In):
    ambiguous: Literal["resend", "hold"] = Field(
        "resend", description="a submit whose answer never came: resend (at-least-once) or hold (mark failed)"
    )
    list_unsubscribe: str | None = Field(default=None, max_length=500)
    verp: bool = False


def _check_secret_fields(value: list[str]) -> list[str]:
    for name in value:
        if not _FIELD_NAME.match(name):
            raise ValueError(f"field name {name!r} must be 1-100 printable characters")
        if name.lower() in ADDRESS_COLUMNS:
            raise ValueError(f"{name!r} is the address column; it cannot be secret")
    return list(dict.fromkeys(value))


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
                    "template": {"body": "Kính gửi {{ ten }}: Tổng điều tra dân số bắt đầu 1/4."},
                    "encoding": "auto",
                    "schedule": {"window": {"start": "07:00", "end": "22:00"}},
                    "rate_limit": 200,
                    "priority": "normal",
                },
                {
                    "name": "Credentials for census units",
                    "channel": "email",
                    "sender": "Tổng cục Thống kê <dieutra@gso.gov.vn>",
                    "template": {
                        "subject": "Tài khoản điều tra của {{ don_vi }}",
                        "body": "Tên đăng nhập: {{ username }}\nMật khẩu: {{ password }}",
                    },
                    "secret_fields": ["password"],
                },
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    channel: Channel
    sender: str = Field(
        min_length=1,
        max_length=320,
        description="SMS: alphanumeric of at most 11 characters, or a short code or MSISDN; "
        "email: `addr@domain` or `Display Name <addr@domain>`",
    )
    template: TemplateIn
    encoding: Encoding = "auto"
    secret_fields: list[str] = Field(default_factory=list, max_length=MAX_SECRET_FIELDS)
    schedule: ScheduleIn = Field(default_factory=ScheduleIn)
    rate_limit: float | None = Field(default=None, gt=0, le=100_000, description="messages per second")
    priority: Priority = Priority.NORMAL
    options: CampaignOptions = Field(default_factory=CampaignOptions)

    # Fields are declared channel first, so these validators see the channel and their errors
    # carry the field's own location (`sender`, `template`).
    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel is not None:
            validate_sender(channel, value)
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: TemplateIn, info: ValidationInfo) -> TemplateIn:
        channel = info.data.get("channel")
        if channel is not None:
            validate_template_parts(channel, value)
        return value

    @field_validator("secret_fields")
    @classmethod
    def _secrets(cls, value: list[str]) -> list[str]:
        return _check_secret_fields(value)


class CampaignUpdate(_In):
    """Partial update of a draft; a field left out keeps its value, `schedule` replaces the whole
    schedule (null clears it), `rate_limit: null` removes the cap."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"name": "Census 2026 wave 1 (final)", "rate_limit": 150}]},
    )

    name: str | None = Field(default=None, min_length=1, max_length=200)
    sender: str | None = Field(default=None, min_length=1, max_length=320)
    template: TemplateIn | None = None
    encoding: Encoding | None = None
    secret_fields: list[str] | None = Field(default=None, max_length=MAX_SECRET_FIELDS)
    schedule: ScheduleIn | None = None
    rate_limit: float | None = Field(default=None, gt=0, le=100_000)
    priority: Priority | None = None
    options: CampaignOptions | None = None

    @field_validator("name", "sender", "template", "encoding", "secret_fields", "priority", "options")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Only an explicit null reaches here (defaults are not validated): these have no "unset".
        if value is None:
            raise ValueError("may not be null; leave the field out to keep its value")
        return value

    @field_validator("secret_fields")
    @classmethod
    def _secrets(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_secret_fields(value)


def validate_sender(channel: Channel, sender: str) -> None:
    if channel is Channel.SMS:
        alphanumeric = bool(_ALNUM_SENDER.match(sender)) and not sender.isdigit()
        if not alphanumeric and not _NUMERIC_SENDER.match(sender):
            raise ValueError(
                f"SMS sender {sender!r} must be alphanumeric of at most 11 characters (A-Z, 0-9, space . _ & -), "
                "or a numeric short code or MSISDN"
            )
    elif not _EMAIL_SENDER.match(sender):
        raise ValueError("email sender must be addr@domain or 'Display Name <addr@domain>'")


def validate_template_parts(channel: Channel, template: TemplateIn) -> None:
    if channel is Channel.SMS:
        if not template.body:
            raise ValueError("an SMS template needs body")
        if template.subject or template.html:
            raise ValueError("an SMS template has only body (no subject, no html)")
    else:
        if not template.subject:
            raise ValueError("an email template needs subject")
        if not (template.body or template.html):
            raise ValueError("an email template needs body or html (or both)")


def validate_channel_fields(channel: Channel, sender: str, template: TemplateIn) -> None:
    validate_sender(channel, sender)
    validate_template_parts(channel, template)


def sender_address(sender: str) -> str:
    match = _EMAIL_SENDER.match(sender)
    if not match:
        raise ValueError("not an email sender")
    return match.group("addr") or match.group("bare")


class RecipientIn(_In):
    to: str = Field(min_length=1, max_length=320, examples=["0912345678"])
    fields: dict[str, Any] = Field(default_factory=dict, examples=[{"ten": "Nguyễn Văn An"}])


class RecipientsIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"recipients": [{"to": "0912345678", "fields": {"ten": "Nguyễn Văn An"}}]}]},
    )

    recipients: list[RecipientIn] = Field(max_length=100_000)


class SendTestIn(_In):
    """A few addresses that get the rendered message now, outside the campaign's counts."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"recipients": [{"to": "0912345678", "fields": {"ten": "Nguyễn Văn An (thử)"}}]}]
        },
    )

    recipients: list[RecipientIn] = Field(min_length=1, max_length=MAX_TEST_RECIPIENTS)


class CloneIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Census 2026 wave 2", "recipients": "undelivered"}]},
    )

    name: str | None = Field(default=None, min_length=1, max_length=200)
    recipients: Literal["none", "all", "undelivered"] = Field(
        "none",
        description="none: settings only; all: every recipient; undelivered: recipients whose message did not "
        "reach them (undeliverable, expired, rejected, failed, bounced, cancelled, or never sent)",
    )
