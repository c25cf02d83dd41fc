"""Phone numbers: normalisation to E.164 for SMS and the carrier a number was allocated to.

``phonenumbers`` is the authority on what a valid mobile number is. It costs ~30 µs a number,
which is half a minute per million recipients, so ordinary Vietnamese mobile numbers take a fast
path made of string operations only: the separators Excel users type are dropped, the national
prefix (``0``) or country code (``84``/``+84``) is taken off, and the three leading digits of the
nine-digit national number are looked up in a set. That set is not typed in here: it is derived
from phonenumbers' own metadata when this module is imported (:func:`_derive_fast_prefixes`), so
a metadata update can only shrink or grow the fast path, never make it disagree. Anything the
fast path is not certain of (other regions, odd formats, invalid numbers) goes to phonenumbers,
which is also where every rejection reason comes from.

Excel damages phone columns in predictable ways; :func:`normalise_phone` undoes them before
parsing: numbers stored as numbers lose the leading zero (``912345678``) or gain a fraction
(``912345678.0``), and long ones are exported in scientific notation (``8.4912345678E10``).
Scientific notation that has already dropped digits (``8.49123E+10``) is refused instead of being
turned into a different, real person's number.

Carriers: ``phonenumbers.carrier`` answers from a table keyed by E.164 prefixes; for Vietnam no
key is longer than a few digits, so answers are cached per prefix (:func:`carrier_for`). Numbers
are portable in Vietnam, so the answer is the carrier the range was allocated to, not necessarily
the one serving the subscriber today.
"""

from __future__ import annotations

import functools
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Final

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberType, ValidationResult

__all__ = ["PhoneError", "carrier_for", "normalise_phone", "normalise_with_carrier"]

_VN_CODE: Final = 84

# Number types that can receive an SMS. FIXED_LINE_OR_MOBILE is what phonenumbers answers for
# regions (e.g. the US) whose plans do not tell the two apart.
_SMS_TYPES: Final = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})

# Separators deleted by the fast path. Every one of them is also accepted (and ignored) by
# phonenumbers, which the agreement test in tests/campaigns/test_phones.py checks.
_FAST_SEPARATORS: Final = str.maketrans("", "", " .-()\t\u00a0")

# Characters a phone cell may hold besides digits. phonenumbers would also accept letters
# (vanity numbers, "ext. 12") and silently drop text after the number; for a bulk send a cell
# like that is more likely a data-entry mistake, so it is refused.
_ALLOWED_PUNCTUATION: Final = frozenset(" \t\u00a0\u202f+\uff0b-\u2010\u2011\u2012\u2013\u2014.()[]/")

_EXCEL_FRACTION: Final = re.compile(r"(\d+)\.0+")
_SCIENTIFIC: Final = re.compile(r"[+]?\d+(?:[.,]\d+)?[eE][+]?\d+")

# Vietnam's 11-digit mobile numbers (01xx xxx xxxx) were renumbered to 10 digits in 2018; files
# kept since then still hold them, and "not a valid number" would not tell the user why.
_OLD_VN_MOBILE: Final = re.compile(r"1(?:2[0-9]|6[2-9]|8[68]|99)\d{7}")


