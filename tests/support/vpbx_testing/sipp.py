"""Run SIPp scenarios as the end-to-end tests' SIP peers, always bounded in time.

A callee (UAS) is started in the background and waited for later; a caller
(UAC) runs to the end before the call returns. Every run writes its own logs
(errors, SIP messages, the scenario's <log> lines, the final screen) so that
a failure can say what SIPp saw. Exit code 0 means the scenario succeeded.

    runner = SippRunner(tmp_path)
    callee = runner.start_uas("callee.xml", "127.0.0.5", 5080, keys={...})
    runner.run_uac("carrier_call.xml", "127.0.0.5", "127.0.0.1:5060", keys={...})
    callee.expect_success()
    runner.close()          # kills whatever is still running
"""

import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from vpbx_testing import REPO

SCENARIOS = REPO / "tests" / "e2e" / "scenarios"
SIPP = os.environ.get("VPBX_SIPP", "sipp")
PCAP_DIR = Path("/usr/share/sip-tester")
G711A_PCAP = PCAP_DIR / "g711a.pcap"
# The header key of the carrier scenarios must never be empty (an empty line
# ends the SIP headers); this one means nothing to the PBX.
NO_HEADER = "X-Vpbx-E2E: 1"
DEFAULT_TIMEOUT = 30.0
# Time SIPp may take beyond its own -timeout before we kill it.
GRACE = 5.0
TAIL_LINES = 30
# SIPp's own keywords win over a -key of the same name, silently.
RESERVED_KEYS = frozenset({
    "remote_ip", "remote_host", "remote_port", "transport", "local_ip", "local_ip_type",
    "local_port", "server_ip", "media_ip", "media_ip_type", "media_port", "auto_media_port",
    "call_number", "dynamic_id", "call_id", "cseq", "pid", "service", "branch", "msg_index",
    "next_url", "len", "peer_tag_param", "routes", "tdmmap", "clock_tick", "users", "userid",
    "timestamp", "date", "sipp_version", "authentication", "field", "file",
})
EXIT_MEANINGS = {
    0: "every call succeeded",
    1: "at least one call failed",
    97: "stopped by an internal command",
    99: "ended without processing any call",
    254: "could not bind its socket (address in use?)",
    255: "fatal error or -timeout reached (see the errors)",
}


class SippError(AssertionError):
    """A SIPp scenario did not succeed; the message carries what SIPp logged."""


