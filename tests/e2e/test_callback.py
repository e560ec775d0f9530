"""The CallBack story, end to end, with the carrier and both phones played by SIPp.

Every leg the PBX places goes out through the trunk, so one SIPp far end at
the trunk's address plays both mobiles: the employee (R-URI = the listed
number) and the client (any other number).
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import inventory_dir
from vpbx_testing import services
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap
from vpbx_testing.wire import Capture, rtp_streams

from callbackd.machine import Prompt
from callbackd.prompts import Prompts, wav_seconds
from callbackd.recording import udp_datagrams
from vpbx import model

CDR_FILE = Path("/var/log/vpbx/cdr.jsonl")
PROMPTS_DIR = Path("/var/lib/vpbx/prompts")
EMPLOYEE_SSRC = 0xE0E0E0E0
CLIENT_SSRC = 0xC1C1C1C1
CLIENT_NUMBER = "0905123456"  # as the employee types it
CLIENT_E164 = "+421905123456"
PREMIUM_NUMBER = "0900123456"
FLOW_TIMEOUT = 60
# The far end does not hang up on its own in these roles.
REMOTE = "remote"


@pytest.fixture
def cdr_after():
    """The CDR lines written from now on, read when the test asks."""
    start = CDR_FILE.stat().st_size if CDR_FILE.exists() else 0

    def read(expected: int = 1, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            # A rotation renames the file; the next CDR makes it again.
            if CDR_FILE.exists():
                with CDR_FILE.open("rb") as f:
                    f.seek(start)
                    lines = [json.loads(line) for line in f.read().splitlines() if line.strip()]
            if len(lines) >= expected or time.monotonic() > deadline:
                return lines
            time.sleep(0.2)

    return read


@pytest.fixture(scope="session")
def short_attempts_did(lab: model.Config) -> model.Did:
    """A callback DID that refuses after one wrong number (the lab's English one)."""
    for did in lab.numbers.values():
        if did.callback and did.callback.enabled and did.callback.attempts == 1:
            return did
    pytest.skip("the inventory has no callback DID with attempts: 1")


def far_end_keys(did: model.Did, employee: str, *, employee_pcap: Path, employee_info: str = "-",
                 info_type: str = "dtmf-relay", employee_mode: str = "answer",
                 employee_hangup: str = REMOTE, client: str = "*", client_mode: str = "answer",
                 client_pcap: Path | None = None, client_hangup: str = REMOTE) -> dict:
    return {
        "employee": employee, "did": did.number, "employee_mode": employee_mode,
        "employee_pcap": employee_pcap, "employee_info": employee_info, "info_type": info_type,
        "employee_hangup": employee_hangup, "client": client, "client_mode": client_mode,
        "client_pcap": client_pcap or employee_pcap, "client_hangup": client_hangup,
        "ring_ms": 300,
    }


def trigger(sipp, pbx_address, carrier_ip, did: model.Did, employee: str) -> None:
    keys = caller_keys(did.number, employee)
    keys["code"] = did.callback.reject_code
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys, timeout=25)


def media_of(far_end, role: str) -> tuple[str, int]:
    line = far_end.wait_for_log(f"role={role}", timeout=FLOW_TIMEOUT)
    media = line.split("media=")[1].split()[0]
    host, port = media.rsplit(":", 1)
    return host, int(port)


def channel_rms(wav: Path, channel: int) -> float:
    stat = subprocess.run(["sox", str(wav), "-n", "remix", str(channel), "stat"],
                          capture_output=True, text=True, check=True).stderr
    for line in stat.splitlines():
        if line.startswith("RMS     amplitude"):
            return float(line.split(":")[1])
    raise AssertionError(f"no RMS in sox stat of {wav}:\n{stat}")


@pytest.mark.parametrize("digits_by", ["rfc4733", "sip-info"])
def test_full_callback_bridges_employee_and_client_with_audio_both_ways_recorded(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, cdr_after,
    digits_by,
):
    typed = CLIENT_NUMBER + "#"
    if digits_by == "rfc4733":
        employee_pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", typed, EMPLOYEE_SSRC, 440, 10)
        info = "-"
    else:
        employee_pcap = tone_pcap(tmp_path / "employee.pcap", EMPLOYEE_SSRC, 440, 10)
        info = typed
    client_pcap = tone_pcap(tmp_path / "client.pcap", CLIENT_SSRC, 660, 4)
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=employee_pcap, employee_info=info,
                        client=CLIENT_E164, client_pcap=client_pcap, client_hangup="local:4000")
    with Capture(bpf=f"udp and src host {pbx_address.host} and dst host {carrier_ip}") as wire:
        far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2,
                                 timeout=FLOW_TIMEOUT)
        trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
        employee_media = media_of(far_end, "employee")
        client_media = media_of(far_end, "client")
        far_end.expect_success(timeout=FLOW_TIMEOUT)

    # The call-back and the client call both present the DID (checked by the far end);
    # RTP crossed RTPengine both ways: each phone got the other's stream.
    streams = rtp_streams(wire.path)
    to_employee = {s.ssrc for s in streams if s.src[1] == employee_media[1]}
    to_client = {s.ssrc for s in streams if s.src[1] == client_media[1]}
    assert CLIENT_SSRC in to_employee, f"client audio never reached the employee: {streams}"
    assert EMPLOYEE_SSRC in to_client, f"employee audio never reached the client: {streams}"

    [cdr] = cdr_after()
    assert cdr["result"] == "bridged"
    assert (cdr["did"], cdr["employee"]) == (callback_did.number, listed_caller)
    assert (cdr["client_dialled"], cdr["client_e164"]) == (CLIENT_NUMBER, CLIENT_E164)
    assert all(cdr[k] for k in ("trigger_at", "employee_answer_at", "client_answer_at", "end_at"))
    assert 2 <= cdr["bridged_seconds"] <= 10
    if callback_did.callback.record:
        wav = Path(cdr["recording"])
        assert wav.is_file()
        assert channel_rms(wav, 1) > 0.01, "employee channel silent"
        assert channel_rms(wav, 2) > 0.01, "client channel silent"


