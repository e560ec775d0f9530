"""Calls through either edge of the lab of hosts, the machine playing the carrier.

A listed employee's trigger reaches edge 1 or edge 2; an engine (on its own
host) calls the employee back through its edge and the trunk, takes the
client's number by RFC 4733 digits (reported by the engine's media relay,
on another host) and bridges the client. An unlisted caller is routed by
the DID's scheme (nobody registered: forwarded through the trunk).
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import group, host_file
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap

CDR = "/var/log/vpbx/cdr.jsonl"
CLIENT_NUMBER = "0905123456"
CLIENT_E164 = "+421905123456"
EMPLOYEE_SSRC = 0xE0E0E0E0
CLIENT_SSRC = 0xC1C1C1C1
# Generous: the machine has two cores for seven hosts and the test peers.
FLOW_TIMEOUT = 90
CDR_WAIT = 60


def engine_cdrs(lab, pids) -> dict[str, int]:
    """Where each engine's CDR file ends now."""
    sizes = {}
    for engine in group(lab, "callback_engines"):
        path = host_file(pids[engine.name], CDR)
        sizes[engine.name] = path.stat().st_size if path.exists() else 0
    return sizes


def wait_for_cdr(lab, pids, since: dict[str, int], employee: str) -> tuple[str, dict]:
    """The first CDR of `employee` any engine writes after `since`: (engine, record)."""
    deadline = time.monotonic() + CDR_WAIT
    while time.monotonic() < deadline:
        for engine, start in since.items():
            path = host_file(pids[engine], CDR)
            if not path.exists():
                continue
            with path.open("rb") as cdrs:
                cdrs.seek(start)
                for line in cdrs.read().splitlines():
                    record = json.loads(line)
                    if record.get("employee") == employee:
                        return engine, record
        time.sleep(0.5)
    raise AssertionError(f"no engine wrote a CDR for {employee} within {CDR_WAIT} s")


@pytest.mark.parametrize("edge_name", ["edge1", "edge2"])
def test_listed_caller_at_either_edge_is_called_back_and_bridged(
    sipp, tmp_path, lab, pids, edges, pbx, carrier_ip, callback_did, listed_caller, edge_name,
):
    typed = CLIENT_NUMBER + "#"
    employee_pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", typed, EMPLOYEE_SSRC, 440, 8)
    client_pcap = tone_pcap(tmp_path / "client.pcap", CLIENT_SSRC, 660, 4)
    keys = {
        "employee": listed_caller, "did": callback_did.number, "employee_mode": "answer",
        "employee_pcap": employee_pcap, "employee_info": "-", "info_type": "dtmf-relay",
        "employee_hangup": "remote", "client": CLIENT_E164, "client_mode": "answer",
        "client_pcap": client_pcap, "client_hangup": "local:4000", "ring_ms": 300,
    }
    since = engine_cdrs(lab, pids)
    far_end = sipp.start_uas("far_end.xml", carrier_ip, pbx.trunks[0].address.port, keys, calls=2,
                             timeout=FLOW_TIMEOUT)
    trigger = caller_keys(callback_did.number, listed_caller)
    trigger["code"] = callback_did.callback.reject_code
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(edges[edge_name]), trigger, timeout=30)
    far_end.expect_success(timeout=FLOW_TIMEOUT)
    engine, cdr = wait_for_cdr(lab, pids, since, listed_caller)
    assert cdr["result"] == "bridged", (engine, cdr)
    assert (cdr["did"], cdr["client_e164"]) == (callback_did.number, CLIENT_E164)


@pytest.mark.parametrize("edge_name", ["edge1", "edge2"])
def test_unlisted_caller_at_either_edge_is_routed_by_the_scheme(
    sipp, edges, pbx, carrier_ip, callback_did, listed_caller, edge_name,
):
    forward = next(s.number for s in pbx.routing_schemes[callback_did.routing] if hasattr(s, "number"))
    unlisted = listed_caller[:-1] + ("1" if listed_caller[-1] != "1" else "2")
    assert unlisted not in pbx.number_lists[callback_did.callback.list]
    callee = sipp.start_uas("callee.xml", carrier_ip, pbx.trunks[0].address.port,
                            callee_keys("answer", user=forward), timeout=FLOW_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(edges[edge_name]),
                 caller_keys(callback_did.number, unlisted), timeout=FLOW_TIMEOUT)
    callee.expect_success(timeout=FLOW_TIMEOUT)
