"""The extensions' passwords stay where Kamailio needs them and nowhere else.

A digest password is what lets a phone register as an extension and take
its calls: it must not be readable by other services or users of the host,
nor end up in the output of `make check`, which lands in terminals and CI logs.
"""

import grp
import json
import os
import secrets
import shutil
import stat
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, inventory_dir

from vpbx import model

CALLBACKD_ROUTING = Path("/etc/vpbx/routing.json")
KAMAILIO_DEFAULTS = REPO / "roles" / "kamailio" / "defaults" / "main.yml"
KAMAILIO_GROUP = "kamailio"
PLAYBOOK_TIMEOUT = 900
KAMAILIO_ROUTING_TASK = "TASK [kamailio : Render the routing data from the validated inventory]"


def kamailio_routing(inventory: dict[str, Any]) -> Path:
    """Kamailio's routing.json: in kamailio_kemi_dir, the inventory's or the role's default."""
    kemi_dir = inventory.get("kamailio_kemi_dir")
    if kemi_dir is None:
        kemi_dir = yaml.safe_load(KAMAILIO_DEFAULTS.read_text())["kamailio_kemi_dir"]
    return Path(kemi_dir) / "routing.json"


def new_password() -> str:
    # Letters only: it cannot contain an extension's number, so the model takes it.
    return "e2e-check-" + "".join(secrets.choice(string.ascii_letters) for _ in range(16))


def scrub(text: str, passwords: list[str]) -> str:
    for password in passwords:
        text = text.replace(password, "<password>")
    return text


def check_diff(inventory: Path, passwords: list[str]) -> str:
    """Everything `ansible-playbook --check --diff` prints for `inventory`; it must succeed."""
    playbook = Path(sys.executable).with_name("ansible-playbook")
    # Plain text whatever the caller's environment asks (molecule forces colour):
    # the statuses are read from it.
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(
        [str(playbook), "-i", str(inventory), str(REPO / "playbooks" / "site.yml"), "--check", "--diff"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT,
    )
    output, code = run.stdout + run.stderr, run.returncode
    # Passing a check that stopped early would prove nothing; its report must
    # not be the leak itself (hence no `run` in the assertion, whose repr
    # pytest would print).
    assert code == 0, "check failed:\n" + scrub(output, passwords)[-4000:]
    return output


def assert_not_shown(output: str, password: str, which: str) -> None:
    # Not `assert password not in output`: pytest would print both.
    if password in output:
        pytest.fail(f"the {which} password is in the output of --check --diff", pytrace=False)


def task_status(output: str, header: str) -> str:
    """The first status word (ok, changed, ...) printed after a task's header."""
    _, found, rest = output.partition(header)
    assert found, f"{header} did not run"
    for line in rest.splitlines():
        word = line.split(":", 1)[0].strip()
        if word in ("ok", "changed", "skipping", "failed", "fatal"):
            return word
    raise AssertionError(f"no status after {header}")


@pytest.fixture
def inventory_with_a_new_password(tmp_path: Path, lab: model.Config) -> tuple[Path, str, str]:
    """A copy of the deployed inventory whose first extension has a new password: (copy, old, new)."""
    copy = tmp_path / "inventory"
    shutil.copytree(inventory_dir(), copy)
    new = new_password()
    for path in sorted((copy / "group_vars").rglob("*.yml")):
        variables = yaml.safe_load(path.read_text()) or {}
        extensions = variables.get("vpbx_extensions") or []
        if extensions:
            old = lab.extensions[str(extensions[0]["number"])]
            extensions[0]["password"] = new
            path.write_text(yaml.safe_dump(variables, sort_keys=False))
            return copy, old, new
    pytest.skip("the inventory has no extensions")


def test_callbackd_routing_copy_holds_no_extensions(lab: model.Config):
    text = CALLBACKD_ROUTING.read_text()
    # Only the keys: a failing assertion prints what it compares.
    assert "vpbx_extensions" not in sorted(json.loads(text))
    leaked = [number for number, password in lab.extensions.items() if password in text]
    assert not leaked, f"{CALLBACKD_ROUTING} holds the password of extensions {leaked}"


def test_kamailio_routing_file_is_readable_by_root_and_kamailio_only(inventory: dict[str, Any]):
    path = kamailio_routing(inventory)
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640, f"{path} is {stat.S_IMODE(st.st_mode):04o}"
    assert not st.st_mode & stat.S_IROTH, f"{path} is world-readable"
    assert st.st_uid == 0, f"{path} is not root's"
    assert grp.getgrgid(st.st_gid).gr_name == KAMAILIO_GROUP, f"{path} is not group {KAMAILIO_GROUP}'s"


def test_check_diff_shows_neither_the_old_nor_the_new_password(
    inventory_with_a_new_password: tuple[Path, str, str], lab: model.Config,
):
    copy, old, new = inventory_with_a_new_password
    output = check_diff(copy, [new, *lab.extensions.values()])
    # The change did reach Kamailio's routing.json: only its diff is left out.
    assert task_status(output, KAMAILIO_ROUTING_TASK) == "changed"
    assert_not_shown(output, old, "old")
    assert_not_shown(output, new, "new")
    others = [n for n, p in lab.extensions.items() if p in output]
    assert not others, f"the password of extensions {others} is in the output of --check --diff"
