"""The edge against an attacker: each attack gets nothing, the legitimate call beside it still works.

Attacks come from where an attacker is: their own loopback address (never a
trunk's), forged headers, hand-made datagrams (raw_sip). Each test that gets
an address banned lifts the ban afterwards, as an admin would, so that the
next test starts from a clean edge.
"""

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO, RTPENGINE_DEFAULTS, sip_options, untrusted_loopbacks
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.raw_sip import RawSip, call_as_extension, listen_udp, received, status_code

from callbackd.rtpengine import NgClient
from vpbx import wire

CALL_TIMEOUT = 25
CALLBACK_TIMEOUT = 40
# An international number nobody listed: what a fraudster wants the PBX to dial.
PREMIUM_TARGET = "+447700900123"
KAMAILIO_CTL = "unix:/run/kamailio/kamailio_ctl"
KAMAILIO_DEFAULTS = REPO / "roles" / "kamailio" / "defaults" / "main.yml"
KAMAILIO_LOG = Path(yaml.safe_load(KAMAILIO_DEFAULTS.read_text())["kamailio_log_file"])
# Datagrams of the flood, and how many a second: the 2,000/s for a few seconds.
FLOOD_RATE = 2000
FLOOD_SECONDS = 3
# Enough wrong passwords to be banned by the role's default (kamailio_auth_failures).
GUESSES = 5


@pytest.fixture(scope="module")
def attackers(lab):
    """Loopback addresses for attackers only: far from the phones' and the stranger's."""
    return iter(untrusted_loopbacks(lab, "127.0.0.120", 20))


@pytest.fixture
def attacker(attackers):
    """A fresh attacker address; any ban on it is lifted after the test."""
    ip = next(attackers)
    yield ip
    subprocess.run(["kamcmd", "-s", KAMAILIO_CTL, "htable.delete", wire.BAN_TABLE, ip],
                   capture_output=True, check=False)
    subprocess.run(["kamcmd", "-s", KAMAILIO_CTL, "htable.delete", wire.AUTH_FAIL_TABLE, ip],
                   capture_output=True, check=False)


