"""The abuse limits against the deployed services: each abuse gets nothing, the call beside it works.

The PBX pays for every call-back and every client call, so each limit is
shown twice: the trigger, retry, PIN or call that breaks it gets no call-back,
no second try, no client or no more minutes, while its legitimate twin right
beside it (a colleague, another DID, a busy phone, the right PIN, a call
under the limit) is served as before.

The lab inventory gives the limits DIDs of their own with small values
(max_per_hour 3; a PIN and max_call_minutes 2), so the suite needs no
deploy except for the engine's concurrency cap, which is tried on a deployed
copy of the inventory and put back after. The counts live in the engines'
store (Redis): the module clears them and restarts callbackd once, so that
they start from zero.

Carrier-side phones that only refuse or ring are `carrier_uas.CarrierUas`;
those that answer and type are SIPp's far_end.xml.
"""

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from carrier_uas import RING, CarrierUas
from conftest import REPO, inventory_dir, sip_options
from test_callback import CLIENT_E164, CLIENT_NUMBER, EMPLOYEE_SSRC, far_end_keys
from test_reload import deploy
from test_secrets import KAMAILIO_ROUTING_TASK, assert_not_shown, check_diff, task_status
from vpbx_testing import health, services
from vpbx_testing.peers import caller_keys
from vpbx_testing.rtp_pcap import tone_pcap
from vpbx_testing.wire import Capture

from callbackd import store
from callbackd.recording import udp_datagrams
from vpbx import model

CDR_FILE = Path("/var/log/vpbx/cdr.jsonl")
ENGINE_LOG = Path("/var/log/vpbx/callbackd.log")
KAMAILIO_DEFAULTS = REPO / "roles" / "kamailio" / "defaults" / "main.yml"
CALLBACKD_ROUTING_TASK = ("TASK [callbackd : Render the routing data from the validated inventory, "
                          "without the extensions]")
RTPENGINE_CONFIG = "/etc/rtpengine/rtpengine.conf"
DECLINE, BUSY = 603, 486
# What the carrier answers the call the edge forwards by the scheme: unlike
# the trigger's own reply, it tells the caller was routed.
ROUTED = 480
CLIENT_SSRC = 0xC1C1C1C1
# Generous: waits end when the event comes, these only bound a failure.
EVENT_WAIT = 60.0
CALLBACKD_SETTINGS = Path("/etc/vpbx/callbackd.json")


# -- what the tests read -----------------------------------------------------------------


class Tail:
    """The lines a file gets from now on, read when the test asks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size if path.exists() else 0

    def text(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")

    def wait_for(self, text: str, timeout: float = EVENT_WAIT) -> str:
        """The first new line containing `text`."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.text().splitlines():
                if text in line:
                    return line
            assert time.monotonic() < deadline, f"{self.path}: no line with {text!r} within {timeout} s"
            time.sleep(0.2)


class Cdrs(Tail):
    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def wait(self, did: str, employee: str, count: int = 1, timeout: float = EVENT_WAIT) -> list[dict]:
        """The first `count` new CDRs of `employee`'s call-backs on `did`."""
        deadline = time.monotonic() + timeout
        def mine() -> list[dict]:
            return [c for c in self.records() if (c["did"], c["employee"]) == (did, employee)]

        while len(found := mine()) < count:
            assert time.monotonic() < deadline, f"{len(found)} CDRs of {employee} on {did}, wanted {count}"
            time.sleep(0.2)
        return found[:count]


def trigger(sipp, pbx_address, carrier_ip, did: model.Did, employee: str, code: int) -> None:
    """The employee calls the DID from the carrier; the PBX must end the call with `code`, unanswered."""
    keys = caller_keys(did.number, employee)
    keys["code"] = code
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys, timeout=30)


def session_of(log: Tail, did: model.Did, employee: str) -> str:
    """The engine's id of the callback that `employee`'s trigger on `did` started."""
    line = log.wait_for(f"did={did.number} employee={employee} triggered")
    return line.split("callback ", 1)[1].split(":", 1)[0]


