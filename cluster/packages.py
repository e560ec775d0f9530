"""What the hosts need installed, installed once on the machine.

A host sees the machine's packages through its overlays and reaches no
mirror, so every Debian package the roles install is installed here first
(without starting its services: the hosts run them), the package lists are
kept fresh enough that no role's apt task updates them inside a host, and the
project's pinned dependencies (pyproject.toml) are made into wheels the
runtime role installs them from (runtime_pip_extra_args in the inventory).
"""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path

import yaml

from cluster.filesystem import STATE_ROOT
from cluster.run import run

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "roles"
PYPROJECT = REPO / "pyproject.toml"
# What the roles install besides the lists read from their own files below.
DEBIAN_PACKAGES = ("python3", "python3-venv", "rsyslog", "redis-server", "espeak-ng", "sox", "nftables")
WHEELS = STATE_ROOT / "wheels"
# The roles' apt tasks update the lists older than an hour (cache_valid_time):
# fresher than that for the length of a deploy and its idempotence run.
LISTS_FRESH_S = 20 * 60
APT_STAMP = Path("/var/lib/apt/periodic/update-success-stamp")
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def _role_var(path: str, name: str) -> list[str]:
    return list(yaml.safe_load((ROLES / path).read_text())[name])


def debian_packages() -> list[str]:
    return sorted({*DEBIAN_PACKAGES,
                   *_role_var("kamailio/vars/main.yml", "__kamailio_packages"),
                   *_role_var("rtpengine/defaults/main.yml", "rtpengine_packages"),
                   yaml.safe_load((ROLES / "service_manager/defaults/main.yml").read_text())
                   ["service_manager_supervisor_package"]})


def python_packages() -> list[str]:
    """The project's pinned dependencies, as its wheel carries them."""
    return sorted(tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"])


def install_debian_packages() -> bool:
    """Refresh old package lists and install what is missing; True if anything changed."""
    changed = False
    if time.time() - _lists_time() > LISTS_FRESH_S:
        run("apt-get", "update", "-qq")
        APT_STAMP.parent.mkdir(parents=True, exist_ok=True)
        APT_STAMP.touch()
        changed = True
    missing = [p for p in debian_packages() if not _installed(p)]
    if missing:
        # The machine does not run them: policy-rc.d keeps the packages'
        # scripts from starting the services they install.
        own_policy = not POLICY_RC.exists()
        if own_policy:
            POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC.chmod(0o755)
        try:
            run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
                "--no-install-recommends", *missing)
        finally:
            if own_policy:
                POLICY_RC.unlink()
        changed = True
    return changed


def build_wheels(pip: str) -> bool:
    """Wheels of the project's pinned dependencies and theirs; True if any was made."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(WHEELS))
    run(pip, "wheel", "-q", "--disable-pip-version-check", "--wheel-dir", str(WHEELS), *python_packages())
    return set(os.listdir(WHEELS)) != before


def _lists_time() -> float:
    for path in (APT_STAMP, Path("/var/lib/apt/lists")):
        if path.exists():
            return path.stat().st_mtime
    return 0.0


def _installed(package: str) -> bool:
    status = run("dpkg-query", "-W", "-f", "${db:Status-Status}", package, check=False)
    return status.returncode == 0 and status.stdout == "installed"
