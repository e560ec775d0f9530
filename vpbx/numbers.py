"""Telephone numbers in E.164, the one form every comparison uses."""

import phonenumbers

E164 = phonenumbers.PhoneNumberFormat.E164
# Separators people type in numbers; phonenumbers ignores them, SIP users carry them.
_VISUAL = str.maketrans("", "", " -./()")


class InvalidNumber(ValueError):
    """A string that is not a possible telephone number."""


def _parse(raw: str, country: str) -> phonenumbers.PhoneNumber:
    """`raw` as phonenumbers reads it, national forms read for `country`.

    A SIP user may come as a `tel:` URI with `;parameters`; what is left must
    be digits, with a leading `+` or not, once the visual separators are gone.
    """
    text = str(raw).strip()
    if text.startswith("tel:"):
        text = text[4:]
    text = text.split(";", 1)[0].translate(_VISUAL)
    if not text or not all(c.isdigit() for c in text.lstrip("+")):
        raise InvalidNumber(f"{raw!r} is not a telephone number")
    try:
        return phonenumbers.parse(text, country)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"{raw!r} is not a telephone number ({exc})") from None


def to_e164(raw: str, country: str) -> str:
    """Return `raw` as E.164 (`+421905123456`), national forms read for `country`.

    Raises InvalidNumber when the string does not parse or is not a number the
    numbering plan assigns (libphonenumber's metadata): a length check alone
    lets typos through, such as a national number that keeps its trunk `0`.
    """
    parsed = _parse(raw, country)
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(f"{raw!r} is not a valid number in its numbering plan")
    return phonenumbers.format_number(parsed, E164)


def normalize(raw: str | None, country: str) -> str | None:
    """E.164 form of `raw`, or None for anything that is not a number (anonymous, garbage)."""
    if not raw:
        return None
    try:
        return to_e164(raw, country)
    except InvalidNumber:
        return None


def e164_for_lookup(raw: str | None, country: str) -> str | None:
    """E.164 form of `raw` to look up among numbers validated already, or None.

    Read as normalize() reads it, without asking whether the numbering plan
    assigns the number (is_valid_number, a third of normalize's cost): a form
    found among valid numbers is valid, and one not found is not there either
    way. Anything else needs normalize().
    """
    if not raw:
        return None
    try:
        return phonenumbers.format_number(_parse(raw, country), E164)
    except InvalidNumber:
        return None


def is_valid_region(country: str) -> bool:
    """True for a two-letter region phonenumbers knows (SK, CZ, ...)."""
    return country in phonenumbers.SUPPORTED_REGIONS


def country_code_prefix(country: str) -> str:
    """The `+CC` prefix of a region: `+421` for SK."""
    return f"+{phonenumbers.country_code_for_region(country)}"
