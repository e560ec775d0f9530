"""Every notation of a number comes out as one E.164 string; anything else is not a number."""

import re

import phonenumbers
import pytest

from vpbx.numbers import InvalidNumber, Notations, normalize, to_e164

MOBILE = "+421905123456"
NOTATIONS = [
    "+421905123456",
    "00421905123456",
    "0905 123 456",
    "0905-123-456",
    "0905/123 456",
    "(0905) 123456",
    "421905123456",
    "tel:+421905123456",
    "tel:+421905123456;phone-context=example.com",
    " +421905123456 ",
    "+4210905123456",  # the national trunk 0 kept after the country code
]


@pytest.mark.parametrize("written", NOTATIONS)
def test_a_slovak_number_in_any_notation_is_one_e164_number(written):
    assert to_e164(written, "SK") == MOBILE


def test_normalize_gives_the_e164_form_of_a_number():
    assert normalize("0905 123 456", "SK") == MOBILE


def test_a_foreign_number_with_plus_keeps_its_own_country():
    assert to_e164("+420601123456", "SK") == "+420601123456"


def test_a_national_number_is_read_for_the_default_country():
    assert to_e164("601 123 456", "CZ") == "+420601123456"


def test_the_same_national_digits_are_another_number_in_another_country():
    assert to_e164("601 123 456", "SK") == "+421601123456"


INVALID = [
    pytest.param("", id="empty"),
    pytest.param("abc", id="letters"),
    pytest.param("12", id="too-short"),
    pytest.param("+1", id="country-code-only"),
    pytest.param("0905 12", id="truncated-mobile"),
    pytest.param("anonymous", id="anonymous"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize("raw", INVALID)
def test_normalize_returns_none_for_what_is_not_a_number(raw):
    assert normalize(raw, "SK") is None


@pytest.mark.parametrize("raw", INVALID)
def test_to_e164_refuses_what_is_not_a_number_and_names_the_input(raw):
    with pytest.raises(InvalidNumber, match=re.escape(repr(raw))):
        to_e164(raw, "SK")


def test_an_invalid_number_is_a_value_error_for_callers_that_catch_those():
    assert issubclass(InvalidNumber, ValueError)


def test_national_digits_that_are_no_number_in_the_default_country_are_refused():
    with pytest.raises(InvalidNumber, match=re.escape("'0905 123 456'")):
        to_e164("0905 123 456", "CZ")


# --- the look-up form: read the same way, not checked against the numbering plan ------------------

SK = Notations("SK")


@pytest.mark.parametrize("written", NOTATIONS)
def test_the_look_up_form_of_a_number_in_any_notation_is_its_e164_form(written):
    assert SK.e164(written) == MOBILE


@pytest.mark.parametrize("raw", ["", None, "abc", "anonymous", "+1", "tel:", "0905 12x"])
def test_what_is_not_a_number_has_no_look_up_form(raw):
    assert SK.e164(raw) is None


def test_a_number_the_plan_does_not_assign_still_has_a_look_up_form():
    # Looked up among validated numbers it is simply not found.
    assert normalize("0905 123 4567", "SK") is None
    assert SK.e164("0905 123 4567") == "+4219051234567"


MORE = ["905123456", "+421 905 123 456", "0905 123 4567", "+420601123456"]


@pytest.mark.parametrize("written", [*NOTATIONS, *MORE])
def test_the_look_up_form_is_what_phonenumbers_reads_without_parsing(monkeypatch, written):
    text = written.strip().removeprefix("tel:").split(";")[0]
    reference = phonenumbers.format_number(phonenumbers.parse(text, "SK"), 0)  # 0: E.164

    def unexpected(*args, **kwargs):
        raise AssertionError("phonenumbers parsed a number on the look-up path")

    monkeypatch.setattr(phonenumbers, "parse", unexpected)
    assert SK.e164(written) == reference


@pytest.mark.parametrize(("country", "written", "e164"), [
    ("CZ", "00420601123456", "+420601123456"),
    ("CZ", "601123456", "+420601123456"),  # no trunk prefix in the Czech plan
    ("DE", "030 1234567", "+49301234567"),
    ("DE", "+49030 1234567", "+49301234567"),
])
def test_the_look_up_form_follows_the_default_countrys_prefixes(country, written, e164):
    assert Notations(country).e164(written) == e164
