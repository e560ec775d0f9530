"""A Kamailio worker loads a replaced routing.json on its next request; a bad file changes nothing.

The KEMI script runs here with a stand-in for Kamailio's KSR module that
records the log lines; routing.json is written the way Ansible writes it
(a new file renamed over the old one).
"""

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

from vpbx import decide, model
from vpbx.routing_file import RoutingFile

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "kemi" / "vpbx_router.py"
LAB_VARS = REPO / "inventories" / "lab" / "group_vars" / "all.yml"
NEWCOMER = "+421905777888"


class Ksr(types.ModuleType):
    def __init__(self):
        super().__init__("KSR")
        self.lines: list[tuple[str, str]] = []

    def info(self, text):
        self.lines.append(("info", text))

    def err(self, text):
        self.lines.append(("err", text))


@pytest.fixture
def ksr(monkeypatch):
    stand_in = Ksr()
    monkeypatch.setitem(sys.modules, "KSR", stand_in)
    return stand_in


@pytest.fixture
def script(ksr, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("vpbx_router_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROUTING_FILE", tmp_path / "routing.json")
    return module


def lab_variables() -> dict:
    return yaml.safe_load(LAB_VARS.read_text())


def replace(path: Path, text: str) -> None:
    """As Ansible's copy does: a new file, renamed over the old one."""
    new = path.with_suffix(".tmp")
    new.write_text(text)
    os.replace(new, path)


def render(path: Path, variables: dict) -> None:
    replace(path, json.dumps(model.dump(model.load(variables))))


def callback_did_and_list(variables: dict) -> tuple[str, dict]:
    did = next(d for d in variables["vpbx_numbers"] if d.get("callback", {}).get("enabled"))
    [listed] = [x for x in variables["vpbx_number_lists"] if x["name"] == did["callback"]["list"]]
    return str(did["number"]), listed


def worker(script):
    """A worker's router as mod_init builds it, over the routing.json in place."""
    routing = RoutingFile(script.ROUTING_FILE)
    return script.VpbxRouter(decide, model, routing, script.timed(routing.load, decide),
                             script.EdgeSettings(engines=["127.0.0.1:5070"]),
                             script.RouteSigner("k" * 64, 43200))


def newcomer_is_listed(router, did: str) -> bool:
    origin = decide.FromTrunk("carrier")
    return isinstance(router.router.decide(origin, did, NEWCOMER), decide.TriggerCallback)


def test_a_replaced_routing_file_applies_on_the_next_request(script, ksr):
    variables = lab_variables()
    path = script.ROUTING_FILE
    render(path, variables)
    router = worker(script)
    did, listed = callback_did_and_list(variables)
    assert not newcomer_is_listed(router, did)

    listed["numbers"].append(NEWCOMER)
    render(path, variables)
    router.refresh_routing()

    assert newcomer_is_listed(router, did)
    assert sum("routing loaded" in text for _, text in ksr.lines) == 2


def test_an_unchanged_file_is_not_loaded_again(script, ksr):
    render(script.ROUTING_FILE, lab_variables())
    router = worker(script)
    before = router.router
    for _ in range(3):
        router.refresh_routing()
    assert router.router is before
    assert sum("routing loaded" in text for _, text in ksr.lines) == 1


def test_a_bad_file_keeps_the_routing_in_use_and_is_reported_once(script, ksr):
    variables = lab_variables()
    path = script.ROUTING_FILE
    render(path, variables)
    router = worker(script)
    before = router.router

    replace(path, '{"vpbx_numbers": [')  # cut short
    for _ in range(3):
        router.refresh_routing()
    assert router.router is before
    errors = [text for level, text in ksr.lines if level == "err"]
    assert len(errors) == 1 and "keeping the routing in use" in errors[0]

    did, listed = callback_did_and_list(variables)
    listed["numbers"].append(NEWCOMER)
    render(path, variables)
    router.refresh_routing()
    assert newcomer_is_listed(router, did)


def test_a_missing_file_keeps_the_routing_in_use(script):
    render(script.ROUTING_FILE, lab_variables())
    router = worker(script)
    before = router.router
    script.ROUTING_FILE.unlink()
    router.refresh_routing()
    assert router.router is before


@pytest.mark.parametrize("handler", ["ksr_failure_manage", "ksr_branch_manage", "ksr_onreply_manage"])
def test_every_event_route_looks_for_a_replaced_routing_file_first(script, handler):
    # A failure route may run in the timer process, which takes no requests:
    # it must not act on a scheme older than the file in place.
    render(script.ROUTING_FILE, lab_variables())
    router = worker(script)
    seen = []
    router.refresh_routing = lambda: seen.append(handler)
    with pytest.raises(AttributeError):  # the stand-in KSR has nothing more to offer
        getattr(router, handler)(None)
    assert seen == [handler]


def test_trunks_engines_and_the_pbx_are_not_phones_and_trunks_are_never_banned(script):
    render(script.ROUTING_FILE, lab_variables())
    router = worker(script)
    trunk = lab_variables()["vpbx_trunks"][0]["address"].rpartition(":")[0]
    for host in (trunk, "127.0.0.1"):
        assert router.is_not_a_phone(host)
    assert not router.is_not_a_phone("127.0.0.10")
    assert not router.is_not_a_phone("phone.example")
    assert trunk in router.never_banned and "127.0.0.66" not in router.never_banned


def test_scanner_user_agents_match_in_any_case(script):
    edge = script.EdgeSettings(scanner_user_agents=["friendly-scanner", "sipvicious"])
    assert edge.scanner.search("SIPVicious 0.3.4") and edge.scanner.search("friendly-scanner")
    assert not edge.scanner.search("Linphone/5.2") and script.EdgeSettings().scanner is None
