"""The per-INVITE decision table: who calls, which number, and what the PBX does."""

import datetime as dt
from zoneinfo import ZoneInfo

import phonenumbers
import pytest

from vpbx import decide
from vpbx.decide import (
    CallOut,
    Forward,
    FromEngine,
    FromExtension,
    FromStranger,
    FromTrunk,
    Reject,
    Ring,
    RingExtension,
    Router,
    RouteScheme,
    TriggerCallback,
)
from vpbx.model import load
from vpbx.numbers import normalize

CALLBACK_DID = "+421233000111"  # callback on, default reply code
STRICT_DID = "+421233000333"  # callback on, reply code 603
CLOSED_DID = "+421233000222"  # callback section present but disabled
PLAIN_DID = "+421233000444"  # no callback section at all
LISTED = "+421905111222"
LISTED_NATIONALLY = "+421905333444"  # written "0905 333 444" in the list
UNLISTED = "+421905999000"

# The schemes' walks: what each step does, the forward step through the first trunk.
OFFICE = (Ring(0, ("100", "101"), 5000), Forward(1, "sip:+421233999888@127.0.0.5:5080"))
CLOSED = (Reject(480, "Rejected By Routing"),)

CARRIER = FromTrunk("carrier")
PHONE = FromExtension("100")
STRANGER = FromStranger()


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(
        load(
            {
                "vpbx_default_country": "SK",
                "vpbx_sip_listen": "127.0.0.1:5060",
                "vpbx_trunks": [
                    {
                        "name": "carrier",
                        "address": "127.0.0.5:5080",
                        "inbound_sources": ["127.0.0.5/32", "2001:db8:5::/48"],
                    },
                    {"name": "backup", "address": "192.0.2.10:5060", "inbound_sources": ["192.0.2.0/24"]},
                ],
                "vpbx_number_lists": [{"name": "sales-mobiles", "numbers": [LISTED, "0905 333 444"]}],
                "vpbx_extensions": [
                    {"number": "100", "password": "unit-desk-a-secret"},
                    {"number": "101", "password": "unit-desk-b-secret"},
                ],
                "vpbx_routing_schemes": [
                    {
                        "name": "office",
                        "steps": [{"ring": ["100", "101"], "timeout": 5}, {"forward": "+421233999888"}],
                    },
                    {"name": "closed", "steps": [{"reject": 480}]},
                ],
                "vpbx_numbers": [
                    {
                        "number": CALLBACK_DID,
                        "routing": "office",
                        "callback": {"enabled": True, "list": "sales-mobiles"},
                    },
                    {
                        "number": STRICT_DID,
                        "routing": "office",
                        "callback": {"enabled": True, "list": "sales-mobiles", "reject_code": 603},
                    },
                    {
                        "number": CLOSED_DID,
                        "routing": "closed",
                        "callback": {"enabled": False, "list": "sales-mobiles"},
                    },
                    {"number": PLAIN_DID, "routing": "office"},
                ],
            }
        )
    )


# --- 1. who may call at all -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ruri", "caller"),
    [
        (CALLBACK_DID, LISTED),
        (CALLBACK_DID, UNLISTED),
        (PLAIN_DID, None),
        ("100", LISTED),
        ("+421999999999", "anonymous"),
        (None, None),
    ],
)
def test_a_stranger_is_forbidden_whatever_it_dials(router, ruri, caller):
    assert router.decide(STRANGER, ruri, caller) == Reject(403, "Forbidden")


# --- 2. a listed caller on a callback DID triggers the callback ---------------------------------------


@pytest.mark.parametrize(
    "caller",
    [
        "+421905111222",
        "00421905111222",
        "0905 111 222",
        "0905-111-222",
        "421905111222",
        "tel:+421905111222",
        "tel:+421905111222;user=phone",
        "+4210905111222",  # the national trunk 0 kept after the country code
    ],
)
def test_a_listed_caller_from_the_trunk_triggers_the_callback_in_any_notation(router, caller):
    assert router.decide(CARRIER, CALLBACK_DID, caller) == TriggerCallback(CALLBACK_DID, LISTED, 486)


def test_a_number_written_nationally_in_the_list_is_matched_by_its_e164_caller(router):
    action = router.decide(CARRIER, CALLBACK_DID, LISTED_NATIONALLY)
    assert action == TriggerCallback(CALLBACK_DID, LISTED_NATIONALLY, 486)