def invites_on_the_wire(pcap: Path) -> list[str]:
    """The request line of every INVITE in a capture."""
    return [d.payload.split(b"\r\n", 1)[0].decode() for d in udp_datagrams(pcap)
            if d.payload.startswith(b"INVITE ")]


def assert_secret_absent(text: str, secret: str, where: str) -> None:
    # Not `assert secret not in text`: pytest would print both.
    if secret in text:
        pytest.fail(f"the PIN is in {where}", pytrace=False)


# -- the world -------------------------------------------------------------------------------


def callback_dids(lab: model.Config, wanted: Callable[[model.CallbackSettings], bool],
                  what: str) -> model.Did:
    for did in lab.numbers.values():
        if did.callback and did.callback.enabled and wanted(did.callback):
            return did
    pytest.skip(f"the inventory has no callback DID with {what}")


@pytest.fixture(scope="session")
def limited_did(lab: model.Config) -> model.Did:
    return callback_dids(lab, lambda c: c.max_per_hour <= 5 and c.pin is None, "max_per_hour <= 5 and no PIN")


@pytest.fixture(scope="session")
def pin_did(lab: model.Config) -> model.Did:
    return callback_dids(lab, lambda c: c.pin is not None and c.max_call_minutes <= 3,
                         "a PIN and max_call_minutes <= 3")


@pytest.fixture(scope="session")
def employees(lab: model.Config, limited_did: model.Did) -> tuple[str, str]:
    listed = sorted(lab.number_lists[limited_did.callback.list])
    if len(listed) < 2:
        pytest.skip("the limited DID's list needs two numbers")
    return listed[0], listed[1]


def wait_until_the_edge_hands_triggers_to_the_engine(edge: model.HostPort) -> None:
    """The engine answers probes again, and the edge's dispatcher has probed it since."""
    engine = health.project_address("callbackd_sip_listen")
    deadline = time.monotonic() + EVENT_WAIT
    # The engine answers OPTIONS from the edges only: sent from the edge's address.
    while sip_options(engine, edge.host) is None:
        assert time.monotonic() < deadline, f"callbackd does not answer OPTIONS at {engine}"
        time.sleep(0.5)
    interval = yaml.safe_load(KAMAILIO_DEFAULTS.read_text())["kamailio_engine_probe_interval"]
    time.sleep(2 * interval + 1)


@pytest.fixture(scope="module", autouse=True)
def counts_from_zero(pbx_address: model.HostPort) -> None:
    """The call-back counts start again from zero: cleared in the engines' Redis, and
    callbackd restarted (an engine without a state store keeps them in memory)."""
    url = json.loads(CALLBACKD_SETTINGS.read_text()).get("state_store")
    if url:
        client = store.connect(url)
        for key in client.scan_iter(match=f"{store.PREFIX}limits:*"):
            client.delete(key)
    services.restart(services.CALLBACKD)
    wait_until_the_edge_hands_triggers_to_the_engine(pbx_address)


# -- max_per_hour ---------------------------------------------------------------------------