def kamailio_log_has(text: str, wait: float = 10.0) -> bool:
    """Whether the line an admin greps for shows up in Kamailio's log (syslog writes it a little later)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if text in KAMAILIO_LOG.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


# -- 1. no relay for forged in-dialog requests ----------------------------------

def test_a_forged_in_dialog_invite_to_the_trunk_is_refused_and_a_real_dialog_still_ends(
    sipp, pbx_address, trunk, carrier_ip, trunk_port, attacker, callback_did, unlisted_caller,
    forward_number,
):
    trunk_ear = listen_udp(carrier_ip, trunk_port)
    try:
        with RawSip(attacker, pbx_address) as sip:
            forged = sip.request(
                "INVITE", f"sip:{PREMIUM_TARGET}@{trunk.address}", to_tag="x1",
                extra=[f"Route: <sip:{pbx_address};lr>"])
            answer = sip.ask(forged)
        assert answer is not None and status_code(answer) == 481, answer
        # Whatever the edge did, the carrier saw nothing of it.
        assert received(trunk_ear, 2.0) == []
    finally:
        trunk_ear.close()
    # A dialog the edge set up: its in-dialog BYE still crosses.
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number, hangup="local"),
                             timeout=CALL_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                 caller_keys(callback_did.number, unlisted_caller, hangup="remote"),
                 timeout=CALL_TIMEOUT)
    far_end.expect_success()


def test_a_forged_bye_for_no_dialog_is_refused(pbx_address, attacker):
    with RawSip(attacker, pbx_address) as sip:
        answer = sip.ask(sip.request("BYE", f"sip:{PREMIUM_TARGET}@{pbx_address}", to_tag="x2",
                                     extra=[f"Route: <sip:{pbx_address};lr>"]))
    assert answer is not None and status_code(answer) == 481


# -- 2. a REGISTER cannot aim the PBX at the trunk --------------------------------

def test_a_contact_at_the_trunk_is_refused_and_the_phone_still_registers(
    lab, pbx_address, trunk, phone_ips,
):
    extension = sorted(phone_ips)[0]
    password = lab.extensions[extension]
    with RawSip(phone_ips[extension], pbx_address) as phone:
        aimed = phone.register(extension, password, contact_host=trunk.address.host,
                               contact_port=trunk.address.port)
        own = phone.register(extension, password)
        gone = phone.register(extension, password, expires=0)
    assert aimed == 403
    assert own == 200 and gone == 200


def test_a_binding_goes_where_the_phone_registered_from_not_where_its_contact_points(
    sipp, lab, pbx_address, carrier_ip, callback_did, unlisted_caller, ring_step, phone_ips,
):
    # The phone registers from its own address with a Contact naming another
    # host: the PBX's INVITE reaches the phone's real address all the same.
    extension = ring_step.extensions[0]
    ip = phone_ips[extension]
    elsewhere = next(a for a in untrusted_loopbacks(lab, "127.0.0.180", 5) if a not in phone_ips.values())
    with RawSip(ip, pbx_address, port=5060) as phone:
        assert phone.register(extension, lab.extensions[extension], contact_host=elsewhere,
                              contact_port=5060) == 200
    try:
        answering = sipp.start_uas("callee.xml", ip, 5060, callee_keys("answer", caller=unlisted_caller),
                                   timeout=CALL_TIMEOUT)
        sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                     caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
        answering.expect_success()
    finally:
        sipp.close()
        with RawSip(ip, pbx_address, port=5060) as phone:
            phone.register(extension, lab.extensions[extension], contact_host=elsewhere,
                           contact_port=5060, expires=0)


# -- 3. our headers are ours alone ----------------------------------------------

def test_a_forged_employee_header_from_the_carrier_does_not_choose_who_is_called_back(
    sipp, lab, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller,
):
    other = sorted(n for n in lab.number_lists[callback_did.callback.list] if n != listed_caller)
    if not other:
        pytest.skip("the callback list needs two numbers")
    keys = caller_keys(callback_did.number, listed_caller, header=f"{wire.EMPLOYEE_HEADER}: {other[0]}")
    keys["code"] = callback_did.callback.reject_code
    # The call-back rings the caller, not the number the forged header names.
    employee = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                              callee_keys("answer", user=listed_caller, caller=callback_did.number),
                              timeout=CALLBACK_TIMEOUT)
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys, timeout=CALL_TIMEOUT)
    employee.expect_success()


# -- 4. floods and scanners -------------------------------------------------------

def _flood(source: str, pbx_address, rate: int, seconds: float) -> tuple[int, int]:
    """OPTIONS from `source` at `rate`/s for `seconds`; (answers in the first half, in the last second)."""
    first, last, sent = 0, 0, 0
    with RawSip(source, pbx_address) as sip:
        sip.sock.setblocking(False)
        started = time.monotonic()
        while (now := time.monotonic() - started) < seconds:
            while sent < now * rate:
                sip.send(sip.request("OPTIONS", f"sip:{pbx_address}"))
                sent += 1
            try:
                while True:
                    sip.sock.recv(65535)
                    if now < seconds / 2:
                        first += 1
                    elif now > seconds - 1:
                        last += 1
            except BlockingIOError:
                time.sleep(0.001)
    return first, last


def test_a_flooding_source_is_no_longer_answered_while_the_carrier_calls_on(
    sipp, pbx_address, carrier_ip, trunk_port, attacker, callback_did, unlisted_caller,
    forward_number,
):
    answered_first, answered_last = _flood(attacker, pbx_address, FLOOD_RATE, FLOOD_SECONDS)
    assert answered_first > 0, "the edge never answered the source: the test proves nothing"
    assert answered_last == 0
    assert sip_options(pbx_address, attacker) is None
    assert kamailio_log_has(f"ban: {attacker} banned (flooding)")
    # The carrier is never banned and its calls go on.
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number), timeout=CALL_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                 caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
    far_end.expect_success()


def test_a_scanner_is_dropped_and_banned_while_a_phone_is_answered(pbx_address, attacker, stranger_ip):
    with RawSip(attacker, pbx_address) as sip:
        scan = sip.request("OPTIONS", f"sip:100@{pbx_address}", extra=["User-Agent: friendly-scanner"])
        assert sip.ask(scan) is None
        # Banned: its next, innocent-looking request is dropped too.
        assert sip.ask(sip.request("OPTIONS", f"sip:{pbx_address}")) is None
    assert sip_options(pbx_address, stranger_ip) is not None


# -- 5. password guessing ---------------------------------------------------------

def test_guessing_passwords_bans_the_guesser_while_the_real_phone_registers(
    lab, pbx_address, attacker, phone_ips,
):
    extension = sorted(lab.extensions)[0]
    with RawSip(attacker, pbx_address) as guesser:
        answers = [guesser.register(extension, f"guess-{uuid.uuid4().hex[:8]}") for _ in range(GUESSES)]
        # Banned now: even the right password gets no answer at all.
        right = guesser.register(extension, lab.extensions[extension])
    # Each wrong guess is challenged again, as a stale nonce would be: it learns nothing.
    assert answers == [401] * GUESSES
    assert right is None
    assert kamailio_log_has(f"ban: {attacker} banned ({GUESSES} failed authentications)")
    with RawSip(phone_ips[extension], pbx_address) as phone:
        assert phone.register(extension, lab.extensions[extension]) == 200
        assert phone.register(extension, lab.extensions[extension], expires=0) == 200


def test_an_unknown_extension_answers_exactly_like_a_wrong_password(lab, pbx_address, attacker):
    unknown = next(str(n) for n in range(900, 999) if str(n) not in lab.extensions)
    known = sorted(lab.extensions)[0]
    with RawSip(attacker, pbx_address) as guesser:
        assert guesser.register(unknown, "whatever-it-is") == guesser.register(known, "wrong-password") == 401


def test_a_stale_nonce_is_challenged_again_never_refused(lab, pbx_address, phone_ips):
    extension = sorted(lab.extensions)[0]
    with RawSip(phone_ips[extension], pbx_address) as phone:
        ruri = f"sip:{pbx_address}"
        stale = (f'Authorization: Digest username="{extension}", realm="{pbx_address.host}", '
                 f'nonce="c3RhbGU=", uri="{ruri}", response="{"0" * 32}", algorithm=MD5')
        answer = phone.ask(phone.request("REGISTER", ruri, aor=f"sip:{extension}@{pbx_address.host}",
                                         extra=["Expires: 60", stale]))
        assert answer is not None and status_code(answer) == 401
        assert 'qop="auth"' in answer or "qop=auth" in answer
        assert phone.register(extension, lab.extensions[extension], expires=0) == 200


# -- 6. an ended call leaves no media session behind ---------------------------------

def rtpengine_calls(ng_address) -> set[str]:
    with NgClient(ng_address) as ng:
        return set(ng.request("list").get("calls", []))


def busy_phone_messages(callee) -> list[str]:
    return callee.messages().splitlines()


def test_busy_and_cancelled_calls_leave_no_media_session_behind(
    sipp, lab, inventory, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller,
    forward_number, ring_step, phones,
):
    # Every extension busy, then the forward step busy too: the call ends on a
    # negative reply. Another call is cancelled by its caller while it rings.
    settings = {**yaml.safe_load(RTPENGINE_DEFAULTS.read_text()), **inventory}
    ng_address = (settings["rtpengine_ng_listen"].rpartition(":")[0],
                  int(settings["rtpengine_ng_listen"].rpartition(":")[2]))
    busy_id, cancelled_id = f"busy-{uuid.uuid4().hex}", f"cancel-{uuid.uuid4().hex}"
    phones_busy = [sipp.start_uas("callee.xml", phones[e].host, phones[e].port, callee_keys("busy"),
                                  timeout=CALL_TIMEOUT) for e in ring_step.extensions]
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("busy", user=forward_number), timeout=CALL_TIMEOUT)
    keys = caller_keys(callback_did.number, unlisted_caller)
    keys["code"] = 486
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys,
                 timeout=CALL_TIMEOUT, extra=["-cid_str", busy_id])
    far_end.expect_success()
    for phone in phones_busy:
        phone.expect_success()
    # One phone rings (the caller's scenario takes one 180); the others are
    # switched off, so their branches stay silent until the CANCEL.
    first = ring_step.extensions[0]
    ringing = [sipp.start_uas("callee.xml", phones[first].host, phones[first].port,
                              callee_keys("ring"), timeout=CALL_TIMEOUT)]
    keys = {**caller_keys(callback_did.number, unlisted_caller), "ring_ms": 500}
    sipp.run_uac("carrier_call_cancel.xml", carrier_ip, str(pbx_address), keys,
                 timeout=CALL_TIMEOUT, extra=["-cid_str", cancelled_id])
    for phone in ringing:
        phone.expect_success()
    # An extension calls another, which is busy (no routing scheme: its own failure).
    caller_ext, callee_ext = sorted(phones)[:2]
    busy_phone = sipp.start_uas("callee.xml", phones[callee_ext].host, phones[callee_ext].port,
                                callee_keys("busy"), timeout=CALL_TIMEOUT)
    with RawSip(phones[caller_ext].host, pbx_address) as phone:
        ext_code = call_as_extension(phone, caller_ext, lab.extensions[caller_ext], callee_ext)
        ext_id = next(line.split(":", 1)[1].strip() for line in busy_phone_messages(busy_phone)
                      if line.startswith("Call-ID:"))
    assert ext_code == 486
    busy_phone.expect_success()
    # Deleted sessions linger for RTPengine's delete delay; forgotten ones
    # would stay for its offer timeout (an hour).
    deadline = time.monotonic() + settings["rtpengine_delete_delay"] + 30
    while {busy_id, cancelled_id, ext_id} & rtpengine_calls(ng_address):
        assert time.monotonic() < deadline, "a media session outlived its call"
        time.sleep(1)


# -- 10. caller IDs the carrier did not verify ------------------------------------

@pytest.fixture(scope="module")
def verifying_trunk(lab):
    trunk = next((t for t in lab.trunks if t.attestation_header), None)
    if trunk is None:
        pytest.skip("no trunk with an attestation_header in the inventory")
    return trunk


@pytest.mark.parametrize("verstat", ["TN-Validation-Passed", "TN-Validation-Failed", None])
def test_a_verifying_carrier_triggers_call_backs_only_for_verified_callers(
    sipp, pbx_address, carrier_ip, trunk_port, verifying_trunk, callback_did, listed_caller,
    forward_number, verstat,
):
    source = verifying_trunk.inbound_sources[0].split("/")[0]
    params = f";verstat={verstat}" if verstat else ""
    keys = caller_keys(callback_did.number, listed_caller,
                       header=f"{verifying_trunk.attestation_header}: <sip:{listed_caller}@{source}{params}>")
    if verstat == "TN-Validation-Passed":
        # Verified: the trigger is refused unanswered and the employee is called back.
        employee = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                                  callee_keys("answer", user=listed_caller, caller=callback_did.number),
                                  timeout=CALLBACK_TIMEOUT)
        keys["code"] = callback_did.callback.reject_code
        sipp.run_uac("carrier_call_rejected.xml", source, str(pbx_address), keys, timeout=CALL_TIMEOUT)
        employee.expect_success()
    else:
        # A spoofable caller ID is routed by the scheme, like any caller: forwarded, never called back.
        far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                                 callee_keys("answer", user=forward_number), timeout=CALL_TIMEOUT)
        sipp.run_uac("carrier_call.xml", source, str(pbx_address), keys, timeout=CALL_TIMEOUT)
        far_end.expect_success()


# -- 3. (continued) asserted identities only from trunks and engines -------------

def test_an_extensions_asserted_identity_is_removed_and_its_call_still_rings(
    sipp, lab, phones, pbx_address,
):
    caller_ext, callee_ext = sorted(phones)[:2]
    callee = sipp.start_uas("callee.xml", phones[callee_ext].host, phones[callee_ext].port,
                            callee_keys("busy"), timeout=CALL_TIMEOUT)
    forged = "P-Asserted-Identity: <sip:+421905111222@127.0.0.5>"
    with RawSip(phones[caller_ext].host, pbx_address) as phone:
        code = call_as_extension(phone, caller_ext, lab.extensions[caller_ext], callee_ext, extra=[forged])
    callee.expect_success()
    assert code == 486
    # The extension's call reached its callee, without the identity it claimed.
    # (The carrier's own assertion still counts: test_calls' P-Asserted-Identity trigger.)
    invite = callee.messages().split("INVITE sip:", 1)[1]
    assert "P-Asserted-Identity" not in re.split(r"\r?\n\r?\n", invite, maxsplit=1)[0]
