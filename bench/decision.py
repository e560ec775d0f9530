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
import contextlib
import json
import math
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import lab

from vpbx import model

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "decision"
KEMI_CFG = BENCH / "kemi.cfg"
NATIVE_CFG = BENCH / "native.cfg"
KEMI_SCRIPT = BENCH / "kemi_decision.py"
UAC_SCENARIO = BENCH / "uac.xml"

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
PY_SPY = Path(sys.executable).parent / "py-spy"
# The interpreter app_python3 embeds (Debian's), for the per-call cost table.
EMBEDDED_PYTHON = "/usr/bin/python3"

EDGE_IP = "127.0.0.1"
# Each side its own port: the sides run side by side and take turns at each rate.
PORTS = {"native": 5260, "kemi": 5261, "kemi-floor": 5262}
CARRIER_IP = "127.0.0.5"
CARRIER_PORT = 5270
PING_IP = "127.0.0.1"

# The lab's shape: one trunk, one callback DID with a list, a closed scheme.
COUNTRY = "SK"
TRUNK_CIDR = "127.0.0.5/32"
DID = "+421233000111"
# A second DID without callback: not dialled by the load, but decided in the
# per-call cost table (most DIDs of a PBX have no callback).
PLAIN_DID = "+421233000222"
LIST_NAME = "bench-mobiles"
CALLBACK_REPLY = 486
SCHEME_STAND_IN = 480
# +42190[1-8] followed by 6 digits: Slovak mobile ranges libphonenumber calls
# valid (every number is still validated by vpbx.model.load below).
MOBILE_RANGES = tuple(f"+42190{d}" for d in range(1, 9))
CALLER_ROWS = 20000
LISTED_SHARE = 0.5
SEED = 5060

CHILDREN = 4            # the deployed default (kamailio_children), both sides
SHM_MB = 2048
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
COST_ROUNDS = 3
QUICK_REFINE_STEPS = 1
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
START_TIMEOUT = 180.0
CHECK_CALLS = 400
CHECK_RATE = 400

# CI-like runs, deploys and other benches share the CPUs (this process is left out).
BUSY_PATTERNS = ("molecule", "pytest tests/e2e", ".ci/run", "ansible-playbook",
                 r"python[0-9.]* bench/\w+\.py")
BUSY_WAIT_SECONDS = 20 * 60
GOAL_RATIO = 0.9
GOAL_SIZE = 100000

SECTION = "## 1. Decision throughput, KEMI vs native"
BLOCK_BEGIN = "<!-- bench/decision.py: begin -->"
BLOCK_END = "<!-- bench/decision.py: end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The bench cannot go on; the message says why."""


# -- machine ---------------------------------------------------------------


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


# -- data --------------------------------------------------------------------


@dataclass
class Dataset:
    size: int
    root: Path
    callers: Path
    expected: list[int]
    model_load_seconds: float


def inventory(numbers: list[str]) -> dict:
    """The contract's variables of the bench's world, as an admin would write them."""
    return {
        "vpbx_default_country": COUNTRY,
        "vpbx_sip_listen": f"{EDGE_IP}:{PORTS['kemi']}",
        "vpbx_trunks": [{"name": "carrier", "address": f"{CARRIER_IP}:5080",
                         "inbound_sources": [TRUNK_CIDR]}],
        "vpbx_number_lists": [{"name": LIST_NAME, "numbers": numbers}],
        "vpbx_extensions": [],
        "vpbx_routing_schemes": [{"name": "closed", "steps": [{"reject": SCHEME_STAND_IN}]}],
        "vpbx_numbers": [{"number": DID, "routing": "closed",
                          "callback": {"enabled": True, "list": LIST_NAME,
                                       "reject_code": CALLBACK_REPLY}},
                         {"number": PLAIN_DID, "routing": "closed"}],
    }


def _random_mobile(rng: random.Random) -> str:
    return f"{rng.choice(MOBILE_RANGES)}{rng.randrange(10**6):06d}"


