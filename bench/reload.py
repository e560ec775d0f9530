"""Reload: a 100k-number list change applied by the playbook while calls go on.

    .venv/bin/python bench/reload.py [--numbers 100000] [--rate 40] [--hold 8] [--keep-deploy]

Deploys a copy of the lab inventory whose callback list holds N numbers.
Then SIPp places carrier calls at a steady rate (each answered by the far end
at the trunk, held, hung up by the carrier: the DID's routing scheme, media
through RTPengine), and while they run the playbook deploys the same
inventory with half of the list replaced by new numbers.

Measured:
* playbook: its wall time (validation of the inventory included);
* Kamailio: from routing.json replaced (the rename into place, seen as a new
  inode; the file's own times are those of Ansible's temporary copy) to the
  last SIP worker that loaded it (its "routing loaded" log line), each
  worker's load time, and the calls decided on the old list after the rename;
* callbackd: its load time, and when it loaded after its file was replaced;
* calls dropped: SIPp calls that failed, on either side (calls in progress
  across the change included), and calls placed but not completed;
* baseline, same run, same load: the same data loaded by Kamailio's own
  `kamcmd app_python.reload` (re-runs the script in each worker, one worker
  at a time) -- the path the playbook used before.

Goal: applied within 1 s, 0 calls dropped. Finally the lab is deployed again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml
from lab import (
    LAB,
    REPO,
    bench_inventory,
    callback_list,
    callbackd_settings,
    deploy,
    machine,
    say,
    wait_until_quiet,
)
from vpbx_testing.rtp_pcap import empty_pcap
from vpbx_testing.sipp import SippRunner

from vpbx import model

KAMAILIO_ROUTING = Path("/etc/kamailio/vpbx/routing.json")
KAMAILIO_LOG = Path("/var/log/vpbx/kamailio.log")
KAMCMD = ["kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl"]
SCENARIOS = REPO / "tests" / "e2e" / "scenarios"
MOBILE_RANGES = tuple(f"+42190{d}" for d in range(1, 9))
CALLER = "+421905999000"  # not on the list: the calls take the DID's routing scheme
GOAL_S = 1.0
SEED = 5060
LEAD_S = 10.0  # load before the playbook starts, and after it ended
KAMAILIO_LINE = re.compile(r"^(\S+) \S+ \S+\[(\d+)\]: .*vpbx: routing loaded in (\d+) ms: (.*)$")
DECISION_LINE = re.compile(r"^(\S+) \S+ \S+\[(\d+)\]: .*vpbx: decision: ")
CALLBACKD_LINE = re.compile(r"^(\S+ \S+) INFO callbackd\.engine: routing reloaded in (\d+) ms: (.*)$")


def mobiles(count: int, rng: random.Random, avoid: set[str]) -> list[str]:
    out: set[str] = set()
    while len(out) < count:
        number = f"{rng.choice(MOBILE_RANGES)}{rng.randrange(10**6):06d}"
        if number not in avoid:
            out.add(number)
    return sorted(out)


def kamailio_log(since: float) -> tuple[dict[int, tuple[float, int]], list[tuple[float, int]]]:
    """From `since` on: per process its first routing load (time, ms), and every decision (time, pid)."""
    loads: dict[int, tuple[float, int]] = {}
    decisions: list[tuple[float, int]] = []
    for line in KAMAILIO_LOG.read_text(errors="replace").splitlines():
        m = KAMAILIO_LINE.match(line) or DECISION_LINE.match(line)
        if not m:
            continue
        at, pid = datetime.fromisoformat(m.group(1)).timestamp(), int(m.group(2))
        if at < since:
            continue
        if m.re is DECISION_LINE:
            decisions.append((at, pid))
        elif pid not in loads:
            loads[pid] = (at, int(m.group(3)))
    return loads, decisions


def stale(loads: dict[int, tuple[float, int]], decisions: list[tuple[float, int]]) -> int:
    """Decisions a worker made before it loaded the new routing: on the old list."""
    return sum(1 for at, pid in decisions if pid not in loads or at < loads[pid][0])


class ReplaceWatch(threading.Thread):
    """When a file is replaced (a new inode at its path), polled every millisecond.

    The file's own times do not tell: Ansible writes it elsewhere, then renames it.
    """

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.at: float | None = None
        self._inode = path.stat().st_ino
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino != self._inode:
                    self.at = time.time()
                    return
            time.sleep(0.001)

    def stop(self) -> None:
        self._done.set()


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


def sipp_count(screen_log: Path, counter: str) -> int:
    """One of SIPp's cumulative counters ("Successful call", "Failed call"), from its last screen."""
    counts = re.findall(rf"{counter}\s*\|\s*\d+\s*\|\s*(\d+)", screen_log.read_text(errors="replace"))
    return int(counts[-1]) if counts else -1