def test_employee_who_does_not_answer_is_retried_then_given_up(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, cdr_after,
):
    settings = callback_did.callback
    pcap = tone_pcap(tmp_path / "silence.pcap", EMPLOYEE_SSRC, 440, 1)
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=pcap, employee_mode="ring")
    calls = 1 + settings.retries
    budget = calls * (settings.ring_timeout + 5) + settings.retries * settings.retry_interval + 10
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=calls, timeout=budget)
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    far_end.expect_success(timeout=budget)
    [cdr] = cdr_after(timeout=budget)
    assert cdr["result"] == "employee_no_answer"
    assert cdr["employee_attempts"] == calls
    assert cdr["client_e164"] is None


def test_repeated_trigger_makes_one_call_back(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, cdr_after,
):
    pcap = tone_pcap(tmp_path / "silence.pcap", EMPLOYEE_SSRC, 440, 1)
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=pcap)
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=1, timeout=FLOW_TIMEOUT)
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    far_end.expect_success(timeout=FLOW_TIMEOUT)
    # Nobody typed a number: the single call-back ends as no_digits, and no second one follows.
    time.sleep(callback_did.callback.delay + 2)
    lines = cdr_after(expected=2, timeout=3)
    assert [cdr["result"] for cdr in lines] == ["no_digits"]


def test_listed_caller_is_routed_by_the_scheme_when_the_engine_is_down(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, forward_number,
):
    services.stop(services.CALLBACKD)
    try:
        far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                                 callee_keys("answer", user=forward_number), timeout=30)
        sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                     caller_keys(callback_did.number, listed_caller), timeout=30)
        far_end.expect_success()
    finally:
        services.start(services.CALLBACKD)
        time.sleep(3)  # the edge's next OPTIONS probe finds the engine again


def test_premium_number_never_leaves_through_the_trunk(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, short_attempts_did, listed_caller, cdr_after,
):
    pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", PREMIUM_NUMBER + "#", EMPLOYEE_SSRC, 440, 2)
    keys = far_end_keys(short_attempts_did, listed_caller, employee_pcap=pcap, client="never")
    with Capture(bpf=f"udp and dst host {carrier_ip} and dst port {trunk_port}") as wire:
        far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=1,
                                 timeout=FLOW_TIMEOUT)
        trigger(sipp, pbx_address, carrier_ip, short_attempts_did, listed_caller)
        far_end.expect_success(timeout=FLOW_TIMEOUT)
        [cdr] = cdr_after()
    assert cdr["result"] == "denied"
    assert cdr["client_answer_at"] is None
    assert cdr["client_dialled"] == PREMIUM_NUMBER
    invites = [d.payload.split(b"\r\n", 1)[0].decode() for d in udp_datagrams(wire.path)
               if d.payload.startswith(b"INVITE ")]
    assert invites and all(listed_caller in line for line in invites), invites


def test_busy_client_gets_the_employee_a_message_then_hang_up(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, cdr_after,
):
    pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", CLIENT_NUMBER + "#", EMPLOYEE_SSRC, 440, 2)
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=pcap, client=CLIENT_E164,
                        client_mode="busy")
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2, timeout=FLOW_TIMEOUT)
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    # The employee's leg ends by the PBX's BYE after the "busy" message (employee_hangup remote).
    far_end.expect_success(timeout=FLOW_TIMEOUT)
    [cdr] = cdr_after()
    assert cdr["result"] == "client_busy"
    assert cdr["client_e164"] == CLIENT_E164 and cdr["bridged_seconds"] == 0


def test_a_dids_own_prompt_from_the_inventory_is_what_the_engine_plays(lab):
    own = [d for d in lab.numbers.values() if d.callback and d.callback.prompt]
    if not own:
        pytest.skip("no DID in the inventory brings its own prompt")
    for did in own:
        installed = Prompts(PROMPTS_DIR).path(did.number, did.callback.language, Prompt.ENTER_NUMBER)
        assert installed == PROMPTS_DIR / "did" / f"{did.number.lstrip('+')}.wav"
        source = inventory_dir() / did.callback.prompt
        assert wav_seconds(installed) == pytest.approx(wav_seconds(source), abs=0.05)
