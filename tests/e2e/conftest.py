"""The world of the end-to-end tests: the deployed PBX as its inventory describes
it, loopback addresses for the SIP peers around it, and SIPp to play them.

Everything comes from the inventory (inventories/lab, or the directory in
VPBX_INVENTORY), so the suite follows whatever was deployed. When no PBX
answers SIP, the tests are skipped, or fail when VPBX_E2E_REQUIRED=1 (CI).
"""

import ipaddress
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from vpbx_testing.loopbacks import PHONES_FROM, STRANGER_FROM, untrusted_loopbacks
from vpbx_testing.raw_sip import sip_options
from vpbx_testing.sipp import SippRunner

from vpbx import model

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_INVENTORY = REPO / "inventories" / "lab"
RTPENGINE_DEFAULTS = REPO / "roles" / "rtpengine" / "defaults" / "main.yml"
# Each phone registers from and answers on its own address at this port.
PHONE_PORT = 5060
REGISTER_EXPIRES = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Lets `pytest -m "not e2e"` leave this directory out.
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when the environment says the PBX must be there (CI)."""
    if os.environ.get("VPBX_E2E_REQUIRED") == "1":
        pytest.fail(f"{reason} (VPBX_E2E_REQUIRED=1)", pytrace=False)
    pytest.skip(f"{reason}; deploy with `make deploy`, or set VPBX_E2E_REQUIRED=1 to fail instead")


def inventory_dir() -> Path:
    return Path(os.environ.get("VPBX_INVENTORY") or DEFAULT_INVENTORY)


def inventory_variables(directory: Path) -> dict[str, Any]:
    """The variables of group `all`: group_vars/all.yml, then group_vars/all/*.yml, as Ansible reads them."""
    group_vars = directory / "group_vars"
    files = [p for p in (group_vars / "all.yml", group_vars / "all.yaml") if p.is_file()]
    if (group_vars / "all").is_dir():
        files += sorted(p for p in (group_vars / "all").iterdir() if p.suffix in (".yml", ".yaml"))
    if not files:
        raise FileNotFoundError(f"no group_vars/all.yml or group_vars/all/ in {directory}")
    variables: dict[str, Any] = {}
    for path in files:
        variables.update(yaml.safe_load(path.read_text()) or {})
    return variables


@pytest.fixture(scope="session")
def inventory() -> dict[str, Any]:
    """The raw variables of the deployed inventory (for keys outside the contract)."""
    return inventory_variables(inventory_dir())


@pytest.fixture(scope="session")
def lab(inventory: dict[str, Any]) -> model.Config:
    """The deployed inventory, validated by the same model the PBX loads."""
    contract = {k: v for k, v in inventory.items() if k in model.CONTRACT_KEYS}
    try:
        return model.load(contract)
    except model.InventoryError as exc:
        pytest.fail(f"inventory {inventory_dir()} breaks the contract:\n{exc}", pytrace=False)


@pytest.fixture(scope="session")
def pbx_address(lab: model.Config) -> model.HostPort:
    """Where the PBX takes SIP; str() of it is SIPp's remote host:port."""
    return lab.sip_listen


@pytest.fixture(scope="session")
def trunk(lab: model.Config) -> model.Trunk:
    return lab.trunks[0]


@pytest.fixture(scope="session")
def carrier_ip(trunk: model.Trunk) -> str:
    """The carrier simulator's address: the first trunk's host, which must be a trusted source."""
    host = ipaddress.ip_address(trunk.address.host)
    if not any(host in ipaddress.ip_network(cidr) for cidr in trunk.inbound_sources):
        pytest.fail(f"trunk {trunk.name}: its address {host} is outside its inbound_sources "
                    f"{list(trunk.inbound_sources)}, so calls from a carrier simulator there "
                    "would not be trusted", pytrace=False)
    return str(host)


@pytest.fixture(scope="session")
def trunk_port(trunk: model.Trunk) -> int:
    """Where the carrier simulator listens for the PBX's outbound calls."""
    return trunk.address.port


@pytest.fixture(scope="session")
def phone_ips(lab: model.Config) -> dict[str, str]:
    """A distinct untrusted loopback address for each extension: {"100": "127.0.0.10", ...}."""
    extensions = sorted(lab.extensions)
    return dict(zip(extensions, untrusted_loopbacks(lab, PHONES_FROM, len(extensions)), strict=True))


@pytest.fixture(scope="session")
def stranger_ip(lab: model.Config, phone_ips: dict[str, str]) -> str:
    """An address that is neither a trunk nor a phone."""
    candidates = untrusted_loopbacks(lab, STRANGER_FROM, len(phone_ips) + 1)
    return next(ip for ip in candidates if ip not in phone_ips.values())


@pytest.fixture(scope="session")
def media_relay_ip(inventory: dict[str, Any]) -> str:
    """The address RTPengine writes into c= (the inventory's rtpengine_interface or the role's default)."""
    value = inventory.get("rtpengine_interface")
    if value is None:
        value = yaml.safe_load(RTPENGINE_DEFAULTS.read_text())["rtpengine_interface"]
    # "name/local!advertised;other/..." -> the first interface's advertised address.
    first = str(value).split(";")[0].split("/")[-1]
    return first.split("!")[-1]


@pytest.fixture(scope="session", autouse=True)
def pbx_answers(pbx_address: model.HostPort, stranger_ip: str) -> None:
    """Skip (or fail, under VPBX_E2E_REQUIRED=1) the whole suite unless the PBX answers OPTIONS."""
    answer = sip_options(pbx_address, stranger_ip)
    if answer is None:
        unavailable(f"no PBX answers SIP OPTIONS at {pbx_address} (vpbx_sip_listen of {inventory_dir()})")


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    """Starts SIPp peers for one test, logs under the test's tmp_path; kills leftovers after it."""
    try:
        runner = SippRunner(tmp_path / "sipp")
    except FileNotFoundError as exc:
        unavailable(str(exc))
    yield runner
    runner.close()


@pytest.fixture
def phones(
    sipp: SippRunner, lab: model.Config, pbx_address: model.HostPort, phone_ips: dict[str, str]
) -> Iterator[dict[str, model.HostPort]]:
    """Every extension registered from its own address; {"100": HostPort("127.0.0.10", 5060), ...}.

    Start callee.xml on a phone's address to make it ring; the bindings are
    removed after the test so that the next one starts with no phone online.
    """
    registered: dict[str, model.HostPort] = {}
    try:
        for extension, ip in phone_ips.items():
            keys = {"user": extension, "password": lab.extensions[extension], "expires": REGISTER_EXPIRES}
            sipp.run_uac("phone_register.xml", ip, str(pbx_address), keys, port=PHONE_PORT, timeout=10)
            registered[extension] = model.HostPort(ip, PHONE_PORT)
        yield registered
    finally:
        # A phone's callee may still hold its port: stop it before unregistering.
        sipp.close()
        for extension, address in registered.items():
            keys = {"user": extension, "password": lab.extensions[extension], "expires": 0}
            sipp.run_uac("phone_register.xml", address.host, str(pbx_address), keys,
                         port=PHONE_PORT, timeout=10, check=False)


# -- the numbers a test calls with, all from the inventory --------------------

@pytest.fixture(scope="session")
def callback_did(lab: model.Config) -> model.Did:
    for did in lab.numbers.values():
        if did.callback and did.callback.enabled:
            return did
    pytest.skip("the inventory has no DID with callback enabled")


@pytest.fixture(scope="session")
def listed_caller(lab: model.Config, callback_did: model.Did) -> str:
    return sorted(lab.number_lists[callback_did.callback.list])[0]


@pytest.fixture(scope="session")
def unlisted_caller(lab: model.Config, callback_did: model.Did, listed_caller: str) -> str:
    listed = lab.number_lists[callback_did.callback.list]
    for last in "0123456789":
        candidate = listed_caller[:-1] + last
        if candidate not in listed:
            return candidate
    raise AssertionError("no unlisted number found")


@pytest.fixture(scope="session")
def scheme(lab: model.Config, callback_did: model.Did) -> tuple[model.Step, ...]:
    return lab.routing_schemes[callback_did.routing]


@pytest.fixture(scope="session")
def forward_number(scheme) -> str:
    for step in scheme:
        if isinstance(step, model.ForwardStep):
            return step.number
    pytest.skip("the callback DID's scheme has no forward step")


@pytest.fixture(scope="session")
def ring_step(scheme) -> model.RingStep:
    if not isinstance(scheme[0], model.RingStep):
        pytest.skip("the callback DID's scheme does not start by ringing extensions")
    return scheme[0]


@pytest.fixture
def edited_inventory(tmp_path, callback_did, unlisted_caller):
    """A copy of the deployed inventory whose callback list also holds `unlisted_caller`."""
    copy = tmp_path / "inventory"
    shutil.copytree(inventory_dir(), copy)
    for path in sorted((copy / "group_vars").rglob("*.yml")):
        variables = yaml.safe_load(path.read_text()) or {}
        for number_list in variables.get("vpbx_number_lists", []):
            if number_list["name"] == callback_did.callback.list:
                number_list["numbers"].append(unlisted_caller)
                path.write_text(yaml.safe_dump(variables, sort_keys=False))
                yield copy
                return
    raise AssertionError(f"list {callback_did.callback.list} not found under {copy}")
