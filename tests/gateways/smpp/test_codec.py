"""Tests for the GSM 03.38 / UCS-2 codec, segmentation and concatenation headers."""

from __future__ import annotations

import math
import pickle
import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import gsm as smpplib_gsm

from gateways.smpp.codec import (
    MAX_PARTS,
    Encoding,
    EncodingPolicy,
    UnencodableError,
    build_short_messages,
    concat_udh,
    data_coding,
    decode_gsm7,
    encode_gsm7,
    gsm7_septets,
    is_gsm7,
    normalise_text,
    prepare,
    segment_count,
    split_payloads,
    strip_diacritics,
    unencodable_gsm7,
)

# The oracle is written from 3GPP TS 23.038 by Unicode name, independently of the module's table.
_NAMED_BASIC = {
    0x00: "COMMERCIAL AT", 0x01: "POUND SIGN", 0x02: "DOLLAR SIGN", 0x03: "YEN SIGN",
    0x04: "LATIN SMALL LETTER E WITH GRAVE", 0x05: "LATIN SMALL LETTER E WITH ACUTE",
    0x06: "LATIN SMALL LETTER U WITH GRAVE", 0x07: "LATIN SMALL LETTER I WITH GRAVE",
    0x08: "LATIN SMALL LETTER O WITH GRAVE", 0x09: "LATIN CAPITAL LETTER C WITH CEDILLA",
    0x0B: "LATIN CAPITAL LETTER O WITH STROKE", 0x0C: "LATIN SMALL LETTER O WITH STROKE",
    0x0E: "LATIN CAPITAL LETTER A WITH RING ABOVE", 0x0F: "LATIN SMALL LETTER A WITH RING ABOVE",
    0x10: "GREEK CAPITAL LETTER DELTA", 0x11: "LOW LINE", 0x12: "GREEK CAPITAL LETTER PHI",
    0x13: "GREEK CAPITAL LETTER GAMMA", 0x14: "GREEK CAPITAL LETTER LAMDA",
    0x15: "GREEK CAPITAL LETTER OMEGA", 0x16: "GREEK CAPITAL LETTER PI", 0x17: "GREEK CAPITAL LETTER PSI",
    0x18: "GREEK CAPITAL LETTER SIGMA", 0x19: "GREEK CAPITAL LETTER THETA", 0x1A: "GREEK CAPITAL LETTER XI",
    0x1C: "LATIN CAPITAL LETTER AE", 0x1D: "LATIN SMALL LETTER AE", 0x1E: "LATIN SMALL LETTER SHARP S",
    0x1F: "LATIN CAPITAL LETTER E WITH ACUTE", 0x24: "CURRENCY SIGN", 0x40: "INVERTED EXCLAMATION MARK",
    0x5B: "LATIN CAPITAL LETTER A WITH DIAERESIS", 0x5C: "LATIN CAPITAL LETTER O WITH DIAERESIS",
    0x5D: "LATIN CAPITAL LETTER N WITH TILDE", 0x5E: "LATIN CAPITAL LETTER U WITH DIAERESIS",
    0x5F: "SECTION SIGN", 0x60: "INVERTED QUESTION MARK", 0x7B: "LATIN SMALL LETTER A WITH DIAERESIS",
    0x7C: "LATIN SMALL LETTER O WITH DIAERESIS", 0x7D: "LATIN SMALL LETTER N WITH TILDE",
    0x7E: "LATIN SMALL LETTER U WITH DIAERESIS", 0x7F: "LATIN SMALL LETTER A WITH GRAVE",
}  # fmt: skip


def _expected_basic() -> dict[int, str]:
    table = {code: unicodedata.lookup(name) for code, name in _NAMED_BASIC.items()}
    table[0x0A], table[0x0D] = "\n", "\r"
    # The rest coincides with ASCII: punctuation and digits 0x20-0x3F, A-Z, a-z.
    for code in [*range(0x20, 0x40), *range(0x41, 0x5B), *range(0x61, 0x7B)]:
        table.setdefault(code, chr(code))
    return table


EXPECTED_BASIC = _expected_basic()
EXPECTED_EXTENSION = {
    "\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F,
    "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65,
}  # fmt: skip
GSM_CHARS = "".join(EXPECTED_BASIC.values()) + "".join(EXPECTED_EXTENSION)

