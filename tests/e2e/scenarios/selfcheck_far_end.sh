#!/usr/bin/env bash
# Proves far_end.xml on its own, without a PBX: selfcheck/pbx_leg.xml (and the
# carrier_call_*.xml callers) play the PBX calling the employee, then the
# client, on loopback addresses no lab part uses. Checks the roles and what
# they logged, the INFO digits that arrive, and, on a capture made with
# vpbx_testing.wire, the RTP the far end plays from pcaps written by
# vpbx_testing.rtp_pcap: the SSRC per call, the destination (each call's
# SDP), the telephone events in order (read by vpbx_testing.wire and by
# tshark) and the A-law tone. Pairs that must
# fail prove the checks bite. Exits non-zero if any case ends otherwise than
# expected. Run it as root (SIPp plays pcaps on a raw socket; tshark captures).
#
#   tests/e2e/scenarios/selfcheck_far_end.sh            # logs go to a temporary directory
#   SELFCHECK_LOGS=/tmp/x tests/e2e/scenarios/selfcheck_far_end.sh
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
logs=${SELFCHECK_LOGS:-$(mktemp -d -t vpbx-far-end-selfcheck.XXXXXX)}
mkdir -p "$logs"
# The project's virtualenv: vpbx_testing and callbackd are installed in it.
python=${VPBX_PYTHON:-$repo/.venv/bin/python}

echo "far_end.xml selfcheck, logs in $logs"
SELFCHECK_LOGS=$logs exec "$python" - <<'PY'
import math
import os
import subprocess
import sys
from pathlib import Path

from vpbx_testing.rtp_pcap import PACKET_SAMPLES, dtmf_then_tone_pcap, empty_pcap, tone_pcap
from vpbx_testing.sipp import NO_HEADER, SCENARIOS, SippError, SippRunner
from vpbx_testing.wire import Capture, rtp_packets, rtp_streams, telephone_events

from callbackd.recording import alaw_to_linear

LOGS = Path(os.environ["SELFCHECK_LOGS"])
FAR_END = ("127.0.0.211", 5090)  # the trunk address in this check (selfcheck.sh uses .201/.202)
PBX_IP = "127.0.0.212"  # the PBX's legs come from here
EMPLOYEE_MEDIA_PORT, CLIENT_MEDIA_PORT = 6100, 6200  # the PBX's SDP of each leg
EMPLOYEE, CLIENT, DID = "+421905111222", "+421905123456", "+421233999888"
EMPLOYEE_SSRC, CLIENT_SSRC = 0x11112222, 0x33334444
LEG = SCENARIOS / "selfcheck" / "pbx_leg.xml"
BPF = f"udp and src host {FAR_END[0]} and dst host {PBX_IP}"

results: list[bool] = []


def far_end_keys(**over: object) -> dict:
    keys = {
        "employee": EMPLOYEE, "did": DID, "employee_mode": "answer", "employee_pcap": EMPTY,
        "employee_info": "-", "info_type": "dtmf-relay", "employee_hangup": "remote",
        "client": CLIENT, "client_mode": "answer", "client_pcap": EMPTY, "client_hangup": "remote",
        "ring_ms": 200,
    }
    keys.update(over)
    return keys


def leg(user: str, hangup: str, media_port: int, frm: str = DID) -> tuple:
    return LEG, {"user": user, "from": frm, "hangup": hangup}, ["-mp", str(media_port)]


def rejected(user: str, code: int) -> tuple:
    return "carrier_call_rejected.xml", {"did": user, "caller": DID, "code": code, "header": NO_HEADER}, []


def cancelled(user: str) -> tuple:
    return "carrier_call_cancel.xml", {"did": user, "caller": DID, "ring_ms": 500, "header": NO_HEADER}, []


