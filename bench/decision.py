"""Decision throughput, KEMI vs native: the per-INVITE decision under SIPp load.

The same decision (trunk by source address, DID look-up, is the caller on
the DID's list of N numbers, then one stateless final reply) runs in two
Kamailio instances this script starts itself, one at a time:

  native  bench/decision/native.cfg: kamailio.cfg with ipops + htable
          (the baseline, lists loaded from db_text files)
  kemi    bench/decision/kemi.cfg + kemi_decision.py: app_python3 with the
          real vpbx.decide.Router over a routing.json made by vpbx.model

For each list size SIPp (bench/decision/uac.xml) calls from the trunk's
address at increasing rates; a step passes when fewer than 1% of its calls
fail and SIPp kept up with the target rate. Printed per size and side: the
highest passing rate, its p95 response time, Kamailio's CPU per call, the
KEMI/native ratios, start-up time and memory (shm, RSS, PSS of all the
instance's processes). Every figure comes with the command that made it.

    .venv/bin/python bench/decision.py                 # all sizes + profile, ~15 min
    .venv/bin/python bench/decision.py --quick         # 1k and 100k, no profile, ~2-3 min
    .venv/bin/python bench/decision.py --sizes 1000,100000 --no-profile
    .venv/bin/python bench/decision.py --write-results bench/RESULTS.md

The profile step (at 100k numbers, the goal's size; --no-profile skips it)
splits KEMI's cost: the same instance without vpbx (app_python3's floor)
beside the decision; plus per-call costs of the decision's parts and py-spy
of one worker.

Run as root from the repository root with the project's virtualenv (it has
the vpbx package). Traffic stays on loopback: the instances listen on
127.0.0.1:5260 (native) and :5261 (kemi), SIPp sends from 127.0.0.5:5270.
The deployed edge (127.0.0.1:5060) is never touched.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import lab
from decision_data import (
    CARRIER_TRUNK,
    DID,
    LIST_NAME,
    PLAIN_DID,
    SEED,
    TRUNK_CIDR,
    Dataset,
    make_dataset,
)
from decision_report import COST_ROUNDS, EMBEDDED_PYTHON, GOAL_SIZE, SHM_MB, report
from kamailio_instance import KAMAILIO, KAMCMD, START_TIMEOUT, BenchError, Kamailio, stop_all
from report import common_rate, publish
from sipp_load import (
    SIPP,
    Step,
    check_replies,
    cost_rounds,
    judge,
    lockstep_ramp,
    ramp_outcome,
    run_sipp,
)

REPO = lab.REPO
BENCH = REPO / "bench" / "decision"
KEMI_CFG = BENCH / "kemi.cfg"
NATIVE_CFG = BENCH / "native.cfg"
KEMI_SCRIPT = BENCH / "kemi_decision.py"

PY_SPY = Path(sys.executable).parent / "py-spy"

# Each side its own port: the sides run side by side and take turns at each rate.
PORTS = {"native": 5260, "kemi": 5261, "kemi-floor": 5262}
CARRIER_IP = CARRIER_TRUNK.partition(":")[0]

CHILDREN = 4            # the deployed default (kamailio_children), both sides
PKG_MB = 32            # the deployed default (kamailio_pkg_memory)
SIDES = ("native", "kemi")
# KEMI variants (VPBX_BENCH_KEMI of kemi_decision.py) by side name; the floor
# runs only in the profile step, to split KEMI's cost.
KEMI_MODES = {"kemi": "decision", "kemi-floor": "floor"}

DEFAULT_SIZES = (1000, 10000, 100000, 1000000)
QUICK_SIZES = (1000, 100000)
DEFAULT_RATES = (2000, 4000, 8000, 16000, 32000, 64000)
QUICK_RATES = (2000, 8000, 16000, 32000)
STEP_SECONDS = 5.0
QUICK_STEP_SECONDS = 2.0
REFINE_STEPS = 2
QUICK_REFINE_STEPS = 1

# CI-like runs, deploys and other benches share the CPUs (this process is left out).
BUSY_PATTERNS = ("molecule", "pytest tests/e2e", ".ci/run", "ansible-playbook",
                 r"python[0-9.]* bench/\w+\.py")
BUSY_WAIT_SECONDS = 20 * 60

SECTION = "## 1. Decision throughput, KEMI vs native"


EMBEDDED_VERSIONS = """
import sys
try:
    import netaddr, phonenumbers
    own = f"its own site-packages: phonenumbers {phonenumbers.__version__}, netaddr {netaddr.__version__}"
