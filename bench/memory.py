"""Kamailio's memory with a 100k-number list: where it goes, and the INVITE rate each shm size takes.

    .venv/bin/python bench/memory.py [--numbers 100000] [--rates 1000,2000,3000] [--seconds 5]

Deploys a copy of the lab inventory whose callback list holds `--numbers`
numbers (in a temporary directory, never in the repository) and measures the
deployed Kamailio at rest, with the lab's list and with the long one: shared
memory used (core.shmmem), private memory (pkg.stats) and the RSS/PSS of its
processes (the workers' Python heaps, where routing.json lives). Then, for
each shared memory size (the role's computed default, the old fixed 128 MB),
it runs a second edge (vpbx_testing.second_edge: the deployed kamailio.cfg and
KEMI router, the long list included) and has the carrier call it at each rate
for `--seconds`: INVITEs to the lab's closed DID, each a tm transaction that
its scheme answers 480 (in the second edge's copy of the routing data the
scheme first rings an extension nobody registers: the router refuses a
scheme that only refuses statelessly, which takes no shared memory) and
that lives, ACKed, for tm's wait timer (5 s) as
every INVITE's does, without a far end or media relay to slow the edge
down. Printed per size and rate: calls answered 480, refused with 503 (the
edge short of memory says so), unanswered (silence), the most shared memory
used and transactions alive, and shared memory per live transaction (the
figure the role's sizing uses); and the rate reached, the highest at which
every call was answered by its scheme. The lab is deployed again at the end.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import yaml
from lab import (
    LAB,
    REPO,
    bench_inventory,
    callback_list,
    deploy,
    memory_kb,
    pids_of,
    say,
    wait_until_quiet,
)
from reload import mobiles
from vpbx_testing import health
from vpbx_testing.second_edge import second_edge, stateful_refusal
from vpbx_testing.sipp import NO_HEADER, SippRunner

from vpbx import model

KAMAILIO_CTL = "unix:/run/kamailio/kamailio_ctl"
KAMAILIO_DEFAULTS = REPO / "roles" / "kamailio" / "defaults" / "main.yml"
KAMAILIO_VARS = REPO / "roles" / "kamailio" / "vars" / "main.yml"
DEFAULT_FILE = Path("/etc/default/kamailio")
OLD_SHM_MB = 128
FINAL = re.compile(r"final (\d+)")
# Numbers of the long list: a prefix no lab number has.
# The long list: mobiles of the numbering plan, the same draw every run.
SEED = 5062
CALLER = "+421905999002"  # on no list
SAMPLE_EVERY = 0.25
# Several per UDP worker: the kernel hands each datagram to whichever worker waits.
WARM_REQUESTS = 100


def rpc(ctl: str, *command: str) -> str:
    return subprocess.run(["kamcmd", "-s", ctl, *command], capture_output=True, text=True,
                          timeout=30).stdout


def figures(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+):\s*(\d+)", text)}


def loaded(config: model.Config) -> None:
    """Every worker of the deployed Kamailio has loaded the routing data deployed last: each
    loads it at its next request, so the carrier asks enough times for each to get one."""
    for _ in range(WARM_REQUESTS):
        health.send_decision_probe(config.sip_listen, config.trunks[0].address.host,
                                   health.not_a_did(config), CALLER)


def at_rest(ctl: str = KAMAILIO_CTL) -> dict[str, float]:
    """The deployed Kamailio's memory: shm used, pkg used (all processes), RSS and PSS (all processes), MB."""
    shm = figures(rpc(ctl, "core.shmmem"))
    pkg = sum(int(v) for v in re.findall(r"real_used:\s*(\d+)", rpc(ctl, "pkg.stats")))
    pids = pids_of(["-x", "kamailio"])
    memory = [memory_kb(p) for p in pids]
    return {"shm_mb": shm.get("real_used", 0) / 2**20, "pkg_mb": pkg / 2**20,
            "rss_mb": sum(m[0] for m in memory) / 1024, "pss_mb": sum(m[1] for m in memory) / 1024,
            "processes": len(pids)}


def deployed_shm_mb() -> int:
    match = re.search(r"^SHM_MEMORY=(\d+)", DEFAULT_FILE.read_text(), re.MULTILINE)
    return int(match.group(1))


