"""The KEMI router's side of the shared state: registrations in the location store, triggers
hashed by the employee.

The script runs with the recording KSR stand-in of conftest.py.
"""

import re
import types
from pathlib import Path

import pytest

from vpbx import decide, wire
from vpbx.loglimit import LogLimiter

REPO = Path(__file__).resolve().parents[2]
KAMAILIO_CFG = REPO / "roles" / "kamailio" / "templates" / "etc" / "kamailio" / "kamailio.cfg.j2"
STORE = "redis://127.0.0.1:6379/1"
PHONE = "127.0.0.10"


def router(script, store=STORE, extensions=("100", "101")):
    """A VpbxRouter with just what these routes read: the edge's settings, the realm, the extensions."""
    edge = script.EdgeSettings(location_store=store, location_retry_after=30)
    r = script.VpbxRouter.__new__(script.VpbxRouter)
    r.wire = wire
    r.edge = edge
    r.signer = script.RouteSigner("k" * 64, 43200)
    r.memory = script.MemoryGuard(0, 5, LogLimiter())
    r.location_store_down = False
    r.realm = "127.0.0.1"
    r.decide = decide
    r.routing = types.SimpleNamespace(extensions={e: f"secret-of-{e}-xyz" for e in extensions})
    return r


def register(ksr, r, user="100"):
    """A REGISTER of `user` from PHONE with the right credentials, through the registrar route."""
    ksr.pvs.update({"$si": PHONE, "$au": user, "$(ct{nameaddr.uri}{uri.host})": PHONE})
    r.is_not_a_phone = lambda host: False
    r.ksr_route_registrar()


# -- triggers hashed by the employee -----------------------------------------------

def test_the_trigger_is_hashed_over_the_employee_set_before_the_engine_is_chosen(script, ksr):
    r = router(script)
    r.ksr_route_scheme_step = lambda did, index: pytest.fail("routed by the scheme")
    r.ksr_route_callback(decide.TriggerCallback(did="+421233000111", caller="+421905111222",
                                                reply_code=486))
    caller_set = ksr.calls.index(("pv.sets", (script.AVP_CALLER, "+421905111222")))
    engine_chosen = ksr.calls.index(("dispatcher.ds_select_dst", (wire.ENGINE_SET, 7)))
    assert caller_set < engine_chosen


def test_the_dispatcher_hashes_the_avp_the_router_sets(script):
    [pvar] = re.findall(r'modparam\("dispatcher", "hash_pvar", "([^"]+)"\)', KAMAILIO_CFG.read_text())
    assert pvar == script.AVP_CALLER


# -- REGISTER and the location store ------------------------------------------------

def test_a_register_the_store_cannot_save_while_it_is_down_gets_503_and_is_logged(script, ksr):
    ksr.answers["registrar.save"] = -1
    ksr.answers["ndb_redis.redis_cmd"] = -1
    register(ksr, router(script))
    assert ksr.called("sl.sl_send_reply") == [(503, "Location Store Unavailable")]
    assert ksr.called("hdr.append_to_reply") == [("Retry-After: 30\r\n",)]
    assert not ksr.called("registrar.reg_send_reply")
    assert f"REGISTER of 100 from {PHONE} not saved: the location store {STORE} does not answer" \
        in ksr.logged()
    # A refused REGISTER does not make its source look registered.
    assert not ksr.called("htable.sht_sets")


def test_a_register_refused_while_the_store_answers_gets_the_registrars_own_reply(script, ksr):
    ksr.answers["registrar.save"] = -1
    ksr.answers["ndb_redis.redis_cmd"] = 1
    register(ksr, router(script))
    assert ksr.called("registrar.reg_send_reply") == [()]
    assert not ksr.called("sl.sl_send_reply")


def test_a_saved_register_is_answered_by_the_registrar_and_its_source_remembered(script, ksr):
    register(ksr, router(script))
    assert ksr.called("registrar.save") == [("location", script.SAVE_NO_REPLY)]
    assert ksr.called("registrar.reg_send_reply") == [()]
    assert ksr.called("htable.sht_sets") == [(wire.REGSRC_TABLE, PHONE, "100")]
    assert not ksr.called("ndb_redis.redis_cmd")


def test_without_a_store_nothing_asks_redis(script, ksr):
    ksr.answers["registrar.save"] = -1
    register(ksr, router(script, store=""))
    assert not ksr.called("ndb_redis.redis_cmd")
    assert ksr.called("registrar.reg_send_reply") == [()]


# -- who registered from where, after a restart or through another edge ----------------

def bindings(ksr, received):
    ksr.answers["registrar.reg_fetch_contacts"] = 1 if received else -1
    ksr.pvs["$(ulc(vpbx_bindings=>count))"] = len(received)
    for i, uri in enumerate(received):
        ksr.pvs[f"$(ulc(vpbx_bindings=>received)[{i}])"] = uri


def test_a_source_bound_in_the_store_is_registered_and_remembered(script, ksr):
    ksr.pvs["$fU"] = "100"
    bindings(ksr, ["sip:127.0.0.99:5060", f"sip:{PHONE}:5060"])
    assert router(script).registered_from(PHONE)
    assert ksr.called("registrar.reg_fetch_contacts") == [("location", "sip:100@127.0.0.1", "vpbx_bindings")]
    assert ksr.called("registrar.reg_free_contacts") == [("vpbx_bindings",)]
    assert ksr.called("htable.sht_sets") == [(wire.REGSRC_TABLE, PHONE, "100")]


def test_a_source_that_claims_an_extension_bound_elsewhere_is_not_registered(script, ksr):
    ksr.pvs["$fU"] = "100"
    bindings(ksr, ["sip:127.0.0.99:5060"])
    assert not router(script).registered_from(PHONE)
    assert not ksr.called("htable.sht_sets")


def test_a_source_claiming_no_extension_costs_no_lookup(script, ksr):
    ksr.pvs["$fU"] = "+421905111222"
    assert not router(script).registered_from(PHONE)
    assert not ksr.called("registrar.reg_fetch_contacts")


def test_received_hosts_reads_the_host_of_each_form(script):
    assert script.received_hosts([
        "sip:192.0.2.7:5060", "sip:192.0.2.8:5062;transport=tcp", "sip:[2001:db8::1]:5060",
        "sip:192.0.2.9", None, "",
    ]) == {"192.0.2.7", "192.0.2.8", "2001:db8::1", "192.0.2.9"}