except ImportError:
    own = "no phonenumbers/netaddr of its own"
print(f"{sys.version.split()[0]} ({own}; the KEMI scripts put the runtime first)")
"""


def machine() -> dict[str, str]:
    return {**lab.machine(), "embedded python": lab.first_line([EMBEDDED_PYTHON, "-c", EMBEDDED_VERSIONS])}


def busy_processes() -> list[str]:
    return lab.busy_processes(BUSY_PATTERNS)


def wait_until_quiet(max_wait: float) -> bool:
    """Wait while CI-like runs (molecule, e2e, .ci/run) share the CPUs; True when quiet."""
    return lab.wait_until_quiet(max_wait, BUSY_PATTERNS)


# -- the two sides' instances -------------------------------------------------


def instance(side: str, rundir: Path, dataset: Dataset, children: int, runtime: list[str]) -> Kamailio:
    """The Kamailio of one side, its data beside its config in its run directory."""
    subs = {"CHILDREN": str(children)}
    mode = KEMI_MODES.get(side)
    if mode:
        rundir.mkdir(parents=True, exist_ok=True)
        script = rundir / KEMI_SCRIPT.name
        shutil.copy(KEMI_SCRIPT, script)
        shutil.copy(dataset.root / "routing.json", rundir / "routing.json")
        (rundir / "pythonpath").write_text("\n".join(runtime) + "\n")
        subs["SCRIPT"] = str(script)
        edge = Kamailio(side, rundir, KEMI_CFG, PORTS[side], subs, SHM_MB, env={"VPBX_BENCH_KEMI": mode})
    else:
        bits = max(4, min(20, math.ceil(math.log2(max(dataset.size, 2)))))
        subs.update(DBDIR=str(dataset.root / "db"), TRUNK_CIDR=TRUNK_CIDR,
                    DB_ROWS=str(dataset.size + 100), LIST_BITS=str(bits))
        edge = Kamailio(side, rundir, NATIVE_CFG, PORTS[side], subs, SHM_MB)
    edge.mode = mode
    return edge


def list_keys(edge: Kamailio) -> int:
    """Keys in the native side's list htable."""
    match = re.search(r"name:\s*vpbx_list\s+slots:\s*\d+\s+all:\s*(\d+)", edge.rpc("htable.stats"))
    return int(match.group(1)) if match else -1


def htable_share(edge: Kamailio, size: int) -> tuple[float, float]:
    """shm the list htable itself holds (flush it, measure, reload it from db_text), and the reload time.

    The instance's shm also holds db_text's cache of the table files, which
    is what this bench's loading costs, not what a lookup table costs.
    """
    before = edge.shm()["real_used"]
    edge.rpc("htable.flush", "vpbx_list")
    after = edge.shm()["real_used"]
    started = time.monotonic()
    edge.rpc("htable.reload", "vpbx_list", timeout=START_TIMEOUT)
    seconds = time.monotonic() - started
    if list_keys(edge) != size:
        raise BenchError(f"native: htable.reload gave {list_keys(edge)} keys, expected {size}")
    return (before - after) / 2**20, seconds