class Sampler(threading.Thread):
    """Shared memory used and tm's live transactions of an edge, every SAMPLE_EVERY s until stopped."""

    def __init__(self, ctl: str):
        super().__init__(daemon=True)
        self.ctl = ctl
        self.samples: list[tuple[int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY):
            used = figures(rpc(self.ctl, "core.shmmem")).get("real_used", 0)
            self.samples.append((used, figures(rpc(self.ctl, "tm.stats")).get("current", 0)))

    def stop(self) -> list[tuple[int, int]]:
        self._halt.set()
        self.join()
        return self.samples


def calls_at(runner: SippRunner, edge: str, ctl: str, trunk_ip: str, did: str, rate: int,
             seconds: int) -> dict[str, float]:
    """`rate` calls a second for `seconds` through the edge; what became of them, and its memory."""
    calls = rate * seconds
    idle = figures(rpc(ctl, "core.shmmem"))
    sampler = Sampler(ctl)
    sampler.start()
    carrier = runner.run_uac("carrier_flood.xml", trunk_ip, edge,
                             {"did": did, "caller": CALLER, "header": NO_HEADER, "hold_ms": 0},
                             calls=calls, timeout=seconds + 90, extra=["-r", str(rate)], check=False)
    samples = sampler.stop() or [(idle.get("real_used", 0), 0)]
    codes = Counter(m.group(1) for m in map(FINAL.search, carrier.log_lines()) if m)
    used, alive = max(samples, key=lambda s: s[1])
    return {"calls": calls, "answered": codes["480"], "refused": codes["503"],
            "silent": calls - sum(codes.values()), "total_mb": idle.get("total", 0) / 2**20,
            "max_used_mb": max(s[0] for s in samples) / 2**20, "alive": alive,
            "kb_per_transaction": (used - idle.get("real_used", 0)) / max(alive, 1) / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=100_000, help="numbers on the long list")
    parser.add_argument("--rates", default="1000,2000,3000", help="carrier calls per second, in turn")
    parser.add_argument("--seconds", type=int, default=5, help="how long each rate lasts")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    wait_until_quiet()
    defaults = yaml.safe_load(KAMAILIO_DEFAULTS.read_text())
    internals = yaml.safe_load(KAMAILIO_VARS.read_text())
    expected, kept = defaults["kamailio_expected_invite_rate"], defaults["kamailio_shm_reserve"]
    idle, kb = internals["__kamailio_shm_idle_mb"], internals["__kamailio_shm_transaction_kb"]
    say(f"shared memory sized for kamailio_expected_invite_rate={expected}/s: {idle} MB at rest + rate x "
        f"{internals['__kamailio_shm_transaction_seconds']} s x {kb} KB, {kept} % kept free")
    variables = yaml.safe_load((LAB / "group_vars" / "all.yml").read_text())
    config = model.load({k: v for k, v in variables.items() if k in model.CONTRACT_KEYS})
    did = next(d for d in config.numbers.values() if d.callback and d.callback.enabled)
    closed = next(d for d in config.numbers.values()
                  if isinstance(config.routing_schemes[d.routing][0], model.RejectStep))
    work = Path(tempfile.mkdtemp(prefix="vpbx-bench-memory-"))
    results: dict[int, list[tuple[int, dict[str, int]]]] = {}
    try:
        loaded(config)
        lab_rest = at_rest()
        say(f"$ deploy the lab, {args.numbers} numbers on {did.number}'s list ({work})")
        numbers = mobiles(args.numbers, random.Random(SEED), set())
        seconds = deploy(bench_inventory(work, callback_list(numbers)))
        say(f"deployed in {seconds:.0f} s")
        loaded(config)
        long_rest = at_rest()
        computed = deployed_shm_mb()
        for name, rest in (("the lab's list", lab_rest), (f"{args.numbers} numbers", long_rest)):
            say(f"at rest, {name:>15}: shm {rest['shm_mb']:.1f} MB, pkg {rest['pkg_mb']:.1f} MB "
                f"({rest['processes']} processes), RSS {rest['rss_mb']:.0f} MB, PSS {rest['pss_mb']:.0f} MB")
        listed = args.numbers - sum(len(v) for v in config.number_lists.values())
        for key in ("shm_mb", "pkg_mb", "pss_mb"):
            grow = (long_rest[key] - lab_rest[key]) * 2**20 / max(listed, 1)
            say(f"  {key[:-3]:>3} per listed number: {grow:.0f} B")
        runner = SippRunner(work / "sipp")
        try:
            for size in (computed, OLD_SHM_MB):
                results[size] = []
                workdir = _fresh(work, f"edge-{size}")
                replace = stateful_refusal(workdir, closed.routing)
                with second_edge(config.sip_listen, workdir, replace=replace, shm_mb=size) as (edge, ctl):
                    for rate in rates:
                        say(f"$ {size} MB: carrier calls at {rate}/s for {args.seconds} s")
                        outcome = calls_at(runner, str(edge), ctl, config.trunks[0].address.host,
                                           closed.number, rate, args.seconds)
                        results[size].append((rate, outcome))
                        say(f"  answered {outcome['answered']}/{outcome['calls']}, refused 503 "
                            f"{outcome['refused']}, unanswered {outcome['silent']}; shm max used "
                            f"{outcome['max_used_mb']:.0f}/{outcome['total_mb']:.0f} MB, "
                            f"{outcome['alive']} transactions alive at most, "
                            f"{outcome['kb_per_transaction']:.1f} KB each")
        finally:
            runner.close()
    finally:
        say("$ deploy the lab again")
        deploy(LAB, quiet=True)
    say("")
    say(f"| shared memory | {' | '.join(f'{r}/s answered, 503, silent' for r in rates)} | rate reached |")
    say(f"|---|{'---|' * len(rates)}---|")
    for size, rows in results.items():
        reached = max((r for r, o in rows if o["answered"] == o["calls"]), default=0)
        cells = " | ".join(f"{o['answered']}, {o['refused']}, {o['silent']}" for _, o in rows)
        label = f"{size} MB ({'computed' if size != OLD_SHM_MB else 'old fixed'})"
        say(f"| {label} | {cells} | {reached}/s |")
    return 0


def _fresh(work: Path, name: str) -> Path:
    directory = work / name
    directory.mkdir()
    return directory


if __name__ == "__main__":
    sys.exit(main())
