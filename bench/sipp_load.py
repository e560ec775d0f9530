"""Load from SIPp at set rates against a Kamailio, judged the same way by every bench.

A step is one SIPp run at one call rate; it passes with < 1% failed calls,
SIPp at its rate and p95 under the limit. `lockstep_ramp` takes every side
through the same rates in turns (same machine, same minute), `cost_rounds`
measures CPU per call of each side at one rate, `check_replies` is the gate
that a side answers what the traffic expects before it is measured.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lab
from kamailio_instance import BenchError

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
CARRIER_IP = "127.0.0.5"
CARRIER_PORT = 5270
PAUSE_SECONDS = 1.0
RECV_TIMEOUT_MS = 1000  # no final reply within 1 s (retransmissions included): failed
FAIL_LIMIT = 0.01
RETRY_BELOW = 0.10      # a step failing fewer calls than this runs once more
# p95 at or above this fails a step too: ~500 ms is SIPp's first INVITE
# retransmission (T1), i.e. >= 5% of INVITEs or replies were lost, the edge
# is dropping packets even while < 1% of calls fail outright.
P95_LIMIT_MS = 100
KEEP_UP = 0.95          # achieved/target call rate below this: the step did not run at its rate
SIPP_SATURATED = 0.90   # SIPp's CPU share of one core at which SIPp is the bottleneck
CHECK_CALLS = 400
CHECK_RATE = 400


@dataclass
class Traffic:
    """What SIPp sends: a scenario, its injection file, and the final reply each row gets."""

    scenario: Path
    callers: Path
    expected: list[int]
    label: str                  # printed beside every step (the list size, ...)
    source_ip: str = CARRIER_IP
    source_port: int = CARRIER_PORT


@dataclass
class Step:
    side: str
    rate: int
    calls: int
    created: int = 0
    successful: int = 0
    failed: int = 0
    achieved: float = 0.0
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    sipp_cpu: float = 0.0      # share of one core
    edge_cpu: float = 0.0      # cores used by all the instance's processes
    edge_us_per_call: float = math.nan
    udp_drops: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    command: str = ""
    ok: bool = False
    why: str = ""

    @property
    def failed_share(self) -> float:
        return self.failed / self.created if self.created else 1.0


def _udp_errors() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    head, values = lines[0], lines[1]
    return int(values[head.index("RcvbufErrors")])


def run_sipp(edge, traffic: Traffic, rate: int, seconds: float, workdir: Path,
             calls: int | None = None) -> Step:
    """One SIPp run at `rate` calls/s; returns what SIPp, the edge and the kernel saw."""
    calls = calls or max(1, int(rate * seconds))
    workdir.mkdir(parents=True, exist_ok=True)
    limit = seconds + RECV_TIMEOUT_MS / 1000 + 20
    argv = [SIPP, "-sf", str(traffic.scenario), "-inf", str(traffic.callers),
            "-i", traffic.source_ip, "-p", str(traffic.source_port), "-t", "u1",
            "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", str(max(1000, 2 * rate)),
            "-recv_timeout", str(RECV_TIMEOUT_MS), "-timeout", f"{int(limit)}s", "-nostdin",
            "-trace_stat", "-stf", "stat.csv", "-fd", "1", "-trace_rtt", "-rtt_freq", "1000",
            "-trace_counts", "-trace_err", f"{edge.host}:{edge.port}"]
    step = Step(edge.side, rate, calls, command=shlex.join(argv).replace(str(lab.REPO) + "/", ""))
    cpu_before = edge.cpu_seconds()
    drops_before = _udp_errors()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with (workdir / "screen.log").open("wb") as screen:
        proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=screen,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=limit + 10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            step.why = "sipp did not end in time"
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    step.edge_cpu = (edge.cpu_seconds() - cpu_before) / wall
    step.udp_drops = _udp_errors() - drops_before
    sipp_cpu = (children_after.ru_utime - children_before.ru_utime
                + children_after.ru_stime - children_before.ru_stime)
    _read_sipp_stats(step, workdir)
    if step.created:
        # Over SIPp's own elapsed time, not the wall time around it (start-up, exit).
        active = step.created / step.achieved if step.achieved else wall
        step.sipp_cpu = sipp_cpu / active
        step.edge_us_per_call = step.edge_cpu * wall / step.created * 1e6
    return step


def _read_sipp_stats(step: Step, workdir: Path) -> None:
    stat = workdir / "stat.csv"
    if not stat.exists():
        step.why = step.why or "no SIPp statistics (see screen.log)"
        return
    lines = stat.read_text().splitlines()
    head = lines[0].split(";")
    last = dict(zip(head, lines[-1].split(";"), strict=False))
    step.created = int(last["TotalCallCreated"])
    step.successful = int(last["SuccessfulCall(C)"])
    step.failed = int(last["FailedCall(C)"])
    # Calls created but neither successful nor failed when SIPp stopped count as failed.
    step.failed += max(0, step.created - step.successful - step.failed)
    h, m, s = last["ElapsedTime(C)"].split(":")[:3]
    micro = last["ElapsedTime(C)"].split(":")[3] if last["ElapsedTime(C)"].count(":") == 3 else "0"
    elapsed = int(h) * 3600 + int(m) * 60 + int(s) + int(micro) / 1e6
    step.achieved = step.created / elapsed if elapsed > 0 else 0.0
    rtts = []
    for rtt in workdir.glob("*_rtt.csv"):
        for line in rtt.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                with contextlib.suppress(ValueError):
                    rtts.append(float(parts[1]))
    step.p50_ms = lab.percentile(rtts, 50)
    step.p95_ms = lab.percentile(rtts, 95)
    step.p99_ms = lab.percentile(rtts, 99)
    for counts in workdir.glob("*_counts.csv"):
        rows = counts.read_text().splitlines()
        names = rows[0].split(";")
        values = rows[-1].split(";")
        for name, value in zip(names, values, strict=False):
            match = re.fullmatch(r"\d+_(\d{3})_Recv", name)
            if match and value.strip().isdigit():
                step.codes[match.group(1)] = int(value)


def judge(step: Step) -> Step:
    if step.why:
        step.ok = False
    elif step.failed_share >= FAIL_LIMIT:
        step.why = f"{step.failed_share:.1%} failed"
    elif step.achieved < KEEP_UP * step.rate:
        step.why = f"sipp reached {step.achieved:.0f}/s"
    elif not step.p95_ms < P95_LIMIT_MS:
        step.why = f"p95 {step.p95_ms:.0f} ms"
    else:
        step.ok = True
    if not step.ok and step.sipp_cpu >= SIPP_SATURATED:
        step.why += f" (SIPp at {step.sipp_cpu:.0%} of a core: SIPp-bound)"
    return step


def check_replies(edge, traffic: Traffic, workdir: Path) -> Step:
    """Gate: a slow run whose replies must be exactly what the traffic expects."""
    step = run_sipp(edge, traffic, CHECK_RATE, CHECK_CALLS / CHECK_RATE, workdir, calls=CHECK_CALLS)
    want = Counter(str(c) for c in traffic.expected[:CHECK_CALLS])
    got = {code: n for code, n in step.codes.items() if n}
    if step.successful != CHECK_CALLS or got != dict(want):
        raise BenchError(f"{edge.side} at {traffic.label}: replies {got}, expected {dict(want)} "
                         f"({step.successful}/{CHECK_CALLS} calls succeeded); see {workdir}\n{edge.tail()}")
    return step


def ms(value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return "<1 ms" if value < 1 else f"{value:.0f} ms"


def one_step(edge, traffic: Traffic, rate: int, seconds: float, workdir: Path,
             steps: list[Step], attempt: int = 1) -> Step:
    """One step; a step that failed narrowly runs once more before it counts (a
    neighbour's burst of CPU on a shared 2-core machine can fail one step); both
    runs are kept."""
    step = judge(run_sipp(edge, traffic, rate, seconds, workdir / f"r{rate}-{attempt}"))
    steps.append(step)
    mark = "ok  " if step.ok else "FAIL"
    print(f"    {edge.side:15} {traffic.label:>8} {mark} {rate:>6}/s achieved {step.achieved:8.0f}/s "
          f"failed {step.failed_share:6.2%} p95 {ms(step.p95_ms):>6} "
          f"edge {step.edge_cpu:4.2f} cores {step.edge_us_per_call:6.1f} us/call "
          f"sipp {step.sipp_cpu:4.0%} drops {step.udp_drops} {step.why}", flush=True)
    time.sleep(PAUSE_SECONDS)
    if not edge.alive():
        raise BenchError(f"{edge.side} Kamailio died during the run:\n{edge.tail()}")
    if not step.ok and attempt == 1 and step.failed_share < RETRY_BELOW:
        step.why += " (run again)"
        return one_step(edge, traffic, rate, seconds, workdir, steps, 2)
    return step


def lockstep_ramp(edges: list, traffic: Traffic, rates: tuple[int, ...], seconds: float,
                  refine: int, workdir: Path) -> dict[str, tuple[list[Step], Step | None]]:
    """Every side through the same rates, taking turns at each rate (same machine, same minute),
    each until it fails; then `refine` bisections of each side's own last pass and first fail."""
    steps: dict[str, list[Step]] = {e.side: [] for e in edges}
    good: dict[str, Step | None] = {e.side: None for e in edges}
    bad: dict[str, Step | None] = {e.side: None for e in edges}
    for rate in rates:
        for edge in edges:
            if bad[edge.side] is None:
                step = one_step(edge, traffic, rate, seconds, workdir / edge.side, steps[edge.side])
                if step.ok:
                    good[edge.side] = step
                else:
                    bad[edge.side] = step
    for _ in range(refine):
        for edge in edges:
            g, b = good[edge.side], bad[edge.side]
            if g is None or b is None:
                continue
            mid = int(round((g.rate + b.rate) / 2, -2))
            if mid in (g.rate, b.rate):
                continue
            step = one_step(edge, traffic, mid, seconds, workdir / edge.side, steps[edge.side])
            if step.ok:
                good[edge.side] = step
            else:
                bad[edge.side] = step
    return {side: (steps[side], good[side]) for side in steps}


def cost_rounds(edges: list, traffic: Traffic, rate: int, seconds: float, rounds: int,
                workdir: Path) -> dict[str, dict]:
    """Edge CPU per call of each side at one rate, the sides taking turns, `rounds` times; medians."""
    costs: dict[str, list[float]] = {e.side: [] for e in edges}
    for n in range(rounds):
        for edge in edges:
            step = judge(run_sipp(edge, traffic, rate, seconds, workdir / f"{edge.side}-{n}"))
            print(f"    round {n + 1} {edge.side:15} {rate}/s {'ok' if step.ok else 'FAIL'} "
                  f"{step.edge_us_per_call:6.1f} us/call {step.why}", flush=True)
            if step.ok:
                costs[edge.side].append(step.edge_us_per_call)
            time.sleep(PAUSE_SECONDS)
    return {side: {"median_us": statistics.median(v) if v else None, "runs_us": v}
            for side, v in costs.items()}


def ramp_outcome(steps: list[Step]) -> str:
    """What ended a side's ramp, for the report."""
    passed = {s.rate for s in steps if s.ok}
    failed = [s for s in steps if not s.ok and s.rate not in passed]
    if not failed:
        return "passed every step"
    low = min(s.rate for s in failed)
    return f"lowest failing step {low}/s: " + "; ".join(s.why for s in failed if s.rate == low)