def report_workers(name: str, since: float, workers: int) -> tuple[float, float, int]:
    """Say how the SIP workers took the routing replaced at `since`.

    Returns (the last worker's load done, seconds after `since`; the longest load; stale decisions).
    """
    loads, decisions = kamailio_log(since)
    old = stale(loads, decisions)
    if not loads:
        say(f"  {name}: no worker loaded the new routing; {old} decisions on the old one")
        return float("inf"), float("inf"), old
    last = max(at for at, _ in loads.values()) - since
    longest = max(ms for _, ms in loads.values()) / 1000
    per_worker = ", ".join(f"{ms} ms" for _, ms in sorted(loads.values()))
    say(f"  {name}: {len(loads)} of {workers} SIP workers loaded it (each: {per_worker}), the last "
        f"{last * 1000:.0f} ms after; {len(decisions)} calls decided since, {old} of them on the old list")
    return last, longest, old


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
    first = bench_inventory(work / "before", callback_list(before))
    second = bench_inventory(work / "after", callback_list(after))
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
                               carrier_keys, calls=calls,
                               # SIPp's own default limit of calls up at once is far lower.
                               extra=["-r", str(args.rate), "-l", str(3 * args.rate * round(args.hold + 2))])
    started = time.time()
    try:
        time.sleep(LEAD_S)
        replaced = len(after) - len(kept)
        say(f"\nThe change: {replaced:,} of {args.numbers:,} numbers replaced, by the playbook:")
        callbackd = callbackd_settings()
        c_file = callbackd.routing_file
        watches = [ReplaceWatch(KAMAILIO_ROUTING), ReplaceWatch(c_file)]
        for watch in watches:
            watch.start()
        played = time.time()
        change_s = deploy(second)
        for watch in watches:
            watch.stop()
        k_replaced, c_replaced = (w.at or float("nan") for w in watches)
        say(f"  playbook: {change_s:.1f} s; it replaced Kamailio's routing.json {k_replaced - played:.1f} s "
            f"after it started, callbackd's {c_replaced - played:.1f} s")
        time.sleep(1)  # the log lines reach the file
        _, k_load, k_stale = report_workers("Kamailio, each worker at its next request", k_replaced, workers)
        c_loads = callbackd_loads(callbackd.log_file, c_replaced)
        # callbackd reads a replaced file at its next trigger (none in this load) or on the
        # playbook's SIGHUP, whichever comes first: no trigger is decided on the old file.
        if c_loads:
            at, c_load_ms = c_loads[0]
            c_load = c_load_ms / 1000
            say(f"  callbackd: loaded in {c_load_ms} ms, on the playbook's SIGHUP {at - c_replaced:.1f} s "
                f"after its file was replaced (a trigger in between would have loaded it first)")
        else:
            c_load = float("inf")
            say("  callbackd: did not load the new routing")

        time.sleep(LEAD_S / 2)
        say("\nBaseline, same load: `kamcmd app_python.reload`, the path the playbook used before (the same "
            "routing.json, loaded by the script re-run in every worker, one worker at a time):")
        rpc_at = time.time()
        subprocess.run([*KAMCMD, "app_python.reload"], check=True, capture_output=True)
        time.sleep(LEAD_S / 2)
        rpc_last, _, rpc_stale = report_workers("app_python.reload", rpc_at, workers)

        remaining = started + load_s + args.hold + 10 - time.time()
        say(f"\nWaiting {max(remaining, 0):.0f} s for the load to end ...")
        carrier.wait()
        far_end.wait()
    finally:
        runner.close()
    done = sipp_count(carrier.screen_log, "Successful call")
    dropped = {"carrier": sipp_count(carrier.screen_log, "Failed call"),
               "far end": sipp_count(far_end.screen_log, "Failed call")}
    say(f"  {calls:,} calls placed, {done:,} completed; failed: carrier {dropped['carrier']}, "
        f"far end {dropped['far end']} (logs {runner.log_dir})")
    lost = sum(dropped.values()) + (calls - done)
    apply_s = max(k_load, c_load)
    verdict = "meets" if apply_s <= GOAL_S and k_stale == 0 and lost == 0 else "MISSES"
    say(f"\nApplied within {apply_s * 1000:.0f} ms of the replace (the longest load a request waited for: "
        f"Kamailio {k_load * 1000:.0f}, callbackd {c_load * 1000:.0f}), {k_stale} calls decided on the old "
        f"list after it, {lost} calls dropped or not completed: goal <= {GOAL_S:g} s and 0 dropped: "
        f"{verdict}. "
        f"Baseline app_python.reload: the last worker {rpc_last * 1000:.0f} ms after the RPC, "
        f"{rpc_stale} calls decided on the old list meanwhile.")
    if not args.keep_deploy:
        deploy(LAB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
