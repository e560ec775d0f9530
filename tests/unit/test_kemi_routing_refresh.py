"""A Kamailio worker loads a replaced routing.json on its next request; a bad file changes nothing.

The KEMI script runs here with the recording KSR stand-in of conftest.py;
routing.json is written the way Ansible writes it (a new file renamed over
the old one).
"""

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from vpbx import decide, model
from vpbx.routing_file import RoutingFile

REPO = Path(__file__).resolve().parents[2]
LAB_VARS = REPO / "inventories" / "lab" / "group_vars" / "all.yml"
NEWCOMER = "+421905777888"


@pytest.fixture(autouse=True)
def routing_here(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "ROUTING_FILE", tmp_path / "routing.json")


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
    routing_file = RoutingFile(script.ROUTING_FILE)
    return script.VpbxRouter(decide, model, routing_file, script.timed(routing_file.load, decide),
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
    assert ksr.logged("info").count("routing loaded") == 2


def test_an_unchanged_file_is_not_loaded_again(script, ksr):
    render(script.ROUTING_FILE, lab_variables())
    router = worker(script)
    before = router.router
    for _ in range(3):
        router.refresh_routing()
    assert router.router is before
    assert ksr.logged("info").count("routing loaded") == 1


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
    errors = [text for text, in ksr.called("err")]
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
def test_every_event_route_looks_for_a_replaced_routing_file_first(script, ksr, handler):
    # A failure route may run in the timer process, which takes no requests:
    # it must not act on a scheme older than the file in place.
    render(script.ROUTING_FILE, lab_variables())
    router = worker(script)
    calls_before = len(ksr.calls)

    class Refreshed(Exception):
        pass

    def refresh():
        raise Refreshed

    router.refresh_routing = refresh
    with pytest.raises(Refreshed):
        getattr(router, handler)(None)
    assert ksr.calls[calls_before:] == []


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


def test_new_router_code_is_every_module_of_the_vpbx_package_executed_anew(script):
    # app_python's reload re-runs the script only: the package's modules,
    # whichever there are, must not be the ones the worker cached.
    kept = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "vpbx"}
    try:
        decide_before = script._fresh_vpbx()[0]
        import vpbx.numbers as numbers_before

        decide_after, model_after, routing_file_after = script._fresh_vpbx()
        assert decide_after is not decide_before
        assert sys.modules["vpbx.numbers"] is not numbers_before
        assert (model_after.__name__, routing_file_after.__name__) == ("vpbx.model", "vpbx.routing_file")
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "vpbx"]:
            del sys.modules[name]
        sys.modules.update(kept)