def _on_signal(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


# -- profiling ----------------------------------------------------------------

COSTS_SCRIPT = r"""
import json, site, sys, timeit
pythonpath, routing, did, plain_did, list_name, source, router_script = sys.argv[1:8]
before = list(sys.path)
for line in open(pythonpath).read().split():
    site.addsitedir(line)
sys.path[:] = [p for p in sys.path if p not in before] + before  # as kemi/vpbx_router.py
import ipaddress, netaddr, phonenumbers
from vpbx import decide, model, numbers
config = model.load(json.load(open(routing)))
router = decide.Router(config)
members = config.number_lists[list_name]
listed = sorted(members)[len(members) // 2]
unlisted = next(n for n in ("+421905000000", "+421905000001", "+421905000002") if n not in members)
trunk = decide.FromTrunk("carrier")
net = ipaddress.ip_network(config.trunks[0].inbound_sources[0])
parsed = phonenumbers.parse(listed, "SK")
# The real router's decision log line (it is formatted for every INVITE, whatever
# the log level): its helpers, imported with a stand-in for Kamailio's KSR module.
import importlib.util, types
sys.modules.setdefault("KSR", types.ModuleType("KSR"))
spec = importlib.util.spec_from_file_location("vpbx_router_bench", router_script)
real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)
action = router.decide(trunk, did, unlisted)
def log_line():
    return (f"{real.LOG_PREFIX}decision: from={source} origin={trunk.log} "
            f"caller={unlisted} ruri={did} -> {action.log}\n")
cases = {
    "trunk_for($si) (netaddr, as now)": lambda: router.trunk_for(source),
    "the same check with ipaddress": lambda: ipaddress.ip_address(source) in net,
    "normalize(DID)": lambda: numbers.normalize(did, "SK"),
    "normalize(caller)": lambda: numbers.normalize(listed, "SK"),
    "  of which phonenumbers.parse": lambda: phonenumbers.parse(listed, "SK"),
    "  of which is_valid_number": lambda: phonenumbers.is_valid_number(parsed),
    "  of which format_number(E164)": lambda: phonenumbers.format_number(parsed, 0),
    "caller in the list's frozenset": lambda: listed in members,
    "decide(), DID without callback": lambda: router.decide(trunk, plain_did, unlisted),
    "decide(), listed caller": lambda: router.decide(trunk, did, listed),
    "decide(), unlisted caller": lambda: router.decide(trunk, did, unlisted),
    "kemi/vpbx_router.py's decision log line (f-string only)": log_line,
}
out = {"versions": f"python {sys.version.split()[0]}, phonenumbers {phonenumbers.__version__}, "
                   f"netaddr {netaddr.__version__}"}
for name, fn in cases.items():
    n, _ = timeit.Timer(fn).autorange()
    out[name] = min(timeit.Timer(fn).repeat(5, n)) / n * 1e6
print(json.dumps(out))
"""


def python_costs(pythonpath: Path, dataset: Dataset, interpreter: str = EMBEDDED_PYTHON) -> dict:
    """Per-call costs of the decision's parts, by default in the interpreter and packages Kamailio embeds."""
    argv = [interpreter, "-c", COSTS_SCRIPT, str(pythonpath), str(dataset.root / "routing.json"),
            DID, PLAIN_DID, LIST_NAME, CARRIER_IP, str(REPO / "kemi" / "vpbx_router.py")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-500:]}
    return json.loads(out.stdout)


def _frame_name(frame: str) -> str:
    """'Router.decide (<repo>/vpbx/decide.py:137)' -> 'Router.decide (vpbx/decide.py)'."""
    frame = re.sub(r":\d+\)$", ")", frame.strip())
    frame = re.sub(r"\((?:[^()]*/(?:site|dist)-packages/)", "(", frame)
    return frame.replace(str(REPO) + "/", "")


def py_spy_profile(edge: Kamailio, dataset: Dataset, rate: int, seconds: float, workdir: Path) -> dict:
    """py-spy on one UDP worker while SIPp runs at `rate`; functions by inclusive share of samples."""
    if not PY_SPY.exists():
        return {"error": f"{PY_SPY} not found (pip install py-spy into the virtualenv)"}
    workers = edge.workers()
    if not workers:
        return {"error": "no UDP worker found in core.psx"}
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "py-spy.txt"
    argv = [str(PY_SPY), "record", "--pid", str(workers[0]), "--duration", str(int(seconds)),
            "--rate", "500", "--format", "raw", "--output", str(raw), "--nonblocking"]
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        time.sleep(0.5)
        step = judge(run_sipp(edge, dataset.traffic, rate, seconds, workdir / "load"))
        log, _ = spy.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        log, _ = spy.communicate()
    if not raw.exists():
        return {"error": f"py-spy wrote nothing: {log.strip()[-400:]}"}
    inclusive: Counter[str] = Counter()
    total = python = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        if frames:
            python += n
        for name in set(frames):
            inclusive[name] += n
    command = shlex.join(argv).replace(str(workers[0]), "<udp worker>").replace(str(workdir), "<run dir>")
    return {"command": command, "samples": total, "python_samples": python, "rate": rate,
            "edge_us_per_call": step.edge_us_per_call,
            "top": [(name, n / python) for name, n in inclusive.most_common(20)] if python else []}