def test_the_trigger_call_is_refused_with_the_dids_configured_code(router):
    assert router.decide(CARRIER, STRICT_DID, LISTED).reply_code == 603


def test_any_trunk_is_trusted_for_caller_id(router):
    action = router.decide(FromTrunk("backup"), CALLBACK_DID, LISTED)
    assert isinstance(action, TriggerCallback)


# --- 3. everything else on a DID runs its routing scheme ----------------------------------------------


def test_an_unlisted_caller_from_the_trunk_is_routed_by_the_scheme(router):
    assert router.decide(CARRIER, CALLBACK_DID, UNLISTED) == RouteScheme(CALLBACK_DID, "office", OFFICE)


def test_a_listed_caller_on_a_did_with_callback_disabled_is_routed_by_the_scheme(router):
    assert router.decide(CARRIER, CLOSED_DID, LISTED) == RouteScheme(CLOSED_DID, "closed", CLOSED)


def test_a_listed_caller_on_a_did_without_callback_is_routed_by_the_scheme(router):
    assert router.decide(CARRIER, PLAIN_DID, LISTED) == RouteScheme(PLAIN_DID, "office", OFFICE)


def test_an_extension_presenting_a_listed_number_is_routed_not_called_back(router):
    # Caller ID is trusted only from a trunk: a phone could claim any From.
    assert router.decide(PHONE, CALLBACK_DID, LISTED) == RouteScheme(CALLBACK_DID, "office", OFFICE)


@pytest.mark.parametrize("caller", ["anonymous", "Anonymous", "", None, "abc", "12", "+1"])
def test_an_anonymous_or_garbage_caller_is_routed_by_the_scheme(router, caller):
    assert router.decide(CARRIER, CALLBACK_DID, caller) == RouteScheme(CALLBACK_DID, "office", OFFICE)


@pytest.mark.parametrize("ruri", ["0233000111", "00421233000111", "421233000111", "02 330 00111"])
def test_a_did_dialled_in_another_notation_is_found(router, ruri):
    assert router.decide(CARRIER, ruri, LISTED) == TriggerCallback(CALLBACK_DID, LISTED, 486)


# --- the look-up decides as the caller's validated E.164 form would -----------------------------------

DIDS = [CALLBACK_DID, STRICT_DID, CLOSED_DID, PLAIN_DID]
CALLERS = [
    LISTED,
    "00421905111222",
    "0905 111 222",
    "tel:+421905111222;user=phone",
    "+4210905111222",
    LISTED_NATIONALLY,
    "0905333444",
    UNLISTED,
    "0905 999 000",
    "tel:+421905999000",
    "+420601123456",
    "0905 111 2222",  # one digit too many: no number at all
    "+421999999999",  # not in the numbering plan
    "anonymous",
    "",
    None,
    "abc",
    "12",
    "+1",
    "tel:",
]


def validated_decision(router: Router, ruri: str, caller: str | None):
    """The reference: validate the caller with normalize(), then look for it on the DID's list."""
    did = router.config.numbers[ruri]
    cb = did.callback
    number = normalize(caller, "SK")
    if cb is not None and cb.enabled and number in router.config.number_lists[cb.list]:
        return TriggerCallback(ruri, number, cb.reject_code)
    return RouteScheme(ruri, did.routing, OFFICE if did.routing == "office" else CLOSED)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("ruri", DIDS)
def test_a_trunk_call_is_decided_as_the_validated_caller_would_decide_it(router, ruri, caller):
    assert router.decide(CARRIER, ruri, caller) == validated_decision(router, ruri, caller)


@pytest.mark.parametrize("ruri", [CLOSED_DID, PLAIN_DID])
def test_a_did_without_a_callback_list_does_not_read_the_caller(router, monkeypatch, ruri):
    def unexpected(*args):
        raise AssertionError("the caller was parsed")

    monkeypatch.setattr(decide.Notations, "e164", unexpected)
    assert isinstance(router.decide(CARRIER, ruri, "0905 111 222"), RouteScheme)


