"""The engine's own trust, against the deployed services: who may make it dial, whose digits count.

Each attack runs next to its legitimate twin: a trigger sent straight to
callbackd from a stranger gets 403 and calls nobody back, while the same
trigger through the edge calls the employee back; a DTMF datagram sent to
callbackd's DTMF socket from an address that is not RTPengine's types
nothing, while digits the employee's phone sends through RTPengine do.
"""

import json
import re
import socket
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_callback import EMPLOYEE_SSRC, FLOW_TIMEOUT, far_end_keys, media_of, trigger
from vpbx_testing import health
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap

from vpbx import wire

TRIGGER_SCENARIO = REPO / "tests" / "integration" / "scenarios" / "trigger_uac.xml"
CDR_FILE = Path("/var/log/vpbx/cdr.jsonl")
ENGINE_LOG = Path("/var/log/vpbx/callbackd.log")
CLIENT_NUMBER = "0905123456"
CLIENT_E164 = "+421905123456"
NOT_A_PROXY = "refused: not a SIP proxy of this PBX"
TRIGGERED = r"callback (\w+): did=\S+ employee=\S+ triggered"


def project_address(key: str) -> tuple[str, int]:
    """An IP:PORT the project sets for itself, as deployed on this host."""
    address = health.project_address(key)
    return address.host, address.port


@pytest.fixture(scope="session")
def engine_sip() -> tuple[str, int]:
    return project_address("callbackd_sip_listen")


@pytest.fixture(scope="session")
def engine_dtmf() -> tuple[str, int]:
    return project_address("callbackd_dtmf_listen")


class Tail:
    """The lines a file gets from now on, read when the test asks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size if path.exists() else 0

    def lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace").splitlines()

    def wait_for(self, pattern: str, timeout: float = FLOW_TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if match := re.search(pattern, line):
                    return match
            assert time.monotonic() < deadline, f"{self.path}: no {pattern!r} within {timeout} s"
            time.sleep(0.2)


def cdrs(tail: Tail) -> list[dict]:
    return [json.loads(line) for line in tail.lines() if line.strip()]


def wait_for_cdr(tail: Tail, timeout: float = FLOW_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while not (written := cdrs(tail)):
        assert time.monotonic() < deadline, f"no CDR within {timeout} s"
        time.sleep(0.2)
    return written[0]


def test_a_trigger_straight_to_the_engine_from_a_stranger_gets_403_and_calls_nobody_back(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, stranger_ip, engine_sip, callback_did,
    listed_caller,
):
    cdr, log = Tail(CDR_FILE), Tail(ENGINE_LOG)
    pcap = tone_pcap(tmp_path / "employee.pcap", EMPLOYEE_SSRC, 440, 1)
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port,
                             far_end_keys(callback_did, listed_caller, employee_pcap=pcap),
                             calls=1, timeout=FLOW_TIMEOUT)
    # The stranger forges what the edge would add, and talks to the engine directly.
    forged = sipp.run_uac(TRIGGER_SCENARIO, stranger_ip, f"{engine_sip[0]}:{engine_sip[1]}", {
        "did": callback_did.number, "caller": listed_caller,
        "did_header": f"{wire.DID_HEADER}: {callback_did.number}",
        "employee_header": f"{wire.EMPLOYEE_HEADER}: {listed_caller}", "header": "X-Vpbx-E2E: 1",
    }, timeout=25)
    assert forged.log_lines() == ["final 403 x-vpbx-callback="]
    log.wait_for(rf"trigger from {re.escape(stranger_ip)}:\d+ {NOT_A_PROXY}")

    # The twin: the same employee through the edge is called back, once.
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    far_end.expect_success(timeout=FLOW_TIMEOUT)
    record = wait_for_cdr(cdr)
    assert (record["did"], record["employee"], record["result"]) == (
        callback_did.number, listed_caller, "no_digits")
    assert len(cdrs(cdr)) == 1
    triggered = [line for line in log.lines() if re.search(TRIGGERED, line)]
    assert len(triggered) == 1, triggered


def test_options_straight_to_the_engine_from_a_stranger_gets_403(sipp, stranger_ip, engine_sip):
    probe = sipp.run_uac(REPO / "tests" / "integration" / "scenarios" / "options_uac.xml", stranger_ip,
                         f"{engine_sip[0]}:{engine_sip[1]}", {}, timeout=10)
    assert probe.log_lines() == ["final 403"]


def forge_digits(engine_dtmf: tuple[str, int], source_ip: str, media_call_id: str, digits: str) -> None:
    """What RTPengine would send for `digits` typed by the employee, but sent from source_ip."""
    codes = {d: i for i, d in enumerate("0123456789*#")}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        for d in digits:
            datagram = {"callid": media_call_id, "source_tag": "EMP", "tags": ["EMP", "B"], "type": "DTMF",
                        "timestamp": int(time.time()), "source_ip": source_ip, "event": codes[d],
                        "duration": 80, "volume": 10}
            sock.sendto(json.dumps(datagram).encode(), engine_dtmf)


def test_digits_forged_at_the_engines_dtmf_socket_dial_nobody(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, stranger_ip, engine_dtmf, callback_did,
    listed_caller,
):
    cdr, log = Tail(CDR_FILE), Tail(ENGINE_LOG)
    pcap = tone_pcap(tmp_path / "employee.pcap", EMPLOYEE_SSRC, 440, 10)
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=pcap, client="never")
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=1, timeout=FLOW_TIMEOUT)
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    session = log.wait_for(TRIGGERED).group(1)
    media_of(far_end, "employee")  # the employee answered: the engine waits for digits now
    log.wait_for(rf"callback {session}: \S+ -> \S+ \(EmployeeAnswered\)")
    forge_digits(engine_dtmf, stranger_ip, f"callback-{session}", CLIENT_NUMBER + "#")
    log.wait_for(rf"DTMF datagram from {re.escape(stranger_ip)}:\d+ dropped: not RTPengine")

    far_end.expect_success(timeout=FLOW_TIMEOUT)
    record = wait_for_cdr(cdr)
    assert record["result"] == "no_digits" and record["client_e164"] is None


def test_digits_the_employee_types_through_rtpengine_dial_the_client(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller,
):
    cdr = Tail(CDR_FILE)
    pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", CLIENT_NUMBER + "#", EMPLOYEE_SSRC, 440, 2)
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=pcap, client=CLIENT_E164,
                        client_mode="busy")
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2, timeout=FLOW_TIMEOUT)
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    far_end.expect_success(timeout=FLOW_TIMEOUT)
    record = wait_for_cdr(cdr)
    assert (record["result"], record["client_e164"]) == ("client_busy", CLIENT_E164)