class PhoneError(ValueError):
    """A value that is not a usable SMS destination; ``reason`` is meant for the person who
    uploaded the file (it names the problem, never echoes the value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _derive_fast_prefixes() -> frozenset[str]:
    """The 3-digit starts of 9-digit VN national numbers that phonenumbers calls MOBILE whatever
    the remaining six digits are.

    Each candidate is probed with ten suffixes ``dddddd`` (d = 0..9), which exercises every
    value of every following digit; a pattern that depended on the fourth digit or later would
    fail at least one probe and keep that prefix on the slow path.
    """
    prefixes = set()
    for start in range(100, 1000):
        head = str(start)
        if all(
            phonenumbers.number_type(PhoneNumber(country_code=_VN_CODE, national_number=int(head + d * 6)))
            == PhoneNumberType.MOBILE
            for d in "0123456789"
        ):
            prefixes.add(head)
    return frozenset(prefixes)


_FAST_PREFIXES: Final = _derive_fast_prefixes()


def _fast_path(text: str, region: str) -> str | None:
    """E.164 for an ordinary Vietnamese mobile number, or None when phonenumbers must decide.

    Never rejects: None only means "not certain". National forms (``0912…``, ``912…``,
    ``84912…``) are read as Vietnamese only when the caller's region is VN, exactly as
    phonenumbers reads them relative to the default region.
    """
    digits = text if text.isdigit() else text.translate(_FAST_SEPARATORS)
    size = len(digits)
    if size == 12:
        if not digits.startswith("+84"):
            return None
        national = digits[3:]
    elif region != "VN":
        return None
    elif size == 10:
        if digits[0] != "0":
            return None
        national = digits[1:]
    elif size == 9:
        national = digits
    elif size == 11:
        if not digits.startswith("84"):
            return None
        national = digits[2:]
    else:
        return None
    # isascii: str.isdigit() is also true for other scripts' digits and for superscripts.
    if national[:3] in _FAST_PREFIXES and national.isdigit() and national.isascii():
        return "+84" + national
    return None


def _text_of(raw: str | int | float) -> str:
    """The cell as text, with Excel's numeric damage undone (see the module docstring)."""
    if isinstance(raw, str):
        text = raw.strip()
        match = _EXCEL_FRACTION.fullmatch(text)
        if match:
            return match.group(1)
        if _SCIENTIFIC.fullmatch(text):
            return _from_scientific(text)
        return text
    if isinstance(raw, bool):  # bool is an int subclass; True is not a phone number
        raise PhoneError("not a phone number")
    if isinstance(raw, int):
        if raw < 0:
            raise PhoneError("not a phone number")
        return str(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw) or not raw.is_integer() or raw < 0:
            raise PhoneError("not a phone number")
        return str(int(raw))
    raise PhoneError("not a phone number")


def _from_scientific(text: str) -> str:
    try:
        value = Decimal(text.replace(",", "."))
    except InvalidOperation:
        raise PhoneError("not a phone number") from None
    exponent = value.as_tuple().exponent
    # A positive exponent means the mantissa ran out before the last digit: Excel has replaced
    # the tail of the number with zeros, and we cannot know what it was.
    if not isinstance(exponent, int) or exponent > 0:
        raise PhoneError("digits lost to scientific notation in Excel; format the column as Text")
    if value != value.to_integral_value() or value < 0:
        raise PhoneError("not a phone number")
    return str(int(value))


def _check_characters(text: str) -> None:
    if not text:
        raise PhoneError("empty")
    for char in text:
        if char.isdigit() or char in _ALLOWED_PUNCTUATION:
            continue
        if char.isalpha():
            raise PhoneError("contains letters")
        raise PhoneError("contains characters other than digits, spaces and + - . ( ) /")


def _parse_error_reason(exc: NumberParseException) -> str:
    kind = exc.error_type
    if kind == NumberParseException.INVALID_COUNTRY_CODE:
        return "unknown country code"
    if kind in (NumberParseException.TOO_SHORT_NSN, NumberParseException.TOO_SHORT_AFTER_IDD):
        return "too short"
    if kind == NumberParseException.TOO_LONG:
        return "too long"
    return "not a phone number"


