"""A crash mends itself: each service killed outright comes back by itself, and works.

The attack is the crash: SIGKILL to the service's main process, the pid its
service manager reports (systemd's MainPID, supervisord's pid), so that
nothing gets to clean up. Its legitimate twin is the call placed right after
it, which goes through as if nothing had happened. Under systemd the units
restart the service (Restart=always), elsewhere supervisord does
(autorestart); these tests only ask the manager which pid to kill.

How soon each service is back is measured in bench/recovery.py, not here:
the waits below end when the service answers and only bound a failure.
"""

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_callback import far_end_keys, media_of
from test_limits import CDR_FILE, ENGINE_LOG, Cdrs, Tail, wait_until_the_edge_hands_triggers_to_the_engine
from vpbx_testing import health, services
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap
from vpbx_testing.waiting import wait_until
from vpbx_testing.wire import Capture, rtp_streams

from callbackd import store
from vpbx import model

KAMAILIO_PIDFILE = Path("/run/kamailio/kamailio.pid")
KAMAILIO_USER = "kamailio"
# Generous: each wait ends when the service answers; this only bounds a failure.
RECOVERY_WAIT = 30.0
CALL_TIMEOUT = 30
# Trigger, delay, prompt, the wait for digits: a call-back nobody answers by keys.
CALLBACK_TIMEOUT = 40
CALLBACKD_SETTINGS = Path("/etc/vpbx/callbackd.json")
# Redis writes its append-only file once a second (state_store_appendfsync).
APPEND_FSYNC_S = 2.0
# The bridged call of the engine's crash: the employee hangs up this long
# after answering, well after the engine is back; the tones outlast it.
BRIDGED_HOLD_MS = 25_000
TONE_S = 40
FLOW_TIMEOUT = 90
EMPLOYEE_SSRC = 0xE1E1E1E1
CLIENT_SSRC = 0xC2C2C2C2
CLIENT_NUMBER = "0905123456"
# How much of the resumed call's media is captured: a few dozen packets each way.
MEDIA_SAMPLE_S = 2.0
CLIENT_E164 = "+421905123456"


def kill_outright(name: str) -> int:
    """SIGKILL to the main process of `name`; its pid."""
    pid = services.main_pid(name)
    assert pid, f"{name} does not run"
    os.kill(pid, signal.SIGKILL)
    return pid


def runs_again(name: str, killed: int) -> Callable[[], bool]:
    def check() -> bool:
        pid = services.main_pid(name)
        return pid is not None and pid != killed
    return check


def stray_kamailios() -> list[int]:
    """Kamailio processes that are neither the running main process nor its workers."""
    main = services.main_pid(services.KAMAILIO)
    out = subprocess.run(["pgrep", "-u", KAMAILIO_USER, "-x", "kamailio"],
                         capture_output=True, text=True, check=False).stdout.split()
    strays = []
    for pid in map(int, out):
        try:
            state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        # A zombie holds no socket and takes no request; its reaper is PID 1's business.
        if state != "Z" and main not in (pid, int(parent)):
            strays.append(pid)
    return strays


def a_call_goes_through(sipp, pbx_address, carrier_ip, trunk_port, did: model.Did, caller: str,
                        forward_number: str, media_relay_ip: str) -> None:
    """The carrier's call from an unlisted caller is forwarded by the scheme, its media on RTPengine."""
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number, media=media_relay_ip),
                             timeout=CALL_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address), caller_keys(did.number, caller),
                 timeout=CALL_TIMEOUT)
    far_end.expect_success()


@pytest.fixture
def call_goes_through(sipp, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller,
                      forward_number, media_relay_ip) -> Callable[[], None]:
    return lambda: a_call_goes_through(sipp, pbx_address, carrier_ip, trunk_port, callback_did,
                                       unlisted_caller, forward_number, media_relay_ip)


