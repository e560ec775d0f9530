"""The inventory contract, validated once, as typed configuration.

`load()` takes the `vpbx_*` variables (as the inventory has them, or as the
rendered `routing.json` has them) and returns a `Config`, or raises
`InventoryError` listing every problem, each naming the key path and item.
`dump()` gives the same contract back with numbers in E.164, which is what
the services load: one schema from the admin's YAML to the running router.

Two namespaces meet in an inventory: the contract's keys (`vpbx_…`) and the
roles' own variables (`<role>_…`, e.g. `kamailio_shm_memory`).
`role_variables()` names a variable that takes a role's prefix but is none
of that role's, as `load()` names an unknown `vpbx_…` key.
"""

import difflib
import re
import zoneinfo
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import netaddr
import phonenumbers

from vpbx import when as conditions
from vpbx.numbers import InvalidNumber, country_code_prefix, is_valid_region, to_e164

# The form dump() writes numbers in; see load(rendered=True).
E164_SHAPE = re.compile(r"\+[1-9][0-9]{5,14}")
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]*")
CONTRACT_KEYS = (
    "vpbx_default_country",
    "vpbx_sip_listen",
    "vpbx_trunks",
    "vpbx_number_lists",
    "vpbx_extensions",
    "vpbx_routing_schemes",
    "vpbx_numbers",
    "vpbx_callback_max_concurrent",
    "vpbx_recordings_keep_days",
    "vpbx_timezone",
    "vpbx_api_keys",
)
REQUIRED_KEYS = ("vpbx_default_country", "vpbx_sip_listen", "vpbx_trunks", "vpbx_numbers")
# Keys of one host, not of the PBX: checked across the hosts by hosts(), and
# neither in the Config nor in what dump() writes.
HOST_KEYS = ("vpbx_internal_address",)
# The groups whose hosts are the PBX's own: they alone reach its internal ports.
PBX_GROUPS = ("sip_proxies", "media_relays", "callback_engines", "state_stores")
# A PBX on one host needs no internal address: its parts meet on loopback.
SINGLE_HOST_ADDRESS = "127.0.0.1"
STEP_KINDS = ("ring", "forward", "reject")
LANGUAGES = ("sk", "en")
DEFAULT_RING_TIMEOUT = 20
DEFAULT_CALLBACK_REJECT = 486
DEFAULT_DENIED_TYPES = ("premium_rate", "shared_cost")
# Why a call to the employee's mobile may fail, by the words `retry_on` takes.
# A person who declined (603) said no: calling again is what a fraudster's
# script wants and what the employee does not.
RETRY_CAUSES = ("no_answer", "busy", "declined", "failed")
DEFAULT_RETRY_ON = ("no_answer", "busy")
# Every call-back and every client call is paid for by the PBX: an engine takes
# at most this many callbacks at once (pending ones included).
DEFAULT_CALLBACK_MAX_CONCURRENT = 500
# Days a recording (and a pcap the engine could not convert) is kept before the
# daily job removes it; 0 keeps them forever.
DEFAULT_RECORDINGS_KEEP_DAYS = 90
# Where the office is: a step's `when:` is read on its clock, DST included.
DEFAULT_TIMEZONE = "Europe/Bratislava"
ANONYMOUS_RULES = ("allow", "reject")
# A DID's black or white list, or its anonymous rule, refuses with this:
# 603 Decline says the called party does not want the call, not that it failed.
DEFAULT_REFUSE_CODE = 603
MAX_RECORDINGS_KEEP_DAYS = 36_500
# A PIN shorter than this falls to a script trying them in a day's call-backs.
MIN_PIN_DIGITS = 6
MAX_PIN_DIGITS = 12
# A digest password is all that stands between a scanner and a registered
# phone; shorter ones fall to offline guessing of a sniffed challenge.
MIN_PASSWORD_LENGTH = 12
# libphonenumber's number types by the names an admin writes in YAML.
NUMBER_TYPES = {
    name.lower(): value
    for name, value in vars(phonenumbers.PhoneNumberType).items()
    if name.isupper()
}


# How many errors a refusal lists: the first ones say what is wrong, and a
# list pasted from the wrong column would otherwise print tens of thousands.
ERRORS_LISTED = 20