# -- main -----------------------------------------------------------------------


def runtime_path(which: str) -> list[str]:
    if which == "deployed":
        return ["/opt/vpbx/venv/lib/python3.11/site-packages"]
    return [str(REPO), sysconfig.get_paths()["purelib"]]


def start_side(side: str, dataset: Dataset, args, rundir: Path, runtime: list[str]) -> tuple[Kamailio, dict]:
    """Start one instance, take its start-up time and memory, check its decisions."""
    edge = instance(side, rundir / side, dataset, args.children, runtime)
    result: dict = {"command": edge.command.replace(str(rundir), "<run dir>")}
    edge.start()
    result["start_seconds"] = edge.start_seconds
    time.sleep(1.0)
    result["memory"] = edge.memory()
    if not edge.mode:
        if list_keys(edge) != dataset.size:
            raise BenchError(f"native: {list_keys(edge)} keys loaded, expected {dataset.size}")
        result["memory"]["htable_mb"], result["reload_seconds"] = htable_share(edge, dataset.size)
    print(f"  {side:13} {dataset.size:>8}: up in {edge.start_seconds:.1f} s, shm "
          f"{result['memory']['shm_used_mb']:.1f} MB (list htable "
          f"{result['memory'].get('htable_mb', 0):.1f} MB), RSS {result['memory']['rss_mb']:.0f} MB, "
          f"PSS {result['memory']['pss_mb']:.0f} MB", flush=True)
    if edge.mode:
        loaded = re.search(r"vpbx-bench: loaded .*", edge.log.read_text(errors="replace"))
        result["loaded"] = loaded.group(0).strip() if loaded else ""
        print(f"    {result['loaded']}", flush=True)
    if edge.mode != "floor":
        check_replies(edge, dataset.traffic, rundir / side / "check")
    return edge, result


def finish_side(edge: Kamailio, result: dict, steps: list[Step], best: Step | None) -> None:
    result["steps"] = [asdict(s) for s in steps]
    result["best"] = asdict(best) if best else None
    result["stop"] = ramp_outcome(steps)
    result["memory_after"] = edge.memory()


def measure_size(size: int, args, workdir: Path, runtime: list[str], results: dict) -> None:
    """Both sides at one list size, side by side; the profile step if this is its size."""
    print(f"list of {size:,} numbers: making the data", flush=True)
    rundir = workdir / f"n{size}"
    dataset = make_dataset(size, rundir / "data", SEED)
    entry: dict = {"model_load_seconds": dataset.model_load_seconds}
    results["per_size"][str(size)] = entry
    if busy_processes():
        results["quiet"] = False
        print("WARNING: CI-like processes are running now; figures may be low", flush=True)
    edges = []
    try:
        for side in SIDES:
            edge, entry[side] = start_side(side, dataset, args, rundir, runtime)
            edges.append(edge)
        ramps = lockstep_ramp(edges, dataset.traffic, args.rates, args.step_seconds, args.refine,
                              rundir / "ramp")
        for edge in edges:
            finish_side(edge, entry[edge.side], *ramps[edge.side])
        if args.profile and size == args.profile_size:
            results["profile"] = profile_size(edges, entry, dataset, args, rundir, runtime)
    finally:
        for edge in edges:
            edge.stop()