def test_over_the_hourly_limit_the_scheme_routes_the_caller_while_colleague_and_other_did_are_called_back(
    sipp, pbx_address, carrier_ip, trunk_port, limited_did, callback_did, employees, forward_number,
):
    employee, colleague = employees
    limit = limited_did.callback.max_per_hour
    cdrs, log = Cdrs(CDR_FILE), Tail(ENGINE_LOG)
    policy = {employee: DECLINE, colleague: DECLINE, forward_number: ROUTED}
    with CarrierUas(carrier_ip, trunk_port, policy) as carrier:
        for placed in range(1, limit + 1):
            trigger(sipp, pbx_address, carrier_ip, limited_did, employee, limited_did.callback.reject_code)
            carrier.wait_for_invites(employee, placed, timeout=EVENT_WAIT)
            # Over before the next trigger: one in progress would make that one a repeat.
            cdrs.wait(limited_did.number, employee, placed)

        # One too many: no call-back, the caller is routed by the DID's scheme (its forward step).
        trigger(sipp, pbx_address, carrier_ip, limited_did, employee, ROUTED)
        carrier.wait_for_invites(forward_number, 1, timeout=EVENT_WAIT)
        log.wait_for(f"callback limit: {employee} on {limited_did.number}: {limit} call-backs in the last "
                     f"hour (max_per_hour {limit}), routed by the scheme")

        # Beside it: a colleague on the same DID, and the same employee on another DID.
        trigger(sipp, pbx_address, carrier_ip, limited_did, colleague, limited_did.callback.reject_code)
        carrier.wait_for_invites(colleague, 1, timeout=EVENT_WAIT)
        trigger(sipp, pbx_address, carrier_ip, callback_did, employee, callback_did.callback.reject_code)
        [other] = cdrs.wait(callback_did.number, employee)
        cdrs.wait(limited_did.number, colleague)

    # By now a call-back of the refused trigger would long have rung.
    from_limited = [i for i in carrier.invites(employee) if i.from_user == limited_did.number]
    assert len(from_limited) == limit, carrier.invites()
    assert len(cdrs.records()) == limit + 2, cdrs.records()
    assert other["employee_attempts"] == 1


# -- retry_on ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("mobile", "attempts"), [(DECLINE, 1), (BUSY, 2)], ids=["declined", "busy"])
def test_a_declined_call_back_is_not_tried_again_while_a_busy_one_is(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, mobile, attempts,
):
    settings = callback_did.callback
    assert settings.retries >= 1 and "busy" in settings.retry_on and "declined" not in settings.retry_on
    cdrs = Cdrs(CDR_FILE)
    with CarrierUas(carrier_ip, trunk_port, {listed_caller: mobile}) as carrier:
        trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller, settings.reject_code)
        budget = EVENT_WAIT + settings.retries * settings.retry_interval
        [cdr] = cdrs.wait(callback_did.number, listed_caller, timeout=budget)
    assert cdr["result"] == "employee_no_answer"
    assert cdr["employee_attempts"] == attempts
    assert len(carrier.invites(listed_caller)) == attempts


# -- the PIN -------------------------------------------------------------------------------------


def test_the_right_pin_then_the_number_bridges_and_the_pin_is_in_no_log_and_no_cdr(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, pin_did, listed_caller, inventory,
):
    pin = pin_did.callback.pin
    cdrs, log = Cdrs(CDR_FILE), Tail(ENGINE_LOG)
    kamailio_log = Tail(Path(inventory.get("kamailio_log_file") or
                             yaml.safe_load(KAMAILIO_DEFAULTS.read_text())["kamailio_log_file"]))
    keys = far_end_keys(pin_did, listed_caller,
                        employee_pcap=tone_pcap(tmp_path / "e.pcap", EMPLOYEE_SSRC, 440, 10),
                        employee_info=f"{pin}#{CLIENT_NUMBER}#", client=CLIENT_E164,
                        client_pcap=tone_pcap(tmp_path / "c.pcap", CLIENT_SSRC, 660, 4),
                        client_hangup="local:3000")
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2, timeout=EVENT_WAIT)
    trigger(sipp, pbx_address, carrier_ip, pin_did, listed_caller, pin_did.callback.reject_code)
    far_end.expect_success(timeout=EVENT_WAIT)
    [cdr] = cdrs.wait(pin_did.number, listed_caller)
    assert cdr["result"] == "bridged" and cdr["ended_by"] == "client"
    assert (cdr["client_dialled"], cdr["client_e164"]) == (CLIENT_NUMBER, CLIENT_E164)
    session = session_of(log, pin_did, listed_caller)
    played = [line for line in log.text().splitlines() if f"callback {session}: playing" in line]
    assert any("enter_pin" in line for line in played), played
    # Under its max_call_minutes: no warning, ended by whoever hung up.
    assert not any("call_ending" in line for line in played), played
    assert_secret_absent(cdrs.text(), pin, "the CDR file")
    assert_secret_absent(log.text(), pin, "callbackd's log")
    assert_secret_absent(kamailio_log.text(), pin, "Kamailio's log")


