"""SMPP delivery receipts: parsing, message-id normalisation and the ordering of final outcomes.

smpplib decodes a deliver_sm but has no receipt parser. The receipt text ("id:... sub:... dlvrd:...
submit date:... done date:... stat:... err:... text:...") is only a de-facto convention from an
appendix of SMPP 3.4: SMSCs drop fields, change their case, write 10- or 12-digit dates, and invent
stat words. So the parser here is lenient about everything except the id, and prefers the
``receipted_message_id`` / ``message_state`` TLVs whenever the SMSC sends them.

Ids are the other trap: carriers pad them with zeros and write the same id in hex in
``submit_sm_resp`` and in decimal in the receipt (or the reverse). :func:`normalise_id` and
:func:`receipt_id_candidates` turn both sides into comparable keys.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

__all__ = [
    "STATUS_RANK",
    "ReceiptInfo",
    "ReceiptParseError",
    "ReceiptState",
    "is_final",
    "message_status_for",
    "normalise_id",
    "parse_receipt",
    "receipt_id_candidates",
    "worst_outcome",
]

logger = logging.getLogger(__name__)


class ReceiptState(StrEnum):
    """A message's state as a receipt reports it (SMPP 3.4 message_state)."""

    ENROUTE = "enroute"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    DELETED = "deleted"
    UNDELIVERABLE = "undeliverable"
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    REJECTED = "rejected"


class ReceiptParseError(ValueError):
    """The PDU carries no message id, so it cannot be matched to any message."""


@dataclass(frozen=True)
class ReceiptInfo:
    """What one receipt says.

    ``message_id`` is the id as the SMSC wrote it (only surrounding whitespace and NULs removed);
    look it up with :func:`receipt_id_candidates`. ``raw_stat`` is the text's stat field as written,
    or the SMPP name of the ``message_state`` TLV when the text has none. Dates are UTC. Dates and
    counts are read from the text when asked for: storing a receipt needs neither.
    """

    message_id: str
    state: ReceiptState
    raw_stat: str
    err: str | None
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def submit_date(self) -> datetime | None:
        return _date(self.fields.get("submitdate"))

    @property
    def done_date(self) -> datetime | None:
        return _date(self.fields.get("donedate"))

    @property
    def submitted(self) -> int | None:
        return _count(self.fields.get("sub"))

    @property
    def delivered(self) -> int | None:
        return _count(self.fields.get("dlvrd"))


# message_state TLV (0x0427) values. 0 SCHEDULED and 9 SKIPPED come from SMPP 5.0; some 3.4
# SMSCs send them anyway, and mapping them to UNKNOWN would turn a pending message into a final
# failure.
_TLV_STATES: dict[int, tuple[str, ReceiptState]] = {
    0: ("SCHEDULED", ReceiptState.ENROUTE),
    1: ("ENROUTE", ReceiptState.ENROUTE),
    2: ("DELIVRD", ReceiptState.DELIVERED),
    3: ("EXPIRED", ReceiptState.EXPIRED),
    4: ("DELETED", ReceiptState.DELETED),
    5: ("UNDELIV", ReceiptState.UNDELIVERABLE),
    6: ("ACCEPTD", ReceiptState.ACCEPTED),
    7: ("UNKNOWN", ReceiptState.UNKNOWN),
    8: ("REJECTD", ReceiptState.REJECTED),
    9: ("SKIPPED", ReceiptState.UNDELIVERABLE),
}

# stat words seen in receipt texts: the SMPP 3.4 abbreviations plus spelled-out variants.
_TEXT_STATES: dict[str, ReceiptState] = {
    "ENROUTE": ReceiptState.ENROUTE,
    "SCHEDULED": ReceiptState.ENROUTE,
    "DELIVRD": ReceiptState.DELIVERED,
    "DELIVERED": ReceiptState.DELIVERED,
    "EXPIRED": ReceiptState.EXPIRED,
    "DELETED": ReceiptState.DELETED,
    "UNDELIV": ReceiptState.UNDELIVERABLE,
    "UNDELIVERABLE": ReceiptState.UNDELIVERABLE,
    "UNDELIVERED": ReceiptState.UNDELIVERABLE,
    "ACCEPTD": ReceiptState.ACCEPTED,
    "ACCEPTED": ReceiptState.ACCEPTED,
    "UNKNOWN": ReceiptState.UNKNOWN,
    "REJECTD": ReceiptState.REJECTED,
    "REJECTED": ReceiptState.REJECTED,
}