def test_a_caller_is_looked_up_without_the_numbering_plans_validity_check(router, monkeypatch):
    # A number found on a list was validated when the list was loaded.
    def unexpected(*args):
        raise AssertionError("is_valid_number was called")

    monkeypatch.setattr(phonenumbers, "is_valid_number", unexpected)
    assert router.decide(CARRIER, CALLBACK_DID, "0905 111 222") == TriggerCallback(CALLBACK_DID, LISTED, 486)
    assert isinstance(router.decide(CARRIER, CALLBACK_DID, "0905 999 000"), RouteScheme)


# --- extensions and unknown numbers ------------------------------------------------------------------


def test_an_extension_dialling_an_extension_rings_it(router):
    assert router.decide(PHONE, "101", None) == RingExtension("101")


def test_the_trunk_cannot_dial_an_extension(router):
    assert router.decide(CARRIER, "100", LISTED) == Reject(404, "Not Found")


@pytest.mark.parametrize("origin", [CARRIER, PHONE], ids=["trunk", "extension"])
def test_a_number_that_is_no_did_is_not_found(router, origin):
    assert router.decide(origin, "+421233000999", LISTED) == Reject(404, "Not Found")


def test_an_invite_without_a_request_user_is_not_found(router):
    assert router.decide(CARRIER, None, LISTED) == Reject(404, "Not Found")


# --- which trunk a source address belongs to ---------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "trunk"),
    [
        ("127.0.0.5", "carrier"),
        ("192.0.2.77", "backup"),
        ("2001:db8:5::1", "carrier"),
        ("2001:db8:5:ffff::9", "carrier"),
    ],
)
def test_a_source_inside_a_trunks_cidrs_is_that_trunk(router, source, trunk):
    assert router.trunk_for(source) == trunk


@pytest.mark.parametrize("source", ["127.0.0.6", "127.0.0.1", "192.0.3.1", "2001:db8:6::1", "::1"])
def test_a_source_outside_every_cidr_is_no_trunk(router, source):
    assert router.trunk_for(source) is None


@pytest.mark.parametrize("source", ["", "carrier", "127.0.0.5:5080", "999.1.1.1", "127.0.0.5/32"])
def test_a_source_that_is_no_address_is_no_trunk(router, source):
    assert router.trunk_for(source) is None


def test_a_missing_source_is_no_trunk(router):
    assert router.trunk_for(None) is None


def attested_router(header: str | None) -> Router:
    return Router(load({
        "vpbx_default_country": "SK",
        "vpbx_sip_listen": "127.0.0.1:5060",
        "vpbx_trunks": [{"name": "carrier", "address": "127.0.0.5:5080", "inbound_sources": ["127.0.0.5/32"],
                         **({"attestation_header": header} if header else {})}],
        "vpbx_number_lists": [{"name": "staff", "numbers": [LISTED]}],
        "vpbx_routing_schemes": [{"name": "closed", "steps": [{"reject": 480}]}],
        "vpbx_numbers": [{"number": CALLBACK_DID, "routing": "closed",
                          "callback": {"enabled": True, "list": "staff"}}],
    }))


@pytest.mark.parametrize(("verified", "triggers"), [(True, True), (False, False), (None, False)])
def test_a_trunk_that_reports_verification_triggers_only_for_verified_callers(verified, triggers):
    router = attested_router("P-Asserted-Identity")
    action = router.decide(FromTrunk("carrier", verified), CALLBACK_DID, LISTED)
    assert isinstance(action, TriggerCallback if triggers else RouteScheme)


@pytest.mark.parametrize("verified", [True, False, None])
def test_a_trunk_without_verification_triggers_for_every_listed_caller(verified):
    action = attested_router(None).decide(FromTrunk("carrier", verified), CALLBACK_DID, LISTED)
    assert isinstance(action, TriggerCallback)


# --- the scheme's walk: which step, what it does, the trunk it leaves by ------------------------------


def test_the_walk_gives_each_step_of_the_dids_scheme_then_none(router):
    assert [router.step(CALLBACK_DID, i) for i in range(3)] == [*enumerate(OFFICE), None]
    assert router.step(CLOSED_DID, 0) == (0, CLOSED[0])
    assert router.step(CLOSED_DID, 1) is None


@pytest.mark.parametrize(("did", "index"), [("+421233000999", 0), (None, 0), (CALLBACK_DID, -1)])
def test_the_walk_of_no_did_or_no_step_is_none(router, did, index):
    assert router.step(did, index) is None