class Sipp:
    """One SIPp process and its log files."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, timeout: float):
        self.name = name
        self.argv = argv
        self.timeout = timeout
        self.error_log = log_dir / f"{name}.errors.log"
        self.message_log = log_dir / f"{name}.messages.log"
        self.actions_log = log_dir / f"{name}.actions.log"
        self.screen_log = log_dir / f"{name}.screen.log"
        full = [*argv,
                "-trace_err", "-error_file", str(self.error_log),
                "-trace_msg", "-message_file", str(self.message_log),
                "-trace_logs", "-log_file", str(self.actions_log)]
        # No TTY under pytest: -nostdin keeps SIPp from reading keys and the
        # screen goes to a file. Not -bg: its fork would hide the exit code.
        with self.screen_log.open("wb") as screen:
            self._process = subprocess.Popen(
                full, cwd=log_dir, stdin=subprocess.DEVNULL, stdout=screen,
                stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end and give the exit code; kill it and raise if it overstays."""
        limit = self.timeout + GRACE if timeout is None else timeout
        try:
            return self._process.wait(limit)
        except subprocess.TimeoutExpired:
            self.stop()
            raise SippError(self.report(f"still running after {limit:g} s, killed")) from None

    def stop(self) -> None:
        """End the process if it still runs: SIGTERM, then SIGKILL (SIPp then exits 0: ignore it)."""
        if self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(2)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def expect_success(self, timeout: float | None = None) -> None:
        """Wait for the end; raise SippError with the logs unless the exit code is 0."""
        code = self.wait(timeout)
        if code != 0:
            meaning = f"killed by signal {-code}" if code < 0 else EXIT_MEANINGS.get(code, "unknown")
            raise SippError(self.report(f"exit code {code}: {meaning}"))

    def wait_for_log(self, text: str, timeout: float) -> str:
        """Wait until the scenario logs a line containing `text`; that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if text in line:
                    return line
            if self.returncode is not None:
                break
            time.sleep(0.1)
        raise SippError(self.report(f"never logged {text!r} within {timeout:g} s"))

    def log_lines(self) -> list[str]:
        """The lines the scenario wrote with <log message=...>."""
        return _read(self.actions_log).splitlines()

    def messages(self) -> str:
        """Every SIP message SIPp sent and received, as logged."""
        return _read(self.message_log)

    def report(self, what: str) -> str:
        """What went wrong, the command line, and the tails of the logs."""
        parts = [f"SIPp {self.name}: {what}", f"command: {shlex.join(self.argv)}"]
        sources = [("errors", self.error_log), ("scenario log", self.actions_log),
                   ("SIP messages", self.message_log)]
        # The screen is mostly counters; it matters when SIPp died before logging.
        if not _read(self.error_log).strip():
            sources.append(("screen", self.screen_log))
        for title, path in sources:
            tail = _tail(path)
            if tail:
                parts.append(f"--- {title} ({path}), last lines:\n{tail}")
        return "\n".join(parts)


class SippRunner:
    """Starts SIPp peers with logs under one directory and kills them all on close()."""

    def __init__(self, log_dir: Path, timeout: float = DEFAULT_TIMEOUT):
        if shutil.which(SIPP) is None:
            raise FileNotFoundError(f"{SIPP!r} is not installed (Debian package sip-tester)")
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._started = 0
        self._processes: list[Sipp] = []

    def start_uas(
        self,
        scenario: str | Path,
        ip: str,
        port: int,
        keys: Mapping[str, object],
        *,
        calls: int = 1,
        timeout: float | None = None,
        extra: list[str] | None = None,
    ) -> Sipp:
        """Start a callee bound to ip:port; returns once its socket is bound."""
        # Readiness is "someone is bound there", so the port must be free first.
        if _udp_bound(ip, port):
            raise SippError(f"UDP {ip}:{port} is already in use (a SIPp left over from another test?)")
        argv = self._argv(scenario, ip, port, keys, calls, timeout, extra)
        sipp = self._start(scenario, argv, timeout)
        deadline = time.monotonic() + 5
        while not _udp_bound(ip, port):
            if sipp.returncode is not None:
                raise SippError(sipp.report(f"exited ({sipp.returncode}) before binding {ip}:{port}"))
            if time.monotonic() > deadline:
                sipp.stop()
                raise SippError(sipp.report(f"did not bind {ip}:{port} within 5 s"))
            time.sleep(0.02)
        return sipp

    def run_uac(self, scenario: str | Path, ip: str, remote: str, keys: Mapping[str, object], *,
                check: bool = True, **options) -> Sipp:
        """Place the call(s) from ip (a free port unless given) to remote and wait for the end;
        `options` as start_uac's (port, calls, timeout, extra).

        With check (the default) a failed scenario raises SippError with the logs.
        """
        sipp = self.start_uac(scenario, ip, remote, keys, **options)
        if check:
            sipp.expect_success()
        else:
            sipp.wait()
        return sipp

    def start_uac(
        self,
        scenario: str | Path,
        ip: str,
        remote: str,
        keys: Mapping[str, object],
        *,
        port: int | None = None,
        calls: int = 1,
        timeout: float | None = None,
        extra: list[str] | None = None,
    ) -> Sipp:
        """Place the call(s) from ip to remote in the background; wait on the returned Sipp."""
        port = port if port is not None else free_udp_port(ip)
        argv = [*self._argv(scenario, ip, port, keys, calls, timeout, extra), remote]
        return self._start(scenario, argv, timeout)

    def close(self) -> None:
        """Kill every SIPp this runner started that still runs."""
        for sipp in self._processes:
            sipp.stop()
        self._processes.clear()

    def _argv(
        self,
        scenario: str | Path,
        ip: str,
        port: int,
        keys: Mapping[str, object],
        calls: int,
        timeout: float | None,
        extra: list[str] | None,
    ) -> list[str]:
        # A bare name is one of ours; a path is taken as it is.
        path = SCENARIOS / scenario if Path(scenario).name == str(scenario) else Path(scenario)
        if not path.is_file():
            raise FileNotFoundError(f"no SIPp scenario {path}")
        seconds = self.timeout if timeout is None else timeout
        argv = [SIPP, "-sf", str(path), "-i", ip, "-p", str(port), "-m", str(calls),
                "-nostdin", "-timeout", f"{seconds:g}s", "-timeout_error"]
        for name, value in keys.items():
            if name in RESERVED_KEYS or name.startswith(("last_", "field")):
                raise ValueError(f"key {name!r} is a SIPp keyword; the scenario would never see it")
            argv += ["-key", name, str(value)]
        return argv + list(extra or ())

    def _start(self, scenario: str | Path, argv: list[str], timeout: float | None) -> Sipp:
        self._started += 1
        name = f"{self._started:02d}-{Path(scenario).stem}"
        seconds = self.timeout if timeout is None else timeout
        sipp = Sipp(name, argv, self.log_dir, seconds)
        self._processes.append(sipp)
        return sipp


def release(callee: tuple[str, int], call_id: str) -> None:
    """Tell a callee held with hangup=signal (callee.xml) to hang up now.

    SIPp matches the INFO to its call by Call-ID alone; it goes straight to the
    callee's socket, not through the PBX, and needs no answer.
    """
    ip, port = callee
    request = (
        f"INFO sip:release@{ip}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ip}:9;branch=z9hG4bK-release-{uuid.uuid4().hex[:12]}\r\n"
        f"From: <sip:test@{ip}>;tag=release\r\n"
        f"To: <sip:callee@{ip}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INFO\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(request, (ip, port))


def free_udp_port(ip: str) -> int:
    """A UDP port nobody uses on ip right now (the kernel's pick)."""
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((ip, 0))
        return probe.getsockname()[1]


def _udp_bound(ip: str, port: int) -> bool:
    """Whether some socket is bound to ip:port, read from /proc (binding would disturb it)."""
    address = ipaddress.ip_address(ip)
    table = "/proc/net/udp6" if address.version == 6 else "/proc/net/udp"
    # /proc shows addresses as the kernel's 32-bit words in host (little-endian) order.
    packed = address.packed
    words = [packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
    wanted = {f"{''.join(words)}:{port:04X}", f"{'0' * len(packed) * 2}:{port:04X}"}
    for line in _read(Path(table)).splitlines()[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[1] in wanted:
            return True
    return False


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    return "\n".join(_read(path).rstrip().splitlines()[-lines:])
