"""The hosts of a PBX: their internal addresses, as the validator checks them."""

import pytest

from vpbx.model import InventoryError, hosts

CLUSTER = {
    "sip_proxies": ["edge1", "edge2"],
    "media_relays": ["relay1", "relay2"],
    "callback_engines": ["engine1", "engine2"],
    "state_stores": ["store1"],
}
ADDRESSES = {"edge1": "10.0.0.11", "edge2": "10.0.0.12", "relay1": "10.0.0.21", "relay2": "10.0.0.22",
             "engine1": "10.0.0.31", "engine2": "10.0.0.32", "store1": "10.0.0.41"}


def errors(groups, addresses) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        hosts(groups, addresses)
    return caught.value.errors


def test_one_host_in_every_group_needs_no_address_and_gets_loopback():
    lab = {key: ["localhost"] for key in ("sip_proxies", "media_relays", "callback_engines")}
    assert hosts(lab, {}) == {"localhost": "127.0.0.1"}


def test_each_host_of_several_has_its_own_address():
    assert hosts(CLUSTER, ADDRESSES) == ADDRESSES


def test_a_host_without_an_address_is_named():
    [error] = errors(CLUSTER, {**ADDRESSES, "engine2": None})
    assert error.startswith("vpbx_internal_address: host engine2 has none")


def test_two_hosts_at_one_address_are_refused():
    [error] = errors(CLUSTER, {**ADDRESSES, "edge2": "10.0.0.11"})
    assert error == "vpbx_internal_address: host edge2: 10.0.0.11 is host edge1's too"


def test_an_address_that_is_no_address_is_refused():
    [error] = errors(CLUSTER, {**ADDRESSES, "store1": "store.example"})
    assert error == "vpbx_internal_address: host store1: 'store.example' is not an IP address"


def test_more_engines_than_media_relays_is_refused():
    groups = {**CLUSTER, "media_relays": ["relay1"]}
    [error] = errors(groups, ADDRESSES)
    assert error.startswith("media_relays: 1 media relay(s) for 2 callback engines")


def test_hosts_outside_the_pbx_groups_are_not_its_hosts():
    groups = {**CLUSTER, "monitoring": ["watcher"]}
    assert "watcher" not in hosts(groups, ADDRESSES)
