"""A host's own view of the machine's files.

The machine's /etc, /var, /opt and /usr/local are each the lower layer of an
overlay whose upper layer is the host's own (under STATE_ROOT/<host>), so a
host starts with every package the machine has installed and what it writes
stays its own. /run, /tmp and /dev are the host's alone (tmpfs; /dev holds
the few device nodes services use, so that a syslog daemon's /dev/log is the
host's). Everything else (/usr, the project's checkout) is the machine's, read
through.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Not under any overlaid directory: overlayfs refuses layers inside each other.
STATE_ROOT = Path("/srv/vpbx-cluster")
OVERLAID = ("etc", "var", "opt", "usr/local")
PRIVATE_TMPFS = (("run", "0755"), ("tmp", "1777"))
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEVICE_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
# What a deploy onto the machine itself (the single-host lab) leaves that a
# new host must not inherit: service descriptions, data, logs, the runtime.
# Emptied once, when the host is made (an emptied overlay directory hides the
# machine's from then on).
NOT_INHERITED = (
    "/etc/supervisor/conf.d", "/etc/vpbx", "/etc/kamailio/vpbx", "/var/log/vpbx", "/var/log/supervisor",
    "/var/spool/vpbx", "/var/lib/vpbx", "/var/lib/redis", "/opt/vpbx",
)
NOT_INHERITED_FILES = ("/etc/redis/vpbx.conf", "/etc/rsyslog.d/30-vpbx-kamailio.conf",
                       "/usr/local/sbin/kamailio-foreground", "/etc/pip.conf")


def state_dir(host: str) -> Path:
    return STATE_ROOT / host


def mount_private_view(host: str) -> None:
    """Inside the host's fresh mount namespace: its overlays, tmpfs and /dev."""
    state = state_dir(host)
    for directory in OVERLAID:
        upper, work = state / "upper" / directory, state / "work" / directory
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        _mount("overlay", f"/{directory}", "overlay",
               f"lowerdir=/{directory},upperdir={upper},workdir={work}")
    for directory, mode in PRIVATE_TMPFS:
        _mount("tmpfs", f"/{directory}", "tmpfs", f"mode={mode}")
    Path("/run/lock").mkdir(mode=0o1777)
    os.chmod("/run/lock", 0o1777)
    _private_dev()


def _private_dev() -> None:
    # Bind the machine's device nodes before a tmpfs hides them: from a copy of /dev.
    Path("/run/.dev").mkdir()
    _mount("tmpfs", "/run/.dev", "tmpfs", "mode=0755")
    for name in DEVICES:
        Path(f"/run/.dev/{name}").touch()
        _bind(f"/dev/{name}", f"/run/.dev/{name}")
    for name in ("pts", "shm", "mqueue"):
        Path(f"/run/.dev/{name}").mkdir()
    _mount("devpts", "/run/.dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620")
    _mount("tmpfs", "/run/.dev/shm", "tmpfs", "mode=1777")
    for name, target in DEVICE_LINKS.items():
        os.symlink(target, f"/run/.dev/{name}")
    subprocess.run(["mount", "--move", "/run/.dev", "/dev"], check=True)


def _mount(source: str, target: str, kind: str, options: str) -> None:
    subprocess.run(["mount", "-t", kind, "-o", options, source, target], check=True)


def _bind(source: str, target: str) -> None:
    subprocess.run(["mount", "--bind", source, target], check=True)