@pytest.fixture
def listed_caller_is_called_back(sipp, pbx_address, carrier_ip, trunk_port, callback_did,
                                 listed_caller) -> Callable[[], None]:
    """A listed caller's trigger is refused unanswered and the employee's mobile is called back."""
    def called_back() -> None:
        employee = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                                  callee_keys("answer", user=listed_caller, caller=callback_did.number),
                                  timeout=CALLBACK_TIMEOUT)
        keys = caller_keys(callback_did.number, listed_caller)
        keys["code"] = callback_did.callback.reject_code
        sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys, timeout=CALL_TIMEOUT)
        employee.expect_success()
    return called_back


def test_killed_kamailio_comes_back_alone_answers_sip_and_a_call_goes_through(
    pbx_address, stranger_ip, call_goes_through,
):
    killed = kill_outright(services.KAMAILIO)
    wait_until("Kamailio runs again", runs_again(services.KAMAILIO, killed))
    # The killed main process's workers go too: none is left taking requests
    # beside the new instance's.
    wait_until("no worker of the killed Kamailio is left", lambda: not stray_kamailios())
    wait_until("Kamailio answers SIP OPTIONS", lambda: health.kamailio_answers(pbx_address, stranger_ip))
    assert int(KAMAILIO_PIDFILE.read_text().split()[0]) == services.main_pid(services.KAMAILIO)
    call_goes_through()


def test_killed_rtpengine_comes_back_answers_ng_and_a_call_goes_through_with_media(call_goes_through):
    ng = health.project_address("rtpengine_ng_listen")
    killed = kill_outright(services.RTPENGINE)
    wait_until("RTPengine runs again", runs_again(services.RTPENGINE, killed))
    wait_until(f"RTPengine answers an ng ping at {ng}", lambda: health.rtpengine_answers(ng))
    call_goes_through()


def test_killed_callbackd_comes_back_answers_the_edge_and_calls_the_employee_back(
    pbx_address, listed_caller_is_called_back, call_goes_through,
):
    engine = health.project_address("callbackd_sip_listen")
    killed = kill_outright(services.CALLBACKD)
    wait_until("callbackd runs again", runs_again(services.CALLBACKD, killed))
    wait_until(f"callbackd answers the edge's OPTIONS at {engine}",
               lambda: health.callbackd_answers(engine, pbx_address))
    wait_until_the_edge_hands_triggers_to_the_engine(pbx_address)
    # The listed caller's trigger is handed to the engine again, which calls back.
    listed_caller_is_called_back()
    call_goes_through()


def test_killed_rsyslog_comes_back_and_writes_kamailios_next_decisions(
    inventory, lab, pbx_address, carrier_ip, callback_did, unlisted_caller, call_goes_through,
):
    log = health.kamailio_log_file(inventory)
    number = health.not_a_did(lab)
    killed = kill_outright(services.RSYSLOG)
    wait_until("rsyslog runs again", runs_again(services.RSYSLOG, killed))
    since = log.stat().st_size
    probes: list[str] = []

    def next_decision_logged() -> bool:
        # A decision Kamailio logs while rsyslog is still starting is lost;
        # the next one must be written.
        probes.append(health.send_decision_probe(pbx_address, carrier_ip, number, unlisted_caller))
        return any(health.decision_logged(log, call_id, since) for call_id in probes)

    wait_until(f"Kamailio's decisions are written to {log} again", next_decision_logged)
    since = log.stat().st_size
    call_goes_through()
    wait_until("the call's decision is written",
               lambda: f"caller={unlisted_caller} ruri={callback_did.number}" in
               log.read_bytes()[since:].decode(errors="replace"))


