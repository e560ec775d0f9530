"""The deployed KEMI router against native Kamailio doing the same SIP work, with a 100k-number list.

    .venv/bin/python bench/deployed_router.py [--numbers 100000] [--quick] [--write-results bench/RESULTS.md]

Deploys a copy of the lab inventory (a temporary directory, never
committed) whose callback list holds `--numbers` generated numbers and whose
Kamailio has `--shm` MB of shared memory, with a bench DID: callback on that
list, its scheme a single reject step. The carrier (SIPp at the trunk's
address) calls that DID from callers who are not on the list, written as
carriers write them (E.164, `00…`, national `0…`), so every call is decided
in full: trunk by source, DID look-up, the caller looked up on the 100k list
(a miss), the scheme. Three sides, the same shared memory, taking turns at
each rate in the same run:

  deployed   the lab's Kamailio with kemi/vpbx_router.py as deployed
  same-work  bench/deployed/native.cfg with STATEFUL: sanity, maxfwd,
             retransmission checks, Record-Route, one xlog line, a stateful 480
  stateless  the same without tm: a stateless 480

Every side logs through the lab's rsyslog, the natives by a rule of the run's
(its own facility, its own file), and every side's CPU counts rsyslog's: the
same log line costs every side the same.

Printed: each side's highest passing rate and its CPU per call, the ratios
deployed/same-work and deployed/stateless. Then the router's levers, each
turned off alone in the deployed script (its text patched, `app_python.reload`)
and measured as CPU per call at one rate against the router as deployed,
the variants taking turns. The lab is deployed again at the end.

Run as root from the repository root, holding the lab (it deploys).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import random
import shlex
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import lab
from decision_data import random_mobile
from kamailio_instance import BenchError, DeployedKamailio, Kamailio, stop_all
from report import best, common_rate, publish, ratio, step_at, us
from sipp_load import Traffic, check_replies, judge, lockstep_ramp, ms, ramp_outcome, run_sipp
from vpbx_testing import services

BENCH = lab.REPO / "bench" / "deployed"
NATIVE_CFG = BENCH / "native.cfg"
UAC_SCENARIO = lab.REPO / "bench" / "decision" / "uac.xml"
DEPLOYED_SCRIPT = Path("/etc/kamailio/vpbx/vpbx_router.py")
ROUTING_LOADED = "routing loaded in"

BENCH_DID = "+421233000900"
BENCH_LIST = "bench-callers"
REPLY = 480
PORTS = {"same-work": 5263, "stateless": 5264}
# The natives log through the lab's rsyslog as the deployed edge does (its facility is local0),
# each to a file of the run, by a rule that lives only while the bench runs.
FACILITIES = {"same-work": "LOG_LOCAL6", "stateless": "LOG_LOCAL7"}
SYSLOG_RULE = Path("/etc/rsyslog.d/29-vpbx-bench-natives.conf")
SIDES = ("deployed", "same-work", "stateless")
CHILDREN = 4  # kamailio_children of the lab
SHM_MB = 1024
CALLER_ROWS = 20000
SEED = 5061
RATES = (2000, 3000, 4000, 6000, 8000, 12000, 16000)
QUICK_RATES = (2000, 4000, 8000, 16000)
STEP_SECONDS = 5.0
REFINE = 2
LEVER_RATE = 2000
LEVER_ROUNDS = 2
GOAL_RATIO = 0.9
SECTION = "## 1b. The deployed router vs native Kamailio (100k list)"

# Each lever of the router, turned off: (what the deployed script has, what it has without the lever).
# A patch that no longer applies stops the bench: the lever's code changed, the patch must follow.
OLD_NOTATIONS = """
        import phonenumbers as _pn
        _country = router.config.default_country

        def _parsed(raw, _pn=_pn, _country=_country):
            if not raw:
                return None
            text = raw.strip()
            text = (text[4:] if text.startswith("tel:") else text).split(";", 1)[0]
            try:
                return _pn.format_number(_pn.parse(text, _country), 0)
            except _pn.NumberParseException:
                return None

        router.notations.e164 = _parsed
