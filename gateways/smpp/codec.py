"""SMS text codec: GSM 03.38 default alphabet, UCS-2, segmentation and concatenation headers.

Everything an SMS needs between "the text a campaign renders" and "the short_message octets a
submit_sm carries": choosing GSM-7 or UCS-2 under a campaign's encoding policy, stripping
Vietnamese diacritics, counting segments and splitting long texts into concatenated parts.

We do not use ``smpplib.gsm``: its table maps 0x5F to a backtick instead of ``§`` (so a backtick
is silently sent as ``§``), its extension table lacks form feed (ESC 0x0A), and ``make_parts``
cuts the encoded bytes every 153 octets, which splits an escape pair (0x1B + code) across two
parts when an extension character such as ``€`` lands on the boundary (152×"a" + "€").

Wire format: GSM-7 payloads are *unpacked*, one septet per octet, as SMPP expects for
data_coding 0 (the SMSC packs them for the air interface); UCS-2 payloads are UTF-16 big-endian.
Characters outside the BMP (emoji) travel as surrogate pairs, which every current handset
renders, and a pair is never split across two parts.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "MAX_PARTS",
    "Encoding",
    "EncodingPolicy",
    "PreparedText",
    "UnencodableError",
    "build_short_messages",
    "concat_udh",
    "concatenated",
    "data_coding",
    "decode_gsm7",
    "encode_gsm7",
    "gsm7_septets",
    "is_gsm7",
    "normalise_text",
    "prepare",
    "segment_count",
    "split_parts",
    "split_payloads",
    "strip_diacritics",
    "unencodable_gsm7",
]


class Encoding(StrEnum):
    """How a message's text travels: GSM 03.38 default alphabet or UCS-2 (UTF-16BE)."""

    GSM7 = "gsm7"
    UCS2 = "ucs2"


class EncodingPolicy(StrEnum):
    """A campaign's choice; see :func:`prepare` for what each one does."""

    AUTO = "auto"
    GSM7 = "gsm7"
    UCS2 = "ucs2"
    STRIP_DIACRITICS = "strip_diacritics"


class UnencodableError(ValueError):
    """The text holds characters the chosen encoding cannot carry.

    ``chars`` lists the distinct offending characters in order of first appearance, so an operator
    can fix the template (or pick another policy) from the message alone.
    """

    def __init__(self, chars: Sequence[str], encoding: Encoding = Encoding.GSM7) -> None:
        self.chars: list[str] = list(chars)
        self.encoding = encoding
        listed = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in self.chars)
        label = "GSM-7" if encoding is Encoding.GSM7 else "UCS-2"
        super().__init__(f"{label} cannot encode {len(self.chars)} character(s): {listed}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as cls(*args); ours takes the characters, not the message.
        return (type(self), (self.chars, self.encoding))


# --- GSM 03.38 tables (3GPP TS 23.038 §6.2.1) -------------------------------------------------

# Index = septet value. 0x1B is the escape to the extension table, never a character of its own,
# so it holds a placeholder that is removed from the encoding map below.
_BASIC_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"  # 0x10
    " !\"#¤%&'()*+,-./"  # 0x20
    "0123456789:;<=>?"  # 0x30
    "¡ABCDEFGHIJKLMNO"  # 0x40
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50
    "¿abcdefghijklmno"  # 0x60
    "pqrstuvwxyzäöñüà"  # 0x70
)
_ESCAPE = 0x1B

# The extension table as handsets implement it; every entry costs two septets (ESC + code).
_EXTENSION_TABLE: dict[str, int] = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}

_GSM_ENCODE: dict[str, bytes] = {ch: bytes([i]) for i, ch in enumerate(_BASIC_TABLE) if i != _ESCAPE}
_GSM_ENCODE.update({ch: bytes([_ESCAPE, code]) for ch, code in _EXTENSION_TABLE.items()})
_GSM_DECODE_EXT: dict[int, str] = {code: ch for ch, code in _EXTENSION_TABLE.items()}
# Characters whose septet is their ASCII code (letters, digits, space, most punctuation; not @ $ _
# or the extension characters): a text of only these is its own encoding, one septet a character.
# The fast path for the texts most campaigns send, checked with one C-level set operation.
_SAME_AS_ASCII = frozenset(ch for i, ch in enumerate(_BASIC_TABLE) if ord(ch) == i and i != _ESCAPE)
# Below the surrogates every character is one UTF-16 unit (Vietnamese included).
_BELOW_SURROGATES = "\ud800"

