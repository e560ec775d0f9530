"""Reload: a 100k-number list change applied by the playbook while calls go on.

    .venv/bin/python bench/reload.py [--numbers 100000] [--rate 40] [--hold 8] [--keep-deploy]

Deploys a copy of the lab inventory whose callback list holds N numbers.
Then SIPp places carrier calls at a steady rate (each answered by the far end
at the trunk, held, hung up by the carrier: the DID's routing scheme, media
through RTPengine), and while they run the playbook deploys the same
inventory with half of the list replaced by new numbers.

Measured:
* playbook: its wall time (validation of the inventory included);
* Kamailio: from routing.json replaced (its ctime: Ansible writes the file
  elsewhere, then renames it into place) to the last SIP worker
  that loaded it (its "routing loaded" log line), and each worker's load time;
* callbackd: from its routing file replaced to its "routing reloaded" line;
* calls dropped: SIPp calls that failed, on either side (calls in progress
  across the change included);
* baseline, same run, same load: the same data loaded by Kamailio's own
  `kamcmd app_python.reload` (re-runs the script in each worker, one worker
  at a time) -- the path the playbook used before.

Goal: applied within 1 s, 0 calls dropped. Finally the lab is deployed again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import yaml
from lab import LAB, REPO, bench_inventory, callback_did, deploy, machine, say, wait_until_quiet
from rtp_pcap import empty_pcap
from sipp import SippRunner

from vpbx import model

KAMAILIO_ROUTING = Path("/etc/kamailio/vpbx/routing.json")
KAMAILIO_LOG = Path("/var/log/vpbx/kamailio.log")
CALLBACKD_CONFIG = Path("/etc/vpbx/callbackd.json")
KAMCMD = ["kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl"]
SCENARIOS = REPO / "tests" / "e2e" / "scenarios"
MOBILE_RANGES = tuple(f"+42190{d}" for d in range(1, 9))
CALLER = "+421905999000"  # not on the list: the calls take the DID's routing scheme
GOAL_S = 1.0
SEED = 5060
LEAD_S = 10.0  # load before the playbook starts, and after it ended
KAMAILIO_LINE = re.compile(r"^(\S+) \S+ \S+\[(\d+)\]: .*vpbx: routing loaded in (\d+) ms: (.*)$")
CALLBACKD_LINE = re.compile(r"^(\S+ \S+) INFO callbackd\.engine: routing reloaded in (\d+) ms: (.*)$")


def mobiles(count: int, rng: random.Random, avoid: set[str]) -> list[str]:
    out: set[str] = set()
    while len(out) < count:
        number = f"{rng.choice(MOBILE_RANGES)}{rng.randrange(10**6):06d}"
        if number not in avoid:
            out.add(number)
    return sorted(out)


def with_list(numbers: list[str]):
    def change(variables: dict) -> None:
        did = callback_did(variables)
        did["callback"]["record"] = False
        [listed] = [x for x in variables["vpbx_number_lists"] if x["name"] == did["callback"]["list"]]
        listed["numbers"] = numbers
    return change


def kamailio_loads(since: float) -> dict[int, tuple[float, int]]:
    """Per Kamailio process: (time, ms to load) of its first routing load at or after `since`."""
    loads: dict[int, tuple[float, int]] = {}
    for line in KAMAILIO_LOG.read_text(errors="replace").splitlines():
        m = KAMAILIO_LINE.match(line)
        if m:
            at = datetime.fromisoformat(m.group(1)).timestamp()
            if at >= since and int(m.group(2)) not in loads:
                loads[int(m.group(2))] = (at, int(m.group(3)))
    return loads


def callbackd_loads(log: Path, since: float) -> list[tuple[float, int]]:
    """(time, ms to load) of each routing load of callbackd at or after `since`."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = CALLBACKD_LINE.match(line)
        if m:
            # logging's asctime: local time, milliseconds after a comma.
            at = time.mktime(time.strptime(m.group(1).split(",")[0], "%Y-%m-%d %H:%M:%S"))
            at += int(m.group(1).split(",")[1]) / 1000
            if at >= since:
                out.append((at, int(m.group(2))))
    return out


def failed_calls(screen_log: Path) -> int:
    """SIPp's cumulative "Failed call" count, from its last screen."""
    counts = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", screen_log.read_text(errors="replace"))
    return int(counts[-1]) if counts else -1


