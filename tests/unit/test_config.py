"""callbackd's settings file: validated once, errors name the key."""

import json

import pytest

from callbackd.config import SettingsError, load_settings

VALID = {
    "routing_file": "/etc/vpbx/routing.json",
    "sip_listen": "127.0.0.1:5070",
    "proxy": "127.0.0.1:5060",
    "trusted_proxies": ["127.0.0.1"],
    "rtpengine_ng": "127.0.0.1:2223",
    "dtmf_listen": "127.0.0.1:5071",
    "pcap_dir": "/var/spool/vpbx/rtpengine",
    "recordings_dir": "/var/spool/vpbx/recordings",
    "cdr_file": "/var/log/vpbx/cdr.jsonl",
    "log_file": "/var/log/vpbx/callbackd.log",
    "prompts_dir": "/var/lib/vpbx/prompts",
    "client_ring_timeout": 45,
}


def load(tmp_path, **changes):
    raw = {**VALID, **changes}
    path = tmp_path / "callbackd.json"
    path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    return load_settings(path)


def test_valid_settings_load(tmp_path):
    settings = load(tmp_path)
    assert settings.proxy == ("127.0.0.1", 5060)
    assert settings.trusted_proxies == frozenset({"127.0.0.1"})


def test_trusted_proxies_are_kept_in_one_spelling(tmp_path):
    settings = load(tmp_path, trusted_proxies=["10.0.0.5", "2001:DB8:0::1", "[::1]"])
    assert settings.trusted_proxies == frozenset({"10.0.0.5", "2001:db8::1", "::1"})


def test_trusted_proxies_are_required(tmp_path):
    with pytest.raises(SettingsError, match=r"^trusted_proxies: is required"):
        load(tmp_path, trusted_proxies=None)


@pytest.mark.parametrize("value", [[], "127.0.0.1", {"ip": "127.0.0.1"}])
def test_trusted_proxies_must_be_a_non_empty_list(tmp_path, value):
    with pytest.raises(SettingsError, match=r"^trusted_proxies: must be a non-empty list"):
        load(tmp_path, trusted_proxies=value)


@pytest.mark.parametrize("item", ["127.0.0.1:5060", "edge.example.com", "127.0.0.0/8", 5])
def test_each_trusted_proxy_must_be_an_ip_address(tmp_path, item):
    with pytest.raises(SettingsError, match=r"^trusted_proxies\[1\]: must be an IP address"):
        load(tmp_path, trusted_proxies=["127.0.0.1", item])


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"^trusted_proxy: unknown setting"):
        load(tmp_path, trusted_proxy=["127.0.0.1"])


def test_without_a_state_store_the_engine_keeps_its_state_in_memory(tmp_path):
    assert load(tmp_path).state_store is None
    assert load(tmp_path, state_store="").state_store is None


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "unix:///run/redis/redis.sock"])
def test_a_state_store_is_a_redis_url(tmp_path, url):
    assert load(tmp_path, state_store=url).state_store == url


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "http://redis", 6379])
def test_a_state_store_that_is_no_redis_url_is_named(tmp_path, url):
    with pytest.raises(SettingsError, match=r"^state_store: must be a Redis URL"):
        load(tmp_path, state_store=url)