"""
LEVERS = {
    "stateless first-step reject": [
        ("            if first is None or isinstance(first[1], d.Reject):\n", "            if False:\n")
    ],
    "no phonenumbers on the hot path": [
        ("        self.router = router\n", "        self.router = router\n" + OLD_NOTATIONS)
    ],
    "one-string decision line": [
        (
            '-> {action.log}\\n")',
            "-> {type(action).__name__}({', '.join(f'{k}={v}' for k, v in vars(action).items() "
            "if k not in ('steps', 'log'))})\\n\")",
        )
    ],
    "fewer KSR calls": [
        (
            '        method = KSR.pv.get("$rm")\n',
            '        method = KSR.pv.get("$rm")\n'
            "        # The reads this router no longer makes: $si twice more, a KSR.is_* per method test.\n"
            '        KSR.pv.get("$si"), KSR.pv.get("$si"), KSR.is_ACK(), KSR.is_CANCEL(), KSR.is_REGISTER()\n'
            "        KSR.is_OPTIONS(), KSR.is_INVITE()\n",
        )
    ],
}


def _on_signal(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


# -- data --------------------------------------------------------------------


def listed_numbers(count: int, rng: random.Random) -> list[str]:
    numbers: set[str] = set()
    while len(numbers) < count:
        numbers.add(random_mobile(rng))
    return sorted(numbers)


def bench_change(numbers: list[str], shm_mb: int):
    """The lab inventory with the bench DID, its list of `numbers`, and Kamailio's shared memory."""

    def change(variables: dict) -> None:
        variables["vpbx_number_lists"].append({"name": BENCH_LIST, "numbers": numbers})
        variables["vpbx_numbers"].append(
            {"number": BENCH_DID, "routing": "closed", "callback": {"enabled": True, "list": BENCH_LIST}}
        )
        variables["kamailio_shm_memory"] = shm_mb

    return change


def callers(listed: set[str], rng: random.Random, path: Path) -> Traffic:
    """Callers not on the list, a third each in E.164, `00…` and national `0…` notation."""
    rows = []
    while len(rows) < CALLER_ROWS:
        number = random_mobile(rng)
        if number in listed:
            continue
        notation = (number, "00" + number[1:], "0" + number[4:])[len(rows) % 3]
        rows.append(notation)
    path.write_text("SEQUENTIAL\n" + "".join(f"{n};{BENCH_DID};\n" for n in rows))
    return Traffic(
        UAC_SCENARIO, path, [REPLY] * len(rows), "100k" if len(listed) == 100000 else str(len(listed))
    )


# -- sides -------------------------------------------------------------------


def natives(rundir: Path, shm_mb: int) -> list[Kamailio]:
    out = []
    for side, define in (("same-work", "#!define STATEFUL"), ("stateless", "")):
        out.append(
            Kamailio(
                side,
                rundir / side,
                NATIVE_CFG,
                PORTS[side],
                {"CHILDREN": str(CHILDREN), "DEFINE": define, "LOG_FACILITY": FACILITIES[side]},
                shm_mb,
                log_to_stderr=False,
            )
        )
    return out


@contextlib.contextmanager
def natives_syslog(rundir: Path):
    """rsyslog writes each native's lines to its run directory while the bench runs."""
    rules = "".join(
        f"{facility.lower().removeprefix('log_')}.* {rundir / side / 'syslog.log'}\n& stop\n"
        for side, facility in FACILITIES.items()
    )
    SYSLOG_RULE.write_text("# Written by bench/deployed_router.py while it runs.\n" + rules)
    try:
        services.restart("rsyslog")
        yield
    finally:
        SYSLOG_RULE.unlink(missing_ok=True)
        services.restart("rsyslog")


def reload_router(edge: DeployedKamailio, traffic: Traffic, workdir: Path) -> None:
    """app_python.reload, then calls until every worker has run the new script once."""
    since = edge.log.stat().st_size if edge.log.exists() else 0
    edge.rpc("app_python.reload")
    check_replies(edge, traffic, workdir)
    # A script that does not load leaves the previous one deciding: that must not be measured.
    with edge.log.open("rb") as f:
        f.seek(since)
        if b"routing NOT loaded" in f.read():
            raise BenchError(f"the router did not load after app_python.reload:\n{edge.tail()}")


def with_lever_off(original: str, lever: str) -> str:
    text = original
    for old, new in LEVERS[lever]:
        if text.count(old) != 1:
            raise BenchError(
                f"lever {lever!r}: the deployed script has {text.count(old)} of {old!r}, "
                "not one: the patch must follow the router's code"
            )
        text = text.replace(old, new)
    return text


