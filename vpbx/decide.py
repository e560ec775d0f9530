"""The per-INVITE decision: who is calling, which DID, and what to do.

A pure function over plain values so that every row of the decision table is
unit-tested without Kamailio; the KEMI script only reads the message, asks,
and acts. A routing scheme's walk is values too: each step says what to do
(ring these extensions for so long, relay to this URI through the trunk,
reply this code), and `Router.step` which step comes next.

Every action and origin has a `log` text, made when the value is made or
once per DID, so that the router's decision line is one formatted string.
"""

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

import netaddr

from vpbx.model import Config, Did, ForwardStep, RingStep, Step
from vpbx.numbers import Notations, normalize
from vpbx.policy import Allowed, check_destination
from vpbx.when import When


@dataclass(frozen=True)
class FromTrunk:
    """The INVITE came from a trunk's inbound source: its caller ID is trusted.

    `verified`: what the carrier's STIR/SHAKEN verification said of the
    caller ID (TN-Validation-Passed), None when the trunk reports none.
    """

    trunk: str
    verified: bool | None = None

    @property
    def log(self) -> str:
        verified = "" if self.verified is None else f", verified={self.verified}"
        return f"FromTrunk({self.trunk}{verified})"


@dataclass(frozen=True)
class FromExtension:
    """The INVITE came from an extension that passed digest authentication."""

    number: str

    @property
    def log(self) -> str:
        return f"FromExtension({self.number})"


@dataclass(frozen=True)
class FromEngine:
    """The INVITE came from a callback engine: a call-back leg to the employee or the client."""

    log = "FromEngine"


@dataclass(frozen=True)
class FromStranger:
    """Neither a trunk source, an authenticated extension, nor a callback engine."""

    log = "FromStranger"


Origin = FromTrunk | FromExtension | FromEngine | FromStranger


@dataclass(frozen=True)
class Reject:
    """A final reply and nothing else; also a scheme's reject step."""

    code: int
    reason: str
    when: When | None = None
    log: str = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "log", f"Reject(code={self.code}, reason={self.reason})")


@dataclass(frozen=True)
class TriggerCallback:
    """A listed caller on a callback DID: refuse unanswered, the engine calls back."""

    did: str
    caller: str
    reply_code: int

    @property
    def log(self) -> str:
        return f"TriggerCallback(did={self.did}, caller={self.caller}, reply_code={self.reply_code})"


@dataclass(frozen=True)
class Ring:
    """A scheme's step: ring every registered phone of `extensions` for `timeout_ms`."""

    index: int
    extensions: tuple[str, ...]
    timeout_ms: int
    when: When | None = None


@dataclass(frozen=True)
class Forward:
    """A scheme's step: relay the call to `uri`, a number through the trunk."""

    index: int
    uri: str
    when: When | None = None


SchemeStep = Ring | Forward | Reject


@dataclass(frozen=True)
class RouteScheme:
    """Run the DID's routing scheme: `steps` tried in order (Router.step walks them)."""

    did: str
    scheme: str
    steps: tuple[SchemeStep, ...]
    log: str = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "log", f"RouteScheme(did={self.did}, scheme={self.scheme})")


@dataclass(frozen=True)
class RingExtension:
    """An extension dialled an extension."""

    extension: str

    @property
    def log(self) -> str:
        return f"RingExtension(extension={self.extension})"


@dataclass(frozen=True)
class CallOut:
    """A call-back leg out through the trunk, presenting the DID: relayed to `uri`."""

    did: str
    number: str
    uri: str

    @property
    def log(self) -> str:
        return f"CallOut(did={self.did}, number={self.number}, uri={self.uri})"


Action = Reject | TriggerCallback | RouteScheme | RingExtension | CallOut

FORBIDDEN = Reject(403, "Forbidden")
NOT_FOUND = Reject(404, "Not Found")
# What a scheme's reject step answers, with the step's code.
REJECTED_BY_ROUTING = "Rejected By Routing"
# What a DID's lists and anonymous rule answer, with its refuse_code.
REFUSED_BY_LIST = "Caller Refused"
ANONYMITY_DISALLOWED = "Anonymity Disallowed"  # RFC 5079's phrase
WITHHELD_USERS = ("", "anonymous")


def withheld(caller_user: str | None, privacy: str | None) -> bool:
    """The caller withheld their number: no user part, `anonymous`, or Privacy: id (RFC 3323/3325)."""
    if caller_user is None or caller_user.strip().lower() in WITHHELD_USERS:
        return True
    return privacy is not None and "id" in (token.strip().lower() for token in privacy.split(";"))


