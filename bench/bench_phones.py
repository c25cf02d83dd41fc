"""Throughput of phone normalisation: Loa's fast path against phonenumbers alone.

Run: ``.venv/bin/python -m bench.bench_phones [count]`` (default 1,000,000 numbers). The numbers
are ordinary Vietnamese mobile numbers written the ways recipient files hold them. phonenumbers is
timed on a slice of the same list (it would take half a minute for a million) and reported as a
rate, like the rest.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

import phonenumbers

from campaigns import phones
from campaigns.phones import normalise_phone, normalise_with_carrier

FORMATS = ("0{n}", "0{a} {b} {c}", "+84{n}", "+84 {a} {b} {c}", "84{n}", "0{a}.{b}.{c}", "0{a}-{b}-{c}")


def make_numbers(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    prefixes = sorted(p for p in phones._FAST_PREFIXES if p[0] in "35789")
    numbers = []
    for _ in range(count):
        national = f"{rng.choice(prefixes)}{rng.randrange(10**6):06d}"
        parts = {"a": national[:3], "b": national[3:6], "c": national[6:]}
        numbers.append(rng.choice(FORMATS).format(n=national, **parts))
    return numbers


def by_phonenumbers(text: str) -> str:
    number = phonenumbers.parse(text, "VN")
    if not phonenumbers.is_valid_number(number):
        raise ValueError(text)
    phonenumbers.number_type(number)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def rate(label: str, func: Callable[[str], object], numbers: list[str]) -> float:
    started = time.perf_counter()
    for text in numbers:
        func(text)
    elapsed = time.perf_counter() - started
    per_second = len(numbers) / elapsed
    print(f"{label:<34} {len(numbers):>9,} numbers  {elapsed:7.2f} s  {per_second:>11,.0f} numbers/s")
    return per_second


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    numbers = make_numbers(count)
    normalise_with_carrier(numbers[0])  # load the carrier tables outside the timed loops
    fast = rate("normalise_phone (fast path)", normalise_phone, numbers)
    rate("normalise_with_carrier", normalise_with_carrier, numbers)
    slow = rate("phonenumbers parse+validate", by_phonenumbers, numbers[: max(1, count // 50)])
    print(f"fast path is {fast / slow:.0f}x phonenumbers")


if __name__ == "__main__":
    main()