_TONES = ["", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323"]  # none, huyền, sắc, hỏi, ngã, nặng
_VOWELS = {"a": "aăâ", "e": "eê", "i": "i", "o": "oôơ", "u": "uư", "y": "y"}
# Every Vietnamese letter, precomposed, with the ASCII letter it strips to.
VIETNAMESE = {
    unicodedata.normalize("NFC", base + tone): plain
    for plain, bases in _VOWELS.items()
    for base in bases
    for tone in _TONES
} | {"đ": "d"}
VIETNAMESE |= {letter.upper(): plain.upper() for letter, plain in VIETNAMESE.items()}

CENSUS_SMS = (
    "Tổng cục Thống kê thông báo: Tổng điều tra dân số và nhà ở năm 2029 bắt đầu từ ngày "
    "01/04/2029. Hộ gia đình của bạn có mã hộ 79-760-01234, mật khẩu Kx7-Qm2. Vui lòng khai "
    "báo trực tuyến tại https://tdtds.gso.gov.vn trước ngày 30/04. Hỗ trợ: 1900 1234."
)


def test_basic_table_has_128_positions_but_escape() -> None:
    assert sorted(EXPECTED_BASIC) == [c for c in range(128) if c != 0x1B]


@pytest.mark.parametrize(("code", "char"), sorted(EXPECTED_BASIC.items()))
def test_every_basic_character_encodes_to_its_septet(code: int, char: str) -> None:
    assert encode_gsm7(char) == bytes([code])
    assert decode_gsm7(bytes([code])) == char
    assert gsm7_septets(char) == 1


@pytest.mark.parametrize(("char", "code"), sorted(EXPECTED_EXTENSION.items()))
def test_every_extension_character_is_escaped(char: str, code: int) -> None:
    assert encode_gsm7(char) == bytes([0x1B, code])
    assert decode_gsm7(bytes([0x1B, code])) == char
    assert gsm7_septets(char) == 2


def test_section_sign_is_0x5f_and_backtick_is_not_gsm() -> None:
    assert encode_gsm7("§") == b"\x5f"
    assert unencodable_gsm7("a`b") == ["`"]


def test_escape_character_itself_and_lookalikes_are_not_encodable() -> None:
    assert unencodable_gsm7("\x1b\tçÀ") == ["\x1b", "\t", "ç", "À"]


def test_decode_is_lenient_about_escapes_and_strict_about_octets() -> None:
    # Undefined extension code → basic-table character; dangling escape dropped.
    assert decode_gsm7(b"\x1b\x41\x42\x1b") == "AB"
    with pytest.raises(ValueError, match="0x80"):
        decode_gsm7(b"ab\x80")


def test_whole_alphabet_round_trips() -> None:
    encoded = encode_gsm7(GSM_CHARS)
    assert decode_gsm7(encoded) == GSM_CHARS
    assert len(encoded) == gsm7_septets(GSM_CHARS) == 127 + 2 * 10


def test_unencodable_error_lists_distinct_characters_in_order() -> None:
    with pytest.raises(UnencodableError) as caught:
        encode_gsm7("ạ ờ ạ 😀 ờ")
    assert caught.value.chars == ["ạ", "ờ", "😀"]
    assert "U+1EA1" in str(caught.value)
    assert "'😀'" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert copy.chars == caught.value.chars
    assert str(copy) == str(caught.value)


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # 160 septets
        ("€" * 80 + "a", 2),
        ("a" * 159 + "€", 2),  # 161 septets
        ("a" * 152 + "€", 1),  # 154 septets: the escape-split case needs a longer text
    ],
)
def test_gsm_segment_boundaries(text: str, segments: int) -> None:
    assert segment_count(text, Encoding.GSM7) == segments
    assert len(split_payloads(text, Encoding.GSM7)) == segments


def test_long_gsm_text_is_cut_into_153_septet_parts() -> None:
    payloads = split_payloads("x" * 400, Encoding.GSM7)
    assert [len(p) for p in payloads] == [153, 153, 94]


def test_escape_pair_is_never_split() -> None:
    text = "a" * 152 + "€" + "b" * 10
    payloads = split_payloads(text, Encoding.GSM7)
    assert payloads == [b"a" * 152, b"\x1b\x65" + b"b" * 10]


def test_smpplib_splits_the_escape_pair_which_is_why_we_have_our_own_codec() -> None:
    parts, _, _ = smpplib_gsm.make_parts("a" * 152 + "€" + "b" * 10)
    assert parts[0].endswith(b"\x1b")  # part one ends in a bare escape: handsets show garbage


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("ạ" * 70, 1),
        ("ạ" * 71, 2),
        ("ạ" * 134, 2),
        ("ạ" * 135, 3),
        ("😀" * 35, 1),
        ("😀" * 35 + "a", 2),
    ],
)
def test_ucs2_segment_boundaries(text: str, segments: int) -> None:
    assert segment_count(text, Encoding.UCS2) == segments


def test_surrogate_pair_at_a_part_boundary_moves_whole_to_the_next_part() -> None:
    text = "ạ" * 66 + "😀" + "b" * 10
    first, second = split_payloads(text, Encoding.UCS2)
    assert first == ("ạ" * 66).encode("utf-16-be")
    assert second == ("😀" + "b" * 10).encode("utf-16-be")


