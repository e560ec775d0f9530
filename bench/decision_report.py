"""The decision bench's report: every figure of bench/decision.py with the command that made it."""

from __future__ import annotations

import math

import lab
from decision_data import CARRIER_TRUNK, LISTED_SHARE
from kamailio_instance import PKG_MB
from report import best, common_rate, loose_max, ms, ratio, step_at, us
from sipp_load import KEEP_UP, P95_LIMIT_MS, RECV_TIMEOUT_MS

REPO = lab.REPO
CARRIER_IP = CARRIER_TRUNK.partition(":")[0]
SIDES = ("native", "kemi")
GOAL_RATIO = 0.9
GOAL_SIZE = 100000
SHM_MB = 2048
COST_ROUNDS = 3
# The interpreter app_python3 embeds (Debian's), for the per-call cost table.
EMBEDDED_PYTHON = "/usr/bin/python3"


def report(results: dict, args_line: str) -> str:
    """The markdown block: every figure with the command that produced it."""
    text = "\n".join(_report_lines(results, args_line))
    if results.get("workdir"):
        text = text.replace(results["workdir"], "<run dir>")
    return text.replace(str(REPO) + "/", "").replace(str(REPO), "<repo>")


def _report_lines(results: dict, args_line: str) -> list[str]:
    out = []
    sizes = results["sizes"]
    per = results["per_size"]
    out.append(f"Run {results['started']} to {results['ended']} ({results['wall_minutes']:.1f} min):\n")
    out.append(f"    {args_line}\n")
    out.append("Machine: " + "; ".join(f"{k}: {v}" for k, v in results["machine"].items()) + ".")
    if not results["quiet"]:
        out.append("\n**Warning: CI-like processes (molecule, e2e, .ci/run) ran during the measurement; "
                   "figures may be low.**")
    runtime = " ".join(results["runtime"]).replace(str(REPO), "<repo>")
    out.append(f"\nBoth sides: `children={results['children']}`, UDP only, `-m {SHM_MB} -M {PKG_MB}`, "
               f"SIPp from {CARRIER_IP} (the trunk), callers E.164, {LISTED_SHARE:.0%} on the list. "
               f"KEMI runtime first on sys.path: `{runtime}` (as the router does; the load line below "
               f"says which packages it got).\n")
    out.append("### Throughput\n")
    out.append(f"A step ({results['step_seconds']:.0f} s of calls at one rate) passes with < 1% failed calls "
               f"(no final reply within {RECV_TIMEOUT_MS} ms), SIPp at ≥ {KEEP_UP:.0%} of its target rate "
               f"and p95 < {P95_LIMIT_MS} ms (a p95 near 500 ms is SIPp's INVITE retransmission: ≥ 5% of "
               "the packets were lost, the edge is overloaded although < 1% of calls fail). Max: the "
               "highest passing step; in brackets the highest step with < 1% failed alone, whatever its "
               "p95. p95: SIPp response time (INVITE sent → final reply) at the max step; SIPp counts in "
               "whole ms and updates its clock per scheduling loop, so small values are 0 (<1), 4, 8 ms. "
               "µs/call: CPU time of all the instance's processes per call (INVITE, reply, ACK) at the "
               "highest rate both sides passed: native/KEMI CPU is the capacity ratio when the edge, "
               "not SIPp or the kernel, is the limit.\n")
    out.append("| list size | native max | p95 | KEMI max | p95 | KEMI/native rate | at rate | "
               "native µs/call | KEMI µs/call | native/KEMI CPU |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        e = per[str(size)]
        n, k = best(e, "native"), best(e, "kemi")
        nl, kl = loose_max(e, "native"), loose_max(e, "kemi")
        rate = common_rate(e, SIDES)
        ns, ks = (step_at(e, "native", rate), step_at(e, "kemi", rate)) if rate else (None, None)
        nus, kus = (ns or {}).get("edge_us_per_call"), (ks or {}).get("edge_us_per_call")
        out.append(f"| {size:,} | {n['rate'] if n else '-'}/s ({nl or '-'}) | {ms(n and n['p95_ms'])} | "
                   f"{k['rate'] if k else '-'}/s ({kl or '-'}) | {ms(k and k['p95_ms'])} | "
                   f"{ratio(k and k['rate'], n and n['rate'])} ({ratio(kl, nl)}) | {rate or '-'}/s | "
                   f"{us(nus)} | {us(kus)} | {ratio(nus, kus)} |")
    out.append("\nWhat ended each ramp:\n")
    for size in sizes:
        e = per[str(size)]
        out.append(f"- {size:,}: " + "; ".join(f"{side} {e[side].get('stop', '-')}" for side in SIDES))
    goal = per.get(str(GOAL_SIZE)) if GOAL_SIZE in sizes else None
    if goal:
        n, k = best(goal, "native"), best(goal, "kemi")
        rate = common_rate(goal, SIDES)
        ns, ks = (step_at(goal, "native", rate), step_at(goal, "kemi", rate)) if rate else (None, None)
        rate_ratio = k["rate"] / n["rate"] if n and k else 0.0
        cpu_ratio = ns["edge_us_per_call"] / ks["edge_us_per_call"] if ns and ks else 0.0
        verdict = "met" if min(rate_ratio, cpu_ratio) >= GOAL_RATIO else "MISSED"
        out.append(f"\n**Goal at {GOAL_SIZE:,} numbers: KEMI/native ≥ {GOAL_RATIO}. Rate ratio "
                   f"{rate_ratio:.2f}, CPU-cost ratio {cpu_ratio:.2f}: {verdict}** (both must hold: when "
                   "SIPp is the limit, the rate ratio says nothing about the edge).\n")
    out.append("### Start-up and memory\n")
    out.append("Idle after start; PSS also after the load steps (copy-on-write pages the workers "
               "touched). Start-up: process start to the first SIP reply.\n")
    out.append("| list size | side | start-up | shm used | of it the list htable | RSS (sum) | PSS (sum) | "
               "PSS after load |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        for side in SIDES:
            s = per[str(size)][side]
            mem, after = s.get("memory", {}), s.get("memory_after", {})
            table = f"{mem['htable_mb']:.1f} MB" if "htable_mb" in mem else "-"
            out.append(f"| {size:,} | {side} | {s.get('start_seconds', math.nan):.1f} s | "
                       f"{mem.get('shm_used_mb', math.nan):.1f} MB | {table} | "
                       f"{mem.get('rss_mb', math.nan):.0f} MB | {mem.get('pss_mb', math.nan):.0f} MB | "
                       f"{after.get('pss_mb', math.nan):.0f} MB |")
    if len(sizes) > 1:
        lo, hi = per[str(sizes[0])], per[str(sizes[-1])]
        span = sizes[-1] - sizes[0]

        def growth(side: str, key: str, when: str = "memory") -> str:
            a, b = lo[side].get(when, {}).get(key), hi[side].get(when, {}).get(key)
            return f"{(b - a) * 2**20 / span:.0f} B" if a is not None and b is not None else "-"

        out.append(f"\nGrowth per listed number ({sizes[0]:,} → {sizes[-1]:,}): native list htable "
                   f"{growth('native', 'htable_mb')} of shm, native PSS {growth('native', 'pss_mb')} "
                   f"(db_text's cache of the table included), KEMI PSS {growth('kemi', 'pss_mb')} idle and "
                   f"{growth('kemi', 'pss_mb', 'memory_after')} after the load steps.")
    loads = ", ".join(f"{s:,}: {per[str(s)]['model_load_seconds']:.1f} s" for s in sizes)
    out.append(f"\nvpbx.model.load of the inventory (validates every number; the bench's own process, "
               f"phonenumbers of the venv): {loads}.")
    loaded = next((per[str(s)]["kemi"].get("loaded") for s in reversed(sizes)
                   if per[str(s)]["kemi"].get("loaded")), "")
    if loaded:
        out.append(f"KEMI load line (largest size): `{loaded}`")
    prof = results.get("profile")
    if prof and prof["size"] in sizes:
        out.extend(_profile_report(prof, per[str(prof["size"])]))
    out.append("\n### Commands\n")
    out.append("Instances (configs: the templates rendered into the run directory; `<run dir>` is a "
               "temporary directory):\n")
    first = per[str(sizes[0])]
    for side in SIDES:
        out.append(f"    {first[side].get('command', '-')}")
    out.append("\nSteps (shown: the max step of each side and size; every step is the same command "
               "with its own `-r`, `-m`, `-l`):\n")
    for size in sizes:
        for side in SIDES:
            top = best(per[str(size)], side)
            if top:
                out.append(f"    # {side}, {size:,} numbers, {top['rate']}/s\n    {top['command']}")
    out.append("\nMemory: `kamcmd -s unix:<run dir>/kamailio_ctl core.shmmem` (real_used); RSS and PSS "
               "summed from `/proc/<pid>/smaps_rollup` over the instance's processes. CPU: utime+stime "
               "from `/proc/<pid>/stat` of the instance's processes around each step; SIPp's from "
               "getrusage of the finished child.")
    return out


PROFILE_LABELS = {
    "native": "native (htable)",
    "kemi-floor": "KEMI without vpbx (app_python3's floor)",
    "kemi": "KEMI, vpbx.decide as in the repo",
}


def _profile_report(prof: dict, entry: dict) -> list[str]:
    out = [f"\n### Where KEMI's time goes ({prof['size']:,} numbers)\n"]
    rate, rounds = prof.get("split_rate"), prof.get("rounds", {})
    if rate and rounds:
        out.append(f"CPU per call of each variant at {rate}/s, the variants taking turns, {COST_ROUNDS} "
                   f"rounds of {entry['native']['steps'][0]['calls'] // entry['native']['steps'][0]['rate']}"
                   " s each; median (the runs):\n")
        out.append("| variant | µs/call | runs | native/variant |")
        out.append("|---|---:|---|---:|")
        med = {side: rounds.get(side, {}).get("median_us") for side in PROFILE_LABELS}
        for side, label in PROFILE_LABELS.items():
            runs = ", ".join(f"{x:.0f}" for x in rounds.get(side, {}).get("runs_us", []))
            out.append(f"| {label} | {us(med[side])} | {runs} | {ratio(med['native'], med[side])} |")
        if all(med.values()):
            out.append(f"\nSplit of KEMI's extra cost over native ({med['kemi'] - med['native']:.1f} µs): "
                       f"app_python3 itself (floor - native: message object, GIL, KSR calls, Python "
                       f"frame) {med['kemi-floor'] - med['native']:.1f} µs; the vpbx decision (repo - "
                       f"floor) {med['kemi'] - med['kemi-floor']:.1f} µs.")
        if entry.get("kemi-floor", {}).get("command"):
            out.append(f"\n    {entry['kemi-floor']['command']}")
    costs = dict(prof.get("costs", {}))
    if "error" in costs:
        out.append(f"\nPer-call costs: failed: {costs['error']}")
    elif costs:
        versions = costs.pop("versions")
        out.append(f"\nPer call, best of 5 timeit runs of COSTS_SCRIPT in bench/decision.py in Kamailio's "
                   f"interpreter (`{EMBEDDED_PYTHON}`), sys.path as the router sets it ({versions}):\n")
        out.append("| part | µs |\n|---|---:|")
        out.extend(f"| {name} | {us:.2f} |" for name, us in costs.items())
    spy = prof.get("py_spy", {})
    if "error" in spy:
        out.append(f"\npy-spy: {spy['error']}")
    elif spy:
        share = spy["python_samples"] / spy["samples"] if spy["samples"] else 0
        out.append(f"\npy-spy on one UDP worker at {spy['rate']}/s (`{spy['command']}`): "
                   f"{spy['samples']} samples, {share:.0%} with Python frames; inclusive share of those:\n")
        out.append("| frame | share |\n|---|---:|")
        out.extend(f"| `{name[:100]}` | {s:.0%} |" for name, s in spy["top"])
    return out