# A field name followed by a colon, matched in a lower-cased copy of the text (an IGNORECASE
# pattern was the biggest cost of reading a receipt on an SMS worker's deliver thread). "text:" is
# last by convention and free-form, so nothing after it is read as a field.
_FIELD = re.compile(r"(?<![a-z0-9_])(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:\s*")
_FIELD_KEYS = {
    spelled: spelled.replace(" ", "").replace("_", "")
    for spelled in ("id", "sub", "dlvrd", "stat", "err", "text")
    + tuple(f"{word}{sep}date" for word in ("submit", "done") for sep in ("", " ", "_"))
}
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# The layout of SMPP 3.4 Appendix B, which nearly every SMSC writes: one match instead of a scan
# (~2 us against ~7 us a receipt). Values hold neither blanks nor colons, so no field name can
# hide in one, and the scan would cut the text at the same places (a test compares the two).
_STANDARD = re.compile(
    r"id:([^\s:]*) sub:([^\s:]*) dlvrd:([^\s:]*) submit date:([^\s:]*) done date:([^\s:]*)"
    r" stat:([^\s:]*) err:([^\s:]*)(?: text:|\s*$)"
)
_STANDARD_KEYS = ("id", "sub", "dlvrd", "submitdate", "donedate", "stat", "err")


def _fields(text: str) -> dict[str, str]:
    """Split a receipt text into {field: value}; the first occurrence of a field wins."""
    standard = _STANDARD.match(text)
    if standard is not None:
        return dict(zip(_STANDARD_KEYS, standard.groups(), strict=True))
    return _scan_fields(text)


def _scan_fields(text: str) -> dict[str, str]:
    folded = text.lower()
    if len(folded) != len(text):  # a few characters outside Latin-1 grow when lower-cased
        folded = text.translate(_ASCII_LOWER)
    found: dict[str, str] = {}
    key, start = "", 0
    for match in _FIELD.finditer(folded):
        if key and key not in found:
            found[key] = text[start : match.start()].strip()
        key, start = _FIELD_KEYS[match.group(1)], match.end()
        if key == "text":
            return found
    if key and key not in found:
        found[key] = text[start:].strip()
    return found


def _first_token(value: str | None) -> str | None:
    if not value:
        return None
    tokens = value.split()
    return tokens[0] if tokens else None


def _count(value: str | None) -> int | None:
    token = _first_token(value)
    return int(token) if token is not None and token.isdigit() else None


def _date(value: str | None) -> datetime | None:
    """YYMMDDhhmm, YYMMDDhhmmss or YYYYMMDDhhmmss, read as UTC; anything else is None.

    A bad date never rejects a receipt: the state matters, the timestamp is a nicety.
    """
    token = _first_token(value)
    if token is None or not token.isdigit() or len(token) not in (10, 12, 14):
        return None
    # Sliced by hand: strptime cost ~15 us a call, twice per receipt, thousands of receipts a second.
    if len(token) == 14:
        year, rest = int(token[:4]), token[4:]
    else:
        yy = int(token[:2])
        year, rest = (2000 + yy if yy < 69 else 1900 + yy), token[2:]  # strptime's %y pivot
    seconds = int(rest[8:10]) if len(rest) == 10 else 0
    try:
        return datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), seconds, tzinfo=UTC)
    except ValueError:
        return None


def _clean(raw: str | bytes) -> str:
    # smpplib hands C-octet strings over as bytes; ids are ASCII, latin-1 keeps any stray octet.
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    return text.strip().strip("\x00").strip()


def parse_receipt(
    short_message: bytes | str,
    *,
    receipted_message_id: str | bytes | None = None,
    message_state: int | None = None,
) -> ReceiptInfo:
    """Parse a delivery receipt; the TLVs, when present, win over the text.

    Every text field is optional and matched case-insensitively; an unknown stat word gives
    ``UNKNOWN``, and so does a receipt with neither a stat nor a ``message_state``. An out-of-range
    ``message_state`` is ignored in favour of the text. ``receipted_message_id`` may be bytes, as
    smpplib gives it. Raises :class:`ReceiptParseError` when no id is found in either place.
    """
    if isinstance(short_message, bytes):
        # Receipt fields are ASCII; latin-1 never fails, whatever the free text after "text:" holds.
        short_message = short_message.decode("latin-1")
    fields = _fields(short_message.replace("\x00", " "))

    message_id = _clean(receipted_message_id) if receipted_message_id else ""
    if not message_id:
        message_id = _first_token(fields.get("id")) or ""
    if not message_id:
        # No excerpt in the message: "text:" echoes the SMS body, which may hold a credential.
        raise ReceiptParseError(f"receipt carries no message id ({len(short_message)} characters)")

    text_stat = _first_token(fields.get("stat"))
    raw_stat = text_stat or ""
    state = _TEXT_STATES.get(raw_stat.upper(), ReceiptState.UNKNOWN)
    if text_stat and text_stat.upper() not in _TEXT_STATES:
        logger.info("unknown receipt stat %r for id %s", text_stat, message_id)
    if message_state is not None:
        if message_state in _TLV_STATES:
            tlv_name, state = _TLV_STATES[message_state]
            raw_stat = raw_stat or tlv_name
        else:
            logger.warning("ignoring out-of-range message_state %s for id %s", message_state, message_id)

    return ReceiptInfo(
        message_id=message_id,
        state=state,
        raw_stat=raw_stat,
        err=_first_token(fields.get("err")),
        fields=fields,
    )


