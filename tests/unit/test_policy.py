"""What an employee types on the keypad, and whether the PBX may dial it."""

import pytest

from vpbx.model import DEFAULT_DENIED_TYPES
from vpbx.policy import Allowed, Denied, check_destination

SK_ONLY = ("+421",)


def check(digits, allowed=SK_ONLY, denied=DEFAULT_DENIED_TYPES, country="SK"):
    return check_destination(digits, country, allowed, denied)


def test_a_slovak_mobile_typed_nationally_is_allowed():
    assert check("0905123456") == Allowed("+421905123456")


def test_a_slovak_mobile_typed_with_00_is_allowed():
    assert check("00421905123456") == Allowed("+421905123456")


def test_a_slovak_landline_is_allowed():
    assert check("0233000111") == Allowed("+421233000111")


def test_a_premium_rate_number_is_denied():
    assert check("0900123456") == Denied("premium_rate", "+421900123456")


def test_a_shared_cost_number_is_denied():
    assert check("0850123456") == Denied("shared_cost", "+421850123456")


def test_denied_types_come_from_the_settings():
    assert check("0900123456", denied=()) == Allowed("+421900123456")
    assert check("0800123456", denied=("toll_free",)) == Denied("toll_free", "+421800123456")


def test_a_foreign_number_is_denied_by_the_default_prefix():
    assert check("00420601123456") == Denied("prefix", "+420601123456")


def test_a_foreign_number_is_allowed_when_its_prefix_is_listed():
    assert check("00420601123456", allowed=("+421", "+420")) == Allowed("+420601123456")


def test_no_allowed_prefixes_means_the_default_country_only():
    assert check("0905123456", allowed=()) == Allowed("+421905123456")
    assert check("00420601123456", allowed=()) == Denied("prefix", "+420601123456")


def test_a_foreign_premium_number_is_denied_for_its_type_when_its_prefix_is_allowed():
    assert check("00420900123456", allowed=("+420",)) == Denied("premium_rate", "+420900123456")


def test_00_means_international_whatever_the_default_country():
    # The US international prefix is 011; a keypad user still types 00.
    assert check("00421905123456", allowed=SK_ONLY, country="US") == Allowed("+421905123456")


def test_a_number_that_may_be_fixed_or_mobile_is_denied_when_mobiles_are():
    assert check("2015550123", allowed=("+1",), denied=("mobile",), country="US") == Denied(
        "mobile", "+12015550123"
    )


@pytest.mark.parametrize(
    "digits",
    [
        pytest.param("", id="empty"),
        pytest.param("12", id="too-short"),
        pytest.param("0905", id="truncated"),
        pytest.param("09051234567", id="one-digit-too-many"),
        pytest.param("00", id="international-prefix-only"),
        pytest.param("999999999999999", id="garbage-digits"),
        pytest.param("0905*123456", id="star"),
        pytest.param("+421905123456", id="plus-is-not-on-a-keypad"),
        pytest.param("0905 123 456", id="spaces"),
        pytest.param("٠٩٠٥١٢٣٤٥٦", id="non-ascii-digits"),
        pytest.param(None, id="none"),
    ],
)
def test_what_is_not_a_valid_number_is_denied_as_invalid(digits):
    assert check(digits) == Denied("invalid")
