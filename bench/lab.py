"""What the benches on the lab deploy share: the machine, a bench inventory, deploying it, usage per service.

The callback benches deploy a copy of the lab inventory changed for the
bench (`bench_inventory`) with the project's own playbook (`deploy`), and put
the lab back at the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from callbackd.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "inventories" / "lab"
PLAYBOOK = REPO / "playbooks" / "site.yml"
ANSIBLE_PLAYBOOK = REPO / ".venv" / "bin" / "ansible-playbook"
CALLBACKD_CONFIG = Path("/etc/vpbx/callbackd.json")
# Runs that share the CPUs with a bench and would spoil its figures.
BUSY_PATTERNS = ("molecule", "pytest tests/e2e", "pytest tests/integration", ".ci/run", "ansible-playbook")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# How each deployed service's processes are found (pgrep arguments).
SERVICES = {
    "kamailio": ["-x", "kamailio"],
    "rtpengine": ["-x", "rtpengine"],
    "callbackd": ["-f", "python3 -m callbackd"],
}


def say(text: str = "") -> None:
    print(text, flush=True)


# -- machine -----------------------------------------------------------------


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    os_name = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpus": f"{os.cpu_count()} ({cpu})",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "os": os_name,
        "kamailio": first_line([shutil.which("kamailio") or "/usr/sbin/kamailio", "-v"]),
        "rtpengine": first_line([shutil.which("rtpengine") or "/usr/bin/rtpengine", "--version"]),
        "sipp": first_line([shutil.which("sipp") or "/usr/bin/sipp", "-v"]),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _ancestors() -> set[int]:
    """This process and those that started it (a `timeout` or `make` around the bench)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def busy_processes(patterns: tuple[str, ...] = BUSY_PATTERNS) -> list[str]:
    found, mine = [], _ancestors()
    for pattern in patterns:
        out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, timeout=10)
        for line in out.stdout.splitlines():
            if int(line.split()[0]) not in mine:
                found.append(line.strip())
    return found


def wait_until_quiet(max_wait: float = 1200, patterns: tuple[str, ...] = BUSY_PATTERNS) -> bool:
    """Wait while CI-like runs share the CPUs; True when quiet, False when measuring anyway."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = busy_processes(patterns)
        if not busy:
            return True
        if time.monotonic() >= deadline:
            say(f"WARNING: the machine is still busy after {max_wait:.0f} s; measuring anyway, "
                f"figures may be low:\n  " + "\n  ".join(busy[:5]))
            return False
        say(f"waiting for a quiet machine ({len(busy)} CI-like processes, e.g. {busy[0][:100]})")
        time.sleep(30)


# -- the lab deploy ----------------------------------------------------------


def bench_inventory(directory: Path, change: Callable[[dict], None]) -> Path:
    """A copy of the lab inventory in `directory`, its group_vars/all.yml changed by `change`."""
    inventory = directory / "inventory"
    shutil.copytree(LAB, inventory)
    path = inventory / "group_vars" / "all.yml"
    variables = yaml.safe_load(path.read_text())
    change(variables)
    path.write_text(yaml.safe_dump(variables, sort_keys=False))
    return inventory


def callback_did(variables: dict) -> dict:
    """The first DID with callback enabled, in inventory form."""
    return next(d for d in variables["vpbx_numbers"] if d.get("callback", {}).get("enabled"))


# A bench measures the PBX, not its abuse limits: above any step a bench takes.
BENCH_MAX_CONCURRENT = 5000


def callback_list(numbers: list[str]) -> Callable[[dict], None]:
    """A change for bench_inventory: the first callback DID's list holds `numbers`, no recording,
    and the engine's cap of concurrent callbacks is above what any bench asks."""
    def change(variables: dict) -> None:
        did = callback_did(variables)
        did["callback"]["record"] = False
        variables["vpbx_callback_max_concurrent"] = BENCH_MAX_CONCURRENT
        others = [x for x in variables["vpbx_number_lists"] if x["name"] != did["callback"]["list"]]
        variables["vpbx_number_lists"] = [*others, {"name": did["callback"]["list"], "numbers": numbers}]
    return change


def numbered(prefix: str, count: int) -> list[str]:
    """`count` numbers `prefix` + 5 digits, from 00001: one per employee of a bench."""
    return [f"{prefix}{n:05d}" for n in range(1, count + 1)]


def playbook_argv(inventory: Path) -> list[str]:
    return [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(PLAYBOOK)]


def deploy(inventory: Path, quiet: bool = False) -> float:
    """Run the site playbook on `inventory`; its wall time in seconds. Exits on failure."""
    argv = playbook_argv(inventory)
    if not quiet:
        say(f"$ {shlex.join(argv)}")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    started = time.monotonic()
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"deploy failed:\n{run.stdout[-3000:]}")
    return time.monotonic() - started


def callbackd_settings() -> Settings:
    """The deployed callbackd's settings (its CDR file, log, routing file, RTPengine)."""
    return load_settings(CALLBACKD_CONFIG)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (`p` in percent): the smallest value with at least p% of the
    values at or below it; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


# -- CPU and memory of the services ------------------------------------------


def pids_of(pgrep_args: list[str]) -> list[int]:
    out = subprocess.run(["pgrep", *pgrep_args], capture_output=True, text=True, timeout=10)
    mine = _ancestors()
    return [int(p) for p in out.stdout.split() if int(p) not in mine]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB; PSS shares pages among the processes that map them."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


@dataclass
class Usage:
    """CPU (share of one core) and memory of a group of processes over an interval."""

    cpu: float
    rss_kb: int
    pss_kb: int
    processes: int


class UsageMeter:
    """`start()` then `stop()`: CPU used in between and memory at the stop, per named group."""

    def __init__(self, groups: dict[str, list[str]]):
        self.groups = groups
        self._pids: dict[str, list[int]] = {}
        self._cpu: dict[str, float] = {}
        self._at = 0.0

    def start(self) -> None:
        self._pids = {name: pids_of(args) for name, args in self.groups.items()}
        self._cpu = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self._pids.items()}
        self._at = time.monotonic()

    def stop(self) -> dict[str, Usage]:
        elapsed = max(time.monotonic() - self._at, 1e-6)
        out = {}
        for name, pids in self._pids.items():
            used = sum(cpu_seconds(p) for p in pids) - self._cpu[name]
            memory = [memory_kb(p) for p in pids]
            out[name] = Usage(used / elapsed, sum(m[0] for m in memory), sum(m[1] for m in memory), len(pids))
        return out