def report_apply(name: str, written: float, loads: dict[int, tuple[float, int]], workers: int) -> float:
    if not loads:
        say(f"  {name}: no worker loaded the new routing")
        return float("inf")
    last = max(at for at, _ in loads.values()) - written
    per_worker = ", ".join(f"{ms} ms" for _, ms in sorted(loads.values()))
    say(f"  {name}: {len(loads)} of {workers} SIP workers loaded it; the last {last * 1000:.0f} ms after "
        f"the trigger; each worker's load: {per_worker}")
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=100000)
    parser.add_argument("--rate", type=int, default=40, help="new calls per second")
    parser.add_argument("--hold", type=float, default=8.0, help="seconds each call is held")
    parser.add_argument("--keep-deploy", action="store_true", help="do not deploy the lab again")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the playbook deploys to this host")
    wait_until_quiet()
    say("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine().items()))
    rng = random.Random(SEED)
    work = Path(tempfile.mkdtemp(prefix="vpbx-bench-reload-"))
    before = mobiles(args.numbers, rng, set())
    kept = before[: args.numbers // 2]
    after = sorted(kept + mobiles(args.numbers - len(kept), rng, set(before)))
    first = bench_inventory(work / "before", with_list(before))
    second = bench_inventory(work / "after", with_list(after))
    config = model.load(yaml.safe_load((first / "group_vars" / "all.yml").read_text()))
    did = next(d for d in config.numbers.values() if d.callback and d.callback.enabled)
    workers = int(yaml.safe_load((REPO / "roles" / "kamailio" / "defaults" / "main.yml").read_text())
                  .get("kamailio_children", 4))
    say(f"\nDeploying the list of {args.numbers:,} numbers (the state before the change):")
    initial_s = deploy(first)
    say(f"  playbook: {initial_s:.1f} s")

    load_s = LEAD_S + 2 * initial_s + LEAD_S + 15
    calls = round(args.rate * load_s)
    trunk = config.trunks[0]
    runner = SippRunner(work / "sipp", timeout=load_s + args.hold + 60)
    far_end = runner.start_uas("callee.xml", trunk.address.host, trunk.address.port,
                               {"mode": "answer", "ring_ms": 0, "hangup": "remote", "hold_ms": 0,
                                "expect_user": "*", "expect_from": "*", "expect_media": "*"},
                               calls=calls)
    carrier_keys = {"did": did.number, "caller": CALLER, "header": "X-Vpbx-Bench: reload",
                    "hangup": "local", "hold_ms": round(args.hold * 1000),
                    "audio": empty_pcap(work / "empty.pcap")}
    say(f"\nLoad: {args.rate} calls/s for {load_s:.0f} s, each held {args.hold:g} s "
        f"(~{args.rate * args.hold:.0f} calls up at any time), caller {CALLER} -> {did.number} "
        f"(routing scheme: forward to the trunk), far end callee.xml at {trunk.address}")
    carrier = runner.start_uac(SCENARIOS / "carrier_call.xml", trunk.address.host, str(config.sip_listen),
                               carrier_keys, calls=calls, extra=["-r", str(args.rate)])
    started = time.time()
    try:
        time.sleep(LEAD_S)
        replaced = len(after) - len(kept)
        say(f"\nThe change: {replaced:,} of {args.numbers:,} numbers replaced, by the playbook:")
        played = time.time()
        change_s = deploy(second)
        k_written = KAMAILIO_ROUTING.stat().st_ctime
        c_file = Path(json.loads(CALLBACKD_CONFIG.read_text())["routing_file"])
        c_written = c_file.stat().st_ctime
        say(f"  playbook: {change_s:.1f} s; routing.json replaced {k_written - played:.1f} s after it "
            f"started (Kamailio), {c_written - played:.1f} s (callbackd)")
        k_apply = report_apply("Kamailio (each worker on its next request)", k_written,
                               kamailio_loads(k_written), workers)
        c_loads = callbackd_loads(Path(json.loads(CALLBACKD_CONFIG.read_text())["log_file"]), c_written)
        # callbackd reads a replaced file at its next trigger (none in this load) or on the
        # playbook's SIGHUP, whichever comes first: a trigger never sees the old file.
        if c_loads:
            at, c_load_ms = c_loads[0]
            c_apply = c_load_ms / 1000
            say(f"  callbackd: loaded in {c_load_ms} ms, on the SIGHUP {at - c_written:.1f} s after its file "
                f"was replaced (a trigger in between would have loaded it first)")
        else:
            c_apply = float("inf")
            say("  callbackd: did not load the new routing")

        time.sleep(LEAD_S / 2)
        say("\nBaseline, same load: `kamcmd app_python.reload` (the same routing.json, loaded by the "
            "script re-run in every worker):")
        rpc_at = time.time()
        subprocess.run([*KAMCMD, "app_python.reload"], check=True, capture_output=True)
        time.sleep(LEAD_S / 2)
        rpc_apply = report_apply("app_python.reload", rpc_at, kamailio_loads(rpc_at), workers)

        remaining = started + load_s + args.hold + 10 - time.time()
        say(f"\nWaiting {max(remaining, 0):.0f} s for the load to end ...")
        carrier.wait()
        far_end.wait()
    finally:
        runner.close()
    dropped = {"carrier": failed_calls(carrier.screen_log), "far end": failed_calls(far_end.screen_log)}
    say(f"  {calls:,} calls placed; failed: carrier {dropped['carrier']}, far end {dropped['far end']} "
        f"(logs {runner.log_dir})")
    apply_s = max(k_apply, c_apply)
    verdict = "meets" if apply_s <= GOAL_S and sum(dropped.values()) == 0 else "MISSES"
    say(f"\nApplied in {apply_s * 1000:.0f} ms (Kamailio {k_apply * 1000:.0f}, "
        f"callbackd {c_apply * 1000:.0f}; baseline app_python.reload {rpc_apply * 1000:.0f}), "
        f"{sum(dropped.values())} calls dropped: "
        f"goal <= {GOAL_S:g} s and 0 dropped: {verdict}")
    if not args.keep_deploy:
        deploy(LAB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