# Single-message and per-part capacities: septets for GSM-7, UTF-16 code units for UCS-2. A
# concatenated part loses room to the 6-octet UDH (7 septets once the SMSC pads it, 3 code units).
_GSM_SINGLE, _GSM_PART = 160, 153
_UCS2_SINGLE, _UCS2_PART = 70, 67
# The 8-bit concatenation reference carries the part count and sequence in one octet each.
MAX_PARTS = 255


# --- Normalisation and diacritics ----------------------------------------------------------------


def normalise_text(text: str) -> str:
    """Return ``text`` in NFC.

    Vietnamese typed with combining marks ("e" + U+0302 + U+0301) is twice as long in UTF-16 as the
    precomposed "ế", which would double UCS-2 segments; NFC makes both the same.
    """
    return unicodedata.normalize("NFC", text)


# Typographic characters that word processors and spreadsheets put into templates, mapped to the
# nearest GSM-7 spelling. Zero-width characters and soft hyphens are invisible, so they go.
_PUNCTUATION = str.maketrans(
    {
        "\u2010": "-",  # hyphen
        "\u2011": "-",  # non-breaking hyphen
        "\u2012": "-",  # figure dash
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2015": "-",  # horizontal bar
        "\u2212": "-",  # minus sign
        "\u2018": "'",  # left single quotation mark
        "\u2019": "'",  # right single quotation mark / apostrophe
        "\u201a": "'",  # single low-9 quotation mark
        "\u201b": "'",  # single high-reversed-9 quotation mark
        "\u2032": "'",  # prime
        "\u2039": "'",  # single left-pointing angle quotation mark
        "\u203a": "'",  # single right-pointing angle quotation mark
        "\u00b4": "'",  # acute accent (spacing)
        "`": "'",  # backtick is not in GSM-7
        "\u201c": '"',  # left double quotation mark
        "\u201d": '"',  # right double quotation mark
        "\u201e": '"',  # double low-9 quotation mark
        "\u201f": '"',  # double high-reversed-9 quotation mark
        "\u2033": '"',  # double prime
        "\u00ab": '"',  # «
        "\u00bb": '"',  # »
        "\u2026": "...",  # horizontal ellipsis
        "\u2022": "-",  # bullet
        # Tab, no-break space, the typographic spaces U+2002-U+200A, narrow no-break, ideographic.
        **dict.fromkeys("\t\u00a0\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000", " "),
        "\u2028": "\n",  # line separator
        "\u2029": "\n",  # paragraph separator
        "\u00ad": None,  # soft hyphen
        "\u200b": None,  # zero-width space
        "\u200c": None,  # zero-width non-joiner
        "\u200d": None,  # zero-width joiner
        "\u2060": None,  # word joiner
        "\ufeff": None,  # BOM / zero-width no-break space
        # The dong sign reads "đ", so it follows the đ → d rule ("50.000₫" → "50.000d").
        "\u20ab": "d",
    }
)

# Letters that carry their "diacritic" in the base character, so NFD does not separate it.
_UNDECOMPOSABLE = str.maketrans({"đ": "d", "Đ": "D"})


def strip_diacritics(text: str) -> str:
    """Remove diacritics and map typographic punctuation to GSM-7; the result is NFC.

    Every Vietnamese letter becomes its ASCII base letter ("Thống kê" → "Thong ke", "đ" → "d").
    All combining marks go, including those on letters GSM-7 could carry ("é" → "e"), so the
    output does not depend on which accented letters happen to be in the alphabet. Characters
    with no ASCII spelling (emoji, CJK) are left alone for :func:`prepare` to report.
    """
    decomposed = unicodedata.normalize("NFD", text.translate(_PUNCTUATION))
    # Category Mn rather than combining() != 0: a few marks (e.g. U+034F) have combining class 0.
    bare = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return unicodedata.normalize("NFC", bare.translate(_UNDECOMPOSABLE))