def test_lone_surrogate_is_unencodable_in_ucs2() -> None:
    with pytest.raises(UnencodableError) as caught:
        split_payloads("a\ud83db", Encoding.UCS2)
    assert caught.value.chars == ["\ud83d"]


def test_only_six_vietnamese_letters_are_gsm() -> None:
    accented = {letter for letter in VIETNAMESE if not letter.isascii()}
    assert len(accented) == 134  # (12 vowels × 6 tones + đ − 6 plain vowels) × 2 cases
    assert {letter for letter in accented if is_gsm7(letter)} == set("àèéìòùÉ")


@pytest.mark.parametrize(("letter", "plain"), sorted(VIETNAMESE.items()))
def test_vietnamese_letter_strips_to_ascii_whatever_its_composition(letter: str, plain: str) -> None:
    decomposed = unicodedata.normalize("NFD", letter)
    assert strip_diacritics(letter) == plain
    assert strip_diacritics(decomposed) == plain
    assert normalise_text(decomposed) == letter


def test_strip_diacritics_maps_typographic_punctuation() -> None:
    text = "a\u2013b\u2014c \u201cq\u201d \u2018s\u2019 wait\u2026 \u00abx\u00bb\u00a0y\u200bz 50.000\u20ab"
    assert strip_diacritics(text) == 'a-b-c "q" \'s\' wait... "x" yz 50.000d'
    assert is_gsm7(strip_diacritics(text))


def test_strip_diacritics_leaves_what_has_no_ascii_spelling() -> None:
    assert strip_diacritics("Ø ß 😀 中") == "Ø ß 😀 中"


def test_decomposed_input_costs_the_same_as_precomposed() -> None:
    decomposed = unicodedata.normalize("NFD", CENSUS_SMS)
    assert len(decomposed) > len(CENSUS_SMS)
    assert prepare(decomposed, "auto") == prepare(CENSUS_SMS, "auto")


def test_census_sms_auto_is_ucs2_and_stripping_saves_segments() -> None:
    assert len(CENSUS_SMS) == 251
    auto = prepare(CENSUS_SMS, EncodingPolicy.AUTO)
    assert auto.encoding is Encoding.UCS2
    assert auto.segments == 4  # 251 UTF-16 units in parts of 67
    stripped = prepare(CENSUS_SMS, "strip_diacritics")
    assert stripped.encoding is Encoding.GSM7
    assert stripped.segments == 2  # 251 septets in parts of 153
    assert stripped.text.isascii()
    assert stripped.text.startswith("Tong cuc Thong ke thong bao: Tong dieu tra dan so va nha o nam 2029")


def test_prepare_policies() -> None:
    assert prepare("Hello", "auto").encoding is Encoding.GSM7
    assert prepare("Hello", "ucs2") == prepare("Hello", EncodingPolicy.UCS2)
    assert prepare("Hello", "ucs2").encoding is Encoding.UCS2
    assert prepare("Chào", "gsm7").encoding is Encoding.GSM7  # à is GSM
    with pytest.raises(UnencodableError) as caught:
        prepare("Thống kê", "gsm7")
    assert caught.value.chars == ["ố", "ê"]
    with pytest.raises(UnencodableError) as caught:
        prepare("Chúc mừng 🎉", "strip_diacritics")
    assert caught.value.chars == ["🎉"]
    with pytest.raises(ValueError, match="latin1"):
        prepare("Hello", "latin1")


def test_concat_udh() -> None:
    assert concat_udh(0xAB, 3, 2) == bytes.fromhex("050003ab0302")
    assert concat_udh(0, 255, 255) == bytes.fromhex("05000300ffff")


