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


class Notations:
    """The E.164 form of a number written in one of the notations a carrier sends, by string rules.

    For looking a number up among numbers validated already (the DIDs, the
    lists): `+421905123456`, `421905123456`, `00421905123456`, `0905123456`,
    `+4210905123456` (the trunk 0 kept), `tel:` URIs and visual separators all
    give `+421905123456`. The rules are the default country's prefixes, read
    from libphonenumber's metadata once: a look-up costs a few string
    operations and a dict look-up, not a parse (~20 us), so a caller who is not
    on a list costs a dict miss. Whether the numbering plan assigns the number
    is not asked: a form found among valid numbers is valid, one not found is
    not there either way.
    """

    def __init__(self, country: str):
        meta = phonenumbers.PhoneMetadata.metadata_for_region(country)
        self.country_code = country_code_prefix(country)
        self.national_prefix = meta.national_prefix or ""
        # A few regions have a pattern here; their usual prefix is the preferred one.
        international = meta.preferred_international_prefix or meta.international_prefix or "00"
        self.international_prefix = international if international.isdigit() else "00"
        self._trunk_kept = self.country_code + self.national_prefix if self.national_prefix else None

    def e164(self, raw: str | None) -> str | None:
        """The E.164 form of `raw` to look up, or None for what is no number at all."""
        if not raw:
            return None
        text = raw if raw.isdigit() else _digits(raw)
        if text is None:
            return None
        if text[0] == "+":
            if self._trunk_kept and text.startswith(self._trunk_kept):
                return self.country_code + text[len(self._trunk_kept):]
            return text
        if text.startswith(self.international_prefix):
            return "+" + text[len(self.international_prefix):]
        if self.national_prefix and text.startswith(self.national_prefix):
            return self.country_code + text[len(self.national_prefix):]
        if text.startswith(self.country_code[1:]):
            return "+" + text
        return self.country_code + text


def _digits(raw: str) -> str | None:
    """`raw` without `tel:`, URI parameters and visual separators, if what is left is a number."""
    text = raw.strip()
    if text.startswith("tel:"):
        text = text[4:]
    text = text.split(";", 1)[0].translate(_VISUAL)
    digits = text[1:] if text.startswith("+") else text
    return text if digits.isdigit() and len(digits) >= 2 else None


def is_valid_region(country: str) -> bool:
    """True for a two-letter region phonenumbers knows (SK, CZ, ...)."""
    return country in phonenumbers.SUPPORTED_REGIONS


def country_code_prefix(country: str) -> str:
    """The `+CC` prefix of a region: `+421` for SK."""
    return f"+{phonenumbers.country_code_for_region(country)}"