def test_killed_redis_comes_back_with_the_limits_counts_and_the_employee_is_called_back(
    callback_did, listed_caller, listed_caller_is_called_back,
):
    url = json.loads(CALLBACKD_SETTINGS.read_text()).get("state_store")
    if not url:
        pytest.skip("callbackd keeps its state in memory (no state_store)")
    key = f"{store.PREFIX}limits:{callback_did.number}:{listed_caller}"

    listed_caller_is_called_back()
    counted = store.connect(url).zcard(key)
    assert counted >= 1
    # Past Redis's appendfsync (everysec): what was counted is on disk.
    time.sleep(APPEND_FSYNC_S)
    killed = kill_outright(services.REDIS)
    wait_until("Redis runs again", runs_again(services.REDIS, killed))
    wait_until("Redis answers", lambda: _pings(url))
    assert store.connect(url).zcard(key) >= counted
    listed_caller_is_called_back()
    assert store.connect(url).zcard(key) >= counted + 1


def _pings(url: str) -> bool:
    try:
        return bool(store.connect(url).ping())
    except Exception:
        return False


# -- what callbackd owed survives its crash ---------------------------------------


@pytest.fixture
def records():
    """The callbacks the engines keep in the state store: (did, employee) -> its record."""
    url = json.loads(CALLBACKD_SETTINGS.read_text()).get("state_store")
    if not url:
        pytest.skip("callbackd keeps its state in memory (no state_store)")
    callbacks = store.Callbacks(store.connect(url))

    def of(did: model.Did, employee: str) -> dict | None:
        for record in callbacks.owed().values():
            if (record["did"], record["employee"]) == (did.number, employee):
                return record
        return None
    return of


@pytest.fixture(scope="session")
def delayed_did(lab: model.Config) -> model.Did:
    """A callback DID whose delay leaves time to kill the engine before it calls back."""
    for did in lab.numbers.values():
        if did.callback and did.callback.enabled and did.callback.delay >= 5:
            return did
    pytest.skip("the inventory has no callback DID with a delay of 5 s or more")


def in_state(records, did: model.Did, employee: str, *states: str) -> Callable[[], bool]:
    def check() -> bool:
        record = records(did, employee)
        return record is not None and record["machine"]["state"] in states
    return check


def engine_killed_and_back() -> None:
    killed = kill_outright(services.CALLBACKD)
    wait_until("callbackd runs again", runs_again(services.CALLBACKD, killed))


def rejected_trigger(sipp, pbx_address, carrier_ip, did: model.Did, employee: str) -> None:
    keys = caller_keys(did.number, employee)
    keys["code"] = did.callback.reject_code
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys, timeout=CALL_TIMEOUT)


def answering_employee_triggers(sipp, pbx_address, carrier_ip, trunk_port, did: model.Did, employee: str):
    """The employee's mobile (it answers, then waits for the PBX's BYE), and the employee's trigger."""
    mobile = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                            callee_keys("answer", user=employee, caller=did.number),
                            timeout=CALLBACK_TIMEOUT + RECOVERY_WAIT)
    rejected_trigger(sipp, pbx_address, carrier_ip, did, employee)
    return mobile


def test_callbackd_killed_while_a_call_back_is_owed_still_calls_the_employee_back_once(
    sipp, pbx_address, carrier_ip, trunk_port, delayed_did, listed_caller, records,
):
    cdrs = Cdrs(CDR_FILE)
    employee = answering_employee_triggers(sipp, pbx_address, carrier_ip, trunk_port, delayed_did,
                                           listed_caller)
    wait_until("the owed call-back is in the store", in_state(records, delayed_did, listed_caller, "waiting"))
    callback_id = records(delayed_did, listed_caller)["id"]

    engine_killed_and_back()
    # The restarted engine places the call-back it owed; nobody types, so it ends.
    employee.expect_success()
    [cdr] = cdrs.wait(delayed_did.number, listed_caller, timeout=RECOVERY_WAIT)
    assert (cdr["id"], cdr["result"]) == (callback_id, "no_digits")
    wait_until("the callback is owed no more", lambda: records(delayed_did, listed_caller) is None)
    assert len(cdrs.wait(delayed_did.number, listed_caller)) == 1


