"""SMPP command_status codes: their SMPP 3.4 names and whether a failed submit is worth retrying.

Each gateway gets an :class:`ErrorTable`: the default classification below plus the overrides from
its ``errors = {...}`` entry in the gateways file, because carriers disagree (one answers 0x45 to a
momentary overload, another to a number that will never exist). The sender turns
``ErrorClass.TRANSIENT`` into a retry later and ``PERMANENT`` into a failed message;
:func:`is_throttle` additionally tells it to slow the gateway down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "DEFAULT_ERROR_TABLE",
    "ERROR_NAMES",
    "ESME_RMSGQFUL",
    "ESME_ROK",
    "ESME_RTHROTTLED",
    "ErrorClass",
    "ErrorTable",
    "is_throttle",
    "parse_overrides",
]


class ErrorClass(StrEnum):
    """What a failed submit means for the message: try again later, or give up."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


ESME_ROK = 0x00
ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58

# SMPP 3.4 §5.1.3, the complete table.
ERROR_NAMES: Mapping[int, str] = MappingProxyType(
    {
        0x00: "ESME_ROK",
        0x01: "ESME_RINVMSGLEN",
        0x02: "ESME_RINVCMDLEN",
        0x03: "ESME_RINVCMDID",
        0x04: "ESME_RINVBNDSTS",
        0x05: "ESME_RALYBND",
        0x06: "ESME_RINVPRTFLG",
        0x07: "ESME_RINVREGDLVFLG",
        0x08: "ESME_RSYSERR",
        0x0A: "ESME_RINVSRCADR",
        0x0B: "ESME_RINVDSTADR",
        0x0C: "ESME_RINVMSGID",
        0x0D: "ESME_RBINDFAIL",
        0x0E: "ESME_RINVPASWD",
        0x0F: "ESME_RINVSYSID",
        0x11: "ESME_RCANCELFAIL",
        0x13: "ESME_RREPLACEFAIL",
        0x14: "ESME_RMSGQFUL",
        0x15: "ESME_RINVSERTYP",
        0x33: "ESME_RINVNUMDESTS",
        0x34: "ESME_RINVDLNAME",
        0x40: "ESME_RINVDESTFLAG",
        0x42: "ESME_RINVSUBREP",
        0x43: "ESME_RINVESMCLASS",
        0x44: "ESME_RCNTSUBDL",
        0x45: "ESME_RSUBMITFAIL",
        0x48: "ESME_RINVSRCTON",
        0x49: "ESME_RINVSRCNPI",
        0x50: "ESME_RINVDSTTON",
        0x51: "ESME_RINVDSTNPI",
        0x53: "ESME_RINVSYSTYP",
        0x54: "ESME_RINVREPFLAG",
        0x55: "ESME_RINVNUMMSGS",
        0x58: "ESME_RTHROTTLED",
        0x61: "ESME_RINVSCHED",
        0x62: "ESME_RINVEXPIRY",
        0x63: "ESME_RINVDFTMSGID",
        0x64: "ESME_RX_T_APPN",
        0x65: "ESME_RX_P_APPN",
        0x66: "ESME_RX_R_APPN",
        0x67: "ESME_RQUERYFAIL",
        0xC0: "ESME_RINVOPTPARSTREAM",
        0xC1: "ESME_ROPTPARNOTALLWD",
        0xC2: "ESME_RINVPARLEN",
        0xC3: "ESME_RMISSINGOPTPARAM",
        0xC4: "ESME_RINVOPTPARAMVAL",
        0xFE: "ESME_RDELIVERYFAILURE",
        0xFF: "ESME_RUNKNOWNERR",
    }
)

