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

import health
import pytest
import services
from peers import callee_keys, caller_keys
from test_limits import wait_until_the_edge_hands_triggers_to_the_engine

from callbackd import store
from vpbx import model

KAMAILIO_PIDFILE = Path("/run/kamailio/kamailio.pid")
KAMAILIO_USER = "kamailio"
# Generous: each wait ends when the service answers; this only bounds a failure.
RECOVERY_WAIT = 30.0
POLL = 0.2
CALL_TIMEOUT = 30
# Trigger, delay, prompt, the wait for digits: a call-back nobody answers by keys.
CALLBACK_TIMEOUT = 40
CALLBACKD_SETTINGS = Path("/etc/vpbx/callbackd.json")
# Redis writes its append-only file once a second (state_store_appendfsync).
APPEND_FSYNC_S = 2.0


def kill_outright(name: str) -> int:
    """SIGKILL to the main process of `name`; its pid."""
    pid = services.main_pid(name)
    assert pid, f"{name} does not run"
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_until(what: str, done: Callable[[], bool], timeout: float = RECOVERY_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(POLL)


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
