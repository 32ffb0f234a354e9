"""Sizes and durations as humans write them in image.toml and policies (kernel/units.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentlibos.errors import InvalidArgument
from agentlibos.kernel.units import format_duration, format_size, parse_duration, parse_size

# ------------------------------------------------------------------------ parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256MiB", 256 << 20),
        ("256mib", 256 << 20),
        ("1KiB", 1024),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        ("1K", 1000),
        ("1kb", 1000),
        ("1M", 1_000_000),
        ("1MB", 1_000_000),
        ("1G", 1_000_000_000),
        ("1T", 1_000_000_000_000),
        ("4096", 4096),
        ("4096B", 4096),
        ("  10 MiB  ", 10 << 20),
        ("1.5G", 1_500_000_000),
        ("0.5KiB", 512),
        ("0", 0),
    ],
)
def test_a_size_string_is_parsed_into_bytes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_a_plain_int_is_a_size_in_bytes() -> None:
    assert parse_size(1234) == 1234
    assert parse_size(0) == 0


def test_a_decimal_size_is_exact_and_not_rounded_down_by_float_error() -> None:
    # 2.01 * 10**6 is 2009999.9999999998 in binary floating point.
    assert parse_size("2.01MB") == 2_010_000
    assert parse_size("4.35MB") == 4_350_000


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=99),
    st.sampled_from(["K", "KB", "KiB", "M", "MB", "MiB", "G", "GB", "GiB"]),
)
def test_a_decimal_size_equals_its_exact_rational_value_truncated(
    whole: int, cents: int, unit: str
) -> None:
    factor = {"K": 1000, "KB": 1000, "KiB": 1024, "M": 10**6, "MB": 10**6, "MiB": 1 << 20,
              "G": 10**9, "GB": 10**9, "GiB": 1 << 30}[unit]
    text = f"{whole}.{cents:02d}{unit}"
    assert parse_size(text) == int(Fraction(f"{whole}.{cents:02d}") * factor)


def test_a_huge_size_is_a_clear_refusal_not_an_overflow_crash() -> None:
    # Past what the store's 64-bit integers hold: said so, before it reaches SQLite.
    with pytest.raises(InvalidArgument, match="more than 8 EiB"):
        parse_size("9" * 400 + "TiB")
    assert parse_size("7TiB") == 7 << 40


@pytest.mark.parametrize(
    "value",
    ["lots", "", "MiB", "-1", "-1MiB", "1 0MiB", "1e3", "1,5G", "10 parsecs", "0x10", "1.KiB"],
)
def test_an_unparseable_size_string_is_an_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument, match="cannot parse"):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False, 1.5, None, [1], {"a": 1}])
def test_a_size_of_the_wrong_type_is_an_invalid_argument(value: object) -> None:
    with pytest.raises(InvalidArgument, match="expected a size"):
        parse_size(value)


def test_a_negative_int_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="must not be negative"):
        parse_size(-1)


def test_a_size_error_names_what_was_being_parsed() -> None:
    with pytest.raises(InvalidArgument, match=r"^\[limits\] memory: "):
        parse_size("lots", what="[limits] memory")


# -------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", 600.0),
        ("10min", 600.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("30", 30.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        (" 2 S ", 2.0),
        ("0", 0.0),
    ],
)
def test_a_duration_string_is_parsed_into_seconds(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


def test_a_plain_number_is_a_duration_in_seconds() -> None:
    assert parse_duration(5) == 5.0
    assert parse_duration(0.25) == 0.25
    assert isinstance(parse_duration(5), float)


@pytest.mark.parametrize("value", ["soon", "", "m", "-1s", "10y", "1e3s", "10 m s"])
def test_an_unparseable_duration_string_is_an_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument, match="cannot parse"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, None, [1], {"s": 1}])
def test_a_duration_of_the_wrong_type_is_an_invalid_argument(value: object) -> None:
    with pytest.raises(InvalidArgument, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_a_negative_numeric_duration_is_refused(value: float) -> None:
    with pytest.raises(InvalidArgument, match="must not be negative"):
        parse_duration(value)


def test_a_duration_error_names_what_was_being_parsed() -> None:
    with pytest.raises(InvalidArgument, match=r"^\[limits\] wall: "):
        parse_duration("soon", what="[limits] wall")


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (256 << 20, "256MiB"),
        (1 << 30, "1GiB"),
        (3 << 30, "3GiB"),
        (1024, "1KiB"),
        (1536, "1536B"),  # not a whole KiB: stays exact rather than "1.5KiB"
        ((1 << 20) + 1024, "1025KiB"),
        (1000, "1000B"),
        (0, "0B"),
    ],
)
def test_a_size_is_formatted_in_the_largest_exact_binary_unit(n: int, expected: str) -> None:
    assert format_size(n) == expected


@given(st.integers(min_value=0, max_value=1 << 50))
def test_a_formatted_size_parses_back_to_the_same_number_of_bytes(n: int) -> None:
    assert parse_size(format_size(n)) == n


@pytest.mark.parametrize(
    ("s", "expected"),
    [(600.0, "10m"), (7200.0, "2h"), (3600.0, "1h"), (90.0, "90s"), (0.5, "0.5s"), (0.0, "0s")],
)
def test_a_duration_is_formatted_in_the_largest_exact_unit(s: float, expected: str) -> None:
    assert format_duration(s) == expected


@given(st.integers(min_value=0, max_value=10**9))
def test_a_formatted_whole_number_of_seconds_parses_back_exactly(s: int) -> None:
    text = format_duration(float(s))
    assert parse_duration(text) == float(s), text


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=1, max_value=999))
def test_a_formatted_duration_with_milliseconds_parses_back_exactly(s: int, ms: int) -> None:
    value = float(f"{s}.{ms:03d}")
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "inf",
                                   "infs", "nanms", "1e999s", "NaNMiB", "infGiB", "1e999"])
def test_non_finite_sizes_and_durations_are_refused(value: object) -> None:
    # A NaN deadline once stopped every timer in the supervisor; none may come from here.
    with pytest.raises(InvalidArgument):
        parse_duration(value)
    with pytest.raises(InvalidArgument):
        parse_size(value)
