"""Callback latency, read off the wire, at 1 and at N concurrent callbacks.

    .venv/bin/python bench/callback_latency.py [--concurrency 1,50] [--keep-deploy]

Deploys a copy of the lab inventory whose list holds one employee per
concurrent callback (recording off), captures loopback with tshark while
SIPp plays the carrier (triggers) and the mobiles (one far end at the trunk),
then measures on the capture:

* trigger: the trigger INVITE arriving at the edge -> the call-back INVITE
  leaving the edge for the trunk, minus `callback.delay`;
* digits: the SIP INFO carrying `#` arriving at the edge -> the client INVITE
  leaving the edge for the trunk.

The baseline is a classic PBX callback (Asterisk call file + Read + Dial)
measured on this kind of box: about 17 ms and 2 ms for one call; our goal is
p95 <= 20 ms and <= 10 ms at 50 concurrent. Finally the lab inventory is
deployed again.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from lab import LAB, REPO, bench_inventory, callback_list, deploy, numbered, percentile, say, wait_until_quiet
from vpbx_testing.rtp_pcap import tone_pcap
from vpbx_testing.sipp import SippRunner
from vpbx_testing.wire import Capture

from callbackd.recording import udp_datagrams
from vpbx import model

TRIGGER = REPO / "bench" / "callback" / "trigger.xml"
EMPLOYEE_PREFIX = "+4219051"  # employees +4219051NNNNN; the client is elsewhere
CLIENT_TYPED = "0907123456"
CLIENT_E164 = "+421907123456"
BASELINE_MS = {"trigger": 17.0, "digits": 2.0}
GOAL_P95_MS = {"trigger": 20.0, "digits": 10.0}
HOLD_MS = 4000
# One callback at a time is sampled this often, each after the last ended.
SEQUENTIAL_SAMPLES = 10
CALLBACK_SECONDS = 9


def first_line(payload: bytes) -> str:
    return payload.split(b"\r\n", 1)[0].decode(errors="replace")


def header(payload: bytes, name: str) -> str:
    for line in payload.decode(errors="replace").split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def user_of(value: str) -> str:
    return value.split("sip:", 1)[-1].split("@", 1)[0]


def measure(capture: Path, config: model.Config, did: model.Did) -> dict[str, list[float]]:
    pbx = (config.sip_listen.host, config.sip_listen.port)
    trunk = (config.trunks[0].address.host, config.trunks[0].address.port)
    triggers: dict[str, float] = {}
    callbacks: dict[str, float] = {}
    hashes: list[float] = []
    clients: list[float] = []
    for d in udp_datagrams(capture):
        line = first_line(d.payload)
        if d.dst == pbx and line.startswith(f"INVITE sip:{did.number}@"):
            triggers.setdefault(user_of(header(d.payload, "From")), d.time)
        elif d.src == pbx and d.dst == trunk and line.startswith("INVITE sip:"):
            user = user_of(line)
            if user == CLIENT_E164:
                clients.append(d.time)
            else:
                callbacks.setdefault(user, d.time)
        elif d.dst == pbx and line.startswith("INFO ") and b"Signal=#" in d.payload:
            hashes.append(d.time)
    trigger_ms = [(callbacks[e] - t - did.callback.delay) * 1000
                  for e, t in triggers.items() if e in callbacks]
    # The engine dials in the order the '#' arrive; pair each client INVITE with the oldest '#' before it.
    digits_ms, pending = [], sorted(hashes)
    for sent in sorted(clients):
        before = [h for h in pending if h <= sent]
        if before:
            pending.remove(before[0])
            digits_ms.append((sent - before[0]) * 1000)
    return {"trigger": trigger_ms, "digits": digits_ms}


def run(concurrency: int, config: model.Config, did: model.Did, work: Path) -> dict[str, list[float]]:
    # Concurrency 1: callbacks one after another; N: N triggers within a second.
    calls = SEQUENTIAL_SAMPLES if concurrency == 1 else concurrency
    pace = ["-r", "1", "-rp", str(CALLBACK_SECONDS * 1000)] if concurrency == 1 else ["-r", str(concurrency)]
    budget = 60 + (calls * CALLBACK_SECONDS if concurrency == 1 else 60)
    runner = SippRunner(work / f"sipp-{concurrency}", timeout=budget)
    trunk = config.trunks[0]
    keys = {
        "employee": EMPLOYEE_PREFIX, "did": did.number, "employee_mode": "answer",
        "employee_pcap": tone_pcap(work / "employee.pcap", 0xE0E0E0E0, 440, 6),
        "employee_info": CLIENT_TYPED + "#", "info_type": "dtmf-relay", "employee_hangup": "remote",
        "client": CLIENT_E164, "client_mode": "answer",
        "client_pcap": tone_pcap(work / "client.pcap", 0xC1C1C1C1, 660, 3),
        "client_hangup": f"local:{HOLD_MS}", "ring_ms": 100,
    }
    csv = work / f"triggers-{concurrency}.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{e};{did.number}\n" for e in numbered(EMPLOYEE_PREFIX, calls)))
    capture = work / f"wire-{concurrency}.pcap"
    bpf = f"udp and (port {config.sip_listen.port} or port {trunk.address.port})"
    try:
        with Capture(capture, bpf=bpf):
            far_end = runner.start_uas("far_end.xml", trunk.address.host, trunk.address.port, keys,
                                       calls=2 * calls, timeout=budget)
            argv = ["-inf", str(csv), *pace]
            say(f"$ sipp -sf {TRIGGER.relative_to(REPO)} -m {calls} {' '.join(argv)} "
                f"-i {trunk.address.host} {config.sip_listen}   (+ far_end.xml at {trunk.address})")
            runner.run_uac(TRIGGER, trunk.address.host, str(config.sip_listen), {},
                           calls=calls, timeout=budget, extra=argv)
            far_end.expect_success(timeout=budget)
    finally:
        runner.close()
    return measure(capture, config, did)


def report(concurrency: int, figures: dict[str, list[float]]) -> None:
    for name, values in figures.items():
        if not values:
            say(f"  {name:8} no samples")
            continue
        p50, p95, worst = statistics.median(values), percentile(values, 95), max(values)
        ratio = BASELINE_MS[name] / p50 if p50 > 0 else float("inf")
        verdict = "meets" if p95 <= GOAL_P95_MS[name] else "MISSES"
        say(f"  {name:8} n={len(values):3}  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  max {worst:6.1f} ms"
            f"  | classic PBX ~{BASELINE_MS[name]:.0f} ms (x{ratio:.2f} of ours at p50)"
            f"  | goal p95 <= {GOAL_P95_MS[name]:.0f} ms: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,50")
    parser.add_argument("--keep-deploy", action="store_true", help="do not deploy the lab again")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    wait_until_quiet()
    work = Path(tempfile.mkdtemp(prefix="vpbx-bench-latency-"))
    listed = numbered(EMPLOYEE_PREFIX, max([*levels, SEQUENTIAL_SAMPLES]))
    inventory = bench_inventory(work, callback_list(listed))
    config = model.load(yaml.safe_load((inventory / "group_vars" / "all.yml").read_text()))
    did = next(d for d in config.numbers.values() if d.callback and d.callback.enabled)
    deploy(inventory)
    try:
        for level in levels:
            say(f"\n{level} concurrent callback(s):")
            report(level, run(level, config, did, work))
            time.sleep(2)
    finally:
        if not args.keep_deploy:
            deploy(LAB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
