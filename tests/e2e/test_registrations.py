"""Registrations outlive Kamailio and live where every edge finds them (usrloc over db_redis).

A phone registers; Kamailio is restarted through its service manager, or
killed outright, and a call to the extension still rings the phone, which
did not register again; the phone itself still calls out. A second edge on
the same store (a Kamailio of the deployed configuration on another address)
rings a phone that registered through the first. The failure case beside
them: with the location store stopped, a REGISTER is refused with 503 while
the edge still answers OPTIONS and routes the carrier's call by the scheme,
and once the store is back phones register and are rung again; the same
when Kamailio is (re)started while the store is down, and then it goes back
to the store by itself once the store answers.

The waits end when what they wait for happens; their limits only bound a failure.
"""

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import sip_options
from test_recovery import kill_outright, runs_again
from vpbx_testing import health, services
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.raw_sip import RawSip, call_as_extension
from vpbx_testing.second_edge import second_edge as run_second_edge
from vpbx_testing.waiting import wait_until

from vpbx import model

EDGE_SETTINGS = Path("/etc/kamailio/vpbx/edge.json")
CALL_TIMEOUT = 30
# Generous: a restarted service is usually back within a second.
BACK_WAIT = 60.0
RESTARTS = ("restart", "kill -9")


@pytest.fixture(scope="module")
def location_store() -> str:
    """The location store's URL as deployed (redis://HOST:PORT/DB); skipped without one."""
    url = json.loads(EDGE_SETTINGS.read_text()).get("location_store")
    if not url:
        pytest.skip("Kamailio keeps its registrations in memory (no kamailio_location_store)")
    return url


@pytest.fixture
def kamailio_log(inventory) -> Callable[[], str]:
    """What Kamailio logs from now on."""
    log = health.kamailio_log_file(inventory)
    since = log.stat().st_size
    return lambda: log.read_bytes()[since:].decode(errors="replace")


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def restart_kamailio(how: str, pbx_address, stranger_ip) -> None:
    if how == "restart":
        services.restart(services.KAMAILIO)
    else:
        killed = kill_outright(services.KAMAILIO)
        wait_until("Kamailio runs again", runs_again(services.KAMAILIO, killed), BACK_WAIT)
    wait_until("Kamailio answers SIP OPTIONS", lambda: health.kamailio_answers(pbx_address, stranger_ip),
               BACK_WAIT)


@pytest.fixture
def second_edge(location_store, pbx_address, tmp_path) -> Iterator[model.HostPort]:
    """Another SIP proxy on the same location store, run for this test only."""
    with run_second_edge(pbx_address, tmp_path) as (edge, _ctl):
        yield edge


def rings_and_one_answers(sipp, phones, ring_step, pbx_address, carrier_ip, did, caller) -> None:
    """The carrier calls the DID; its ring step rings the phones, the first one answers."""
    first, *others = ring_step.extensions
    answering = sipp.start_uas("callee.xml", phones[first].host, phones[first].port,
                               callee_keys("answer", caller=caller), timeout=CALL_TIMEOUT)
    ringing = [sipp.start_uas("callee.xml", phones[ext].host, phones[ext].port,
                              callee_keys("ring"), timeout=CALL_TIMEOUT) for ext in others]
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address), caller_keys(did.number, caller),
                 timeout=CALL_TIMEOUT)
    answering.expect_success()
    for phone in ringing:
        phone.expect_success()


def test_a_registration_is_kept_in_the_location_store_where_every_edge_reads_it(
    location_store, phones,
):
    store = redis.Redis.from_url(location_store, decode_responses=True)
    for extension, address in phones.items():
        bindings = [store.hgetall(key) for key in store.smembers(f"location:usrdom::{extension}")]
        assert f"sip:{address.host}:{address.port}" in [b.get("received") for b in bindings], bindings


@pytest.mark.parametrize("how", RESTARTS)
def test_a_registered_phone_still_rings_after_kamailio_restarts(
    how, location_store, sipp, phones, pbx_address, stranger_ip, carrier_ip, callback_did,
    unlisted_caller, ring_step,
):
    restart_kamailio(how, pbx_address, stranger_ip)
    # Nobody registers again: the bindings come from the store.
    rings_and_one_answers(sipp, phones, ring_step, pbx_address, carrier_ip, callback_did,
                          unlisted_caller)


def test_a_phone_registered_through_one_edge_is_rung_by_a_call_arriving_at_another(
    second_edge, sipp, phones, carrier_ip, callback_did, unlisted_caller, ring_step,
):
    # The phones registered through the deployed edge; the carrier calls the second one.
    rings_and_one_answers(sipp, phones, ring_step, second_edge, carrier_ip, callback_did,
                          unlisted_caller)