_NOT_FINAL = frozenset({ReceiptState.ENROUTE, ReceiptState.ACCEPTED})


def is_final(state: ReceiptState) -> bool:
    """Whether a receipt in ``state`` ends the message's life; ENROUTE and ACCEPTED are events."""
    return state not in _NOT_FINAL


_STATUS_FOR: dict[ReceiptState, str] = {
    ReceiptState.DELIVERED: "delivered",
    ReceiptState.UNDELIVERABLE: "undeliverable",
    ReceiptState.EXPIRED: "expired",
    ReceiptState.REJECTED: "rejected",
    # The SMSC gave up on the message without saying why; to the user it was not delivered.
    ReceiptState.DELETED: "undeliverable",
    ReceiptState.UNKNOWN: "undeliverable",
}


def message_status_for(state: ReceiptState) -> str:
    """The message status a final receipt state leads to; a non-final state raises ``ValueError``."""
    try:
        return _STATUS_FOR[state]
    except KeyError:
        raise ValueError(f"receipt state {state} is not final and sets no message status") from None


# --- Ids ---------------------------------------------------------------------------------------


def normalise_id(raw: str | bytes) -> str:
    """Canonical form of a provider message id: trimmed (whitespace, NULs), no leading zeros, upper case.

    An all-zero id stays "0". An empty id stays "" rather than raising: some SMSCs accept a
    submit with an empty message_id, and that must not abort the batch's bulk write. No receipt
    carries an empty id (:func:`parse_receipt` refuses it), so "" never matches one.
    """
    cleaned = _clean(raw)
    if not cleaned:
        return ""
    return (cleaned.lstrip("0") or "0").upper()


_HEX_DIGITS = frozenset(string.hexdigits)


def receipt_id_candidates(raw: str | bytes, base: Literal["hex", "decimal", "auto"]) -> list[str]:
    """Normalised ids under which the message a receipt refers to may be stored, best first.

    Ids from ``submit_sm_resp`` are stored as :func:`normalise_id` gives them. A receipt may write
    the same id in the other base, and ``base`` (the gateway's ``receipt_id_base``) says how the
    SMSC writes ids in ``submit_sm_resp``:

    - always first: ``normalise_id(raw)``, the id exactly as the receipt wrote it;
    - ``"hex"``: if ``raw`` is all decimal digits, also its value written in upper-case hex
      (receipt "6699" → "6699", "1A2B");
    - ``"decimal"``: if ``raw`` is valid hex, also its value written in decimal
      (receipt "1A2B" → "1A2B", "6699");
    - ``"auto"``: both conversions, hex-of-decimal before decimal-of-hex.

    Duplicates are removed, order kept; an empty ``raw`` gives no candidates. An all-digit id is
    valid in both bases, so under ``"decimal"`` or ``"auto"`` a candidate may name a different
    message; look them up in order and take the first that exists.
    """
    if base not in ("hex", "decimal", "auto"):
        raise ValueError(f"receipt id base must be hex, decimal or auto, not {base!r}")
    as_is = normalise_id(raw)
    if not as_is:
        return []
    candidates = [as_is]
    if base in ("hex", "auto") and as_is.isdigit() and as_is.isascii():
        candidates.append(format(int(as_is, 10), "X"))
    if base in ("decimal", "auto") and all(ch in _HEX_DIGITS for ch in as_is):
        candidates.append(str(int(as_is, 16)))
    return list(dict.fromkeys(candidates))


# --- Outcomes ----------------------------------------------------------------------------------

# Final SMS outcomes from best to worst. A status only moves to a higher rank, and a message split
# into segments takes the highest rank among them. Rejected is worst: the network refused it.
STATUS_RANK: Mapping[str, int] = MappingProxyType({"delivered": 0, "expired": 1, "undeliverable": 2, "rejected": 3})


def worst_outcome(statuses: Iterable[str]) -> str:
    """The worst of the segments' final outcomes: "delivered" only when every segment is delivered.

    Raises ``ValueError`` for no statuses or a status that is not a final SMS outcome.
    """
    worst: str | None = None
    for status in statuses:
        if status not in STATUS_RANK:
            raise ValueError(f"{status!r} is not a final SMS outcome ({', '.join(STATUS_RANK)})")
        if worst is None or STATUS_RANK[status] > STATUS_RANK[worst]:
            worst = status
    if worst is None:
        raise ValueError("no segment outcomes to combine")
    return worst
