"""The per-INVITE decision: who is calling, which DID, and what to do.

A pure function over plain values so that every row of the decision table is
unit-tested without Kamailio; the KEMI script only reads the message, asks,
and acts.
"""

from dataclasses import dataclass

import netaddr

from vpbx.model import Config, Did, Step
from vpbx.numbers import e164_for_lookup, normalize
from vpbx.policy import Allowed, check_destination


@dataclass(frozen=True)
class FromTrunk:
    """The INVITE came from a trunk's inbound source: its caller ID is trusted.

    `verified`: what the carrier's STIR/SHAKEN verification said of the
    caller ID (TN-Validation-Passed), None when the trunk reports none.
    """

    trunk: str
    verified: bool | None = None


@dataclass(frozen=True)
class FromExtension:
    """The INVITE came from an extension that passed digest authentication."""

    number: str


@dataclass(frozen=True)
class FromEngine:
    """The INVITE came from a callback engine: a call-back leg to the employee or the client."""


@dataclass(frozen=True)
class FromStranger:
    """Neither a trunk source, an authenticated extension, nor a callback engine."""


Origin = FromTrunk | FromExtension | FromEngine | FromStranger


@dataclass(frozen=True)
class Reject:
    code: int
    reason: str


@dataclass(frozen=True)
class TriggerCallback:
    """A listed caller on a callback DID: refuse unanswered, the engine calls back."""

    did: str
    caller: str
    reply_code: int


@dataclass(frozen=True)
class RouteScheme:
    """Run the DID's routing scheme, steps tried in order."""

    did: str
    scheme: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class RingExtension:
    """An extension dialled an extension."""

    extension: str


@dataclass(frozen=True)
class CallOut:
    """A call-back leg out through the trunk, presenting the DID."""

    did: str
    number: str


Action = Reject | TriggerCallback | RouteScheme | RingExtension | CallOut

FORBIDDEN = Reject(403, "Forbidden")
NOT_FOUND = Reject(404, "Not Found")


class Router:
    """The configuration indexed for per-INVITE look-ups."""

    def __init__(self, config: Config):
        self.config = config
        self.trunks = {trunk.name: trunk for trunk in config.trunks}
        self._sources = [
            (netaddr.IPNetwork(cidr), trunk.name)
            for trunk in config.trunks
            for cidr in trunk.inbound_sources
        ]

    def trunk_for(self, source_ip: str) -> str | None:
        """The trunk whose inbound sources hold `source_ip`, if any."""
        try:
            address = netaddr.IPAddress(source_ip)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            return None
        for network, name in self._sources:
            if address in network:
                return name
        return None

    def did(self, ruri_user: str | None) -> Did | None:
        return self.config.numbers.get(self.find(ruri_user, self.config.numbers))

    def find(self, user: str | None, known) -> str | None:
        """The number of `known` that `user` is, in any notation, or None.

        `known` holds stored numbers, which vpbx.model validated and wrote in
        E.164: one found as it is needs no parsing, which skips phonenumbers
        (~20 us) for the carrier's usual notation. Any other is looked up by
        its E.164 form alone, without the validity check: see e164_for_lookup.
        """
        if user in known:
            return user
        number = e164_for_lookup(user, self.config.default_country)
        return number if number in known else None

    def callback_list(self, did: Did) -> frozenset[str] | None:
        """The callers whose calls to `did` trigger its callback; None when it has no callback on."""
        cb = did.callback
        if cb is None or not cb.enabled or cb.list is None:
            return None
        return self.config.number_lists.get(cb.list, frozenset())

    def is_listed(self, did: Did, caller: str | None) -> bool:
        listed = self.callback_list(did)
        return listed is not None and caller is not None and caller in listed

    def decide(self, origin: Origin, ruri_user: str | None, caller_user: str | None) -> Action:
        """What to do with an INVITE to `ruri_user` from `caller_user` arriving from `origin`."""
        if isinstance(origin, FromStranger):
            return FORBIDDEN
        if isinstance(origin, FromEngine):
            return self.call_out(caller_user, ruri_user)
        if isinstance(origin, FromExtension) and ruri_user in self.config.extensions:
            return RingExtension(ruri_user)
        did = self.did(ruri_user)
        if did is None:
            return NOT_FOUND
        # Caller ID means something only when the carrier asserts it, and is
        # read only when there is a list to find it in: most DIDs have none.
        listed = self.callback_list(did) if isinstance(origin, FromTrunk) else None
        if listed and self.attested(origin):
            caller = self.find(caller_user, listed)
            if caller is not None:
                return TriggerCallback(did.number, caller, did.callback.reject_code)
        return RouteScheme(did.number, did.routing, self.config.routing_schemes[did.routing])

    def attested(self, origin: FromTrunk) -> bool:
        """A trunk that reports verification triggers call-backs only for verified caller IDs."""
        trunk = self.trunks.get(origin.trunk)
        return trunk is None or trunk.attestation_header is None or origin.verified is True

    def call_out(self, did_user: str | None, ruri_user: str | None) -> Action:
        """A leg the engine places: to a listed employee, or to a client the policy allows.

        The engine checks this itself; the edge checks again so that nothing
        but these two kinds of call ever leaves through the trunk.
        """
        did = self.did(did_user)
        number = normalize(ruri_user, self.config.default_country)
        if did is None or did.callback is None or not did.callback.enabled or number is None:
            return FORBIDDEN
        if self.is_listed(did, number):
            return CallOut(did.number, number)
        cb = did.callback
        verdict = check_destination("00" + number[1:], self.config.default_country,
                                    cb.allowed_prefixes, cb.denied_types)
        return CallOut(did.number, number) if isinstance(verdict, Allowed) else FORBIDDEN
