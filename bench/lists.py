"""A list change by `make lists` against the full playbook, on the lab and with a 100k-number list.

    .venv/bin/python bench/lists.py [--numbers 100000] [--rounds 3]

Measured, in this order, each wall time of the command an admin types
(`make deploy` / `make lists INVENTORY=…`), on the lab deploy:

1. baseline: `make deploy` of inventories/lab twice; the second run is the
   full playbook's no-op run (nothing to change);
2. `make lists` of the lab inventory with one number added to the callback
   list, `--rounds` times (the number added, then taken off again, ...);
3. `make lists` of a generated inventory (a temporary directory) whose list
   holds `--numbers` numbers: replacing the lab's list by it, then a change
   of one number in it;
4. the full playbook's no-op run with that list (the same inventory);
5. the refusal of an inventory whose list of `--numbers` holds half numbers
   the numbering plan does not assign: its wall time, and that it lists the
   first errors, naming the key, with a count of the rest.

Every `make lists` is checked: Kamailio's routing.json holds the list it was
given, and no service was restarted (the same PIDs). Goals: lab <= 10 s,
100k <= 15 s, refusal <= 15 s. Finally the lab is deployed again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from lab import LAB, REPO, bench_inventory, callback_did, machine, say, wait_until_quiet
from reload import mobiles
from vpbx_testing import services

KAMAILIO_ROUTING = Path("/etc/kamailio/vpbx/routing.json")
GOALS_S = {"lab": 10.0, "100k": 15.0, "refusal": 15.0}
SEED = 5061
# Slovakia assigns no number +4210…: each is refused by the numbering plan.
UNASSIGNED = "+4210{:08d}"
ERROR_COUNT_LINE = re.compile(r"\.\.\. and (\d+) more errors? \((\d+) in all\)")


def holding(name: str, numbers: list[str]) -> Callable[[dict], None]:
    """A change for bench_inventory: list `name` holds `numbers`, and nothing else changes
    (unlike lab.callback_list, which changes what the full playbook deploys besides)."""
    def change(variables: dict) -> None:
        next(x for x in variables["vpbx_number_lists"] if x["name"] == name)["numbers"] = numbers
    return change


def make(target: str, inventory: Path) -> tuple[float, subprocess.CompletedProcess]:
    """`make target INVENTORY=inventory` in the repository: its wall time and the run."""
    argv = ["make", "-C", str(REPO), target, f"INVENTORY={inventory}"]
    started = time.monotonic()
    run = subprocess.run(argv, env=dict(os.environ, MAKEFLAGS=""), capture_output=True, text=True)
    return time.monotonic() - started, run


def succeed(target: str, inventory: Path) -> float:
    seconds, run = make(target, inventory)
    if run.returncode != 0:
        sys.exit(f"make {target} INVENTORY={inventory} failed:\n{run.stdout[-3000:]}\n{run.stderr[-1000:]}")
    return seconds


def pids() -> dict[str, int | None]:
    return {name: services.main_pid(name) for name in (services.KAMAILIO, services.CALLBACKD)}


def deployed_list(name: str) -> list[str]:
    routing = json.loads(KAMAILIO_ROUTING.read_text())
    return next(x["numbers"] for x in routing["vpbx_number_lists"] if x["name"] == name)


def lists_applied(inventory: Path, name: str, expected: list[str], before: dict) -> float:
    """`make lists` of `inventory`, checked: the list deployed is `expected`, no service restarted."""
    seconds = succeed("lists", inventory)
    if sorted(deployed_list(name)) != sorted(expected):
        sys.exit(f"make lists INVENTORY={inventory}: {KAMAILIO_ROUTING} does not hold the list it was given")
    if pids() != before:
        sys.exit(f"make lists restarted a service: {before} -> {pids()}")
    return seconds


def verdict(seconds: float, goal: float) -> str:
    return f"goal <= {goal:g} s: {'met' if seconds <= goal else 'MISSED'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the playbooks deploy to this host")
    wait_until_quiet()
    say("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine().items()))
    work = Path(tempfile.mkdtemp(prefix="vpbx-bench-lists-"))
    try:
        lab_vars = yaml.safe_load((LAB / "group_vars" / "all.yml").read_text())
        list_name = callback_did(lab_vars)["callback"]["list"]
        lab_numbers = next(x["numbers"] for x in lab_vars["vpbx_number_lists"] if x["name"] == list_name)

        say("\n1. Baseline: the full playbook, `make deploy` of the lab, twice (the second is a no-op run)")
        first_s = succeed("deploy", LAB)
        noop_s = succeed("deploy", LAB)
        say(f"  first run {first_s:.1f} s, no-op run {noop_s:.1f} s")
        before = pids()
        lab_e164 = deployed_list(list_name)

        say(f"\n2. `make lists` on the lab: one number added to {list_name}, then taken off, "
            f"{args.rounds} rounds")
        added = bench_inventory(work / "lab-added", holding(list_name, [*lab_numbers, "+421905000777"]))
        lab_s = []
        for i in range(args.rounds):
            if i % 2 == 0:
                lab_s.append(lists_applied(added, list_name, [*lab_e164, "+421905000777"], before))
            else:
                lab_s.append(lists_applied(LAB, list_name, lab_e164, before))
        lab_median = statistics.median(lab_s)
        say(f"  each: {', '.join(f'{s:.1f} s' for s in lab_s)}; median {lab_median:.1f} s = "
            f"{lab_median / noop_s:.2f} of the no-op full playbook; {verdict(lab_median, GOALS_S['lab'])}")

        rng = random.Random(SEED)
        big = mobiles(args.numbers, rng, set(lab_numbers))
        changed = sorted([*big[1:], *mobiles(1, rng, set(big))])
        big_inventory = bench_inventory(work / "big", holding(list_name, [*lab_numbers, *big]))
        big_changed = bench_inventory(work / "big-changed", holding(list_name, [*lab_numbers, *changed]))
        say(f"\n3. `make lists` with a list of {args.numbers:,} numbers (generated under {work})")
        replace_s = lists_applied(big_inventory, list_name, sorted({*lab_e164, *big}), before)
        change_s = lists_applied(big_changed, list_name, sorted({*lab_e164, *changed}), before)
        worst = max(replace_s, change_s)
        say(f"  the lab's list replaced by {args.numbers:,} numbers: {replace_s:.1f} s; one of them changed: "
            f"{change_s:.1f} s; {verdict(worst, GOALS_S['100k'])}")

        say(f"\n4. The full playbook's no-op run with the {args.numbers:,}-number list")
        big_noop_s = succeed("deploy", big_changed)
        say(f"  {big_noop_s:.1f} s: `make lists` takes {change_s / big_noop_s:.2f} of it")

        say(f"\n5. Refusal: {args.numbers:,} numbers, half of them unassigned ({UNASSIGNED.format(0)}…)")
        half = args.numbers // 2
        bad_numbers = [*big[:half], *(UNASSIGNED.format(n) for n in range(args.numbers - half))]
        bad = bench_inventory(work / "bad", holding(list_name, bad_numbers))
        refusal_s, run = make("lists", bad)
        output = run.stdout + run.stderr
        listed = output.count("is not a valid number in its numbering plan")
        count = ERROR_COUNT_LINE.search(output)
        if run.returncode == 0 or not count or "vpbx_number_lists[" not in output:
            sys.exit(f"the bad inventory was not refused as it should be:\n{output[-3000:]}")
        if sorted(deployed_list(list_name)) != sorted({*lab_e164, *changed}):
            sys.exit("the refused inventory changed the deployed routing data")
        say(f"  refused in {refusal_s:.1f} s, nothing replaced: {listed} errors listed, naming their keys, "
            f"then '{count.group(0)}'; {verdict(refusal_s, GOALS_S['refusal'])}")

        say(f"\nSummary: make lists {lab_median:.1f} s on the lab (full playbook no-op {noop_s:.1f} s, "
            f"first run {first_s:.1f} s); with {args.numbers:,} numbers {worst:.1f} s (full no-op "
            f"{big_noop_s:.1f} s); refusal {refusal_s:.1f} s")
    finally:
        say("\nDeploying the lab again")
        succeed("deploy", LAB)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
