"""Two callback engines, one truth: a trigger at both edges makes one call-back, and a
bridged call-back outlives the engine that placed it.

The engines share the state store (callbackd.store): the employee's claim is
one Redis step, so triggers at both edges at once give one call-back; an
engine that stops leaves its callbacks there, its heartbeat lapses, and the
other engine takes them over: it moves both phones' dialogs to itself with
a re-INVITE, passes the employee's BYE to the client and writes the CDR.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from conftest import group, host_file
from test_calls import CDR, CLIENT_E164, CLIENT_NUMBER, CLIENT_SSRC, EMPLOYEE_SSRC, engine_cdrs
from vpbx_testing.peers import caller_keys
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap

from cluster.run import enter

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
ENGINE_LOG = "/var/log/vpbx/callbackd.log"
FLOW_TIMEOUT = 120
EVENT_WAIT = 60.0
# The employee hangs up this long after the engine that took over moved the
# dialog: the takeover itself waits for the dead engine's heartbeat to lapse.
HOLD_MS = 3000
TONE_S = 60


def log_lines(pids, engine: str) -> list[str]:
    path = host_file(pids[engine], ENGINE_LOG)
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def wait_for_line(pids, engines, text: str, since: dict[str, int]) -> tuple[str, str]:
    """The first new line containing `text` in any engine's log: (engine, line)."""
    deadline = time.monotonic() + EVENT_WAIT
    while time.monotonic() < deadline:
        for engine in engines:
            for line in log_lines(pids, engine)[since[engine]:]:
                if text in line:
                    return engine, line
        time.sleep(0.3)
    raise AssertionError(f"no engine logged {text!r} within {EVENT_WAIT:.0f} s")


def log_marks(pids, engines) -> dict[str, int]:
    return {engine: len(log_lines(pids, engine)) for engine in engines}


def cdrs_of(pids, since: dict[str, int], employee: str) -> list[tuple[str, dict]]:
    found = []
    for engine, start in since.items():
        path = host_file(pids[engine], CDR)
        if path.exists():
            with path.open("rb") as f:
                f.seek(start)
                found += [(engine, r) for r in map(json.loads, f.read().splitlines())
                          if r.get("employee") == employee]
    return found


def trigger(sipp, carrier_ip, edge, did, employee) -> None:
    keys = caller_keys(did.number, employee)
    keys["code"] = did.callback.reject_code
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(edge), keys, timeout=30)


def test_the_same_employee_triggering_at_both_edges_at_once_is_called_back_once(
    sipp, lab, pids, edges, pbx, carrier_ip, callback_did, listed_caller,
):
    engines = [h.name for h in group(lab, "callback_engines")]
    marks, since = log_marks(pids, engines), engine_cdrs(lab, pids)
    employee = sipp.start_uas("callee.xml", carrier_ip, pbx.trunks[0].address.port,
                              {"mode": "answer", "ring_ms": 200, "hangup": "local", "hold_ms": 500,
                               "expect_user": listed_caller, "expect_from": callback_did.number,
                               "expect_media": "*"}, timeout=FLOW_TIMEOUT)
    both = [threading.Thread(target=trigger, args=(sipp, carrier_ip, edges[e], callback_did, listed_caller))
            for e in sorted(edges)]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join(60)
    employee.expect_success(timeout=FLOW_TIMEOUT)
    # Both triggers were answered "call-back follows"; one started a callback.
    wait_for_line(pids, engines, "no second call-back", marks)
    started = [line for e in engines for line in log_lines(pids, e)[marks[e]:]
               if f"employee={listed_caller} triggered" in line]
    assert len(started) == 1, started
    deadline = time.monotonic() + EVENT_WAIT
    while not cdrs_of(pids, since, listed_caller):
        assert time.monotonic() < deadline, "no CDR of the call-back"
        time.sleep(0.5)
    assert len(cdrs_of(pids, since, listed_caller)) == 1


def test_a_bridged_call_back_whose_engine_stops_is_taken_over_and_ended_by_the_other_engine(
    sipp, tmp_path, lab, pids, edges, pbx, carrier_ip, callback_did, listed_caller,
):
    engines = [h.name for h in group(lab, "callback_engines")]
    marks, since = log_marks(pids, engines), engine_cdrs(lab, pids)
    keys = {"employee": listed_caller, "hold_ms": HOLD_MS,
            "employee_pcap": dtmf_then_tone_pcap(tmp_path / "employee.pcap", CLIENT_NUMBER + "#",
                                                 EMPLOYEE_SSRC, 440, TONE_S),
            "client_pcap": tone_pcap(tmp_path / "client.pcap", CLIENT_SSRC, 660, TONE_S)}
    phones = sipp.start_uas(SCENARIOS / "moved_far_end.xml", carrier_ip, pbx.trunks[0].address.port, keys,
                            calls=2, timeout=FLOW_TIMEOUT)
    trigger(sipp, carrier_ip, edges["edge1"], callback_did, listed_caller)
    placed_by, line = wait_for_line(pids, engines, "and client bridged", marks)
    callback_id = line.split("callback ", 1)[1].split(":", 1)[0]
    other = next(e for e in engines if e != placed_by)

    enter(pids[placed_by], "supervisorctl", "stop", "callbackd")
    try:
        wait_for_line(pids, [other], f"callback {callback_id}: taken over from", marks)
        # Both phones took the new engine's re-INVITE; the employee's BYE ended the client's leg.
        phones.expect_success(timeout=FLOW_TIMEOUT)
        assert sum("moved to=" in line for line in phones.log_lines()) == 2
        deadline = time.monotonic() + EVENT_WAIT
        while not cdrs_of(pids, since, listed_caller):
            assert time.monotonic() < deadline, "no CDR of the call-back"
            time.sleep(0.5)
        [(writer, cdr)] = cdrs_of(pids, since, listed_caller)
        assert writer == other
        assert (cdr["id"], cdr["result"], cdr["ended_by"]) == (callback_id, "bridged", "employee")
        assert cdr["client_e164"] == CLIENT_E164
    finally:
        enter(pids[placed_by], "supervisorctl", "start", "callbackd")