class InventoryError(ValueError):
    """The inventory breaks the contract; `errors` lists every problem found.

    Its message lists the first `ERRORS_LISTED` of them and counts the rest.
    """

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(error_listing(errors)))


def error_listing(errors: list[str], limit: int = ERRORS_LISTED) -> list[str]:
    """The first `limit` errors, then one line counting the others, if any."""
    listed = errors[:limit]
    rest = len(errors) - len(listed)
    if rest:
        listed.append(f"... and {rest} more error{'s' if rest > 1 else ''} ({len(errors)} in all)")
    return listed


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Trunk:
    name: str
    address: HostPort
    inbound_sources: tuple[str, ...]
    # The header carrying the carrier's STIR/SHAKEN verification (verstat):
    # when set, only callers verified TN-Validation-Passed trigger call-backs.
    attestation_header: str | None = None


@dataclass(frozen=True)
class RingStep:
    extensions: tuple[str, ...]
    timeout: int = DEFAULT_RING_TIMEOUT
    when: conditions.When | None = None


@dataclass(frozen=True)
class ForwardStep:
    number: str
    when: conditions.When | None = None


@dataclass(frozen=True)
class RejectStep:
    code: int
    when: conditions.When | None = None


Step = RingStep | ForwardStep | RejectStep


@dataclass(frozen=True)
class CallbackSettings:
    """A DID's call-back as the inventory sets it (vpbx_numbers[].callback)."""

    enabled: bool
    list: str | None
    record: bool = False
    reject_code: int = DEFAULT_CALLBACK_REJECT
    delay: float = 1.0
    ring_timeout: int = DEFAULT_RING_TIMEOUT
    retries: int = 1
    retry_interval: int = 30
    language: str = "sk"
    prompt: str | None = None
    allowed_prefixes: tuple[str, ...] = ()
    denied_types: tuple[str, ...] = DEFAULT_DENIED_TYPES
    inter_digit_timeout: int = 5
    max_digits: int = 15
    attempts: int = 3
    # Abuse limits: call-backs placed per employee on this DID in a sliding
    # hour and day, and the longest a bridged call may last.
    max_per_hour: int = 20
    max_per_day: int = 100
    max_call_minutes: int = 60
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    # A secret: never logged, never in a CDR, never quoted in an error.
    pin: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Did:
    number: str
    routing: str
    callback: CallbackSettings | None = None
    # Callers refused before anything else, and (when set) the only ones let through.
    blacklist: str | None = None
    whitelist: str | None = None
    anonymous: str = "allow"
    refuse_code: int = DEFAULT_REFUSE_CODE


@dataclass(frozen=True)
class ApiKey:
    """A key of the call-back API (vpbx_api_keys[]): only its token's sha256 is known here."""

    name: str
    token_sha256: str
    dids: frozenset[str]


# A sha256 as hashlib's hexdigest() spells it: one spelling, compared as text.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Config:
    default_country: str
    sip_listen: HostPort
    trunks: tuple[Trunk, ...]
    number_lists: Mapping[str, frozenset[str]]
    extensions: Mapping[str, str]
    routing_schemes: Mapping[str, tuple[Step, ...]]
    numbers: Mapping[str, Did]
    callback_max_concurrent: int = DEFAULT_CALLBACK_MAX_CONCURRENT
    recordings_keep_days: int = DEFAULT_RECORDINGS_KEEP_DAYS
    timezone: str = DEFAULT_TIMEZONE
    api_keys: tuple[ApiKey, ...] = ()


