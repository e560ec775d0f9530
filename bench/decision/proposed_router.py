"""The next change to vpbx.decide.Router that bench/RESULTS.md recommends, as a subclass.

vpbx/ itself is not changed by the bench; this lets the bench measure the
change (kemi_decision.py with VPBX_BENCH_KEMI=proposed, and the per-call
cost table) before anyone applies it. Written against vpbx/decide.py as of
commit 1828c1c (Router.e164 finds a stored E.164 number without parsing).

What is left after that fast path, two things:
1. A call to a DID without an enabled callback list still normalizes the
   caller (~20 us of phonenumbers) for nothing: nothing is looked up with
   it. Skip it: that is most calls of a PBX, whose DIDs mostly have no
   callback.
2. A caller who is not on the list costs a full normalize() (parse ~11 us,
   is_valid_number ~6 us) on every call. The answer Router.e164 gives is
   only ever looked up among `known` numbers, which vpbx.model validated
   when it loaded them: a number found there is valid, and one not found
   makes the same decision whether it is valid or not. So the look-up needs
   the E.164 form only: parse and format, no is_valid_number.
The bench's decision check runs against this router too (same replies for
every caller), and so can tests/unit/test_decide.py once it is applied.
"""

# Separators people type in numbers (as vpbx.numbers strips them).
_VISUAL = str.maketrans("", "", " -./()")


def proposed_router(decide):
    """A Router class with the cheaper look-up, built on the given vpbx.decide module."""
    import phonenumbers

    e164_format = phonenumbers.PhoneNumberFormat.E164

    def lookup_form(raw, country):
        """E.164 form of `raw` for a look-up among validated numbers, or None."""
        text = str(raw).strip()
        if text.startswith("tel:"):
            text = text[4:]
        text = text.split(";", 1)[0].translate(_VISUAL)
        if not text or not text.lstrip("+").isdigit():
            return None
        try:
            return phonenumbers.format_number(phonenumbers.parse(text, country), e164_format)
        except phonenumbers.NumberParseException:
            return None

    class ProposedRouter(decide.Router):
        def decide(self, origin, ruri_user, caller_user):
            if isinstance(origin, decide.FromTrunk):
                did = self.did(ruri_user)
                cb = did.callback if did is not None else None
                if did is not None and not (cb is not None and cb.enabled and cb.list is not None):
                    return decide.RouteScheme(did.number, did.routing,
                                              self.config.routing_schemes[did.routing])
            return super().decide(origin, ruri_user, caller_user)

        def e164(self, user, known):
            if not user:
                return None
            if user in known:
                return user
            number = lookup_form(user, self.config.default_country)
            return number if number in known else None

    return ProposedRouter