class Router:
    """The configuration indexed for per-INVITE look-ups."""

    def __init__(self, config: Config):
        self.config = config
        self.trunks = {trunk.name: trunk for trunk in config.trunks}
        # Calls leave through the first trunk: forward steps and call-back legs.
        self.out_trunk = config.trunks[0]
        self.notations = Notations(config.default_country)
        self.walks = {name: self._walk(steps) for name, steps in config.routing_schemes.items()}
        # One action per DID, made once: the scheme's walk and its log text.
        self.schemes = {did.number: RouteScheme(did.number, did.routing, self.walks[did.routing])
                        for did in config.numbers.values()}
        self.timezone = zoneinfo.ZoneInfo(config.timezone)
        self.refusals = {did.number: (Reject(did.refuse_code, REFUSED_BY_LIST),
                                      Reject(did.refuse_code, ANONYMITY_DISALLOWED))
                         for did in config.numbers.values()}
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

    def _walk(self, steps: tuple[Step, ...]) -> tuple[SchemeStep, ...]:
        def value(index: int, step: Step) -> SchemeStep:
            if isinstance(step, RingStep):
                return Ring(index, step.extensions, step.timeout * 1000, step.when)
            if isinstance(step, ForwardStep):
                return Forward(index, self.out_uri(step.number), step.when)
            return Reject(step.code, REJECTED_BY_ROUTING, step.when)

        return tuple(value(i, s) for i, s in enumerate(steps))

    def out_uri(self, number: str) -> str:
        """Where a call to `number` leaving the PBX is relayed: the out trunk."""
        return f"sip:{number}@{self.out_trunk.address}"

    def step(self, did: str | None, index: int, at: float | None = None
             ) -> tuple[int, SchemeStep] | None:
        """The first step from `index` on of the scheme of `did` (an E.164 DID, as the actions
        name it) whose `when:` holds at `at` (epoch seconds; None: now), with its index; None
        when no step is left (the last one was tried) or `did` is no DID. A call walks its
        scheme at the moment it came: the caller keeps `at` for the whole walk."""
        scheme = self.schemes.get(did)
        if scheme is None or index < 0:
            return None
        moment = None
        for i in range(index, len(scheme.steps)):
            step = scheme.steps[i]
            if step.when is None:
                return i, step
            if moment is None:
                moment = self.moment(at)
            if step.when.holds(moment):
                return i, step
        return None

    def moment(self, at: float | None) -> dt.datetime:
        """`at` (epoch seconds; None: now) on the PBX's clock, which `when:` is written in."""
        return dt.datetime.now(self.timezone) if at is None else dt.datetime.fromtimestamp(at, self.timezone)

    def did(self, ruri_user: str | None) -> Did | None:
        return self.config.numbers.get(self.find(ruri_user, self.config.numbers))

    def find(self, user: str | None, known) -> str | None:
        """The number of `known` that `user` is, in any notation, or None.

        `known` holds stored numbers, which vpbx.model validated and wrote in
        E.164: one found as it is needs nothing else; any other is looked up
        by its E.164 form (Notations: string rules, no parse), so a number
        that is not there costs a dict miss.
        """
        if user in known:
            return user
        number = self.notations.e164(user)
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

    def decide(self, origin: Origin, ruri_user: str | None, caller_user: str | None, *,
               withheld: bool = False) -> Action:
        """What to do with an INVITE to `ruri_user` from `caller_user` arriving from `origin`.

        `withheld`: the caller withheld their number (see `withheld()`). A RouteScheme is
        walked by `step()` at the moment the call came.
        """
        if isinstance(origin, FromStranger):
            return FORBIDDEN
        if isinstance(origin, FromEngine):
            return self.call_out(caller_user, ruri_user)
        if isinstance(origin, FromExtension) and ruri_user in self.config.extensions:
            return RingExtension(ruri_user)
        did = self.did(ruri_user)
        if did is None:
            return NOT_FOUND
        if not isinstance(origin, FromTrunk):
            return self.schemes[did.number]
        by_list, anonymity = self.refusals[did.number]
        if withheld and did.anonymous == "reject":
            return anonymity
        # A blacklist refuses whatever the carrier says of the caller: a forged
        # caller ID can only get its sender refused.
        if did.blacklist and self.find(caller_user, self.config.number_lists[did.blacklist]):
            return by_list
        # Caller ID means something only when the carrier asserts it, and is
        # read only when there is a list to find it in: most DIDs have none.
        attested = self.attested(origin)
        listed = self.callback_list(did)
        if listed and attested:
            caller = self.find(caller_user, listed)
            if caller is not None:
                return TriggerCallback(did.number, caller, did.callback.reject_code)
        if did.whitelist and not (
                attested and self.find(caller_user, self.config.number_lists[did.whitelist])):
            return by_list
        return self.schemes[did.number]

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
        leg = CallOut(did.number, number, self.out_uri(number))
        if self.is_listed(did, number):
            return leg
        cb = did.callback
        verdict = check_destination("00" + number[1:], self.config.default_country,
                                    cb.allowed_prefixes, cb.denied_types)
        return leg if isinstance(verdict, Allowed) else FORBIDDEN
