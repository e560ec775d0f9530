"""The Kamailio instances a bench runs itself, and the deployed one it measures.

A `Kamailio` is one instance started from a config template with its own
port, ctl socket and working directory under the bench's run directory; it
never touches the deployed edge. `DeployedKamailio` is the lab's own
Kamailio (supervisord's), measured where it runs. Both give what the load
steps need: a side name, the address SIPp calls, the CPU of all their
processes, whether they still run.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import lab

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
EDGE_IP = "127.0.0.1"
PING_IP = "127.0.0.1"
PKG_MB = 32            # the deployed default (kamailio_pkg_memory)
START_TIMEOUT = 180.0


class BenchError(RuntimeError):
    """The bench cannot go on; the message says why."""


_RUNNING: list[Kamailio] = []


def stop_all() -> None:
    for instance in list(_RUNNING):
        instance.stop()


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


def process_tree(root: int) -> list[int]:
    """`root` and every process below it."""
    tree = _proc_children()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


class _Measured:
    """What the load steps and the report read of an instance, whoever started it."""

    side: str
    host: str = EDGE_IP
    port: int
    ctl: str

    def pids(self) -> list[int]:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def tail(self, lines: int = 15) -> str:
        return ""

    # True when the instance logs through the syslog daemon: its CPU is then part of the instance's.
    # Only one instance is under load at a time, so the daemon's CPU in a step is that instance's.
    counts_syslog: bool = False

    def cpu_seconds(self) -> float:
        pids = self.pids() + (lab.pids_of(["-x", "rsyslogd"]) if self.counts_syslog else [])
        return sum(lab.cpu_seconds(pid) for pid in pids)

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
        pids = self.pids()
        usage = [lab.memory_kb(pid) for pid in pids]
        shm = self.shm()
        return {"processes": len(pids), "shm_used_mb": shm.get("real_used", 0) / 2**20,
                "shm_total_mb": shm.get("total", 0) / 2**20,
                "rss_mb": sum(u[0] for u in usage) / 1024, "pss_mb": sum(u[1] for u in usage) / 1024}

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


class Kamailio(_Measured):
    """One Kamailio of the bench: `template` with its @KEY@ placeholders filled from `subs`
    (LISTEN and CTL are the instance's own), run in `rundir`."""

    def __init__(self, side: str, rundir: Path, template: Path, port: int, subs: dict[str, str],
                 shm_mb: int, env: dict[str, str] | None = None, pkg_mb: int = PKG_MB,
                 log_to_stderr: bool = True):
        self.side = side
        self.port = port
        self.rundir = rundir
        self.ctl = str(rundir / "kamailio_ctl")
        self.cfg = rundir / "kamailio.cfg"
        self.log = rundir / "kamailio.log"
        rundir.mkdir(parents=True, exist_ok=True)
        subs = {"LISTEN": f"{EDGE_IP}:{port}", "CTL": self.ctl, **subs}
        text = template.read_text()
        for key, value in subs.items():
            text = text.replace(f"@{key}@", value)
        leftover = re.findall(r"@[A-Z_]+@", text)
        if leftover:
            raise BenchError(f"{template}: unfilled placeholders {leftover}")
        self.cfg.write_text(text)
        self.env = {**os.environ, **(env or {})}
        self.env_text = "".join(f"{k}={v} " for k, v in (env or {}).items())
        # Without -E the configuration's own log_stderror and log_facility hold (syslog).
        self.argv = [KAMAILIO, "-f", str(self.cfg), "-DD", *(["-E"] if log_to_stderr else []),
                     "-m", str(shm_mb), "-M", str(pkg_mb), "-w", str(rundir), "-Y", str(rundir)]
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0

    @property
    def command(self) -> str:
        return self.env_text + shlex.join(self.argv)

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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.alive() else []

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


class DeployedKamailio(_Measured):
    """The lab's Kamailio as deployed (its pid file, its ctl socket, its SIP address)."""

    def __init__(self, side: str = "deployed", port: int = 5060,
                 pidfile: Path = Path("/run/kamailio/kamailio.pid"), ctl: str = "/run/kamailio/kamailio_ctl",
                 log: Path = Path("/var/log/vpbx/kamailio.log")):
        self.side = side
        self.port = port
        self.pidfile = pidfile
        self.ctl = ctl
        self.log = log
        self.command = f"the lab's Kamailio (supervisord), {EDGE_IP}:{port}"

    def main_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def alive(self) -> bool:
        return self.main_pid() is not None

    def pids(self) -> list[int]:
        pid = self.main_pid()
        return process_tree(pid) if pid else []

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError), self.log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 20000))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        return ""


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