@pytest.mark.parametrize(
    ("ref", "total", "seq", "complaint"),
    [
        (256, 2, 1, "reference 256"),
        (-1, 2, 1, "reference -1"),
        (1, 0, 1, "part count 0"),
        (1, 256, 1, "part count 256"),
        (1, 2, 3, "part number 3"),
        (1, 2, 0, "part number 0"),
    ],
)
def test_concat_udh_refuses_out_of_range_fields(ref: int, total: int, seq: int, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        concat_udh(ref, total, seq)


def test_build_short_messages_single_and_multi_part() -> None:
    assert build_short_messages("Hi", Encoding.GSM7, ref=7) == [b"Hi"]
    parts = build_short_messages("ạ" * 150, Encoding.UCS2, ref=7)
    assert [p[:6] for p in parts] == [bytes([5, 0, 3, 7, 3, seq]) for seq in (1, 2, 3)]
    assert b"".join(p[6:] for p in parts).decode("utf-16-be") == "ạ" * 150
    assert build_short_messages("", Encoding.GSM7, ref=0) == [b""]


def test_build_short_messages_limits() -> None:
    with pytest.raises(ValueError, match="256"):
        build_short_messages("a", Encoding.GSM7, ref=256)
    assert len(build_short_messages("a" * 153 * MAX_PARTS, Encoding.GSM7, ref=1)) == MAX_PARTS
    with pytest.raises(ValueError, match="parts"):
        build_short_messages("a" * (153 * MAX_PARTS + 1), Encoding.GSM7, ref=1)


def test_data_coding() -> None:
    assert data_coding(Encoding.GSM7) == 0
    assert data_coding(Encoding.UCS2) == 8


# --- Property-style checks over random texts --------------------------------------------------

_ALPHABET = GSM_CHARS * 3 + "".join(VIETNAMESE) + "😀🎉中`ç\u2013\u201c\u00a0"


def _random_texts(seed: int, count: int = 400) -> list[str]:
    rng = random.Random(seed)
    lengths = [0, 1, 69, 70, 71, 152, 153, 159, 160, 161, 306, 307, 500]
    return ["".join(rng.choices(_ALPHABET, k=rng.choice(lengths))) for _ in range(count)]


def test_random_gsm_texts_round_trip_and_split_cleanly() -> None:
    rng = random.Random(1)
    for _ in range(400):
        text = "".join(rng.choices(GSM_CHARS, k=rng.randint(0, 500)))
        septets = gsm7_septets(text)
        payloads = split_payloads(text, Encoding.GSM7)
        assert b"".join(payloads) == encode_gsm7(text)
        assert "".join(decode_gsm7(p) for p in payloads) == text
        assert all(not p.endswith(b"\x1b") for p in payloads)
        if septets <= 160:
            assert len(payloads) == 1
        else:
            assert all(len(p) <= 153 for p in payloads)
            assert all(len(p) >= 152 for p in payloads[:-1])
            assert math.ceil(septets / 153) <= len(payloads) <= math.ceil(septets / 152)
        assert segment_count(text, Encoding.GSM7) == len(payloads)


def test_random_texts_in_ucs2_never_split_a_character() -> None:
    for text in _random_texts(seed=2):
        units = len(text.encode("utf-16-be")) // 2
        payloads = split_payloads(text, Encoding.UCS2)
        assert "".join(p.decode("utf-16-be") for p in payloads) == text  # strict: no half pair
        limit = 140 if units <= 70 else 134
        assert all(len(p) <= limit for p in payloads)
        assert segment_count(text, Encoding.UCS2) == len(payloads)


def test_random_texts_prepare_consistently() -> None:
    for text in _random_texts(seed=3):
        assert is_gsm7(text) == (unencodable_gsm7(text) == [])
        auto = prepare(text, "auto")
        assert auto.encoding is (Encoding.GSM7 if is_gsm7(auto.text) else Encoding.UCS2)
        assert auto.segments == len(build_short_messages(auto.text, auto.encoding, ref=1))
        stripped = strip_diacritics(text)
        assert strip_diacritics(stripped) == stripped
        assert unicodedata.is_normalized("NFC", stripped)
        assert set(unencodable_gsm7(stripped)) <= set("😀🎉中")


# A slow, obvious splitter: one character at a time, weighed as the tables say. The codec's fast
# paths (texts of one unit per character) must agree with it everywhere.
def _reference_parts(text: str, encoding: Encoding) -> list[str]:
    weigh = (
        (lambda ch: gsm7_septets(ch)) if encoding is Encoding.GSM7 else (lambda ch: len(ch.encode("utf-16-be")) // 2)
    )
    single, part = (160, 153) if encoding is Encoding.GSM7 else (70, 67)
    if sum(weigh(ch) for ch in text) <= single:
        return [text]
    parts, current, used = [], "", 0
    for ch in text:
        if used + weigh(ch) > part:
            parts.append(current)
            current, used = "", 0
        current += ch
        used += weigh(ch)
    return [*parts, current]


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(alphabet=st.sampled_from("aZ09 .,!\n"), min_size=140, max_size=400),  # a septet, as ASCII
        st.text(alphabet=st.sampled_from("aZ ạếđỹ"), min_size=60, max_size=400),  # one UTF-16 unit each
        st.text(alphabet=st.sampled_from("aZ09 .,!@$_\n€[]ạếđỹ😀Δ"), max_size=400),  # anything
    )
)
def test_split_payloads_agree_with_the_reference_splitter(text: str) -> None:
    for encoding in (Encoding.GSM7, Encoding.UCS2):
        if encoding is Encoding.GSM7 and not is_gsm7(text):
            continue
        expected = _reference_parts(text, encoding)
        encoded = [encode_gsm7(p) if encoding is Encoding.GSM7 else p.encode("utf-16-be") for p in expected]
        assert split_payloads(text, encoding) == encoded