def run(name: str, keys: dict, legs: list[tuple], want_far_end: str, want_legs: list[str], check=None,
        *, overlap: str = ""):
    """Far end for len(legs) calls, then each leg in turn; compare exit codes, then `check`.

    With `overlap`, the first leg stays up while the others run: they start
    once the far end logged a line containing `overlap`.
    """
    runner = SippRunner(LOGS / name, timeout=20)
    problems: list[str] = []
    codes: list[int] = []
    try:
        with Capture(LOGS / name / "wire.pcap", bpf=BPF) as wire:
            far_end = runner.start_uas("far_end.xml", *FAR_END, keys, calls=len(legs))
            sessions = []
            for n, (scenario, leg_keys, extra) in enumerate(legs):
                sessions.append(runner.start_uac(scenario, PBX_IP, "%s:%d" % FAR_END, leg_keys, extra=extra))
                if n == 0 and overlap:
                    far_end.wait_for_log(overlap, timeout=10)
                else:
                    sessions[-1].wait()
            for session in sessions:
                session.wait()
            code = far_end.wait()
        codes = [code, *(s.returncode for s in sessions)]
        for who, want, got in zip(["far end", *[f"leg {n + 1}" for n in range(len(legs))]],
                                  [want_far_end, *want_legs], codes, strict=True):
            if (want == "ok") != (got == 0):
                problems.append(f"{who}: want {want}, exit {got}")
        if not problems and check:
            problems += check(far_end, sessions, wire.path)
    except (SippError, OSError, AssertionError) as e:
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        runner.close()
    results.append(not problems)
    print(f"{'PASS' if not problems else 'FAIL'}  {name:34s} exits {codes}")
    for problem in problems:
        print("    " + problem.replace("\n", "\n    "))


def role_media(far_end, role: str) -> tuple[str, int]:
    line = next(x for x in far_end.log_lines() if x.startswith(f"role={role} "))
    host, port = line.split("media=")[1].split()[0].rsplit(":", 1)
    return host, int(port)


def infos(session) -> list[dict]:
    return [dict(kv.split("=", 1) for kv in x.split()[1:]) for x in session.log_lines() if x.startswith("info ")]


def tone_hz(pcap: Path, ssrc: int) -> float:
    """The frequency of the stream's A-law audio, by zero crossings."""
    samples = [alaw_to_linear(b) for *_, rtp in rtp_packets(pcap)
               if rtp.ssrc == ssrc and rtp.payload_type == 8 for b in rtp.payload]
    crossings = sum(1 for a, b in zip(samples, samples[1:]) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / 8000) if samples else 0.0


