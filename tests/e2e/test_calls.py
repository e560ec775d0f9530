"""Calls through the deployed SIP edge, as the carrier and the phones make them.

Numbers come from the inventory (see the fixtures in conftest.py).
"""

import socket

import pytest
from conftest import sip_options
from vpbx_testing.peers import callee_keys, caller_keys

from vpbx import model

CALL_TIMEOUT = 25
# Trigger, delay, prompt, the wait for digits: a call-back nobody answers by keys.
CALLBACK_TIMEOUT = 40


def test_unlisted_caller_is_forwarded_by_the_scheme_with_media_on_rtpengine(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller, forward_number,
    media_relay_ip,
):
    # Nobody is registered, so the ring step is skipped and the forward step
    # calls out through the trunk; the caller hangs up.
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number, media=media_relay_ip),
                             timeout=CALL_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                 caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
    far_end.expect_success()


def test_bye_from_the_forwarded_side_reaches_the_caller(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller, forward_number,
    media_relay_ip,
):
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number, media=media_relay_ip,
                                         hangup="local"),
                             timeout=CALL_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                 caller_keys(callback_did.number, unlisted_caller, hangup="remote"),
                 timeout=CALL_TIMEOUT)
    far_end.expect_success()


def test_registered_extensions_ring_in_parallel_and_one_answers(
    sipp, phones, pbx_address, carrier_ip, callback_did, unlisted_caller, ring_step, media_relay_ip,
):
    first, *others = ring_step.extensions
    answering = sipp.start_uas("callee.xml", phones[first].host, phones[first].port,
                               callee_keys("answer", caller=unlisted_caller, media=media_relay_ip),
                               timeout=CALL_TIMEOUT)
    # The other phones ring and are cancelled when the first one answers.
    ringing = [sipp.start_uas("callee.xml", phones[ext].host, phones[ext].port,
                              callee_keys("ring"), timeout=CALL_TIMEOUT) for ext in others]
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                 caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
    answering.expect_success()
    for phone in ringing:
        phone.expect_success()


def test_unanswered_extensions_fall_through_to_the_forward_step(
    sipp, phones, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller, ring_step,
    forward_number, media_relay_ip,
):
    ringing = [sipp.start_uas("callee.xml", phones[ext].host, phones[ext].port,
                              callee_keys("ring"), timeout=ring_step.timeout + CALL_TIMEOUT)
               for ext in ring_step.extensions]
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number, media=media_relay_ip),
                             timeout=ring_step.timeout + CALL_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                 caller_keys(callback_did.number, unlisted_caller),
                 timeout=ring_step.timeout + CALL_TIMEOUT)
    far_end.expect_success()
    for phone in ringing:
        phone.expect_success()


def test_busy_extensions_fall_through_to_the_forward_step(
    sipp, phones, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller, ring_step,
    forward_number,
):
    busy = [sipp.start_uas("callee.xml", phones[ext].host, phones[ext].port,
                           callee_keys("busy"), timeout=CALL_TIMEOUT)
            for ext in ring_step.extensions]
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number), timeout=CALL_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                 caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
    far_end.expect_success()
    for phone in busy:
        phone.expect_success()


@pytest.mark.parametrize("asserted_by", ["from", "p-asserted-identity"])
def test_listed_caller_gets_the_trigger_reply_and_is_called_back_from_the_did(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, unlisted_caller,
    asserted_by,
):
    # With P-Asserted-Identity the carrier's assertion wins over From.
    if asserted_by == "from":
        keys = caller_keys(callback_did.number, listed_caller)
    else:
        keys = caller_keys(callback_did.number, unlisted_caller,
                           header=f"P-Asserted-Identity: <sip:{listed_caller}@{carrier_ip}>")
    keys["code"] = callback_did.callback.reject_code
    # The call-back rings the employee's mobile through the trunk, from the DID;
    # nobody types a number, so the engine hangs up (a voicemail would do the same).
    employee = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                              callee_keys("answer", user=listed_caller, caller=callback_did.number),
                              timeout=CALLBACK_TIMEOUT)
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys,
                 timeout=CALL_TIMEOUT)
    employee.expect_success()


def test_listed_number_from_an_untrusted_source_is_refused(
    sipp, pbx_address, stranger_ip, callback_did, listed_caller,
):
    keys = caller_keys(callback_did.number, listed_caller,
                       header=f"P-Asserted-Identity: <sip:{listed_caller}@{stranger_ip}>")
    keys["code"] = 403
    sipp.run_uac("carrier_call_rejected.xml", stranger_ip, str(pbx_address), keys,
                 timeout=CALL_TIMEOUT)


def test_unknown_did_is_not_found(sipp, lab, pbx_address, carrier_ip, callback_did, unlisted_caller):
    unknown = callback_did.number[:-1] + ("1" if callback_did.number[-1] != "1" else "2")
    assert unknown not in lab.numbers
    keys = caller_keys(unknown, unlisted_caller)
    keys["code"] = 404
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys,
                 timeout=CALL_TIMEOUT)


def test_reject_step_answers_with_its_code(sipp, lab, pbx_address, carrier_ip, unlisted_caller):
    for did in lab.numbers.values():
        first = lab.routing_schemes[did.routing][0]
        if isinstance(first, model.RejectStep):
            break
    else:
        pytest.skip("no DID whose scheme starts with a reject step")
    keys = caller_keys(did.number, unlisted_caller)
    keys["code"] = first.code
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys,
                 timeout=CALL_TIMEOUT)


def test_malformed_sip_is_dropped_and_the_edge_keeps_answering(pbx_address, stranger_ip, carrier_ip):
    garbage = [
        b"\x00\xff" * 200,
        b"INVITE sip:@ SIP/2.0\r\n\r\n",
        b"INVITE sip:+421233000111@127.0.0.1 SIP/2.0\r\nVia: broken\r\nContent-Length: 9999\r\n\r\nv=0",
        b"SIP/2.0 200 OK\r\n\r\n",
    ]
    for source in (stranger_ip, carrier_ip):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            for datagram in garbage:
                sock.sendto(datagram, (pbx_address.host, pbx_address.port))
    assert sip_options(pbx_address, stranger_ip) is not None
