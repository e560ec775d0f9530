"""Validate the vpbx_* variables on the controller, before any host is touched."""

import re
from pathlib import Path

from ansible.plugins.action import ActionBase

from vpbx import model

_TOP_KEY = re.compile(r"^(vpbx_\w+)\s*:", re.MULTILINE)


def _defined_in(inventory_dir: str | None, key: str) -> str | None:
    """The inventory file that sets `key`, so an error points where to edit."""
    if not inventory_dir:
        return None
    root = Path(inventory_dir)
    for folder in ("host_vars", "group_vars"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".yml", ".yaml", "") and path.is_file():
                try:
                    keys = _TOP_KEY.findall(path.read_text(errors="replace"))
                except OSError:
                    continue
                if key in keys:
                    return str(path)
    return None


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
        problems: list[str] = []
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
            inventory_dir = task_vars.get("inventory_dir")
            errors = []
            for line in problems:
                key = re.split(r"[.\[:]", line, maxsplit=1)[0]
                where = _defined_in(inventory_dir, key)
                errors.append(f"{where}: {line}" if where else line)
            result.update(failed=True, msg="The inventory breaks the contract:\n  " + "\n  ".join(errors))
            return result
        # The validated config holds the extensions' passwords and the PINs:
        # the facts are set, but never shown, not even with -v.
        result.update(changed=False, ansible_facts={"vpbx_config": model.dump(config)}, _ansible_no_log=True)
        return result