def test_a_forward_step_and_a_call_back_leg_leave_by_the_first_trunk(router):
    assert router.out_trunk.name == "carrier"
    assert router.decide(FromEngine(), LISTED, CALLBACK_DID) == CallOut(
        CALLBACK_DID, LISTED, "sip:+421905111222@127.0.0.5:5080")


def test_the_decision_line_names_the_action_and_its_fields(router):
    assert router.decide(CARRIER, CALLBACK_DID, LISTED).log == (
        f"TriggerCallback(did={CALLBACK_DID}, caller={LISTED}, reply_code=486)")
    assert router.decide(CARRIER, CLOSED_DID, LISTED).log == f"RouteScheme(did={CLOSED_DID}, scheme=closed)"
    assert router.decide(STRANGER, CALLBACK_DID, LISTED).log == "Reject(code=403, reason=Forbidden)"
    assert FromTrunk("carrier", True).log == "FromTrunk(carrier, verified=True)"
    assert CARRIER.log == "FromTrunk(carrier)"


# --- black and white lists, the anonymous rule ----------------------------------------------------------

BLOCKED = "+421905666777"
SCREENED_DID = "+421233000777"   # callback list and blacklist, anonymous rejected
WHITE_DID = "+421233000888"      # whitelist only: the scheme is for its callers alone


def screening_router(attestation_header: str | None = None) -> Router:
    return Router(load({
        "vpbx_default_country": "SK",
        "vpbx_sip_listen": "127.0.0.1:5060",
        "vpbx_trunks": [{"name": "carrier", "address": "127.0.0.5:5080", "inbound_sources": ["127.0.0.5/32"],
                         **({"attestation_header": attestation_header} if attestation_header else {})}],
        "vpbx_number_lists": [
            {"name": "staff", "numbers": [LISTED, BLOCKED]},
            {"name": "blocked", "numbers": ["0905 666 777"]},
            {"name": "clients", "numbers": [UNLISTED]},
        ],
        "vpbx_routing_schemes": [{"name": "forward", "steps": [{"forward": "+421233999888"}]}],
        "vpbx_numbers": [
            {"number": SCREENED_DID, "routing": "forward", "blacklist": "blocked", "anonymous": "reject",
             "callback": {"enabled": True, "list": "staff"}},
            {"number": WHITE_DID, "routing": "forward", "whitelist": "clients", "refuse_code": 403},
        ],
    }))


def test_a_blacklisted_caller_is_refused_even_when_on_the_callback_list():
    router = screening_router()
    for notation in (BLOCKED, "0905 666 777", "00421905666777"):
        assert router.decide(CARRIER, SCREENED_DID, notation) == Reject(603, "Caller Refused")
    # Beside it, a listed caller who is not blacklisted is still called back.
    assert router.decide(CARRIER, SCREENED_DID, LISTED) == TriggerCallback(SCREENED_DID, LISTED, 486)
    assert isinstance(router.decide(CARRIER, SCREENED_DID, UNLISTED), RouteScheme)


def test_a_blacklist_refuses_a_caller_the_carrier_does_not_vouch_for():
    router = screening_router("P-Asserted-Identity")
    assert router.decide(FromTrunk("carrier", False), SCREENED_DID, BLOCKED) == Reject(603, "Caller Refused")


def test_a_whitelist_lets_its_callers_through_and_refuses_the_rest_with_the_dids_code():
    router = screening_router()
    assert isinstance(router.decide(CARRIER, WHITE_DID, "0905 999 000"), RouteScheme)
    for stranger in (LISTED, "+420601123456", None, "", "garbage"):
        assert router.decide(CARRIER, WHITE_DID, stranger) == Reject(403, "Caller Refused")


def test_a_whitelist_passes_only_callers_a_verifying_carrier_vouched_for():
    router = screening_router("P-Asserted-Identity")
    assert isinstance(router.decide(FromTrunk("carrier", True), WHITE_DID, UNLISTED), RouteScheme)
    assert router.decide(FromTrunk("carrier", False), WHITE_DID, UNLISTED) == Reject(403, "Caller Refused")


