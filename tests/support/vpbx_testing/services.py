"""The deployed services, through whatever runs them on this host.

The roles (service_manager) run every service under systemd where it manages
services and under Debian's supervisord elsewhere, with one name for both:
the systemd unit is the supervisord program. Which one runs them here is
what the role found and recorded, not found again. Tests and benches stop, start and find a service here,
never with `service` (an init script would start a second instance beside
the managed one).

    services.stop(services.CALLBACKD)
    pid = services.main_pid(services.KAMAILIO)
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import xmlrpc.client
from pathlib import Path

# What the service_manager role found on this host (service_manager_record).
RECORD = Path("/etc/vpbx/service-manager")
# supervisord's control socket, as Debian's /etc/supervisor/supervisord.conf sets it.
SUPERVISOR_SOCKET = "/var/run/supervisor.sock"
# The names the roles give the services.
KAMAILIO = "kamailio"
RTPENGINE = "rtpengine-daemon"
CALLBACKD = "callbackd"
RSYSLOG = "rsyslog"
REDIS = "redis-server"
# What runs the daily jobs without systemd (roles/service_manager, entry point job).
CRON = "cron"
CRON_DIR = Path("/etc/cron.d")
COMMAND_TIMEOUT = 60


def manager() -> str:
    """"systemd" or "supervisor", as the service_manager role found it."""
    return RECORD.read_text().strip()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=COMMAND_TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(COMMAND_TIMEOUT)
        self.sock.connect(self.path)


class _UnixTransport(xmlrpc.client.Transport):
    def make_connection(self, host):  # the socket is the address, whatever the host
        return _UnixConnection(SUPERVISOR_SOCKET)


def _supervisor():
    """supervisord's XML-RPC interface (what supervisorctl talks to): answers in milliseconds."""
    return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport()).supervisor


def _systemctl(*args: str) -> str:
    run = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if run.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)} failed ({run.returncode}): {run.stderr}")
    return run.stdout


def stop(name: str) -> None:
    if manager() == "systemd":
        _systemctl("stop", name)
    else:
        _supervisor().stopProcess(name, True)


def start(name: str) -> None:
    """Returns once the service runs (supervisord: for its startsecs), or raises."""
    if manager() == "systemd":
        _systemctl("start", name)
    else:
        _supervisor().startProcess(name, True)


def restart(name: str) -> None:
    if manager() == "systemd":
        _systemctl("restart", name)
    else:
        stop(name)
        start(name)


def main_pid(name: str) -> int | None:
    """The pid of the service's main process as its manager knows it; None when it does not run."""
    if manager() == "systemd":
        pid = int(_systemctl("show", "--property=MainPID", "--value", name).strip() or 0)
    else:
        pid = int(_supervisor().getProcessInfo(name)["pid"])
    return pid or None


def run_daily_job(name: str) -> None:
    """Run a role's daily job now, as its scheduler would: its oneshot unit, or its cron line."""
    if manager() == "systemd":
        _systemctl("start", f"{name}.service")  # returns once the oneshot has run
        return
    lines = (CRON_DIR / name).read_text().splitlines()
    _, user, command = next(line for line in lines if line.startswith("@daily ")).split(None, 2)
    subprocess.run(["runuser", "-u", user, "--", "sh", "-c", command], check=True, timeout=COMMAND_TIMEOUT)


def daily_scheduler_runs() -> bool:
    """Whether what runs the daily jobs (logrotate among them) runs: systemd's timers, or cron."""
    if manager() == "systemd":
        try:
            return _systemctl("is-active", "logrotate.timer").strip() == "active"
        except RuntimeError:  # inactive: a non-zero status
            return False
    return main_pid(CRON) is not None
