"""Phone normalisation: the formats people and Excel produce, clear rejections, and proof that the
string-only fast path and the prefix-cached carrier lookup never disagree with phonenumbers."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import NumberParseException, PhoneNumberType
from phonenumbers.carrier import name_for_number

from campaigns import phones
from campaigns.phones import PhoneError, carrier_for, normalise_phone, normalise_with_carrier


def reference(text: str, region: str = "VN") -> str | None:
    """What phonenumbers alone says: E.164 for a valid number that can take SMS, else None."""
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    if phonenumbers.number_type(number) not in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def ours(text: str, region: str = "VN") -> str | None:
    try:
        return normalise_phone(text, region)
    except PhoneError:
        return None


def reference_carrier(e164: str) -> str | None:
    return name_for_number(phonenumbers.parse(e164, None), "en") or None


@pytest.mark.parametrize(
    "raw",
    [
        "0912345678",
        "0912 345 678",
        "0912.345.678",
        "0912-345-678",
        "84912345678",
        "+84912345678",
        "+84 912 345 678",
        "(+84) 912345678",
        " 0912345678 ",
        "0912\u00a0345\u00a0678",  # Excel's no-break space
        "0084912345678",
        "912345678",  # a number column that lost its leading zero
        912345678,
        84912345678,
        912345678.0,
        84912345678.0,
        "912345678.0",
        "84912345678.0",
        "8.4912345678E10",
        "8.4912345678E+10",
        "8,4912345678E+10",  # Excel in a locale with a decimal comma
    ],
)
def test_accepted_formats(raw: str | int | float) -> None:
    assert normalise_phone(raw) == "+84912345678"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("0912abc678", "contains letters"),
        ("0912345678 ext 5", "contains letters"),
        ("0912345678#", "contains characters other than digits, spaces and + - . ( ) /"),
        ("091234", "too short"),
        ("091234567", "too short"),
        ("09123456789", "too long"),
        ("0912345678901234567", "too long"),
        ("0112345678", "not a valid number for region VN"),
        ("0612345678", "not a valid number for region VN"),
        ("+84 24 3825 1234", "not a mobile number"),  # Hanoi landline
        ("028 3829 1234", "not a mobile number"),  # Ho Chi Minh City landline
        ("1800 1234", "not a mobile number"),  # toll free
        ("+44 20 7123 4567", "not a mobile number"),
        ("01626123456", "old 11-digit mobile number (Vietnam renumbered them in 2018)"),
        ("8.49123E+10", "digits lost to scientific notation in Excel; format the column as Text"),
        ("", "empty"),
        ("   ", "empty"),
        (912345678.5, "not a phone number"),
        (float("nan"), "not a phone number"),
        (-912345678, "not a phone number"),
        (True, "not a phone number"),
        ("+999 123456789", "unknown country code"),
    ],
)
def test_rejections_say_why(raw: str | int | float, reason: str) -> None:
    with pytest.raises(PhoneError) as caught:
        normalise_phone(raw)
    assert caught.value.reason == reason
    assert str(caught.value) == reason


def test_other_types_are_rejected_not_crashed() -> None:
    with pytest.raises(PhoneError):
        normalise_phone(None)  # type: ignore[arg-type]


def test_other_regions_go_through_phonenumbers() -> None:
    assert normalise_phone("+44 7911 123456") == "+447911123456"
    assert normalise_phone("07911 123456", region="GB") == "+447911123456"
    # National forms are read relative to the region given, as phonenumbers reads them.
    assert ours("0912345678", region="GB") is None
    assert normalise_phone("+84 912 345 678", region="GB") == "+84912345678"


def test_fast_prefixes_cover_the_current_mobile_plan() -> None:
    prefixes = phones._FAST_PREFIXES
    # 03x Viettel, 05x Vietnamobile/Gmobile, 07x MobiFone, 08x Vinaphone/Viettel, 09x all of them.
    for head in ("32", "39", "56", "58", "59", "70", "76", "79", "81", "86", "88", "90", "91", "96", "98"):
        assert all(head + d in prefixes for d in "0123456789"), head
    assert not any(p.startswith("2") for p in prefixes), "fixed-line ranges must stay on the slow path"


def test_every_fast_prefix_is_mobile_for_any_suffix() -> None:
    rng = random.Random(7)
    for head in sorted(phones._FAST_PREFIXES):
        for _ in range(40):
            national = f"{head}{rng.randrange(10**6):06d}"
            assert reference("0" + national) == "+84" + national, national


def _sample(rng: random.Random) -> str:
    """A VN-looking number: any 3-digit start (valid or not), mostly 9 national digits, written
    the ways spreadsheets hold them."""
    length = rng.choices((9, 8, 10, 7), weights=(85, 6, 6, 3))[0]
    national = f"{rng.randrange(100, 1000)}{rng.randrange(10 ** (length - 3)):0{length - 3}d}"
    a, b, c = national[:3], national[3:6], national[6:]
    fmt = rng.choice(
        (
            "0{n}",
            "0{n}",
            "{n}",
            "84{n}",
            "+84{n}",
            "+84 {a} {b} {c}",
            "(+84) {n}",
            "+(84){n}",
            "0{a}.{b}.{c}",
            "0{a}-{b}-{c}",
            "0{a} {b} {c}",
            " 0{n} ",
            "0{a}\u00a0{b}{c}",
            "0084{n}",
            "84 {n}",
            "+840{n}",
            "00{n}",
            "+8{n}",
            "(0{a}) {b}{c}",
            "0{a}-{b}.{c}",
            "840{n}",
            "+84-{a}-{b}-{c}",
        )
    )
    return fmt.format(n=national, a=a, b=b, c=c)


def test_fast_path_and_carrier_cache_agree_with_phonenumbers_on_a_large_sample() -> None:
    rng = random.Random(20240601)
    samples = [_sample(rng) for _ in range(200_000)]
    fast_hits = valid = 0
    carrier_checked = 0
    for text in samples:
        expected = reference(text)
        fast = phones._fast_path(text, "VN")
        if fast is not None:
            fast_hits += 1
            assert fast == expected, f"fast path says {fast!r} for {text!r}, phonenumbers {expected!r}"
        assert ours(text) == expected, text
        if expected is not None:
            valid += 1
            if carrier_checked < 30_000:
                carrier_checked += 1
                name = reference_carrier(expected)
                assert carrier_for(expected) == name, expected
                assert normalise_with_carrier(text) == (expected, name), text
    # The sample must exercise both sides: plenty of valid numbers, plenty of rejections, and a
    # fast path that really takes most of the valid ones (otherwise agreement proves nothing).
    assert 0.3 * len(samples) < valid < 0.9 * len(samples)
    assert fast_hits > 0.6 * valid


def test_fast_path_takes_every_ordinary_mobile_number() -> None:
    rng = random.Random(3)
    mobile = sorted(p for p in phones._FAST_PREFIXES if p[0] in "35789")
    for _ in range(5000):
        national = f"{rng.choice(mobile)}{rng.randrange(10**6):06d}"
        for text in ("0" + national, "+84" + national, "84" + national, national):
            assert phones._fast_path(text, "VN") == "+84" + national


@pytest.mark.parametrize(
    ("number", "carrier"),
    [
        ("0912345678", "Vinaphone"),
        ("0862345678", "Viettel"),
        ("0352345678", "Viettel"),
        ("0902345678", "MobiFone"),
        ("0702345678", "MobiFone"),
        ("0922345678", "Vietnamobile"),
        ("0993345678", "G-Mobile"),
    ],
)
def test_known_carriers(number: str, carrier: str) -> None:
    assert normalise_with_carrier(number) == ("+84" + number[1:], carrier)


def test_carrier_outside_the_fast_path() -> None:
    assert carrier_for("+447911123456") == reference_carrier("+447911123456")
    assert carrier_for("+842438251234") is None  # a landline has no carrier name
    assert carrier_for("not a number") is None


def test_carrier_cache_key_is_the_longest_vn_prefix() -> None:
    normalise_with_carrier("0912345678")
    from phonenumbers.carrierdata import CARRIER_DATA

    longest = max(len(k) for k in CARRIER_DATA if k.startswith("84"))
    assert phones._vn_carrier_key_length == longest
    assert all(len(key) == longest for key in phones._vn_carrier_cache)


def test_fast_path_agrees_for_other_default_regions() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        text = _sample(rng)
        for region in ("US", "GB"):
            fast = phones._fast_path(text, region)
            expected = reference(text, region)
            assert fast is None or fast == expected, (text, region)
            assert ours(text, region) == expected, (text, region)
