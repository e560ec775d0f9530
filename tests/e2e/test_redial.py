"""Redial: `**` at the digits prompt calls the employee's last client on the DID again.

Two call-backs in a row for the same employee, the carrier and both mobiles
played by SIPp as in test_callback: the first types the client's number, the
second only `**`. Beside it, `**` of an employee with no last client dials
no client at all.
"""

import json
from pathlib import Path

import pytest
from test_callback import (  # noqa: F401 (cdr_after, short_attempts_did: fixtures)
    CLIENT_E164,
    CLIENT_NUMBER,
    CLIENT_SSRC,
    EMPLOYEE_SSRC,
    FLOW_TIMEOUT,
    cdr_after,
    far_end_keys,
    short_attempts_did,
    trigger,
)
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap
from vpbx_testing.wire import Capture

from callbackd import store
from callbackd.machine import REDIAL_KEYS
from callbackd.recording import udp_datagrams
from vpbx import model

CALLBACKD_SETTINGS = Path("/etc/vpbx/callbackd.json")
# Keys as they may stand in a file name handed to SIPp.
PCAP_NAMES = str.maketrans({"*": "star", "#": "hash"})


class LastClients:
    """The engines' last clients in the state store; every key cleared is cleared again at the end."""

    def __init__(self, url: str):
        self._client = store.connect(url)
        self.cleared: set[str] = set()

    @staticmethod
    def _key(did: model.Did, employee: str) -> str:
        return f"{store.PREFIX}last_client:{did.number}:{employee}"

    def clear(self, did: model.Did, employee: str) -> None:
        self._client.delete(self._key(did, employee))
        self.cleared.add(self._key(did, employee))

    def get(self, did: model.Did, employee: str) -> str | None:
        return self._client.get(self._key(did, employee))

    def clear_all(self) -> None:
        if self.cleared:
            self._client.delete(*self.cleared)


@pytest.fixture
def last_clients():
    url = json.loads(CALLBACKD_SETTINGS.read_text()).get("state_store")
    if not url:
        pytest.skip("callbackd keeps its last clients in memory (no state_store): not clearable from here")
    kept = LastClients(url)
    yield kept
    kept.clear_all()


def call_back(sipp, tmp_path, pbx_address, carrier_ip, trunk_port, did, employee, typed: str, client: str,
              calls: int) -> None:
    """One call-back: the employee types `typed`; the client (`client`, or "never") answers and hangs up."""
    employee_pcap = dtmf_then_tone_pcap(tmp_path / f"employee-{typed.translate(PCAP_NAMES)}.pcap", typed,
                                        EMPLOYEE_SSRC, 440, 6)
    client_pcap = tone_pcap(tmp_path / "client.pcap", CLIENT_SSRC, 660, 3)
    keys = far_end_keys(did, employee, employee_pcap=employee_pcap, client=client, client_pcap=client_pcap,
                        client_hangup="local:2000")
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=calls, timeout=FLOW_TIMEOUT)
    trigger(sipp, pbx_address, carrier_ip, did, employee)
    far_end.expect_success(timeout=FLOW_TIMEOUT)


def test_two_stars_call_the_client_of_the_employees_last_call_back_again(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, cdr_after,  # noqa: F811
    last_clients,
):
    last_clients.clear(callback_did, listed_caller)
    call_back(sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller,
              CLIENT_NUMBER + "#", CLIENT_E164, calls=2)
    [first] = cdr_after()
    assert (first["result"], first["client_e164"], first["redial"]) == ("bridged", CLIENT_E164, False)
    assert last_clients.get(callback_did, listed_caller) == CLIENT_E164

    call_back(sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller,
              REDIAL_KEYS, CLIENT_E164, calls=2)
    [_, second] = cdr_after(expected=2)
    assert second["result"] == "bridged"
    assert (second["redial"], second["client_dialled"], second["client_e164"]) == (True, "**", CLIENT_E164)


def test_two_stars_of_an_employee_with_no_last_client_dial_no_client(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, short_attempts_did, listed_caller,  # noqa: F811
    cdr_after, last_clients,  # noqa: F811
):
    last_clients.clear(short_attempts_did, listed_caller)
    with Capture(bpf=f"udp and dst host {carrier_ip} and dst port {trunk_port}") as wire:
        call_back(sipp, tmp_path, pbx_address, carrier_ip, trunk_port, short_attempts_did, listed_caller,
                  REDIAL_KEYS, "never", calls=1)
        [cdr] = cdr_after()
    # "Invalid number", and with the DID's one attempt used up the call-back ends.
    assert (cdr["result"], cdr["redial"], cdr["client_e164"]) == ("denied", True, None)
    invites = [d.payload.split(b"\r\n", 1)[0].decode() for d in udp_datagrams(wire.path)
               if d.payload.startswith(b"INVITE ")]
    assert invites and all(listed_caller in line for line in invites), invites