def test_a_registered_phone_still_calls_out_after_kamailio_restarts(
    location_store, sipp, lab, phones, pbx_address, stranger_ip,
):
    caller_ext, callee_ext = sorted(phones)[:2]
    restart_kamailio("restart", pbx_address, stranger_ip)
    callee = sipp.start_uas("callee.xml", phones[callee_ext].host, phones[callee_ext].port,
                            callee_keys("busy"), timeout=CALL_TIMEOUT)
    # Challenged as a phone that registered from its address, not refused as a stranger.
    with RawSip(phones[caller_ext].host, pbx_address) as phone:
        assert call_as_extension(phone, caller_ext, lab.extensions[caller_ext], callee_ext) == 486
    callee.expect_success()


def test_while_the_location_store_is_down_registers_get_503_and_calls_still_route_then_phones_register(
    location_store, kamailio_log, sipp, lab, phone_ips, pbx_address, stranger_ip, carrier_ip,
    trunk_port, callback_did, unlisted_caller, ring_step, forward_number,
):
    extension = ring_step.extensions[0]
    password = lab.extensions[extension]
    services.stop(services.REDIS)
    try:
        with RawSip(phone_ips[extension], pbx_address) as phone:
            assert phone.register(extension, password) == 503
        wait_until("Kamailio logs why the REGISTER was refused",
                   lambda: f"the location store {location_store} does not answer; refused with 503"
                   in kamailio_log())
        assert sip_options(pbx_address, stranger_ip) is not None
        # Nobody can be found to ring: the scheme's next step forwards the call out.
        far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                                 callee_keys("answer", user=forward_number), timeout=CALL_TIMEOUT)
        sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                     caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
        far_end.expect_success()
        wait_until("Kamailio logs that nobody could be looked up",
                   lambda: f"{','.join(ring_step.extensions)} taken as not registered" in kamailio_log())
    finally:
        services.start(services.REDIS)
    wait_until("the location store answers", lambda: answers(location_store), BACK_WAIT)

    # The legitimate twin: the phone registers and is rung again.
    ip = phone_ips[extension]
    with RawSip(ip, pbx_address, port=5060) as phone:
        assert phone.register(extension, password) == 200
    try:
        answering = sipp.start_uas("callee.xml", ip, 5060, callee_keys("answer", caller=unlisted_caller),
                                   timeout=CALL_TIMEOUT)
        sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                     caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
        answering.expect_success()
    finally:
        sipp.close()
        with RawSip(ip, pbx_address, port=5060) as phone:
            phone.register(extension, password, expires=0)


def registers(ip: str, pbx_address, extension: str, password: str) -> Callable[[], bool]:
    def check() -> bool:
        with RawSip(ip, pbx_address, port=5060) as phone:
            return phone.register(extension, password) == 200
    return check


def test_kamailio_started_while_the_location_store_is_down_routes_calls_then_goes_back_to_the_store(
    location_store, kamailio_log, sipp, lab, phone_ips, pbx_address, stranger_ip, carrier_ip,
    trunk_port, callback_did, unlisted_caller, ring_step, forward_number,
):
    extension = ring_step.extensions[0]
    password = lab.extensions[extension]
    ip = phone_ips[extension]
    services.stop(services.REDIS)
    try:
        # A boot with the store down: Kamailio starts all the same and answers.
        restart_kamailio("restart", pbx_address, stranger_ip)
        wait_until("Kamailio logs that it started without the location store",
                   lambda: f"started while the location store {location_store} did not answer"
                   in kamailio_log())
        with RawSip(ip, pbx_address) as phone:
            assert phone.register(extension, password) == 503
        wait_until("Kamailio logs why the REGISTER was refused",
                   lambda: f"REGISTER of {extension} from {ip} not saved: Kamailio started while the "
                   f"location store {location_store} did not answer" in kamailio_log())
        # Nobody can be found to ring: the scheme's next step forwards the call out.
        far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                                 callee_keys("answer", user=forward_number), timeout=CALL_TIMEOUT)
        sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                     caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
        far_end.expect_success()
    finally:
        services.start(services.REDIS)
    wait_until("the location store answers", lambda: answers(location_store), BACK_WAIT)

    # Nobody touches Kamailio: it goes back to the store by itself, and the phone registers.
    wait_until("the phone registers again", registers(ip, pbx_address, extension, password),
               BACK_WAIT * 2)
    assert "answers again: Kamailio restarts to use it" in kamailio_log()
    try:
        answering = sipp.start_uas("callee.xml", ip, 5060, callee_keys("answer", caller=unlisted_caller),
                                   timeout=CALL_TIMEOUT)
        sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                     caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
        answering.expect_success()
    finally:
        sipp.close()
        with RawSip(ip, pbx_address, port=5060) as phone:
            phone.register(extension, password, expires=0)