def test_three_wrong_pins_end_the_call_back_and_no_client_is_called(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, pin_did, listed_caller,
):
    # Every digit off by one, two, three: three PINs that are surely wrong.
    wrong = ["".join(str((int(d) + n) % 10) for d in pin_did.callback.pin) for n in (1, 2, 3)]
    typed = "".join(f"{guess}#" for guess in wrong) + f"{CLIENT_NUMBER}#"
    cdrs = Cdrs(CDR_FILE)
    keys = far_end_keys(pin_did, listed_caller,
                        employee_pcap=tone_pcap(tmp_path / "e.pcap", EMPLOYEE_SSRC, 440, 10),
                        employee_info=typed, client="never")
    with Capture(bpf=f"udp and dst host {carrier_ip} and dst port {trunk_port}") as wire:
        far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=1, timeout=EVENT_WAIT)
        trigger(sipp, pbx_address, carrier_ip, pin_did, listed_caller, pin_did.callback.reject_code)
        # The PBX hangs up on the employee after the third wrong PIN (employee_hangup remote).
        far_end.expect_success(timeout=EVENT_WAIT)
        [cdr] = cdrs.wait(pin_did.number, listed_caller)
    assert cdr["result"] == "pin_refused"
    assert cdr["client_dialled"] is None and cdr["client_e164"] is None
    invites = invites_on_the_wire(wire.path)
    assert invites and all(listed_caller in line for line in invites), invites


# -- max_call_minutes ---------------------------------------------------------------------------


def test_a_bridged_call_is_warned_then_ended_at_the_dids_max_call_minutes(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, pin_did, listed_caller,
):
    minutes = pin_did.callback.max_call_minutes
    budget = minutes * 60 + EVENT_WAIT
    # Both phones keep talking past the limit (silence would end the call on the media timeout).
    keys = far_end_keys(pin_did, listed_caller,
                        employee_pcap=tone_pcap(tmp_path / "e.pcap", EMPLOYEE_SSRC, 440, budget),
                        employee_info=f"{pin_did.callback.pin}#{CLIENT_NUMBER}#", client=CLIENT_E164,
                        client_pcap=tone_pcap(tmp_path / "c.pcap", CLIENT_SSRC, 660, budget))
    cdrs, log = Cdrs(CDR_FILE), Tail(ENGINE_LOG)
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2, timeout=budget)
    trigger(sipp, pbx_address, carrier_ip, pin_did, listed_caller, pin_did.callback.reject_code)
    session = session_of(log, pin_did, listed_caller)
    log.wait_for(f"callback {session}: bridged -> done", timeout=budget)
    # Neither phone hung up (both wait for the PBX's BYE): the engine ended it.
    far_end.expect_success(timeout=EVENT_WAIT)
    [cdr] = cdrs.wait(pin_did.number, listed_caller)
    assert cdr["result"] == "bridged" and cdr["ended_by"] == "limit"
    lines = log.text().splitlines()
    warned = next(i for i, line in enumerate(lines) if f"callback {session}: playing call_ending" in line)
    ended = next(i for i, line in enumerate(lines) if f"callback {session}: bridged -> done" in line)
    assert warned < ended


# -- vpbx_callback_max_concurrent (a deployed copy of the inventory) --------------------------


def edited_copy(tmp_path: Path, edit: Callable[[dict], bool]) -> Path:
    """A copy of the deployed inventory with `edit` applied to the group_vars file it changes."""
    copy = tmp_path / "inventory"
    shutil.copytree(inventory_dir(), copy)
    for path in sorted((copy / "group_vars").rglob("*.yml")):
        variables = yaml.safe_load(path.read_text()) or {}
        if "vpbx_numbers" in variables and edit(variables):
            path.write_text(yaml.safe_dump(variables, sort_keys=False))
            return copy
    raise AssertionError(f"no group_vars file with vpbx_numbers under {copy}")


