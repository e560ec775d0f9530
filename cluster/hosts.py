"""Start, find and end the hosts' holders; make a new host ready for a deploy.

A host is running when the pid in PID_DIR/<host>.pid is a live holder in
the host's network namespace. Ansible's vpbx_nsenter connection plugin enters
that pid (plugins/connection/vpbx_nsenter.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from cluster import network
from cluster.filesystem import NOT_INHERITED, NOT_INHERITED_FILES, state_dir
from cluster.inventory import Host
from cluster.run import enter, run

PID_DIR = Path("/run/vpbx-cluster")
REPO = Path(__file__).resolve().parents[1]
HOLDER = ("unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--mount-proc",
          "--propagation", "private", "--", "/usr/bin/python3", "-m", "cluster.holder")
READY_WAIT_S = 30
GONE_WAIT_S = 30


def pid_file(host: Host) -> Path:
    return PID_DIR / f"{host.name}.pid"


def holder_pid(host: Host) -> int | None:
    """The running holder of `host`, or None."""
    try:
        pid = int(pid_file(host).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        same_net = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(network.NETNS_DIR / host.netns).st_ino
    except (OSError, ValueError):
        return None
    if b"cluster.holder" in cmdline and host.name.encode() in cmdline and same_net:
        return pid
    return None


def start(host: Host) -> int:
    """Start the holder of `host` in its network namespace; its pid once its view is mounted."""
    PID_DIR.mkdir(mode=0o755, exist_ok=True)
    ready = state_dir(host.name) / "ready"
    state_dir(host.name).mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    log = (state_dir(host.name) / "holder.log").open("ab")
    unshare = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, *HOLDER, host.name],
        cwd=REPO, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + READY_WAIT_S
    while not ready.exists():
        if unshare.poll() is not None or time.monotonic() > deadline:
            unshare.kill()
            raise RuntimeError(f"{host.name}: the holder did not start; see {log.name}")
        time.sleep(0.1)
    # unshare --fork waits for its child, the holder: pid 1 of the host.
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
    pid = int(children[0])
    pid_file(host).write_text(f"{pid}\n")
    return pid


def make_new(host: Host, pid: int) -> bool:
    """Once per host: forget what a deploy onto the machine left, and name it."""
    done = state_dir(host.name) / "made"
    if done.exists():
        return False
    for path in NOT_INHERITED:
        enter(pid, "sh", "-c", 'rm -rf "$1" && mkdir -p "$1"', "-", path)
    enter(pid, "rm", "-f", *NOT_INHERITED_FILES)
    enter(pid, "sh", "-c", 'getent passwd redis >/dev/null && chown redis:redis /var/lib/redis '
          '&& chmod 0750 /var/lib/redis || true')
    enter(pid, "sh", "-c", 'echo "$1" > /etc/hostname', "-", host.name)
    hosts = f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    enter(pid, "sh", "-c", 'cat > /etc/hosts', input=hosts)
    done.write_text("made\n")
    return True


def stop(host: Host) -> bool:
    """End the host: its holder (pid 1: the kernel ends the rest) and anything else in its network."""
    pids = set(network.namespace_pids(host.netns))
    pid = holder_pid(host)
    if pid is not None:
        pids.add(pid)
    for each in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)
    deadline = time.monotonic() + GONE_WAIT_S
    while network.namespace_pids(host.netns) and time.monotonic() < deadline:
        time.sleep(0.1)
    pid_file(host).unlink(missing_ok=True)
    return bool(pids)


def remove_state(host: Host) -> bool:
    state = state_dir(host.name)
    if not state.exists():
        return False
    run("rm", "-rf", "--one-file-system", str(state))
    return True