@dataclass
class _Checker:
    """Collects errors while walking the inventory; each names its key path."""

    errors: list[str] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def keys(self, path: str, item: Any, allowed: tuple[str, ...], required: tuple[str, ...]):
        if not isinstance(item, Mapping):
            self.error(path, f"must be a mapping, got {_kind(item)}")
            return False
        for key in item:
            if key not in allowed:
                self.error(f"{path}.{key}", f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in item:
                self.error(f"{path}.{key}", "is required")
        return True

    def items(self, path: str, value: Any) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list, got {_kind(value)}")
            return []
        return value

    def text(self, path: str, value: Any, *, secret: bool = False) -> str | None:
        if isinstance(value, str) and value.strip():
            return value.strip()
        # Errors end up in playbook output and CI logs: a secret is never quoted.
        got = _kind(value) if secret else repr(value)
        self.error(path, f"must be a non-empty string, got {got}")
        return None

    def integer(self, path: str, value: Any, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.error(path, f"must be a whole number from {low} to {high}, got {value!r}")
            return None
        return value

    def number(self, path: str, value: Any, country: str) -> str | None:
        if not isinstance(value, str | int) or isinstance(value, bool):
            self.error(path, f"must be a telephone number as a string, got {value!r}")
            return None
        try:
            return to_e164(str(value), country)
        except InvalidNumber as exc:
            self.error(path, str(exc))
            return None

    def host_port(self, path: str, value: Any) -> HostPort | None:
        text = self.text(path, value)
        if text is None:
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            self.error(path, f"must be IP:PORT ([IPv6]:PORT), got {value!r}")
            return None
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            host = str(netaddr.IPAddress(host))
        except (netaddr.AddrFormatError, ValueError):
            self.error(path, f"{host!r} is not an IP address")
            return None
        return HostPort(host, int(port))

    def unique(self, path: str, name: str | None, seen: dict[str, str]) -> None:
        if name is None:
            return
        if name in seen:
            self.error(path, f"{name!r} is defined twice (first at {seen[name]})")
        else:
            seen[name] = path


def _kind(value: Any) -> str:
    return type(value).__name__


def load(variables: Mapping[str, Any], *, rendered: bool = False) -> Config:
    """Validate the `vpbx_*` variables and return the typed configuration.

    `rendered` is for what `dump()` wrote (routing.json): the controller has
    validated every list number already, so one already in E.164 form is
    taken as it is. Parsing each again would cost a router reload about
    16 us per number, seconds for a list of 100k, in every worker.
    Password rules are checked on the controller only, so that a service
    never refuses a routing.json that a deploy older than a rule left in
    place. A rendered copy may leave `vpbx_extensions` out (callbackd's
    carries no passwords); ring steps are then not checked against it.
    """
    check = _Checker()
    contract = CONTRACT_KEYS + HOST_KEYS
    for key in variables:
        if key.startswith("vpbx_") and key not in contract:
            check.error(key, f"unknown variable{_did_you_mean(key, 'vpbx', contract)} "
                             f"(the contract has: {', '.join(contract)})")
    for key in REQUIRED_KEYS:
        if key not in variables:
            check.error(key, "is required")

    country = variables.get("vpbx_default_country", "")
    if not (isinstance(country, str) and is_valid_region(country)):
        if "vpbx_default_country" in variables:
            check.error("vpbx_default_country", f"{country!r} is not a region code like SK or CZ")
        raise InventoryError(check.errors)

    sip_listen = None
    if "vpbx_sip_listen" in variables:
        sip_listen = check.host_port("vpbx_sip_listen", variables["vpbx_sip_listen"])
    trunks = _trunks(check, variables.get("vpbx_trunks"))
    lists = _number_lists(check, variables.get("vpbx_number_lists"), country, rendered)
    extensions = _extensions(check, variables.get("vpbx_extensions"), enforce_rules=not rendered)
    known = None if rendered and "vpbx_extensions" not in variables else extensions
    schemes = _schemes(check, variables.get("vpbx_routing_schemes"), country, known)
    numbers = _numbers(check, variables.get("vpbx_numbers"), country, lists, schemes)
    max_concurrent = check.integer("vpbx_callback_max_concurrent",
                                   variables.get("vpbx_callback_max_concurrent",
                                                 DEFAULT_CALLBACK_MAX_CONCURRENT), 1, 100_000)
    keep_days = check.integer("vpbx_recordings_keep_days",
                              variables.get("vpbx_recordings_keep_days", DEFAULT_RECORDINGS_KEEP_DAYS),
                              0, MAX_RECORDINGS_KEEP_DAYS)
    timezone = _timezone(check, variables.get("vpbx_timezone", DEFAULT_TIMEZONE))
    api_keys = _api_keys(check, variables.get("vpbx_api_keys"), country, numbers)

    if check.errors:
        raise InventoryError(check.errors)
    return Config(
        default_country=country,
        sip_listen=sip_listen,
        trunks=trunks,
        number_lists=lists,
        extensions=extensions,
        routing_schemes=schemes,
        numbers=numbers,
        callback_max_concurrent=max_concurrent,
        recordings_keep_days=keep_days,
        timezone=timezone,
        api_keys=api_keys,
    )


def _timezone(check: _Checker, value: Any) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        check.error("vpbx_timezone", f"{value!r} is not a time zone like Europe/Bratislava "
                                     "(an IANA name)")
    return value


def role_variables(names: Iterable[str], known: Mapping[str, Collection[str]]) -> list[str]:
    """An error for each of `names` that takes a role's prefix but is none of its variables.

    `known`: each role's name and the variables it has (its defaults and the
    documented ones without a default). A role's variables are
    `<role>_…`; names of no role's prefix (the contract's, Ansible's) are
    not this check's.
    """
    # The longest prefix first: a role named like the start of another's
    # name must not claim the other's variables.
    roles = sorted(known, key=len, reverse=True)
    errors = []
    for name in sorted(names):
        role = next((r for r in roles if name.startswith(f"{r}_")), None)
        if role is not None and name not in known[role]:
            errors.append(f"{name}: unknown variable of role {role}{_did_you_mean(name, role, known[role])}")
    return errors


def _did_you_mean(name: str, prefix: str, known: Iterable[str]) -> str:
    # Compared without the prefix they all share, which would make any two alike.
    tails = {k.removeprefix(f"{prefix}_"): k for k in known}
    close = difflib.get_close_matches(name.removeprefix(f"{prefix}_"), sorted(tails), n=1)
    return f" (did you mean {tails[close[0]]}?)" if close else ""


def hosts(groups: Mapping[str, list[str]], addresses: Mapping[str, Any]) -> dict[str, str]:
    """Each host of the PBX (its groups' hosts) and its internal address.

    `groups`: the inventory's groups ({"sip_proxies": ["edge1", ...], ...});
    `addresses`: each host's `vpbx_internal_address` (absent or None where
    unset). The internal address is where the host's internal ports listen
    (RTPengine's ng, the engine's SIP and DTMF, Redis) and the address the
    other hosts know it by. A PBX on one host may leave it out (loopback);
    on several hosts each host needs its own, and each engine a media relay
    of its own, which reports digits to one engine only (dtmf-log-dest).
    """
    check = _Checker()
    members = list(dict.fromkeys(h for g in PBX_GROUPS for h in groups.get(g) or ()))
    found: dict[str, str] = {}
    seen: dict[str, str] = {}
    for host in members:
        value = addresses.get(host)
        if value is None:
            if len(members) > 1:
                check.error("vpbx_internal_address", f"host {host} has none: on a PBX of several hosts "
                            "each host needs the address the others reach it at")
            else:
                found[host] = SINGLE_HOST_ADDRESS
            continue
        try:
            address = str(netaddr.IPAddress(str(value)))
        except (netaddr.AddrFormatError, ValueError):
            check.error("vpbx_internal_address", f"host {host}: {value!r} is not an IP address")
            continue
        if address in seen:
            check.error("vpbx_internal_address", f"host {host}: {address} is host {seen[address]}'s too")
        seen[address] = host
        found[host] = address
    engines = [h for h in groups.get("callback_engines") or () if h in members]
    relays = [h for h in groups.get("media_relays") or () if h in members]
    if len(set(engines) | set(relays)) > 1 and len(engines) > len(relays):
        check.error("media_relays", f"{len(relays)} media relay(s) for {len(engines)} callback engines: "
                    "each engine needs a media relay of its own (it reports the digits to one engine)")
    if check.errors:
        raise InventoryError(check.errors)
    return found


def _trunks(check: _Checker, value: Any) -> tuple[Trunk, ...]:
    trunks, names = [], {}
    claimed: list[tuple[netaddr.IPNetwork, str]] = []
    for i, item in enumerate(check.items("vpbx_trunks", value)):
        path = f"vpbx_trunks[{i}]"
        if not check.keys(path, item, ("name", "address", "inbound_sources", "attestation_header"),
                          ("name", "address")):
            continue
        attestation = item.get("attestation_header")
        if attestation is not None and not (isinstance(attestation, str)
                                            and HEADER_NAME.fullmatch(attestation)):
            check.error(f"{path}.attestation_header",
                        f"must be a SIP header name like P-Asserted-Identity, got {attestation!r}")
            attestation = None
        name = check.text(f"{path}.name", item.get("name"))
        check.unique(f"{path}.name", name, names)
        address = check.host_port(f"{path}.address", item.get("address"))
        sources = []
        for j, cidr in enumerate(check.items(f"{path}.inbound_sources", item.get("inbound_sources"))):
            spath = f"{path}.inbound_sources[{j}]"
            try:
                network = netaddr.IPNetwork(str(cidr), flags=netaddr.NOHOST)
            except (netaddr.AddrFormatError, ValueError, TypeError):
                check.error(spath, f"{cidr!r} is not a CIDR like 192.0.2.0/24")
                continue
            if network.ip != netaddr.IPNetwork(str(cidr)).ip:
                check.error(spath, f"{cidr!r} has host bits set (did you mean {network.cidr}?)")
                continue
            for other, where in claimed:
                if network in other or other in network:
                    why = ("repeats a source of the same trunk" if where.startswith(f"{path}.")
                           else "a source must belong to one trunk only")
                    check.error(spath, f"{cidr} overlaps {other} at {where}: {why}")
            claimed.append((network, spath))
            sources.append(str(network.cidr))
        if name and address:
            trunks.append(Trunk(name, address, tuple(sources), attestation))
    if not value:
        check.error("vpbx_trunks", "at least one trunk is needed")
    return tuple(trunks)


def _number_lists(
    check: _Checker, value: Any, country: str, rendered: bool
) -> dict[str, frozenset[str]]:
    lists, names = {}, {}
    for i, item in enumerate(check.items("vpbx_number_lists", value)):
        path = f"vpbx_number_lists[{i}]"
        if not check.keys(path, item, ("name", "numbers"), ("name", "numbers")):
            continue
        name = check.text(f"{path}.name", item.get("name"))
        check.unique(f"{path}.name", name, names)
        numbers = set()
        for j, raw in enumerate(check.items(f"{path}.numbers", item.get("numbers"))):
            if rendered and isinstance(raw, str) and E164_SHAPE.fullmatch(raw):
                numbers.add(raw)
                continue
            e164 = check.number(f"{path}.numbers[{j}]", raw, country)
            if e164:
                numbers.add(e164)
        if name:
            lists[name] = frozenset(numbers)
    return lists


def _extensions(check: _Checker, value: Any, *, enforce_rules: bool) -> dict[str, str]:
    extensions, seen = {}, {}
    for i, item in enumerate(check.items("vpbx_extensions", value)):
        path = f"vpbx_extensions[{i}]"
        if not check.keys(path, item, ("number", "password"), ("number", "password")):
            continue
        number = str(item.get("number", "")).strip()
        if not (number.isdigit() and 2 <= len(number) <= 6):
            check.error(f"{path}.number", f"must be 2 to 6 digits, got {item.get('number')!r}")
            number = None
        check.unique(f"{path}.number", number, seen)
        password = check.text(f"{path}.password", item.get("password"), secret=True)
        if password and enforce_rules:
            for problem in password_problems(number, password):
                check.error(f"{path}.password", problem)
        if number and password:
            extensions[number] = password
    return extensions


def password_problems(number: str | None, password: str) -> list[str]:
    """The rules `password` breaks, each said without quoting the password."""
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"must be at least {MIN_PASSWORD_LENGTH} characters long")
    # The extension's number is the first guess of any SIP scanner.
    if number and number in password:
        problems.append(f"must not be or contain the extension number {number!r}")
    if len(set(password)) == 1:
        problems.append("must not be one character repeated")
    return problems


def _schemes(
    check: _Checker, value: Any, country: str, extensions: Mapping[str, str] | None
) -> dict[str, tuple[Step, ...]]:
    schemes, names = {}, {}
    for i, item in enumerate(check.items("vpbx_routing_schemes", value)):
        path = f"vpbx_routing_schemes[{i}]"
        if not check.keys(path, item, ("name", "steps"), ("name", "steps")):
            continue
        name = check.text(f"{path}.name", item.get("name"))
        check.unique(f"{path}.name", name, names)
        raw_steps = check.items(f"{path}.steps", item.get("steps"))
        if "steps" in item and not raw_steps:
            check.error(f"{path}.steps", "needs at least one step")
        steps = [_step(check, f"{path}.steps[{j}]", s, country, extensions)
                 for j, s in enumerate(raw_steps)]
        if name:
            schemes[name] = tuple(s for s in steps if s is not None)
    return schemes


def _step(
    check: _Checker, path: str, item: Any, country: str, extensions: Mapping[str, str] | None
) -> Step | None:
    """One step; `extensions` None means they are not known here (see load)."""
    if not isinstance(item, Mapping):
        check.error(path, f"must be a mapping like {{reject: 480}}, got {_kind(item)}")
        return None
    kinds = [k for k in STEP_KINDS if k in item]
    if len(kinds) != 1:
        check.error(path, f"needs exactly one of {', '.join(STEP_KINDS)}; has keys {sorted(item)}")
        return None
    kind = kinds[0]
    allowed = ("ring", "timeout", "when") if kind == "ring" else (kind, "when")
    if not check.keys(path, item, allowed, (kind,)):
        return None
    when = None
    if "when" in item:
        when = conditions.parse(f"{path}.when", item["when"], check.error)
        if when is None:
            return None
    if kind == "ring":
        targets = []
        for j, ext in enumerate(check.items(f"{path}.ring", item["ring"])):
            ext = str(ext)
            if extensions is not None and ext not in extensions:
                check.error(f"{path}.ring[{j}]", f"no extension {ext!r} in vpbx_extensions")
            targets.append(ext)
        if not targets:
            check.error(f"{path}.ring", "needs at least one extension")
            return None
        timeout = check.integer(f"{path}.timeout", item.get("timeout", DEFAULT_RING_TIMEOUT), 1, 600)
        return RingStep(tuple(targets), timeout or DEFAULT_RING_TIMEOUT, when)
    if kind == "forward":
        number = check.number(f"{path}.forward", item["forward"], country)
        return ForwardStep(number, when) if number else None
    code = check.integer(f"{path}.reject", item["reject"], 400, 699)
    return RejectStep(code, when) if code else None


CALLBACK_KEYS = tuple(f for f in CallbackSettings.__dataclass_fields__)
DID_KEYS = tuple(f for f in Did.__dataclass_fields__)


def _numbers(
    check: _Checker,
    value: Any,
    country: str,
    lists: Mapping[str, frozenset[str]],
    schemes: Mapping[str, tuple[Step, ...]],
) -> dict[str, Did]:
    numbers, seen = {}, {}
    for i, item in enumerate(check.items("vpbx_numbers", value)):
        path = f"vpbx_numbers[{i}]"
        if not check.keys(path, item, DID_KEYS, ("number", "routing")):
            continue
        number = check.number(f"{path}.number", item.get("number"), country)
        check.unique(f"{path}.number", number, seen)
        routing = check.text(f"{path}.routing", item.get("routing"))
        if routing and routing not in schemes:
            check.error(f"{path}.routing", f"no routing scheme named {routing!r} in "
                        f"vpbx_routing_schemes (known: {', '.join(sorted(schemes)) or 'none'})")
        callback = None
        if item.get("callback") is not None:
            callback = _callback(check, f"{path}.callback", item["callback"], country, lists)
        screening = _screening(check, path, item, lists)
        if number and routing:
            numbers[number] = Did(number, routing, callback, **screening)
    return numbers


def _screening(check: _Checker, path: str, item: Mapping, lists: Mapping[str, frozenset[str]]) -> dict:
    """A DID's black and white lists and its anonymous rule, as Did's keyword arguments."""
    out: dict[str, Any] = {}
    for key in ("blacklist", "whitelist"):
        name = item.get(key)
        if name is None:
            continue
        if not isinstance(name, str) or name not in lists:
            check.error(f"{path}.{key}", f"no number list named {name!r} in vpbx_number_lists "
                        f"(known: {', '.join(sorted(lists)) or 'none'})")
        else:
            out[key] = name
    anonymous = item.get("anonymous", "allow")
    if anonymous not in ANONYMOUS_RULES:
        check.error(f"{path}.anonymous", f"must be allow or reject, got {anonymous!r}")
    else:
        out["anonymous"] = anonymous
    code = check.integer(f"{path}.refuse_code", item.get("refuse_code", DEFAULT_REFUSE_CODE), 400, 699)
    if code is not None:
        out["refuse_code"] = code
    return out


def _callback(
    check: _Checker, path: str, item: Any, country: str, lists: Mapping[str, frozenset[str]]
) -> CallbackSettings | None:
    if not check.keys(path, item, CALLBACK_KEYS, ("enabled",)):
        return None
    enabled = item.get("enabled")
    if not isinstance(enabled, bool):
        check.error(f"{path}.enabled", f"must be true or false, got {enabled!r}")
    name = item.get("list")
    if name is not None and not isinstance(name, str):
        check.error(f"{path}.list", f"must be the name of one number list, got {name!r}")
        name = None
    elif name is not None and name not in lists:
        check.error(f"{path}.list", f"no number list named {name!r} in vpbx_number_lists "
                    f"(known: {', '.join(sorted(lists)) or 'none'})")
    elif enabled and name is None:
        check.error(f"{path}.list", "is required when callback is enabled")
    for flag in ("record",):
        if not isinstance(item.get(flag, False), bool):
            check.error(f"{path}.{flag}", f"must be true or false, got {item[flag]!r}")
    language = item.get("language", "sk")
    if language not in LANGUAGES:
        check.error(f"{path}.language", f"must be one of {', '.join(LANGUAGES)}, got {language!r}")
    prefixes = []
    for j, prefix in enumerate(check.items(f"{path}.allowed_prefixes",
                                           item.get("allowed_prefixes"))):
        text = str(prefix)
        if not (text.startswith("+") and text[1:].isdigit()):
            check.error(f"{path}.allowed_prefixes[{j}]", f"must be like +421, got {prefix!r}")
        prefixes.append(text)
    denied = []
    for j, kind in enumerate(check.items(f"{path}.denied_types",
                                         item.get("denied_types", list(DEFAULT_DENIED_TYPES)))):
        if not isinstance(kind, str) or kind not in NUMBER_TYPES:
            check.error(f"{path}.denied_types[{j}]",
                        f"unknown number type {kind!r} (known: {', '.join(NUMBER_TYPES)})")
        denied.append(kind)
    ints = {
        "reject_code": (DEFAULT_CALLBACK_REJECT, 400, 699),
        "ring_timeout": (DEFAULT_RING_TIMEOUT, 5, 120),
        "retries": (1, 0, 5),
        "retry_interval": (30, 1, 600),
        "inter_digit_timeout": (5, 1, 30),
        "max_digits": (15, 3, 15),
        "attempts": (3, 1, 5),
        "max_per_hour": (20, 1, 10_000),
        "max_per_day": (100, 1, 100_000),
        # The warning plays a minute before the end: a shorter call would start with it.
        "max_call_minutes": (60, 2, 1440),
    }
    values = {k: check.integer(f"{path}.{k}", item.get(k, d), lo, hi)
              for k, (d, lo, hi) in ints.items()}
    delay = item.get("delay", 1.0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 60:
        check.error(f"{path}.delay", f"must be seconds from 0 to 60, got {delay!r}")
    prompt = item.get("prompt")
    if prompt is not None:
        check.text(f"{path}.prompt", prompt)
    retry_on = _retry_on(check, f"{path}.retry_on", item.get("retry_on", list(DEFAULT_RETRY_ON)))
    pin = _pin(check, f"{path}.pin", item.get("pin"))
    if None in values.values():
        return None
    return CallbackSettings(
        enabled=bool(enabled),
        list=name,
        record=bool(item.get("record", False)),
        delay=float(delay) if isinstance(delay, int | float) else 1.0,
        language=language,
        prompt=prompt,
        allowed_prefixes=tuple(prefixes) or (country_code_prefix(country),),
        denied_types=tuple(denied),
        retry_on=retry_on,
        pin=pin,
        **values,
    )


def _retry_on(check: _Checker, path: str, value: Any) -> tuple[str, ...]:
    causes = []
    for j, cause in enumerate(check.items(path, value)):
        if not isinstance(cause, str) or cause not in RETRY_CAUSES:
            check.error(f"{path}[{j}]", f"unknown cause {cause!r} (known: {', '.join(RETRY_CAUSES)})")
        elif cause not in causes:
            causes.append(cause)
    return tuple(causes)


def _pin(check: _Checker, path: str, value: Any) -> str | None:
    """The PIN, checked without ever quoting it: errors reach playbook output and CI logs."""
    if value is None:
        return None
    if not isinstance(value, str):
        # YAML reads 012345 as a number and drops the zero: only a quoted PIN is what was meant.
        check.error(path, f"must be digits in quotes, like \"{'0' * MIN_PIN_DIGITS}\", got {_kind(value)}")
        return None
    if not (value.isascii() and value.isdigit() and MIN_PIN_DIGITS <= len(value) <= MAX_PIN_DIGITS):
        check.error(path, f"must be {MIN_PIN_DIGITS} to {MAX_PIN_DIGITS} digits 0-9 (value not shown)")
        return None
    return value


def _api_keys(check: _Checker, value: Any, country: str, numbers: Mapping[str, Did]) -> tuple[ApiKey, ...]:
    keys, names, hashes = [], {}, {}
    for i, item in enumerate(check.items("vpbx_api_keys", value)):
        path = f"vpbx_api_keys[{i}]"
        if not check.keys(path, item, ("name", "token_sha256", "dids"), ("name", "token_sha256", "dids")):
            continue
        name = check.text(f"{path}.name", item.get("name"))
        check.unique(f"{path}.name", name, names)
        digest = item.get("token_sha256")
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            # A token pasted here instead of its hash is a secret: never quoted.
            check.error(f"{path}.token_sha256", "must be the token's sha256, 64 lowercase hex digits "
                        "(value not shown)")
            digest = None
        check.unique(f"{path}.token_sha256", digest, hashes)
        dids = set()
        raw = item.get("dids")
        if not isinstance(raw, list) or not raw:
            check.error(f"{path}.dids", f"must be a non-empty list of DIDs, got {_kind(raw)}")
            raw = []
        for j, entry in enumerate(raw):
            number = check.number(f"{path}.dids[{j}]", entry, country)
            if number is None:
                continue
            did = numbers.get(number)
            if did is None or did.callback is None or not did.callback.enabled:
                check.error(f"{path}.dids[{j}]", f"{number} is no DID of vpbx_numbers with callback enabled")
                continue
            dids.add(number)
        if name and digest and dids:
            keys.append(ApiKey(name, digest, frozenset(dids)))
    return tuple(keys)


def dump(config: Config) -> dict[str, Any]:
    """The contract's variables with every number in E.164: what the services load."""

    def step(s: Step) -> dict[str, Any]:
        when = {} if s.when is None else {"when": conditions.dumped(s.when)}
        if isinstance(s, RingStep):
            return {"ring": list(s.extensions), "timeout": s.timeout, **when}
        if isinstance(s, ForwardStep):
            return {"forward": s.number, **when}
        return {"reject": s.code, **when}

    def did(d: Did) -> dict[str, Any]:
        out: dict[str, Any] = {"number": d.number, "routing": d.routing}
        if d.callback is not None:
            cb = {k: getattr(d.callback, k) for k in CALLBACK_KEYS}
            for key in ("allowed_prefixes", "denied_types", "retry_on"):
                cb[key] = list(cb[key])
            out["callback"] = {k: v for k, v in cb.items() if v is not None}
        out.update({k: getattr(d, k) for k in ("blacklist", "whitelist") if getattr(d, k)})
        out.update(anonymous=d.anonymous, refuse_code=d.refuse_code)
        return out

    return {
        "vpbx_default_country": config.default_country,
        "vpbx_sip_listen": str(config.sip_listen),
        "vpbx_trunks": [
            {"name": t.name, "address": str(t.address), "inbound_sources": list(t.inbound_sources),
             **({"attestation_header": t.attestation_header} if t.attestation_header else {})}
            for t in config.trunks
        ],
        "vpbx_number_lists": [
            {"name": name, "numbers": sorted(numbers)}
            for name, numbers in config.number_lists.items()
        ],
        "vpbx_extensions": [
            {"number": n, "password": p} for n, p in config.extensions.items()
        ],
        "vpbx_routing_schemes": [
            {"name": name, "steps": [step(s) for s in steps]}
            for name, steps in config.routing_schemes.items()
        ],
        "vpbx_numbers": [did(d) for d in config.numbers.values()],
        "vpbx_callback_max_concurrent": config.callback_max_concurrent,
        "vpbx_recordings_keep_days": config.recordings_keep_days,
        "vpbx_timezone": config.timezone,
        "vpbx_api_keys": [
            {"name": k.name, "token_sha256": k.token_sha256, "dids": sorted(k.dids)} for k in config.api_keys
        ],
    }