def lever_rounds(
    edge: DeployedKamailio, traffic: Traffic, rate: int, seconds: float, rounds: int, workdir: Path
) -> dict[str, dict]:
    """CPU per call of the deployed router with each lever off alone, and as deployed, in turns."""
    original = DEPLOYED_SCRIPT.read_text()
    variants = {
        "as deployed": original,
        **{f"without {name}": with_lever_off(original, name) for name in LEVERS},
    }
    costs: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for n in range(rounds):
            for i, (name, text) in enumerate(variants.items()):
                DEPLOYED_SCRIPT.write_text(text)
                reload_router(edge, traffic, workdir / f"check-{n}-{i}")
                step = judge(run_sipp(edge, traffic, rate, seconds, workdir / f"round-{n}-{i}"))
                print(
                    f"    round {n + 1} {name:40} {rate}/s {'ok' if step.ok else 'FAIL'} "
                    f"{step.edge_us_per_call:6.1f} us/call {step.why}",
                    flush=True,
                )
                if step.ok:
                    costs[name].append(step.edge_us_per_call)
                time.sleep(1.0)
    finally:
        DEPLOYED_SCRIPT.write_text(original)
        edge.rpc("app_python.reload")
    return {
        name: {"median_us": statistics.median(v) if v else None, "runs_us": v} for name, v in costs.items()
    }


# -- report ------------------------------------------------------------------


def report(results: dict, args_line: str) -> str:
    e = results["sides"]
    out = [
        f"Run {results['started']} to {results['ended']} ({results['wall_minutes']:.1f} min):\n",
        f"    {args_line}\n",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in results["machine"].items()) + ".\n",
        f"The lab deployed with a list of {results['numbers']:,} generated numbers on the bench DID "
        f"{BENCH_DID} (callback on, scheme `closed`: one reject step), `kamailio_shm_memory: "
        f"{results['shm_mb']}`; the natives run with `-m {results['shm_mb']}`, {CHILDREN} UDP "
        f"children like the lab. SIPp at the trunk's address calls the DID from callers not on the "
        f"list (E.164, `00…`, national `0…` in turn): every call is decided in full and refused with "
        f"{REPLY}. Every side logs its decision line through the lab's rsyslog (the natives to files "
        f"of their own), and every side's CPU per call counts rsyslog's. Kamailio's `routing loaded` line: "
        f"`{results.get('loaded', '-')}`\n",
        "| side | max rate | p95 | µs/call at the common rate | shm used |",
        "|---|---:|---:|---:|---:|",
    ]
    rate = common_rate(e, SIDES)
    for side in SIDES:
        top = best(e, side)
        at = step_at(e, side, rate) if rate else None
        out.append(
            f"| {side} | {top['rate'] if top else '-'}/s | {ms(top and top['p95_ms'])} | "
            f"{us((at or {}).get('edge_us_per_call'))} | "
            f"{e[side].get('memory_after', {}).get('shm_used_mb', float('nan')):.0f} MB |"
        )
    dep, same, stateless = (best(e, s) for s in SIDES)
    at = {s: (step_at(e, s, rate) or {}).get("edge_us_per_call") if rate else None for s in SIDES}
    out.append(
        f"\nCommon rate: {rate or '-'}/s. What ended each ramp: "
        + "; ".join(f"{s} {e[s].get('stop', '-')}" for s in SIDES)
        + ".\n"
    )
    rate_same = ratio(dep and dep["rate"], same and same["rate"])
    rate_stateless = ratio(dep and dep["rate"], stateless and stateless["rate"])
    out.append(
        f"**Deployed / same-work native: rate {rate_same}, CPU {ratio(at['same-work'], at['deployed'])}. "
        f"Deployed / stateless native: rate {rate_stateless}, "
        f"CPU {ratio(at['stateless'], at['deployed'])}.** "
        f"Goal: ≥ {GOAL_RATIO} of the same-work native.\n"
    )
    levers = results.get("levers")
    if levers:
        base = levers["as deployed"]["median_us"]
        out.append(
            f"### The router's levers\n\nCPU of the deployed Kamailio per call at {results['lever_rate']}/s, "
            f"each lever turned off alone in the deployed script (bench/deployed_router.py LEVERS: the "
            f"patch), the variants taking turns, {results['lever_rounds']} rounds; median (runs):\n"
        )
        out.append("| router | µs/call | runs | lever saves |")
        out.append("|---|---:|---|---:|")
        for name, v in levers.items():
            runs = ", ".join(f"{x:.0f}" for x in v["runs_us"])
            saves = (
                f"{v['median_us'] - base:.1f} µs"
                if v["median_us"] and base and name != "as deployed"
                else "-"
            )
            out.append(f"| {name} | {us(v['median_us'])} | {runs} | {saves} |")
    out.append(
        "\nCommands: natives `" + e["same-work"].get("command", "-") + "` (and STATEFUL undefined for "
        "the stateless one); steps: `" + ((dep or same or {}).get("command") or "-") + "` with each "
        "side's port and rate."
    )
    text = "\n".join(out)
    return text.replace(results["workdir"], "<run dir>").replace(str(lab.REPO) + "/", "")


