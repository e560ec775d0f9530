"""Every route name the KEMI script hands to Kamailio is a method Kamailio can call."""

import ast
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "kemi" / "vpbx_router.py"
ROUTE_CONSTANTS = ("FAILURE_ROUTE", "ONREPLY_ROUTE", "BRANCH_ROUTE", "TRIGGER_BRANCH_ROUTE", "XHTTP_EVENT")
ROLE = SCRIPT.parents[1] / "roles" / "kamailio"
HANDLERS = ("VpbxRouter", "Unavailable")


def parsed():
    return ast.parse(SCRIPT.read_text())


def constants(tree):
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant)}


def methods(tree, cls):
    [node] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    return {f.name for f in node.body if isinstance(f, ast.FunctionDef)}


def test_every_route_name_is_a_method_of_every_handler():
    tree = parsed()
    names = constants(tree)
    for cls in HANDLERS:
        for constant in ROUTE_CONSTANTS:
            assert names[constant] in methods(tree, cls), f"{cls} lacks {names[constant]}"


def test_route_names_are_only_handed_over_through_the_constants():
    # t_on_failure("ksr_...") with a literal would escape the check above.
    for call in ast.walk(parsed()):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", "").startswith("t_on_"):
            assert all(isinstance(arg, ast.Name) for arg in call.args), ast.unparse(call)


def test_kamailio_cfg_names_the_script_s_http_handler_metrics_socket_and_counters():
    names = constants(parsed())
    cfg = (ROLE / "templates" / "etc" / "kamailio" / "kamailio.cfg.j2").read_text()
    assert f'modparam("xhttp", "event_callback", "{names["XHTTP_EVENT"]}")' in cfg
    assert f"__kamailio_metrics_socket: {names['METRICS_SOCKET']}" in (ROLE / "vars" / "main.yml").read_text()
    for counter in ("DECISIONS_METRIC", "BANS_METRIC"):
        assert f'"prom_counter", "name={names[counter]};' in cfg
