"""The validation's action plugin: which file an error points to, read once for all errors."""

import importlib.util
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "action" / "vpbx_inventory.py"
spec = importlib.util.spec_from_file_location("vpbx_inventory_action", PLUGIN)
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)


def test_each_top_level_key_points_to_the_file_that_sets_it(tmp_path):
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "group_vars" / "all" / "lists.yml").write_text(
        "vpbx_number_lists:\n  - name: sales\n    numbers: ['+421905111222']\n")
    (tmp_path / "group_vars" / "all" / "main.yml").write_text(
        "vpbx_default_country: SK\nvpbx_numbers: []\n  vpbx_nested_key: 1\n")
    files = plugin._definitions(str(tmp_path))
    assert files == {
        "vpbx_number_lists": str(tmp_path / "group_vars" / "all" / "lists.yml"),
        "vpbx_default_country": str(tmp_path / "group_vars" / "all" / "main.yml"),
        "vpbx_numbers": str(tmp_path / "group_vars" / "all" / "main.yml"),
    }


def test_host_vars_come_before_group_vars(tmp_path):
    for folder in ("host_vars", "group_vars"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "edge1.yml").write_text("vpbx_sip_listen: 127.0.0.1:5060\n")
    host_file = str(tmp_path / "host_vars" / "edge1.yml")
    assert plugin._definitions(str(tmp_path)) == {"vpbx_sip_listen": host_file}


def test_no_inventory_directory_points_nowhere():
    assert plugin._definitions(None) == {}