def make_dataset(size: int, root: Path, seed: int) -> Dataset:
    """routing.json (KEMI), db_text tables (native) and the callers file, from one vpbx.model config."""
    rng = random.Random(seed + size)
    numbers: set[str] = set()
    while len(numbers) < size:
        numbers.add(_random_mobile(rng))
    started = time.perf_counter()
    config = model.load(inventory(sorted(numbers)))  # validates every number, as the playbook does
    load_seconds = time.perf_counter() - started
    listed = config.number_lists[LIST_NAME]
    if len(listed) != size:
        raise BenchError(f"vpbx.model kept {len(listed)} of {size} numbers")
    root.mkdir(parents=True, exist_ok=True)
    with (root / "routing.json").open("w") as f:
        json.dump(model.dump(config), f)
    db = root / "db"
    db.mkdir(exist_ok=True)
    header = "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int) \n"
    (db / "version").write_text("id(int,auto) table_name(string) table_version(int) \n"
                                "0:vpbx_did:2\n0:vpbx_list:2\n")
    # value_type 1: an integer value: a DID's callback reply code, 1 for a DID
    # without callback, 1 for "listed".
    (db / "vpbx_did").write_text(header + "".join(
        f"{i}:{d.number}:0:1:{d.callback.reject_code if d.callback and d.callback.enabled else 1}:0\n"
        for i, d in enumerate(config.numbers.values(), 1)))
    with (db / "vpbx_list").open("w") as f:
        f.write(header)
        f.writelines(f"{i}:{n}:0:1:1:0\n" for i, n in enumerate(sorted(listed), 1))
    # Callers: half from the list, half not on it, E.164 as a carrier sends them.
    pool = sorted(listed)
    rows: list[tuple[str, int]] = []
    listed_rows = int(CALLER_ROWS * LISTED_SHARE)
    rows += [(rng.choice(pool), CALLBACK_REPLY) for _ in range(listed_rows)]
    while len(rows) < CALLER_ROWS:
        number = _random_mobile(rng)
        if number not in listed:
            rows.append((number, SCHEME_STAND_IN))
    rng.shuffle(rows)
    callers = root / "callers.csv"
    callers.write_text("SEQUENTIAL\n" + "".join(f"{n};{DID};\n" for n, _ in rows))
    return Dataset(size, root, callers, [code for _, code in rows], load_seconds)


# -- Kamailio instances --------------------------------------------------------

_RUNNING: list[Kamailio] = []


def _stop_all() -> None:
    for instance in list(_RUNNING):
        instance.stop()


