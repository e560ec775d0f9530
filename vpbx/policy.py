"""The destination policy: may a callback dial the number an employee typed?

Pure: the callback engine asks before any INVITE leaves for a client, so a
premium-rate or foreign number typed on a keypad never costs the company.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers

from vpbx.model import NUMBER_TYPES
from vpbx.numbers import InvalidNumber, country_code_prefix, to_e164

# libphonenumber's number type values back to the names the inventory uses.
_TYPE_NAMES = {value: name for name, value in NUMBER_TYPES.items()}
# libphonenumber cannot tell fixed from mobile in some plans (US, CN...): such a
# number is either, so denying either kind denies it.
_ALSO_DENIED_BY = {"fixed_line_or_mobile": ("fixed_line", "mobile")}
# A keypad has no "+": the international prefix typed as "00" stands for it, for
# every default country (libphonenumber alone would read "00" only where it is the
# region's own international prefix).
_INTERNATIONAL = "00"


@dataclass(frozen=True)
class Allowed:
    e164: str


@dataclass(frozen=True)
class Denied:
    """`reason` is "invalid", "prefix", or the number type denied ("premium_rate"...)."""

    reason: str
    e164: str | None = None


Verdict = Allowed | Denied


def check_destination(
    digits: str,
    country: str,
    allowed_prefixes: Sequence[str],
    denied_types: Sequence[str],
) -> Verdict:
    """Decide on `digits` as typed ("0905123456", "00420601123456").

    National forms are read for `country`. An empty `allowed_prefixes` means the
    default country's own code, the inventory's default: never "anything goes".
    """
    if not isinstance(digits, str) or not digits.isdigit() or not digits.isascii():
        return Denied("invalid")
    if digits.startswith(_INTERNATIONAL):
        digits = "+" + digits[len(_INTERNATIONAL):]
    try:
        e164 = to_e164(digits, country)
    except InvalidNumber:
        return Denied("invalid")
    prefixes = tuple(allowed_prefixes) or (country_code_prefix(country),)
    if not e164.startswith(prefixes):
        return Denied("prefix", e164)
    kind = _TYPE_NAMES.get(phonenumbers.number_type(phonenumbers.parse(e164)), "unknown")
    for name in (kind, *_ALSO_DENIED_BY.get(kind, ())):
        if name in denied_types:
            return Denied(name, e164)
    return Allowed(e164)