# -- main --------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numbers", type=int, default=100000, help="numbers on the bench DID's list")
    p.add_argument("--shm", type=int, default=SHM_MB, help="shared memory of every side, MB")
    p.add_argument("--quick", action="store_true", help="fewer rates, short steps, one lever round")
    p.add_argument("--no-levers", action="store_true", help="skip the levers' rounds")
    p.add_argument("--no-redeploy", action="store_true", help="leave the bench inventory deployed")
    p.add_argument("--json", type=Path, help="write every figure as JSON here")
    p.add_argument("--write-results", type=Path, metavar="RESULTS_MD")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args_line = shlex.join(
        [".venv/bin/python", "bench/deployed_router.py", *(sys.argv[1:] if argv is None else argv)]
    )
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    rates = QUICK_RATES if args.quick else RATES
    seconds = 3.0 if args.quick else STEP_SECONDS
    t0 = time.monotonic()
    results: dict = {
        "machine": lab.machine(),
        "numbers": args.numbers,
        "shm_mb": args.shm,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "sides": {},
        "lever_rate": LEVER_RATE,
        "lever_rounds": 1 if args.quick else LEVER_ROUNDS,
    }
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="vpbx-bench-deployed-") as tmp:
        workdir = Path(tmp)
        results["workdir"] = str(workdir)
        numbers = listed_numbers(args.numbers, rng)
        inventory = lab.bench_inventory(workdir, bench_change(numbers, args.shm))
        lab.say(f"deploying the lab with {args.numbers:,} numbers on {BENCH_DID}'s list, shm {args.shm} MB")
        results["deploy_seconds"] = lab.deploy(inventory)
        lab.say(f"deployed in {results['deploy_seconds']:.0f} s")
        try:
            traffic = callers(set(numbers), rng, workdir / "callers.csv")
            deployed = DeployedKamailio()
            if not deployed.alive():
                raise BenchError("the deployed Kamailio does not run")
            edges = [deployed, *natives(workdir, args.shm)]
            with natives_syslog(workdir):
                for edge in edges:
                    edge.counts_syslog = True
                for edge in edges[1:]:
                    edge.start()
                for edge in edges:
                    check_replies(edge, traffic, workdir / "check" / edge.side)
                    results["sides"][edge.side] = {"command": edge.command, "memory": edge.memory()}
                loaded = [ln for ln in deployed.tail(400).splitlines() if ROUTING_LOADED in ln]
                results["loaded"] = loaded[-1].split("vpbx: ", 1)[-1] if loaded else ""
                ramps = lockstep_ramp(
                    edges, traffic, rates, seconds, 1 if args.quick else REFINE, workdir / "ramp"
                )
                for edge in edges:
                    steps, top = ramps[edge.side]
                    results["sides"][edge.side].update(
                        steps=[asdict(s) for s in steps],
                        best=asdict(top) if top else None,
                        stop=ramp_outcome(steps),
                        memory_after=edge.memory(),
                    )
                for edge in edges[1:]:
                    edge.stop()
                if not args.no_levers:
                    results["levers"] = lever_rounds(
                        deployed, traffic, LEVER_RATE, seconds, results["lever_rounds"], workdir / "levers"
                    )
        finally:
            stop_all()
            if not args.no_redeploy:
                lab.say("deploying the lab inventory again")
                lab.deploy(lab.LAB)
        results["ended"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        results["wall_minutes"] = (time.monotonic() - t0) / 60
        block = report(results, args_line)
    publish(block, results, args.json, args.write_results, SECTION, "bench/deployed_router.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