def _on_signal(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


class Kamailio:
    """One Kamailio of the bench: its own config, port, ctl socket and working dir."""

    def __init__(self, side: str, rundir: Path, dataset: Dataset, children: int, runtime: list[str]):
        self.side = side
        self.mode = KEMI_MODES.get(side)
        self.port = PORTS[side]
        self.rundir = rundir
        self.ctl = rundir / "kamailio_ctl"
        self.cfg = rundir / "kamailio.cfg"
        self.log = rundir / "kamailio.log"
        rundir.mkdir(parents=True, exist_ok=True)
        subs = {"CHILDREN": str(children), "LISTEN": f"{EDGE_IP}:{self.port}", "CTL": str(self.ctl)}
        self.env = dict(os.environ)
        if self.mode:
            script = rundir / KEMI_SCRIPT.name
            shutil.copy(KEMI_SCRIPT, script)
            self.env["VPBX_BENCH_KEMI"] = self.mode
            shutil.copy(dataset.root / "routing.json", rundir / "routing.json")
            (rundir / "pythonpath").write_text("\n".join(runtime) + "\n")
            subs["SCRIPT"] = str(script)
            template = KEMI_CFG
        else:
            bits = max(4, min(20, math.ceil(math.log2(max(dataset.size, 2)))))
            subs.update(DBDIR=str(dataset.root / "db"), TRUNK_CIDR=TRUNK_CIDR,
                        DB_ROWS=str(dataset.size + 100), LIST_BITS=str(bits))
            template = NATIVE_CFG
        text = template.read_text()
        for key, value in subs.items():
            text = text.replace(f"@{key}@", value)
        leftover = re.findall(r"@[A-Z_]+@", text)
        if leftover:
            raise BenchError(f"{template}: unfilled placeholders {leftover}")
        self.cfg.write_text(text)
        self.argv = [KAMAILIO, "-f", str(self.cfg), "-DD", "-E", "-m", str(SHM_MB), "-M", str(PKG_MB),
                     "-w", str(rundir), "-Y", str(rundir)]
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0

    @property
    def command(self) -> str:
        env = f"VPBX_BENCH_KEMI={self.mode} " if self.mode else ""
        return env + shlex.join(self.argv)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.rundir, stdin=subprocess.DEVNULL, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _RUNNING.append(self)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.side} Kamailio exited with {self.proc.returncode}:\n"
                                 f"{self.tail()}\ncommand: {self.command}")
            if sip_ping(EDGE_IP, self.port, 0.5):
                self.start_seconds = time.monotonic() - started
                return
            time.sleep(0.2)
        raise BenchError(f"{self.side} Kamailio did not answer within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        tree = _proc_children()
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(tree.get(pid, []))
        return found

    def rpc(self, *args: str, timeout: float = 15) -> str:
        out = subprocess.run([KAMCMD, "-s", f"unix:{self.ctl}", *args],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise BenchError(f"kamcmd {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def shm(self) -> dict[str, int]:
        text = self.rpc("core.shmmem")
        return {k: int(v) for k, v in re.findall(r"(\w+):\s*(\d+)", text)}

    def memory(self) -> dict[str, float]:
        rss = pss = 0
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        shm = self.shm()
        return {"processes": len(pids), "shm_used_mb": shm.get("real_used", 0) / 2**20,
                "rss_mb": rss / 1024, "pss_mb": pss / 1024}

    def list_keys(self) -> int:
        """Keys in the native side's list htable."""
        match = re.search(r"name:\s*vpbx_list\s+slots:\s*\d+\s+all:\s*(\d+)", self.rpc("htable.stats"))
        return int(match.group(1)) if match else -1

    def htable_share(self, size: int) -> tuple[float, float]:
        """shm the list htable itself holds (flush it, measure, reload it from db_text), and the reload time.

        The instance's shm also holds db_text's cache of the table files, which
        is what this bench's loading costs, not what a lookup table costs.
        """
        before = self.shm()["real_used"]
        self.rpc("htable.flush", "vpbx_list")
        after = self.shm()["real_used"]
        started = time.monotonic()
        self.rpc("htable.reload", "vpbx_list", timeout=START_TIMEOUT)
        seconds = time.monotonic() - started
        if self.list_keys() != size:
            raise BenchError(f"native: htable.reload gave {self.list_keys()} keys, expected {size}")
        return (before - after) / 2**20, seconds

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / CLK_TCK

    def workers(self) -> list[int]:
        """PIDs of the UDP receivers (the processes that run the request route)."""
        out = self.rpc("core.psx")
        pids = []
        for block in out.split("}"):
            pid = re.search(r"IDX:\s*\d+\s+PID:\s*(\d+)|PID:\s*(\d+)", block)
            desc = re.search(r"DSC:\s*(.*)", block)
            if pid and desc and "receiver" in desc.group(1) and "udp" in desc.group(1):
                pids.append(int(pid.group(1) or pid.group(2)))
        return pids

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Workers left behind by a killed main process share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self in _RUNNING:
            _RUNNING.remove(self)


def sip_ping(host: str, port: int, timeout: float) -> bool:
    """True when something answers an OPTIONS at host:port (any reply)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((PING_IP, 0))
        sock.settimeout(timeout)
        local = sock.getsockname()[1]
        tag = random.randrange(10**9)
        msg = (f"OPTIONS sip:ping@{host}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {PING_IP}:{local};branch=z9hG4bK-ping{tag}\r\n"
               f"From: <sip:bench@{PING_IP}>;tag={tag}\r\nTo: <sip:ping@{host}>\r\n"
               f"Call-ID: ping-{tag}@{PING_IP}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
               f"Content-Length: 0\r\n\r\n")
        try:
            sock.sendto(msg.encode(), (host, port))
            data = sock.recv(4096)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 ")


# -- SIPp steps --------------------------------------------------------------


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


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def run_sipp(edge: Kamailio, dataset: Dataset, rate: int, seconds: float, workdir: Path,
             calls: int | None = None) -> Step:
    """One SIPp run at `rate` calls/s; returns what SIPp, the edge and the kernel saw."""
    calls = calls or max(1, int(rate * seconds))
    workdir.mkdir(parents=True, exist_ok=True)
    limit = seconds + RECV_TIMEOUT_MS / 1000 + 20
    argv = [SIPP, "-sf", str(UAC_SCENARIO), "-inf", str(dataset.callers),
            "-i", CARRIER_IP, "-p", str(CARRIER_PORT), "-t", "u1",
            "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", str(max(1000, 2 * rate)),
            "-recv_timeout", str(RECV_TIMEOUT_MS), "-timeout", f"{int(limit)}s", "-nostdin",
            "-trace_stat", "-stf", "stat.csv", "-fd", "1", "-trace_rtt", "-rtt_freq", "1000",
            "-trace_counts", "-trace_err", f"{EDGE_IP}:{edge.port}"]
    step = Step(edge.side, rate, calls, command=shlex.join(argv).replace(str(REPO) + "/", ""))
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
    step.p50_ms = _percentile(rtts, 0.50)
    step.p95_ms = _percentile(rtts, 0.95)
    step.p99_ms = _percentile(rtts, 0.99)
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


def check_decisions(edge: Kamailio, dataset: Dataset, workdir: Path) -> Step:
    """Gate: a slow run whose replies must be exactly the decisions the data implies."""
    step = run_sipp(edge, dataset, CHECK_RATE, CHECK_CALLS / CHECK_RATE, workdir, calls=CHECK_CALLS)
    want = Counter(str(c) for c in dataset.expected[:CHECK_CALLS])
    got = {code: n for code, n in step.codes.items() if n}
    if step.successful != CHECK_CALLS or got != dict(want):
        raise BenchError(f"{edge.side} at {dataset.size}: replies {got}, expected {dict(want)} "
                         f"({step.successful}/{CHECK_CALLS} calls succeeded); see {workdir}\n{edge.tail()}")
    return step


def _one_step(edge: Kamailio, dataset: Dataset, rate: int, seconds: float, workdir: Path,
              steps: list[Step], attempt: int = 1) -> Step:
    """One step; a step that failed narrowly runs once more before it counts (a
    neighbour's burst of CPU on a shared 2-core machine can fail one step); both
    runs are kept."""
    step = judge(run_sipp(edge, dataset, rate, seconds, workdir / f"r{rate}-{attempt}"))
    steps.append(step)
    mark = "ok  " if step.ok else "FAIL"
    print(f"    {edge.side:13} {dataset.size:>8} {mark} {rate:>6}/s achieved {step.achieved:8.0f}/s "
          f"failed {step.failed_share:6.2%} p95 {_ms(step.p95_ms):>6} "
          f"edge {step.edge_cpu:4.2f} cores {step.edge_us_per_call:6.1f} us/call "
          f"sipp {step.sipp_cpu:4.0%} drops {step.udp_drops} {step.why}", flush=True)
    time.sleep(PAUSE_SECONDS)
    if edge.proc is None or edge.proc.poll() is not None:
        raise BenchError(f"{edge.side} Kamailio died during the run:\n{edge.tail()}")
    if not step.ok and attempt == 1 and step.failed_share < RETRY_BELOW:
        step.why += " (run again)"
        return _one_step(edge, dataset, rate, seconds, workdir, steps, 2)
    return step


def lockstep_ramp(edges: list[Kamailio], dataset: Dataset, rates: tuple[int, ...], seconds: float,
                  refine: int, workdir: Path) -> dict[str, tuple[list[Step], Step | None]]:
    """Every side through the same rates, taking turns at each rate (same machine, same minute),
    each until it fails; then `refine` bisections of each side's own last pass and first fail."""
    steps: dict[str, list[Step]] = {e.side: [] for e in edges}
    good: dict[str, Step | None] = {e.side: None for e in edges}
    bad: dict[str, Step | None] = {e.side: None for e in edges}
    for rate in rates:
        for edge in edges:
            if bad[edge.side] is None:
                step = _one_step(edge, dataset, rate, seconds, workdir / edge.side, steps[edge.side])
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
            step = _one_step(edge, dataset, mid, seconds, workdir / edge.side, steps[edge.side])
            if step.ok:
                good[edge.side] = step
            else:
                bad[edge.side] = step
    return {side: (steps[side], good[side]) for side in steps}


def cost_rounds(edges: list[Kamailio], dataset: Dataset, rate: int, seconds: float, rounds: int,
                workdir: Path) -> dict[str, dict]:
    """Edge CPU per call of each side at one rate, the sides taking turns, `rounds` times; medians."""
    costs: dict[str, list[float]] = {e.side: [] for e in edges}
    for n in range(rounds):
        for edge in edges:
            step = judge(run_sipp(edge, dataset, rate, seconds, workdir / f"{edge.side}-{n}"))
            print(f"    round {n + 1} {edge.side:13} {rate}/s {'ok' if step.ok else 'FAIL'} "
                  f"{step.edge_us_per_call:6.1f} us/call {step.why}", flush=True)
            if step.ok:
                costs[edge.side].append(step.edge_us_per_call)
            time.sleep(PAUSE_SECONDS)
    return {side: {"median_us": statistics.median(v) if v else None, "runs_us": v}
            for side, v in costs.items()}


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
    return (f"{real.LOG_PREFIX}decision: from={source} origin={real._origin_text(trunk)} "
            f"caller={unlisted} ruri={did} -> {real._action_text(action)}\n")
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
        step = judge(run_sipp(edge, dataset, rate, seconds, workdir / "load"))
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


# -- report --------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return "<1 ms" if value < 1 else f"{value:.0f} ms"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _us(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.1f}"


def _best(entry: dict, side: str) -> dict | None:
    return entry.get(side, {}).get("best")


def _step_at(entry: dict, side: str, rate: int) -> dict | None:
    return next((s for s in entry.get(side, {}).get("steps", []) if s["rate"] == rate and s["ok"]), None)


def _loose_max(entry: dict, side: str) -> int | None:
    """The highest step with < 1% failed and SIPp at its rate, whatever its p95."""
    rates = [s["rate"] for s in entry.get(side, {}).get("steps", [])
             if s["created"] and s["failed"] / s["created"] < FAIL_LIMIT
             and s["achieved"] >= KEEP_UP * s["rate"]]
    return max(rates) if rates else None


def common_rate(entry: dict, sides: tuple[str, ...]) -> int | None:
    """The highest rate every side passed (each side's ramp runs the same rates)."""
    passed = [{s["rate"] for s in entry.get(side, {}).get("steps", []) if s["ok"]} for side in sides]
    common = set.intersection(*passed) if passed else set()
    return max(common) if common else None


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
        n, k = _best(e, "native"), _best(e, "kemi")
        nl, kl = _loose_max(e, "native"), _loose_max(e, "kemi")
        rate = common_rate(e, SIDES)
        ns, ks = (_step_at(e, "native", rate), _step_at(e, "kemi", rate)) if rate else (None, None)
        nus, kus = (ns or {}).get("edge_us_per_call"), (ks or {}).get("edge_us_per_call")
        out.append(f"| {size:,} | {n['rate'] if n else '-'}/s ({nl or '-'}) | {_ms(n and n['p95_ms'])} | "
                   f"{k['rate'] if k else '-'}/s ({kl or '-'}) | {_ms(k and k['p95_ms'])} | "
                   f"{_ratio(k and k['rate'], n and n['rate'])} ({_ratio(kl, nl)}) | {rate or '-'}/s | "
                   f"{_us(nus)} | {_us(kus)} | {_ratio(nus, kus)} |")
    out.append("\nWhat ended each ramp:\n")
    for size in sizes:
        e = per[str(size)]
        out.append(f"- {size:,}: " + "; ".join(f"{side} {e[side].get('stop', '-')}" for side in SIDES))
    goal = per.get(str(GOAL_SIZE)) if GOAL_SIZE in sizes else None
    if goal:
        n, k = _best(goal, "native"), _best(goal, "kemi")
        rate = common_rate(goal, SIDES)
        ns, ks = (_step_at(goal, "native", rate), _step_at(goal, "kemi", rate)) if rate else (None, None)
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
            best = _best(per[str(size)], side)
            if best:
                out.append(f"    # {side}, {size:,} numbers, {best['rate']}/s\n    {best['command']}")
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
            out.append(f"| {label} | {_us(med[side])} | {runs} | {_ratio(med['native'], med[side])} |")
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


def write_results(path: Path, block: str, machine_info: dict[str, str]) -> None:
    """Replace this bench's block in RESULTS.md, creating the file or the section if absent."""
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        text = "# Benchmarks\n\n## Machine\n\n" + "".join(
            f"- {k}: {v}\n" for k, v in machine_info.items() if k != "load average")
    body = f"{BLOCK_BEGIN}\n{block}\n{BLOCK_END}"
    if BLOCK_BEGIN in text and BLOCK_END in text:
        head, rest = text.split(BLOCK_BEGIN, 1)
        _, tail = rest.split(BLOCK_END, 1)
        text = head + body + tail
    elif SECTION in text:
        # No markers yet: the section is this bench's, its body is replaced whole.
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        text = head + SECTION + "\n\n" + body + "\n\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{body}\n"
    path.write_text(text)


# -- main -----------------------------------------------------------------------


def runtime_path(which: str) -> list[str]:
    if which == "deployed":
        return ["/opt/vpbx/venv/lib/python3.11/site-packages"]
    return [str(REPO), sysconfig.get_paths()["purelib"]]


def start_side(side: str, dataset: Dataset, args, rundir: Path, runtime: list[str]) -> tuple[Kamailio, dict]:
    """Start one instance, take its start-up time and memory, check its decisions."""
    edge = Kamailio(side, rundir / side, dataset, args.children, runtime)
    result: dict = {"command": edge.command.replace(str(rundir), "<run dir>")}
    edge.start()
    result["start_seconds"] = edge.start_seconds
    time.sleep(1.0)
    result["memory"] = edge.memory()
    if not edge.mode:
        if edge.list_keys() != dataset.size:
            raise BenchError(f"native: {edge.list_keys()} keys loaded, expected {dataset.size}")
        result["memory"]["htable_mb"], result["reload_seconds"] = edge.htable_share(dataset.size)
    print(f"  {side:13} {dataset.size:>8}: up in {edge.start_seconds:.1f} s, shm "
          f"{result['memory']['shm_used_mb']:.1f} MB (list htable "
          f"{result['memory'].get('htable_mb', 0):.1f} MB), RSS {result['memory']['rss_mb']:.0f} MB, "
          f"PSS {result['memory']['pss_mb']:.0f} MB", flush=True)
    if edge.mode:
        loaded = re.search(r"vpbx-bench: loaded .*", edge.log.read_text(errors="replace"))
        result["loaded"] = loaded.group(0).strip() if loaded else ""
        print(f"    {result['loaded']}", flush=True)
    if edge.mode != "floor":
        check_decisions(edge, dataset, rundir / side / "check")
    return edge, result


def finish_side(edge: Kamailio, result: dict, steps: list[Step], best: Step | None) -> None:
    result["steps"] = [asdict(s) for s in steps]
    result["best"] = asdict(best) if best else None
    passed = {s.rate for s in steps if s.ok}
    failed = [s for s in steps if not s.ok and s.rate not in passed]
    if failed:
        low = min(s.rate for s in failed)
        why = "; ".join(s.why for s in failed if s.rate == low)
        result["stop"] = f"lowest failing step {low}/s: {why}"
    else:
        result["stop"] = "passed every step"
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
        ramps = lockstep_ramp(edges, dataset, args.rates, args.step_seconds, args.refine, rundir / "ramp")
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
            prof["rounds"] = cost_rounds(order, dataset, rate, args.step_seconds, COST_ROUNDS,
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
    atexit.register(_stop_all)
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
        _stop_all()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if not results["sizes"]:
        return 1
    results["ended"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["wall_minutes"] = (time.monotonic() - t0) / 60
    block = report(results, args_line)
    print("\n" + block)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.write_results and not interrupted:
        write_results(args.write_results, block, info)
        print(f"\nwrote {args.write_results}")
    return 1 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