def test_a_withheld_caller_is_refused_where_the_rule_says_reject_and_routed_where_allowed():
    router, refused = screening_router(), Reject(603, "Anonymity Disallowed")
    assert router.decide(CARRIER, SCREENED_DID, "anonymous", withheld=True) == refused
    # A listed employee who withholds their number is refused too: there is nobody to call back.
    assert router.decide(CARRIER, SCREENED_DID, LISTED, withheld=True) == refused
    assert router.decide(CARRIER, SCREENED_DID, LISTED) == TriggerCallback(SCREENED_DID, LISTED, 486)
    # The default rule allows: the scheme routes it (the whitelist still applies).
    assert isinstance(screening_router().decide(CARRIER, WHITE_DID, UNLISTED, withheld=True), RouteScheme)


def test_extensions_dialling_a_screened_did_are_not_screened():
    router = screening_router()
    assert isinstance(router.decide(PHONE, WHITE_DID, "100", withheld=True), RouteScheme)


@pytest.mark.parametrize(("user", "privacy", "is_withheld"), [
    ("anonymous", None, True),
    ("Anonymous", None, True),
    ("", None, True),
    (None, None, True),
    ("+421905111222", "id", True),
    ("+421905111222", "header; id", True),
    ("+421905111222", "none", False),
    ("+421905111222", "header", False),
    ("+421905111222", None, False),
    ("+421905111222", "idx", False),
])
def test_a_caller_is_withheld_by_user_part_or_privacy_id(user, privacy, is_withheld):
    assert decide.withheld(user, privacy) is is_withheld


# --- steps with `when:` ---------------------------------------------------------------------------------

HOURS_DID = "+421233000999"


def hours_router() -> Router:
    return Router(load({
        "vpbx_default_country": "SK",
        "vpbx_sip_listen": "127.0.0.1:5060",
        "vpbx_trunks": [{"name": "carrier", "address": "127.0.0.5:5080",
                         "inbound_sources": ["127.0.0.5/32"]}],
        "vpbx_extensions": [{"number": "100", "password": "unit-desk-a-secret"}],
        "vpbx_routing_schemes": [{"name": "office", "steps": [
            {"reject": 480, "when": {"dates": ["12-24", "12-25"]}},
            {"ring": ["100"], "timeout": 20, "when": {"days": "mon-fri", "hours": "08:00-17:00"}},
            {"forward": "+421233999888", "when": {"hours": "17:00-22:00"}},
        ]}],
        "vpbx_numbers": [{"number": HOURS_DID, "routing": "office"}],
    }))


def epoch(local: str) -> float:
    return dt.datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Europe/Bratislava")).timestamp()


@pytest.mark.parametrize(("moment", "expected"), [
    ("2026-12-07 09:00", [1]),        # Monday in office hours: ring, and nothing after it
    ("2026-12-07 18:00", [2]),        # Monday evening: forward
    ("2026-12-07 23:00", []),         # Monday night: no step holds
    ("2026-12-12 09:00", []),         # Saturday morning
    ("2026-12-24 09:00", [0, 1]),     # Christmas Eve (a Thursday): the reject step first
])
def test_a_walk_skips_the_steps_whose_condition_does_not_hold_at_the_calls_moment(moment, expected):
    router, at = hours_router(), epoch(moment)
    walked, found = [], router.step(HOURS_DID, 0, at)
    while found is not None:
        walked.append(found[0])
        found = router.step(HOURS_DID, found[0] + 1, at)
    holding = [i for i in range(3) if router.schemes[HOURS_DID].steps[i].when.holds(router.moment(at))]
    assert walked == expected == holding


def test_a_call_keeps_its_moment_for_the_whole_walk():
    # A call that came at 16:59:59 fails its ring step at 17:00:19: its next step is read at 16:59:59.
    router, came = hours_router(), epoch("2026-12-07 16:59:59")
    assert router.step(HOURS_DID, 0, came)[0] == 1
    assert router.step(HOURS_DID, 2, came) is None
    assert router.step(HOURS_DID, 2, epoch("2026-12-07 17:00:19"))[0] == 2


def test_the_walk_is_read_on_the_pbxs_clock_not_utc():
    router = hours_router()
    utc_nine = dt.datetime(2026, 12, 7, 7, 30, tzinfo=dt.UTC).timestamp()   # 08:30 in Bratislava
    assert router.step(HOURS_DID, 0, utc_nine)[0] == 1
