"""One truth of registrations for every edge: a phone registered through edge 1 is rung
by the carrier's call arriving at edge 2 (usrloc over db_redis, on the state store)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from vpbx_testing.peers import callee_keys, caller_keys

CALL_TIMEOUT = 60
REGISTER_EXPIRES = 300


@pytest.fixture
def phone(sipp, lab, edges, pbx) -> Iterator[tuple[str, str, int]]:
    """The first extension of the DID's ring step, registered through edge 1 from the
    machine's own address on the bridge (not the carrier's): (extension, ip, port)."""
    ring = next(s for s in pbx.routing_schemes["office"] if hasattr(s, "extensions"))
    extension, ip, port = ring.extensions[0], lab.machine_addresses[0], 5062
    keys = {"user": extension, "password": pbx.extensions[extension], "expires": REGISTER_EXPIRES}
    sipp.run_uac("phone_register.xml", ip, str(edges["edge1"]), keys, port=port, timeout=30)
    try:
        yield extension, ip, port
    finally:
        sipp.close()
        sipp.run_uac("phone_register.xml", ip, str(edges["edge1"]), {**keys, "expires": 0}, port=port,
                     timeout=30, check=False)


def test_a_phone_registered_through_edge_1_is_rung_by_a_call_arriving_at_edge_2(
    sipp, phone, edges, pbx, carrier_ip,
):
    # An unlisted caller: the DID's scheme rings the extension, callback or not.
    did = next(d for d in pbx.numbers.values() if d.routing == "office")
    _extension, ip, port = phone
    caller = "+421905999888"
    ringing = sipp.start_uas("callee.xml", ip, port, callee_keys("answer", caller=caller),
                             timeout=CALL_TIMEOUT)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(edges["edge2"]), caller_keys(did.number, caller),
                 timeout=CALL_TIMEOUT)
    ringing.expect_success()
