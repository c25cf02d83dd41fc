"""Naming the encoding of text that is not UTF-8, so an upload error can say what to do about it.

Vietnamese files older than Unicode come in three common encodings, each with its own fix:

- Windows-1258 (cp1258): Windows' Vietnamese code page. Vowels with a circumflex, breve or horn
  are single bytes; the five tone marks are *combining* bytes written after the vowel (0xCC grave,
  0xEC acute, 0xD2 hook, 0xDE tilde, 0xF2 dot below).
- TCVN3 ("ABC", TCVN 5712:1993): one byte per accented lowercase letter (0xB8 á, 0xB5 à, 0xA8 ă,
  0xAE đ, …); text typed with the .VnTime fonts.
- VNI (VNI-Windows fonts): an ASCII vowel followed by bytes that the VNI fonts draw as accents
  ("Vieät Nam" is "Việt Nam"); ư and ơ are the bytes of ö and ô.

Plus Windows-1252/Latin-1 (Western European) from non-Vietnamese tools. The byte ranges overlap
(TCVN3 gives a Vietnamese letter for nearly every high byte), so counting bytes cannot tell them
apart. Instead the sample is decoded with each candidate and every word that contains a non-ASCII
letter is checked against the shape of a Vietnamese syllable (initial consonant, one to three
vowels, final consonant, at most one tone mark). The right decoding yields syllables; the wrong
ones yield words like "cafộ" or "NguyÔn".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Final, NamedTuple

__all__ = ["LegacyEncoding", "guess_legacy_encoding"]


class LegacyEncoding(NamedTuple):
    name: str  # as users know it, e.g. "TCVN3 (ABC)"
    advice: str  # what to do, one sentence


_CONVERT: Final = (
    "Convert the text to Unicode (e.g. with UniKey's converter), then save as 'CSV UTF-8' and upload again."
)
_SAVE_UTF8: Final = "Save it as 'CSV UTF-8 (Comma delimited)' in Excel and upload again."

# TCVN 5712:1993 bytes 0x80-0xFF (0x80-0x9F: the capitals some fonts add; 0xB0-0xB4: combining
# tone marks). Code points, so the table can be checked against the standard line by line.
_TCVN3_HIGH: Final = "".join(
    map(
        chr,
        (
            0x00C0, 0x1EA2, 0x00C3, 0x00C1, 0x1EA0, 0x1EB6, 0x1EAC, 0x00C8,  # 0x80
            0x1EBA, 0x1EBC, 0x00C9, 0x1EB8, 0x1EC6, 0x00CC, 0x1EC8, 0x0128,
            0x00CD, 0x1ECA, 0x00D2, 0x1ECE, 0x00D5, 0x00D3, 0x1ECC, 0x1ED8,  # 0x90
            0x1EDC, 0x1EDE, 0x1EE0, 0x1EDA, 0x1EE2, 0x00D9, 0x1EE6, 0x0168,
            0x00A0, 0x0102, 0x00C2, 0x00CA, 0x00D4, 0x01A0, 0x01AF, 0x0110,  # 0xA0
            0x0103, 0x00E2, 0x00EA, 0x00F4, 0x01A1, 0x01B0, 0x0111, 0x1EB0,
            0x0300, 0x0309, 0x0303, 0x0301, 0x0323, 0x00E0, 0x1EA3, 0x00E3,  # 0xB0
            0x00E1, 0x1EA1, 0x1EB2, 0x1EB1, 0x1EB3, 0x1EB5, 0x1EAF, 0x1EB4,
            0x1EAE, 0x1EA6, 0x1EA8, 0x1EAA, 0x1EA4, 0x1EC0, 0x1EB7, 0x1EA7,  # 0xC0
            0x1EA9, 0x1EAB, 0x1EA5, 0x1EAD, 0x00E8, 0x1EC2, 0x1EBB, 0x1EBD,
            0x00E9, 0x1EB9, 0x1EC1, 0x1EC3, 0x1EC5, 0x1EBF, 0x1EC7, 0x00EC,  # 0xD0
            0x1EC9, 0x1EC4, 0x1EBE, 0x1ED2, 0x0129, 0x00ED, 0x1ECB, 0x00F2,
            0x1ED4, 0x1ECF, 0x00F5, 0x00F3, 0x1ECD, 0x1ED3, 0x1ED5, 0x1ED7,  # 0xE0
            0x1ED1, 0x1ED9, 0x1EDD, 0x1EDF, 0x1EE1, 0x1EDB, 0x1EE3, 0x00F9,
            0x1ED6, 0x1EE7, 0x0169, 0x00FA, 0x1EE5, 0x1EEB, 0x1EED, 0x1EEF,  # 0xF0
            0x1EE9, 0x1EF1, 0x1EF3, 0x1EF7, 0x1EF9, 0x00FD, 0x1EF5, 0x1ED0,
        ),
    )
)  # fmt: skip
_TCVN3_TABLE: Final = {0x80 + i: char for i, char in enumerate(_TCVN3_HIGH)}

# Combining tone marks in the order VNI lists them: acute, grave, hook, tilde, dot below.
_TONES: Final = ("\u0301", "\u0300", "\u0309", "\u0303", "\u0323")


def _vni_table() -> dict[str, str]:
    """VNI spellings (as Windows-1252 text, which is how the VNI fonts' bytes decode) → letters."""
    plain_tones = ("ù", "ø", "û", "õ", "ï")  # after a, e, o, u, y, ơ (ô), ư (ö)
    circumflex = ("â", "á", "à", "å", "ã", "ä")  # â/ê/ô, then with each tone
    breve = ("ê", "é", "è", "ú", "ü", "ë")  # ă, then with each tone
    table = {"ô": "ơ", "ö": "ư", "ñ": "đ", "í": "í", "ì": "ì", "æ": "ỉ", "ó": "ĩ", "ò": "ị", "î": "ỵ"}
    for vni_base, base in zip("aeouyôö", "aeouyơư", strict=True):
        for mark, tone in zip(plain_tones, _TONES, strict=True):
            if vni_base + mark != "yï":  # ỵ has its own byte (î)
                table[vni_base + mark] = base + tone
    for vowel in "aeo":
        table[vowel + circumflex[0]] = vowel + "\u0302"
        for mark, tone in zip(circumflex[1:], _TONES, strict=True):
            table[vowel + mark] = vowel + "\u0302" + tone
    table["a" + breve[0]] = "a\u0306"
    for mark, tone in zip(breve[1:], _TONES, strict=True):
        table["a" + mark] = "a\u0306" + tone
    table.update({key.upper(): value.upper() for key, value in table.items()})
    return {key: unicodedata.normalize("NFC", value) for key, value in table.items()}


_VNI_TABLE: Final = _vni_table()
_VNI_SEQUENCE: Final = re.compile("|".join(map(re.escape, sorted(_VNI_TABLE, key=len, reverse=True))))


def _decode_tcvn3(data: bytes) -> str:
    return data.decode("latin-1").translate(_TCVN3_TABLE)


def _decode_vni(data: bytes) -> str:
    text = data.decode("cp1252", errors="replace")
    return _VNI_SEQUENCE.sub(lambda match: _VNI_TABLE[match.group()], text)


def _decode_cp1258(data: bytes) -> str:
    return unicodedata.normalize("NFC", data.decode("cp1258", errors="replace"))


_CANDIDATES: Final[tuple[tuple[LegacyEncoding, Callable[[bytes], str]], ...]] = (
    (LegacyEncoding("Windows-1258 (Vietnamese)", _SAVE_UTF8), _decode_cp1258),
    (LegacyEncoding("TCVN3 (ABC)", _CONVERT), _decode_tcvn3),
    (LegacyEncoding("VNI", _CONVERT), _decode_vni),
)
_WESTERN: Final = LegacyEncoding("Windows-1252 (Western European)", _SAVE_UTF8)

_TONE_MARKS: Final = frozenset(_TONES)
_WORD: Final = re.compile(r"[^\W\d_]+")
# A toneless Vietnamese syllable: optional initial consonant, one of the language's vowel
# groups, optional final consonant.
_SYLLABLE: Final = re.compile(
    r"(?:ngh|ng|gh|gi|kh|nh|ph|th|tr|ch|qu|[bcdđghklmnprstvx])?"
    r"(?:iêu|yêu|oai|oay|oeo|uây|uôi|ươi|ươu|uya|uyê|uyu"
    r"|ai|ao|au|ay|âu|ây|eo|êu|ia|iê|iu|oa|oă|oe|oi|ôi|ơi|ua|uâ|uê|ui|uô|uơ|ưa|ưi|ưu|uy|ươ|yê"
    r"|[aăâeêioôơuưy])"
    r"(?:ch|nh|ng|[cmnpt])?"
)


def _syllable_counts(text: str) -> tuple[int, int]:
    """(Vietnamese-looking, other) among the words that contain a non-ASCII letter, plus stray
    combining marks and undecodable bytes as "other"."""
    good = 0
    bad = sum(1 for char in text if unicodedata.combining(char) or char == "\ufffd")
    for word in _WORD.findall(text):
        if word.isascii():
            continue
        decomposed = unicodedata.normalize("NFD", word)
        tones = sum(1 for char in decomposed if char in _TONE_MARKS)
        toneless = unicodedata.normalize("NFC", "".join(c for c in decomposed if c not in _TONE_MARKS))
        cased = word.islower() or word.isupper() or word.istitle()
        if tones <= 1 and cased and _SYLLABLE.fullmatch(toneless.lower()):
            good += 1
        else:
            bad += 1
    return good, bad


def guess_legacy_encoding(data: bytes) -> LegacyEncoding | None:
    """The most likely non-UTF-8 encoding of ``data`` (a sample of a few KiB is plenty), or None
    when there is no non-ASCII text to judge by or nothing fits."""
    best: tuple[int, LegacyEncoding] | None = None
    for encoding, decode in _CANDIDATES:
        good, bad = _syllable_counts(decode(data))
        # Most non-ASCII words must read as Vietnamese syllables under this decoding.
        if good and good >= 3 * bad and (best is None or good - bad > best[0]):
            best = (good - bad, encoding)
    if best is not None:
        return best[1]
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    return _WESTERN if _looks_western(western) else None


def _looks_western(text: str) -> bool:
    """Accented Latin letters inside words that also have plain ones ("Müller", "café"), as
    opposed to stray high bytes that merely decode ("ÿþ")."""
    good = bad = 0
    for word in _WORD.findall(text):
        if word.isascii():
            continue
        latin = all(char.isascii() or ord(char) < 0x250 for char in word)
        if latin and any(char.isascii() for char in word):
            good += 1
        else:
            bad += 1
    return good > 0 and good >= 3 * bad