def tshark_events(pcap: Path, port: int) -> list[int]:
    """Event ids per telephone event, as tshark decodes the capture."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={port},rtp", "-Y", "rtpevent",
                          "-T", "fields", "-e", "rtp.timestamp", "-e", "rtpevent.event_id"],
                         capture_output=True, text=True, check=True).stdout
    events: list[int] = []
    last = None
    for line in out.split("\n"):
        if line.strip():
            timestamp, event = line.split("\t")
            if timestamp != last:
                events.append(int(event))
                last = timestamp
    return events


def expect(problems: list[str], what: str, got: object, want: object) -> None:
    if got != want:
        problems.append(f"{what}: got {got!r}, want {want!r}")


def check_roles(*want: str):
    def check(far_end, _sessions, _pcap) -> list[str]:
        problems: list[str] = []
        roles = [x.split()[0] for x in far_end.log_lines() if x.startswith("role=")]
        expect(problems, "roles logged", roles, [f"role={r}" for r in want])
        return problems
    return check


def empty_capture(far_end, sessions, pcap) -> list[str]:
    problems = check_roles("employee")(far_end, sessions, pcap)
    expect(problems, "RTP from the far end (empty pcap)", [str(s) for s in rtp_streams(pcap)], [])
    return problems


# -- the pcaps -----------------------------------------------------------------

EMPTY = empty_pcap(LOGS / "empty.pcap")
EMPLOYEE_DIGITS = "0905#"
EMPLOYEE_PCAP = dtmf_then_tone_pcap(LOGS / "employee.pcap", EMPLOYEE_DIGITS, EMPLOYEE_SSRC, 440, 0.6)
CLIENT_PCAP = tone_pcap(LOGS / "client.pcap", CLIENT_SSRC, 1000, 0.5)
PACKETS = {ssrc: sum(1 for *_, rtp in rtp_packets(p) if rtp.ssrc == ssrc)
           for ssrc, p in ((EMPLOYEE_SSRC, EMPLOYEE_PCAP), (CLIENT_SSRC, CLIENT_PCAP))}
assert telephone_events(EMPLOYEE_PCAP) == EMPLOYEE_DIGITS, "rtp_pcap and wire disagree on the events"


def full_call(far_end, sessions, pcap) -> list[str]:
    problems = check_roles("employee", "client")(far_end, sessions, pcap)
    lines = far_end.log_lines()
    expect(problems, "employee line", next(x for x in lines if x.startswith("role=employee")),
           f"role=employee ruri_user={EMPLOYEE} from_user={DID} media={PBX_IP}:{EMPLOYEE_MEDIA_PORT}")
    expect(problems, "client line", next(x for x in lines if x.startswith("role=client")),
           f"role=client ruri_user={CLIENT} from_user={DID} media={PBX_IP}:{CLIENT_MEDIA_PORT}")
    got = infos(sessions[0])
    expect(problems, "INFO digits", "".join(i["digit"] for i in got), "12#")
    expect(problems, "INFO types", {i["type"] for i in got}, {"application/dtmf-relay"})
    expect(problems, "INFO branches unique", len({i["branch"] for i in got}), len(got))
    cseqs = [int(i["cseq"]) for i in got]
    expect(problems, "INFO CSeq increasing", cseqs, sorted(set(cseqs)))
    expect(problems, "INFOs on the client call", infos(sessions[1]), [])

    employee_media, client_media = role_media(far_end, "employee"), role_media(far_end, "client")
    streams = {s.ssrc: s for s in rtp_streams(pcap)}
    expect(problems, "SSRCs played", sorted(streams), sorted([EMPLOYEE_SSRC, CLIENT_SSRC]))
    if problems:
        return problems
    employee, client = streams[EMPLOYEE_SSRC], streams[CLIENT_SSRC]
    expect(problems, "employee stream to", employee.dst, employee_media)
    expect(problems, "client stream to", client.dst, client_media)
    expect(problems, "employee payload types", employee.payload_types, {8, 101})
    expect(problems, "client payload types", client.payload_types, {8})
    expect(problems, "employee packets", employee.packets, PACKETS[EMPLOYEE_SSRC])
    expect(problems, "client packets", client.packets, PACKETS[CLIENT_SSRC])
    expect(problems, "events (wire.py)", telephone_events(pcap, ssrc=EMPLOYEE_SSRC, dst=employee_media),
           EMPLOYEE_DIGITS)
    expect(problems, "events (tshark)", tshark_events(pcap, employee_media[1]), [0, 9, 0, 5, 11])
    # ~20 ms between packets as in the pcap (SIPp keeps the pcap's timing).
    span = client.last_time - client.first_time
    want_span = (client.packets - 1) * PACKET_SAMPLES / 8000
    if not math.isclose(span, want_span, rel_tol=0.1):
        problems.append(f"client stream lasted {span:.3f} s, want about {want_span:.3f} s")
    hz = tone_hz(pcap, CLIENT_SSRC)
    if not 980 < hz < 1020:
        problems.append(f"client tone {hz:.0f} Hz, want 1000")
    return problems


def plain_info(far_end, sessions, pcap) -> list[str]:
    problems = empty_capture(far_end, sessions, pcap)
    got = infos(sessions[0])
    expect(problems, "INFO digits", "".join(i["digit"] for i in got), "7*")
    expect(problems, "INFO types", {i["type"] for i in got}, {"application/dtmf"})
    return problems


def bye_during_infos(far_end, sessions, pcap) -> list[str]:
    problems = check_roles("employee")(far_end, sessions, pcap)
    expect(problems, "INFO digits before the BYE", "".join(i["digit"] for i in infos(sessions[0])), "1")
    expect(problems, "far end's digit lines", [x for x in far_end.log_lines() if x.startswith("info ")],
           ["info digit=1"])
    return problems


# -- the cases -----------------------------------------------------------------

# As in a call-back: the client is called while the employee's call is up
# (and plays its pcap); the client hangs up first, then the employee.
run("employee-then-client", far_end_keys(
        employee_pcap=EMPLOYEE_PCAP, employee_info="12#", employee_hangup="local:2500",
        client_pcap=CLIENT_PCAP, client_hangup="local:800"),
    [leg(EMPLOYEE, "wait", EMPLOYEE_MEDIA_PORT), leg(CLIENT, "wait", CLIENT_MEDIA_PORT)],
    "ok", ["ok", "ok"], full_call, overlap="info done")
run("employee-hung-up-by-pbx", far_end_keys(employee_pcap=EMPLOYEE_PCAP, employee_info="5"),
    [leg(EMPLOYEE, "bye", EMPLOYEE_MEDIA_PORT)], "ok", ["ok"], check_roles("employee"))
run("info-dtmf-empty-pcap-local-bye", far_end_keys(
        employee_info="7*", info_type="dtmf", employee_hangup="local:500"),
    [leg(EMPLOYEE, "wait", EMPLOYEE_MEDIA_PORT)], "ok", ["ok"], plain_info)
run("pbx-hangs-up-between-infos", far_end_keys(employee_info="123#"),
    [leg(EMPLOYEE, "info", EMPLOYEE_MEDIA_PORT)], "ok", ["ok"], bye_during_infos)
run("employee-busy", far_end_keys(employee_mode="busy"),
    [rejected(EMPLOYEE, 486)], "ok", ["ok"], check_roles("employee"))
run("employee-rings-cancelled", far_end_keys(employee_mode="ring"),
    [cancelled(EMPLOYEE)], "ok", ["ok"], check_roles("employee"))
run("employee-retried-then-client-busy", far_end_keys(employee_mode="busy", client_mode="busy"),
    [rejected(EMPLOYEE, 486), rejected(EMPLOYEE, 486), rejected(CLIENT, 486)],
    "ok", ["ok", "ok", "ok"], check_roles("employee", "employee", "client"))
run("client-rings-cancelled", far_end_keys(client_mode="ring"),
    [cancelled(CLIENT)], "ok", ["ok"], check_roles("client"))
run("client-any-number", far_end_keys(client="*"),
    [leg("+421905000000", "bye", CLIENT_MEDIA_PORT)], "ok", ["ok"], check_roles("client"))
# The checks must bite; the dialog is still completed (the leg succeeds).
run("wrong-caller-id-fails-employee", far_end_keys(),
    [leg(EMPLOYEE, "bye", EMPLOYEE_MEDIA_PORT, frm="+421233999887")], "fail", ["ok"])
run("wrong-caller-id-fails-client", far_end_keys(),
    [leg(CLIENT, "bye", CLIENT_MEDIA_PORT, frm="+421233999887")], "fail", ["ok"])
run("wrong-client-number-fails", far_end_keys(),
    [leg("+421905000000", "bye", CLIENT_MEDIA_PORT)], "fail", ["ok"])
run("bad-mode-key-fails", far_end_keys(employee_mode="answered"),
    [leg(EMPLOYEE, "bye", EMPLOYEE_MEDIA_PORT)], "fail", ["ok"])
run("bad-hangup-key-fails", far_end_keys(client_hangup="local"),
    [leg(EMPLOYEE, "bye", EMPLOYEE_MEDIA_PORT)], "fail", ["ok"])
run("bad-info-key-fails", far_end_keys(employee_info="12x"),
    [leg(EMPLOYEE, "bye", EMPLOYEE_MEDIA_PORT)], "fail", ["ok"])

failed = results.count(False)
if failed:
    print(f"{failed} case(s) did not end as expected; logs in {LOGS}")
    sys.exit(1)
print("all cases ended as expected")
PY
