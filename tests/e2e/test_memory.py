"""The edge short of shared memory answers 503 with Retry-After, never silence, and takes the next call.

A second edge (second_edge: the deployed kamailio.cfg and KEMI router, on a
loopback address of its own) runs with a small shared memory on purpose, and
the carrier, a trunk that pike never bans, floods it with INVITEs to a closed
DID. The router answers a scheme that only refuses statelessly, so the second
edge runs its own copy of the routing data in which the closed scheme first
rings an extension nobody registers in this test, then refuses: each INVITE
becomes a tm transaction, which lives in shared memory until its ACK and tm's
wait timer, so memory runs short within seconds. Every INVITE
must get a final answer, the scheme's 480 or a 503 with Retry-After from the
KEMI router's MemoryGuard, and Kamailio must never have run out (tm's
"out of mem"). Once the flood's transactions have ended, a forwarded call
from the carrier goes through the same edge.
"""

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.second_edge import second_edge, stateful_refusal
from vpbx_testing.sipp import NO_HEADER
from vpbx_testing.waiting import wait_until

from vpbx import model

KAMAILIO_DEFAULTS = yaml.safe_load((REPO / "roles" / "kamailio" / "defaults" / "main.yml").read_text())
KAMAILIO_LOG = Path(KAMAILIO_DEFAULTS["kamailio_log_file"])
RETRY_AFTER = KAMAILIO_DEFAULTS["kamailio_overload_retry_after"]
# The guard reads a statistic refreshed once per timer tick, which a busy
# machine delays: the reserve must hold what arrives meanwhile. A fifth of the
# role's computed size (448 MB by default) holds seconds of a flood; a fifth
# of this test's small memory does not, so the test's edge keeps 40 % (about
# 1.2 s of the flood at 14 KB a transaction).
RESERVE_PERCENT = 40
# Small on purpose: a few seconds of the flood's transactions fill it. Not much
# smaller: free memory is read as Kamailio's statistics count it, once per
# timer tick, and the reserve must outlast what a tick's INVITEs take.
SMALL_SHM_MB = 64
FLOOD_RATE = 1500
FLOOD_SECONDS = 8
# An INVITE nobody answers is given up by SIPp after its retransmissions (about a minute).
FLOOD_TIMEOUT = FLOOD_SECONDS + 90
CALL_TIMEOUT = 25
# Until the flood's transactions have ended (ACK, then tm's 5 s wait timer).
MEMORY_BACK_WAIT = 60
FINAL = re.compile(r"final (\d+)(?: retry_after=(\S*))?")


@pytest.fixture(scope="module")
def closed_did(lab: model.Config) -> model.Did:
    """A DID whose scheme refuses every call with 480 at once (the lab's "closed")."""
    for did in lab.numbers.values():
        steps = lab.routing_schemes[did.routing]
        if isinstance(steps[0], model.RejectStep) and steps[0].code == 480:
            return did
    pytest.skip("the inventory has no DID whose scheme starts with reject 480")


def shm_free_mb(ctl: str) -> float:
    out = subprocess.run(["kamcmd", "-s", ctl, "core.shmmem"], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    return int(re.search(r"free:\s*(\d+)", out).group(1)) / 2**20


def test_a_flood_beyond_memory_gets_503s_not_silence_and_the_next_call_goes_through(
    sipp, lab, pbx_address, carrier_ip, trunk_port, closed_did, callback_did, unlisted_caller,
    forward_number, tmp_path,
):
    log_start = KAMAILIO_LOG.stat().st_size
    replace = stateful_refusal(tmp_path, closed_did.routing, RESERVE_PERCENT)
    with second_edge(pbx_address, tmp_path, replace=replace, shm_mb=SMALL_SHM_MB) as (edge, ctl):
        calls = FLOOD_RATE * FLOOD_SECONDS
        flood = sipp.run_uac("carrier_flood.xml", carrier_ip, str(edge),
                             {"did": closed_did.number, "caller": unlisted_caller,
                              "header": NO_HEADER, "hold_ms": 0},
                             calls=calls, timeout=FLOOD_TIMEOUT,
                             extra=["-r", str(FLOOD_RATE)], check=False)
        finals = [FINAL.search(line) for line in flood.log_lines()]
        codes = Counter(m.group(1) for m in finals if m)
        retry_afters = Counter(m.group(2) for m in finals if m and m.group(1) == "503")
        assert codes["503"] > 0, f"memory never ran short ({codes}): the test proves nothing"
        assert codes["480"] > 0, f"the edge took none of the flood ({codes})"
        # Every INVITE answered: none left to SIPp's retransmissions and timeout.
        assert sum(codes.values()) == calls, flood.report(f"answers {dict(codes)} to {calls} INVITEs")
        assert retry_afters == {str(RETRY_AFTER): codes["503"]}
        log = KAMAILIO_LOG.read_bytes()[log_start:].decode(errors="replace")
        assert "out of mem" not in log
        assert "shared memory low" in log
        # Once the flood's transactions are over, memory is back and the carrier's call is taken.
        wait_until("the second edge's shared memory is back above its reserve",
                   lambda: shm_free_mb(ctl) > SMALL_SHM_MB * RESERVE_PERCENT / 100 * 2,
                   MEMORY_BACK_WAIT)
        far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                                 callee_keys("answer", user=forward_number), timeout=CALL_TIMEOUT)
        sipp.run_uac("carrier_call.xml", carrier_ip, str(edge),
                     caller_keys(callback_did.number, unlisted_caller), timeout=CALL_TIMEOUT)
        far_end.expect_success()
