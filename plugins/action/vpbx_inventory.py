"""Validate the inventory on the controller, before any host is touched: the
contract's vpbx_* variables, and the roles' own variables it sets."""

import re
from pathlib import Path

import yaml
from ansible.plugins.action import ActionBase

from vpbx import model

_TOP_KEY = re.compile(r"^(\w+)\s*:", re.MULTILINE)
ROLES = Path(__file__).resolve().parents[2] / "roles"


def known_role_variables(roles: Path = ROLES) -> dict[str, set[str]]:
    """Each role's variables: its defaults and its argument specs' options
    (the documented ones without a default too), so that a new variable needs
    no edit here. The contract's own role (vpbx_inventory) is left out: its
    prefix is the contract's, which model.load() checks."""
    known = {}
    for role in sorted(p for p in roles.iterdir() if (p / "meta").is_dir()):
        if role.name.startswith("vpbx_"):
            continue
        names = set(_yaml(role / "defaults" / "main.yml"))
        specs = _yaml(role / "meta" / "argument_specs.yml").get("argument_specs") or {}
        for entry_point in specs.values():
            names.update(entry_point.get("options") or {})
        known[role.name] = names
    return known


def _yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _definitions(inventory_dir: str | None) -> dict[str, str]:
    """Each top-level `vpbx_*` key of the inventory and the file that sets it, so an error
    points where to edit (the first that sets it, host_vars before group_vars)."""
    found: dict[str, str] = {}
    if not inventory_dir:
        return found
    root = Path(inventory_dir)
    for folder in ("host_vars", "group_vars"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".yml", ".yaml", "") and path.is_file():
                try:
                    keys = _TOP_KEY.findall(path.read_text(errors="replace"))
                except OSError:
                    continue
                for key in keys:
                    found.setdefault(key, str(path))
    return found


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        variables = {
            name: self._templar.template(value)
            for name, value in task_vars.items()
            if name.startswith("vpbx_") and name != "vpbx_config" and name not in model.HOST_KEYS
        }
        hostvars = task_vars.get("hostvars", {})
        groups = task_vars.get("groups", {})
        addresses = {
            host: self._templar.template(hostvars[host].get("vpbx_internal_address"))
            for group in model.PBX_GROUPS for host in groups.get(group, ())
        }
        problems = model.role_variables(task_vars, known_role_variables())
        config = None
        try:
            model.hosts(groups, addresses)
        except model.InventoryError as exc:
            problems += exc.errors
        try:
            config = model.load(variables)
        except model.InventoryError as exc:
            problems += exc.errors
        if problems:
            # The files are read once, whatever the number of errors.
            files = _definitions(task_vars.get("inventory_dir"))
            errors = []
            for line in model.error_listing(problems):
                where = files.get(re.split(r"[.\[:]", line, maxsplit=1)[0])
                errors.append(f"{where}: {line}" if where else line)
            result.update(failed=True, msg="The inventory has errors:\n  " + "\n  ".join(errors))
            return result
        # The validated config holds the extensions' passwords and the PINs:
        # the facts are set, but never shown, not even with -v.
        result.update(changed=False, ansible_facts={"vpbx_config": model.dump(config)}, _ansible_no_log=True)
        return result