# --- GSM-7 -----------------------------------------------------------------------------------------


def _distinct_in_order(chars: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(chars))


def unencodable_gsm7(text: str) -> list[str]:
    """Return the distinct characters of ``text`` that GSM-7 cannot carry, in order of appearance."""
    return _distinct_in_order(ch for ch in text if ch not in _GSM_ENCODE)


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` is in the GSM-7 basic or extension table."""
    return _SAME_AS_ASCII.issuperset(text) or all(ch in _GSM_ENCODE for ch in text)


def _require_gsm7(text: str) -> None:
    bad = unencodable_gsm7(text)
    if bad:
        raise UnencodableError(bad, Encoding.GSM7)


def gsm7_septets(text: str) -> int:
    """Septets ``text`` needs in GSM-7: one per basic character, two per extension character."""
    _require_gsm7(text)
    return sum(len(_GSM_ENCODE[ch]) for ch in text)


def encode_gsm7(text: str) -> bytes:
    """Encode ``text`` as unpacked GSM-7 septets (SMPP data_coding 0), escaping extension chars."""
    _require_gsm7(text)
    return b"".join(_GSM_ENCODE[ch] for ch in text)


def decode_gsm7(data: bytes) -> str:
    """Decode unpacked GSM-7 septets (for example the short_message of an MO deliver_sm).

    An escape followed by a code the extension table does not define decodes as the basic-table
    character, and a dangling escape at the end is dropped: that is what TS 23.038 asks receivers
    to display. Octets above 0x7F are not septets, so they raise ``ValueError``.
    """
    out: list[str] = []
    escaped = False
    for pos, octet in enumerate(data):
        if octet > 0x7F:
            raise ValueError(f"octet 0x{octet:02X} at offset {pos} is not a GSM-7 septet")
        if escaped:
            out.append(_GSM_DECODE_EXT.get(octet, _BASIC_TABLE[octet]))
            escaped = False
        elif octet == _ESCAPE:
            escaped = True
        else:
            out.append(_BASIC_TABLE[octet])
    return "".join(out)


# --- UCS-2 -----------------------------------------------------------------------------------------


def _require_ucs2(text: str) -> None:
    # A lone surrogate (from broken input) has no UTF-16 encoding at all.
    bad = _distinct_in_order(ch for ch in text if 0xD800 <= ord(ch) <= 0xDFFF)
    if bad:
        raise UnencodableError(bad, Encoding.UCS2)


def _utf16_units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


# --- Segmentation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedText:
    """The text to send (after normalisation/stripping), its encoding and its segment count."""

    text: str
    encoding: Encoding
    segments: int


def prepare(text: str, policy: EncodingPolicy | str) -> PreparedText:
    """Normalise ``text`` to NFC and choose its encoding under ``policy``.

    ``auto``: GSM-7 when every character fits, else UCS-2. ``gsm7``: GSM-7 or
    :class:`UnencodableError`. ``ucs2``: always UCS-2. ``strip_diacritics``: strip, then GSM-7,
    raising :class:`UnencodableError` for whatever still does not fit (emoji, CJK, ...).
    An unknown policy string raises ``ValueError``.
    """
    chosen = EncodingPolicy(policy)
    text = normalise_text(text)
    if chosen is EncodingPolicy.STRIP_DIACRITICS:
        text = strip_diacritics(text)
    if chosen in (EncodingPolicy.GSM7, EncodingPolicy.STRIP_DIACRITICS):
        _require_gsm7(text)
        encoding = Encoding.GSM7
    elif chosen is EncodingPolicy.UCS2:
        encoding = Encoding.UCS2
    else:
        encoding = Encoding.GSM7 if is_gsm7(text) else Encoding.UCS2
    return PreparedText(text=text, encoding=encoding, segments=segment_count(text, encoding))


def _split(text: str, encoding: Encoding) -> list[str]:
    """Cut ``text`` into the character runs that make up its parts.

    Cuts fall between characters only, so an escape pair or a surrogate pair always stays whole;
    a part may then hold one unit less than the maximum.
    """
    if encoding is Encoding.GSM7:
        single, part = _GSM_SINGLE, _GSM_PART
        uniform = _SAME_AS_ASCII.issuperset(text)
    else:
        single, part = _UCS2_SINGLE, _UCS2_PART
        uniform = not text or max(text) < _BELOW_SURROGATES
    if uniform:  # one unit per character: plain slices
        return [text] if len(text) <= single else [text[i : i + part] for i in range(0, len(text), part)]
    if encoding is Encoding.GSM7:
        _require_gsm7(text)
        weights = [len(_GSM_ENCODE[ch]) for ch in text]
    else:
        _require_ucs2(text)
        weights = [_utf16_units(ch) for ch in text]
    if sum(weights) <= single:
        return [text]
    parts: list[str] = []
    start, used = 0, 0
    for i, weight in enumerate(weights):
        if used + weight > part:
            parts.append(text[start:i])
            start, used = i, 0
        used += weight
    parts.append(text[start:])
    return parts


def segment_count(text: str, encoding: Encoding) -> int:
    """How many SMS ``text`` takes: GSM-7 160 septets or parts of 153, UCS-2 70 units or parts of 67.

    Empty text is one (empty) message. Raises :class:`UnencodableError` when ``text`` does not fit
    ``encoding``. The count may exceed :data:`MAX_PARTS`; building such a message fails.
    """
    return len(_split(text, encoding))


def _encode(text: str, encoding: Encoding) -> bytes:
    if encoding is Encoding.GSM7:
        return text.encode("ascii") if _SAME_AS_ASCII.issuperset(text) else encode_gsm7(text)
    return text.encode("utf-16-be")


def split_payloads(text: str, encoding: Encoding) -> list[bytes]:
    """Each part's encoded payload without UDH: unpacked GSM-7 septets or UTF-16BE."""
    return [_encode(chunk, encoding) for chunk in _split(text, encoding)]


def concat_udh(ref: int, total: int, seq: int) -> bytes:
    """The concatenation UDH with an 8-bit reference: ``05 00 03 ref total seq``.

    Callers cycling a counter pass ``counter % 256``; anything out of range raises ``ValueError``
    rather than being silently truncated into another message's reference.
    """
    if not 0 <= ref <= 0xFF:
        raise ValueError(f"concatenation reference {ref} is not in 0..255")
    if not 1 <= total <= MAX_PARTS:
        raise ValueError(f"part count {total} is not in 1..{MAX_PARTS}")
    if not 1 <= seq <= total:
        raise ValueError(f"part number {seq} is not in 1..{total}")
    return bytes([0x05, 0x00, 0x03, ref, total, seq])


def build_short_messages(text: str, encoding: Encoding, ref: int) -> list[bytes]:
    """The short_message of every submit_sm for ``text``.

    One part: the payload alone. Several: UDH + payload each, and the caller sets the UDHI bit
    (0x40) in esm_class. Raises ``ValueError`` beyond :data:`MAX_PARTS` parts.
    """
    return concatenated(split_parts(text, encoding), ref)


def split_parts(text: str, encoding: Encoding) -> list[bytes]:
    """`split_payloads`, refusing more than :data:`MAX_PARTS` parts (``ValueError``): the payloads
    of :func:`build_short_messages` before a reference is known (only several parts need one)."""
    payloads = split_payloads(text, encoding)
    if len(payloads) > MAX_PARTS:
        raise ValueError(f"text needs {len(payloads)} parts; at most {MAX_PARTS} can be concatenated")
    return payloads


def concatenated(payloads: list[bytes], ref: int) -> list[bytes]:
    """Payloads as short_messages: alone when one, each behind its concatenation UDH when several."""
    if not 0 <= ref <= 0xFF:
        # Checked up front so a bad reference fails on short texts too, not only on long ones.
        raise ValueError(f"concatenation reference {ref} is not in 0..255")
    if len(payloads) == 1:
        return payloads
    total = len(payloads)
    return [concat_udh(ref, total, seq) + payload for seq, payload in enumerate(payloads, start=1)]


def data_coding(encoding: Encoding) -> int:
    """SMPP data_coding: 0 (SMSC default alphabet, GSM-7 here) or 8 (UCS-2)."""
    return 0x00 if encoding is Encoding.GSM7 else 0x08