def profile_size(edges: list[Kamailio], entry: dict, dataset: Dataset, args, rundir: Path,
                 runtime: list[str]) -> dict:
    """Where KEMI's time goes: the floor beside native and kemi, CPU per call in turns
    at one rate; per-call costs of the decision's parts; py-spy."""
    rate = common_rate(entry, SIDES)
    prof: dict = {"size": dataset.size, "split_rate": rate}
    floor = None
    try:
        floor, entry["kemi-floor"] = start_side("kemi-floor", dataset, args, rundir, runtime)
        if rate:
            order = [edges[0], floor, edges[1]]
            prof["rounds"] = cost_rounds(order, dataset.traffic, rate, args.step_seconds, COST_ROUNDS,
                                         rundir / "rounds")
            prof["py_spy"] = py_spy_profile(edges[1], dataset, rate, max(5.0, args.step_seconds),
                                            rundir / "py-spy")
    finally:
        if floor is not None:
            floor.stop()
    pythonpath = rundir / "kemi" / "pythonpath"
    prof["costs"] = python_costs(pythonpath, dataset)
    return prof


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help="list sizes, comma-separated (default 1000,10000,100000,1000000)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1k and 100k, short steps, no profile (~2-3 min)")
    p.add_argument("--rates", help="call rates to step through, comma-separated")
    p.add_argument("--step-seconds", type=float, help="seconds of traffic per step")
    p.add_argument("--refine", type=int, help="bisections between the last passing and the failing rate")
    p.add_argument("--children", type=int, default=CHILDREN, help="Kamailio UDP workers (both sides)")
    p.add_argument("--runtime", choices=("repo", "deployed"), default="repo",
                   help="vpbx for the KEMI side: this repository (default) or /opt/vpbx as deployed")
    p.add_argument("--profile-size", type=int, default=GOAL_SIZE,
                   help="list size of the profile step (default 100000, the goal's)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the profile step (floor variant, per-call costs, py-spy)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for CI-like runs to end")
    p.add_argument("--workdir", type=Path, help="keep data and logs here (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, help="write every figure as JSON here")
    p.add_argument("--write-results", type=Path, metavar="RESULTS_MD",
                   help=f"replace this bench's block in RESULTS_MD (section '{SECTION}')")
    args = p.parse_args(argv)
    args.sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (
        QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.rates = tuple(int(r) for r in args.rates.split(",")) if args.rates else (
        QUICK_RATES if args.quick else DEFAULT_RATES)
    args.step_seconds = args.step_seconds or (QUICK_STEP_SECONDS if args.quick else STEP_SECONDS)
    args.refine = args.refine if args.refine is not None else (
        QUICK_REFINE_STEPS if args.quick else REFINE_STEPS)
    args.profile = not (args.no_profile or args.quick) and args.profile_size in args.sizes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    args_line = shlex.join([".venv/bin/python", "bench/decision.py", *given])
    if os.geteuid() != 0:
        print("run as root: the bench's Kamailio instances run as root", file=sys.stderr)
        return 2
    for tool in (KAMAILIO, KAMCMD, SIPP):
        if not Path(tool).exists():
            print(f"{tool} is missing", file=sys.stderr)
            return 2
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    quiet = True if args.no_wait else wait_until_quiet(BUSY_WAIT_SECONDS)
    info = machine()
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vpbx-bench-decision-"))
    runtime = runtime_path(args.runtime)
    t0 = time.monotonic()
    results: dict = {"machine": info, "quiet": quiet, "children": args.children, "runtime": runtime,
                     "step_seconds": args.step_seconds, "workdir": str(workdir),
                     "sizes": [], "per_size": {},
                     "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    interrupted = None
    try:
        for size in args.sizes:
            measure_size(size, args, workdir, runtime, results)
            results["sizes"].append(size)  # only complete sizes are reported
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str))
    except (SystemExit, KeyboardInterrupt) as exc:
        interrupted = str(exc) or type(exc).__name__
        print(f"\ninterrupted ({interrupted}); the sizes done so far follow", flush=True)
    finally:
        stop_all()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if not results["sizes"]:
        return 1
    results["ended"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["wall_minutes"] = (time.monotonic() - t0) / 60
    block = report(results, args_line)
    publish(block, results, args.json, None if interrupted else args.write_results, SECTION,
            "bench/decision.py")
    return 1 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