def _normalise_slow(text: str, region: str) -> str:
    """phonenumbers' verdict, with a reason a person can act on when it is no."""
    _check_characters(text)
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise PhoneError(_parse_error_reason(exc)) from None
    country_code = number.country_code or 0
    national = str(number.national_number)
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible == ValidationResult.INVALID_COUNTRY_CODE:
        raise PhoneError("unknown country code")
    if possible == ValidationResult.TOO_SHORT:
        raise PhoneError("too short")
    if possible == ValidationResult.TOO_LONG:
        raise PhoneError("too long")
    if not phonenumbers.is_valid_number(number):
        if country_code == _VN_CODE:
            if _OLD_VN_MOBILE.fullmatch(national):
                raise PhoneError("old 11-digit mobile number (Vietnam renumbered them in 2018)")
            # Mobile numbers start with 3, 5, 7, 8 or 9 and have nine national digits; say which
            # way the count is off rather than the vaguer "not valid".
            if national[:1] in ("3", "5", "7", "8", "9") and len(national) != 9:
                raise PhoneError("too short" if len(national) < 9 else "too long")
        region_name = phonenumbers.region_code_for_country_code(country_code)
        raise PhoneError(f"not a valid number for region {region_name}")
    if phonenumbers.number_type(number) not in _SMS_TYPES:
        raise PhoneError("not a mobile number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_phone(raw: str | int | float, region: str = "VN") -> str:
    """The mobile number in ``raw`` as E.164 with ``+`` (e.g. ``+84912345678``).

    ``region`` is the ISO 3166 code used for numbers written without a country code. Raises
    :class:`PhoneError` for anything that is not a valid mobile number (fixed lines, toll-free and
    short codes cannot receive SMS from a bulk sender).
    """
    text = raw if type(raw) is str else _text_of(raw)
    e164 = _fast_path(text, region)
    if e164 is not None:
        return e164
    if type(raw) is str:
        # The fast path works on the raw cell; only the rare leftovers pay for Excel repairs.
        text = _text_of(raw)
    return _normalise_slow(text, region)


_vn_carrier_key_length = 0  # set on first use, see _vn_carrier
_vn_carrier_cache: dict[str, str | None] = {}


def _carrier_by_phonenumbers(e164: str) -> str | None:
    # Imported on first use: the carrier tables take ~0.4 s to import, which the API and CLI
    # should not pay at start-up.
    from phonenumbers.carrier import name_for_number

    try:
        number = phonenumbers.parse(e164, None)
    except NumberParseException:
        return None
    return name_for_number(number, "en") or None


def _vn_carrier(e164: str) -> str | None:
    """Carrier of a number the fast path produced (a valid VN mobile number), cached per prefix.

    phonenumbers picks the longest table key that prefixes the number; no +84 key is longer than
    ``_vn_carrier_key_length`` digits, so numbers sharing that many leading digits share the answer.
    """
    global _vn_carrier_key_length
    if not _vn_carrier_key_length:
        from phonenumbers.carrierdata import CARRIER_DATA

        vn = str(_VN_CODE)
        _vn_carrier_key_length = max(len(key) for key in CARRIER_DATA if key.startswith(vn))
    key = e164[1 : 1 + _vn_carrier_key_length]
    try:
        return _vn_carrier_cache[key]
    except KeyError:
        name = _vn_carrier_cache[key] = _carrier_by_phonenumbers(e164)
        return name


@functools.lru_cache(maxsize=4096)
def _carrier_elsewhere(e164: str) -> str | None:
    return _carrier_by_phonenumbers(e164)


def carrier_for(e164: str) -> str | None:
    """The carrier phonenumbers names for ``e164`` (``"Viettel"``, ``"Vinaphone"``, ``"MobiFone"``,
    ``"Vietnamobile"``, ``"G-Mobile"``, …), or None when it has no name for it.

    The name is the carrier the number range was allocated to; ported numbers are the business of
    the MNP override table, not of this function.
    """
    if _fast_path(e164, "") == e164:
        return _vn_carrier(e164)
    return _carrier_elsewhere(e164)


def normalise_with_carrier(raw: str | int | float, region: str = "VN") -> tuple[str, str | None]:
    """:func:`normalise_phone` and :func:`carrier_for` in one call."""
    e164 = _fast_path(raw, region) if type(raw) is str else None
    if e164 is not None:
        return e164, _vn_carrier(e164)
    e164 = normalise_phone(raw, region)
    return e164, carrier_for(e164)