# Retrying is right only where the same PDU can succeed later: the SMSC is overloaded (throttled,
# queue full), broken for a moment (system error, temporary application error), or the session we
# used was not bound (0x04: a property of the session, not of the message; another bind takes it).
# Everything else says the message itself is wrong, and resending it would only be refused again
# and eat the gateway's rate, so it is permanent, including 0xFF "unknown error" and any code not
# in the table (vendor-specific 0x400-0x4FF among them) unless a gateway override says otherwise.
_TRANSIENT_CODES = frozenset({0x04, 0x08, ESME_RMSGQFUL, ESME_RTHROTTLED, 0x64})

DEFAULT_ERROR_TABLE: Mapping[int, ErrorClass] = MappingProxyType(
    {
        code: ErrorClass.TRANSIENT if code in _TRANSIENT_CODES else ErrorClass.PERMANENT
        for code in ERROR_NAMES
        if code != ESME_ROK
    }
)

_VENDOR_RANGE = range(0x400, 0x500)
_MAX_STATUS = 0xFFFFFFFF
# Stricter than int(): no sign, no underscores, no other prefixes.
_CODE_SYNTAX = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")


def is_throttle(code: int) -> bool:
    """Whether the SMSC asked us to slow down (0x58 throttled, 0x14 queue full)."""
    return code in (ESME_RTHROTTLED, ESME_RMSGQFUL)


def _check_code(code: int) -> None:
    if code == ESME_ROK:
        raise ValueError("command_status 0 (ESME_ROK) is success, not an error to classify")
    if not 0 < code <= _MAX_STATUS:
        raise ValueError(f"command_status {code} is not a 32-bit unsigned value")


@dataclass(frozen=True)
class ErrorTable:
    """One gateway's classification: its ``overrides`` first, then :data:`DEFAULT_ERROR_TABLE`."""

    # Left out of the hash (a mapping has none); equal tables still hash equal.
    overrides: Mapping[int, ErrorClass] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for code in self.overrides:
            _check_code(code)
        # Copy and freeze, so the caller's dict cannot change a table that workers share.
        frozen = MappingProxyType({code: ErrorClass(cls) for code, cls in self.overrides.items()})
        object.__setattr__(self, "overrides", frozen)

    @classmethod
    def from_config(cls, raw: Mapping[str, str] | None) -> ErrorTable:
        """Build a table from a gateway's ``errors`` entry (see :func:`parse_overrides`)."""
        return cls(parse_overrides(raw or {}))

    def classify(self, code: int) -> ErrorClass:
        """TRANSIENT or PERMANENT for a non-zero command_status; unknown codes are PERMANENT."""
        _check_code(code)
        found = self.overrides.get(code)
        if found is not None:
            return found
        return DEFAULT_ERROR_TABLE.get(code, ErrorClass.PERMANENT)

    def describe(self, code: int) -> str:
        """A code as logs and reports show it, e.g. ``"0x00000058 ESME_RTHROTTLED"``."""
        if code in ERROR_NAMES:
            name = ERROR_NAMES[code]
        elif code in _VENDOR_RANGE:
            name = "vendor-specific"
        else:
            name = "unknown"
        return f"0x{code:08X} {name}"


def parse_overrides(raw: Mapping[str, str]) -> dict[int, ErrorClass]:
    """Read a gateway's ``errors`` overrides: keys ``"0x45"`` or ``"69"``, values transient|permanent.

    Raises ``ValueError`` naming the offending key or value.
    """
    parsed: dict[int, ErrorClass] = {}
    for key, value in raw.items():
        text = str(key).strip()
        if not _CODE_SYNTAX.fullmatch(text):
            raise ValueError(f"error code {key!r}: expected hex like '0x45' or decimal like '69'")
        code = int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
        try:
            _check_code(code)
        except ValueError as exc:
            raise ValueError(f"error code {key!r}: {exc}") from None
        if code in parsed:
            raise ValueError(f"error code {key!r} is given twice (as {code:#x})")
        try:
            parsed[code] = ErrorClass(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"error code {key!r}: {value!r} is not 'transient' or 'permanent'") from None
    return parsed