def test_callbackd_killed_while_the_employee_is_asked_for_digits_hangs_up_politely_with_a_cdr(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, records,
):
    cdrs = Cdrs(CDR_FILE)
    employee = answering_employee_triggers(sipp, pbx_address, carrier_ip, trunk_port, callback_did,
                                           listed_caller)
    wait_until("the employee is asked for the number",
               in_state(records, callback_did, listed_caller, "prompting", "collecting"))

    engine_killed_and_back()
    # The employee's leg gets the restarted engine's BYE, not a line left open.
    employee.expect_success()
    [cdr] = cdrs.wait(callback_did.number, listed_caller, timeout=RECOVERY_WAIT)
    assert (cdr["result"], cdr["ended_by"]) == ("no_digits", "engine_restart")
    assert cdr["employee_answer_at"] and cdr["end_at"]


def callbackd_back(callback_id: str) -> Callable[[], None]:
    log = Tail(ENGINE_LOG)

    def wait() -> None:
        log.wait_for(f"callback {callback_id}: resumed in bridged", timeout=RECOVERY_WAIT)
    return wait


def rtpengine_back(callback_id: str) -> Callable[[], None]:
    ng = health.project_address("rtpengine_ng_listen")
    return lambda: wait_until(f"RTPengine answers an ng ping at {ng}", lambda: health.rtpengine_answers(ng))


def restarted(name: str) -> int:
    """A restart as the roles' handlers do it (SIGTERM, then start); the pid that was stopped."""
    pid = services.main_pid(name)
    services.restart(name)
    return pid


@pytest.mark.parametrize(("service", "end", "back"), [
    (services.CALLBACKD, kill_outright, callbackd_back),
    (services.CALLBACKD, restarted, callbackd_back),
    (services.RTPENGINE, kill_outright, rtpengine_back),
], ids=["callbackd-killed", "callbackd-restarted", "rtpengine-killed"])
def test_a_service_gone_during_a_bridged_call_keeps_its_audio_and_the_hang_up_ends_both_with_one_cdr(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, records, service, end,
    back,
):
    cdrs = Cdrs(CDR_FILE)
    employee_pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", CLIENT_NUMBER + "#", EMPLOYEE_SSRC,
                                        440, TONE_S)
    client_pcap = tone_pcap(tmp_path / "client.pcap", CLIENT_SSRC, 660, TONE_S)
    # The employee hangs up, long after the crash; the client waits for the PBX's BYE.
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=employee_pcap, client=CLIENT_E164,
                        client_pcap=client_pcap, employee_hangup=f"local:{BRIDGED_HOLD_MS}")
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2, timeout=FLOW_TIMEOUT)
    rejected_trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    employee_media, client_media = media_of(far_end, "employee"), media_of(far_end, "client")
    wait_until("the bridged call is in the store", in_state(records, callback_did, listed_caller, "bridged"))
    callback_id = records(callback_did, listed_caller)["id"]
    service_is_back = back(callback_id)

    ended = end(service)
    wait_until(f"{service} runs again", runs_again(service, ended))
    # Media after the crash: RTPengine relays both ways (still, or again from its Redis).
    with Capture(bpf=f"udp and src host {pbx_address.host} and dst host {carrier_ip}") as wire:
        service_is_back()
        time.sleep(MEDIA_SAMPLE_S)
    streams = rtp_streams(wire.path)
    assert CLIENT_SSRC in {s.ssrc for s in streams if s.src[1] == employee_media[1]}, streams
    assert EMPLOYEE_SSRC in {s.ssrc for s in streams if s.src[1] == client_media[1]}, streams

    # The employee's BYE reaches the engine, which hangs up the client.
    far_end.expect_success(timeout=FLOW_TIMEOUT)
    [cdr] = cdrs.wait(callback_did.number, listed_caller, timeout=RECOVERY_WAIT)
    assert (cdr["id"], cdr["result"], cdr["ended_by"]) == (callback_id, "bridged", "employee")
    assert cdr["client_e164"] == CLIENT_E164 and cdr["bridged_seconds"] > 0
    wait_until("the callback is owed no more", lambda: records(callback_did, listed_caller) is None)
    assert len(cdrs.wait(callback_did.number, listed_caller)) == 1