@pytest.fixture
def one_callback_at_a_time(tmp_path: Path) -> Iterator[int]:
    """The lab deployed with vpbx_callback_max_concurrent 1; the lab as it was after the test."""
    cap = 1
    deploy(edited_copy(tmp_path, lambda v: v.update(vpbx_callback_max_concurrent=cap) is None))
    try:
        yield cap
    finally:
        deploy(inventory_dir())


def callback_engines() -> int:
    """How many hosts the inventory puts in callback_engines (its hosts.yml)."""
    hosts = yaml.safe_load((inventory_dir() / "hosts.yml").read_text())
    return len(hosts["all"]["children"]["callback_engines"]["hosts"])


def rtpengine_max_sessions() -> int:
    out = subprocess.run(["rtpengine-ctl", "--config-file", RTPENGINE_CONFIG, "list", "maxsessions"],
                         capture_output=True, text=True, check=True).stdout
    return int(next(word for word in out.replace(":", " ").split() if word.lstrip("-").isdigit()))


def test_beyond_the_engines_cap_the_scheme_routes_the_caller_while_the_callback_in_progress_goes_on(
    one_callback_at_a_time, sipp, pbx_address, carrier_ip, trunk_port, callback_did, employees,
    forward_number,
):
    employee, colleague = employees
    settings = callback_did.callback
    cdrs, log = Cdrs(CDR_FILE), Tail(ENGINE_LOG)
    # RTPengine's own ceiling follows the cap: every engine at it, and as many routed calls.
    assert rtpengine_max_sessions() == one_callback_at_a_time * (callback_engines() + 1)
    policy = {employee: RING, colleague: DECLINE, forward_number: ROUTED}
    with CarrierUas(carrier_ip, trunk_port, policy) as carrier:
        trigger(sipp, pbx_address, carrier_ip, callback_did, employee, settings.reject_code)
        carrier.wait_for_invites(employee, 1, timeout=EVENT_WAIT)  # in progress: the mobile rings

        # The cap is taken: the colleague is routed by the scheme and not called back.
        trigger(sipp, pbx_address, carrier_ip, callback_did, colleague, ROUTED)
        carrier.wait_for_invites(forward_number, 1, timeout=EVENT_WAIT)
        log.wait_for("callback capacity: 1 callbacks in progress (vpbx_callback_max_concurrent 1)")

        # The callback in progress goes on (its retry rings), and ends as it would have.
        budget = (EVENT_WAIT + (settings.retries + 1) * settings.ring_timeout
                  + settings.retries * settings.retry_interval)
        [cdr] = cdrs.wait(callback_did.number, employee, timeout=budget)
        assert cdr["employee_attempts"] == settings.retries + 1
        assert carrier.invites(colleague) == []

        # The cap free again: the colleague's next trigger is called back.
        trigger(sipp, pbx_address, carrier_ip, callback_did, colleague, settings.reject_code)
        carrier.wait_for_invites(colleague, 1, timeout=EVENT_WAIT)
        cdrs.wait(callback_did.number, colleague)


# -- the PIN in `make check` ---------------------------------------------------------------------


def test_check_diff_of_a_changed_pin_shows_neither_pin(tmp_path: Path, pin_did: model.Did):
    old = pin_did.callback.pin
    new = "".join(secrets.choice("0123456789") for _ in range(model.MAX_PIN_DIGITS))

    def new_pin(variables: dict) -> bool:
        for did in variables["vpbx_numbers"]:
            if did.get("callback", {}).get("pin") == old:
                did["callback"]["pin"] = new
                return True
        return False

    output = check_diff(edited_copy(tmp_path, new_pin), [old, new])
    # The change did reach both routing files: only their diff is left out.
    assert task_status(output, KAMAILIO_ROUTING_TASK) == "changed"
    assert task_status(output, CALLBACKD_ROUTING_TASK) == "changed"
    assert_not_shown(output, old, "old")
    assert_not_shown(output, new, "new")
