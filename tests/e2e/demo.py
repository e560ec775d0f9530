"""`make demo`: one callback on the lab deploy, from trigger to hang-up, told as it happens.

SIPp plays the carrier and both mobiles (see test_callback.py); what is
printed comes from what they saw, from callbackd's log and from the CDR.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

from conftest import inventory_dir, inventory_variables
from vpbx_testing.peers import caller_keys
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap
from vpbx_testing.sipp import SippError, SippRunner

from vpbx import model

CDR_FILE = Path("/var/log/vpbx/cdr.jsonl")
ENGINE_LOG = Path("/var/log/vpbx/callbackd.log")
CLIENT_TYPED = "0905123456"
CLIENT_TALKS_MS = 5000
TIMEOUT = 60


def say(step: str, text: str) -> None:
    print(f"{step:>3}  {text}", flush=True)


def main() -> int:
    lab = model.load(inventory_variables(inventory_dir()))
    did = next(d for d in lab.numbers.values() if d.callback and d.callback.enabled)
    employee = sorted(lab.number_lists[did.callback.list])[0]
    trunk = lab.trunks[0]
    carrier, pbx = trunk.address.host, lab.sip_listen
    work = Path(tempfile.mkdtemp(prefix="vpbx-demo-"))
    runner = SippRunner(work / "sipp")
    cdr_start = CDR_FILE.stat().st_size if CDR_FILE.exists() else 0
    log_start = ENGINE_LOG.stat().st_size if ENGINE_LOG.exists() else 0

    print(f"vPBX CallBack demo: PBX at {pbx}, carrier {trunk.name} at {trunk.address}")
    keys = {
        "employee": employee, "did": did.number, "employee_mode": "answer",
        "employee_pcap": dtmf_then_tone_pcap(work / "employee.pcap", CLIENT_TYPED + "#",
                                             0xE0E0E0E0, 440, 12),
        "employee_info": "-", "info_type": "dtmf-relay", "employee_hangup": "remote",
        "client": "*", "client_mode": "answer",
        "client_pcap": tone_pcap(work / "client.pcap", 0xC1C1C1C1, 660, 6),
        "client_hangup": f"local:{CLIENT_TALKS_MS}", "ring_ms": 800,
    }
    try:
        far_end = runner.start_uas("far_end.xml", carrier, trunk.address.port, keys, calls=2,
                                   timeout=TIMEOUT)
        say("1.", f"{employee} (the employee's mobile) calls the CallBack number {did.number}")
        trigger = caller_keys(did.number, employee)
        trigger["code"] = did.callback.reject_code
        runner.run_uac("carrier_call_rejected.xml", carrier, str(pbx), trigger, timeout=25)
        say("", f"the PBX refuses it with {did.callback.reject_code}, unanswered: the call costs nothing")
        line = far_end.wait_for_log("role=employee", timeout=TIMEOUT)
        say("2.", f"the PBX calls the employee back: {_field(line, 'ruri_user')} "
                  f"sees {_field(line, 'from_user')} calling")
        say("3.", f"the employee answers, hears the prompt ({did.callback.language}) "
                  f"and types {CLIENT_TYPED}# (RFC 4733)")
        line = far_end.wait_for_log("role=client", timeout=TIMEOUT)
        say("4.", f"the PBX calls the client {_field(line, 'ruri_user')}, presenting "
                  f"{_field(line, 'from_user')}; the employee hears ringback")
        far_end.expect_success(timeout=TIMEOUT)
    except SippError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        runner.close()

    cdr = _new_cdr(cdr_start)
    if cdr is None:
        print("demo failed: no CDR line written", file=sys.stderr)
        return 1
    say("5.", f"the client answers: bridged for {cdr['bridged_seconds']:.1f} s; "
              f"the {cdr['ended_by']} hangs up and the other side is hung up at once")
    print("\ncallbackd's log of it:")
    for line in _new_lines(ENGINE_LOG, log_start):
        print(f"     {line}")
    print(f"\nCDR ({CDR_FILE}):\n{json.dumps(cdr)}")
    if cdr.get("recording"):
        print(f"recording: {cdr['recording']}")
    return 0 if cdr["result"] == "bridged" else 1


def _field(line: str, name: str) -> str:
    return line.split(f"{name}=", 1)[1].split()[0]


def _new_lines(path: Path, start: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace").splitlines()


def _new_cdr(start: int) -> dict | None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lines = [line for line in _new_lines(CDR_FILE, start) if line.strip()]
        if lines:
            return json.loads(lines[-1])
        time.sleep(0.2)
    return None


if __name__ == "__main__":
    sys.exit(main())
