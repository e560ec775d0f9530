"""callbackd's settings: one rendered file, validated once at start."""

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Address = tuple[str, int]


class SettingsError(ValueError):
    """The settings file is wrong; the message names the key."""


@dataclass(frozen=True)
class Settings:
    routing_file: Path
    sip_listen: Address
    proxy: Address
    # The SIP edges' addresses: the only sources whose triggers and probes count.
    trusted_proxies: frozenset[str]
    rtpengine_ng: Address
    dtmf_listen: Address
    pcap_dir: Path
    recordings_dir: Path
    cdr_file: Path
    log_file: Path | None
    prompts_dir: Path
    client_ring_timeout: float
    # Redis shared by the engines (callbackd.store): claims and limits; None
    # keeps them in this engine's memory (one engine only).
    state_store: str | None = None
    # The other media relays' ng sockets: a callback whose relay (rtpengine_ng)
    # does not answer is placed on the next one.
    other_relays: tuple[Address, ...] = ()
    # Where Prometheus scrapes the engine's figures (HTTP /metrics); None: not served.
    metrics_listen: Address | None = None


def _address(key: str, value: Any) -> Address:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{key}: must be IP:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def canonical_ip(value: str) -> str:
    """An IP address in one spelling (``::1`` for ``0:0::1``); ValueError if it is none."""
    return str(ipaddress.ip_address(value.strip("[]")))


def _ip_list(key: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise SettingsError(f"{key}: must be a non-empty list of IP addresses, got {value!r}")
    addresses = set()
    for index, item in enumerate(value):
        try:
            addresses.add(canonical_ip(item))
        except (AttributeError, ValueError):
            raise SettingsError(f"{key}[{index}]: must be an IP address, got {item!r}") from None
    return frozenset(addresses)


def load_settings(path: str | Path) -> Settings:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: must be a JSON object")
    known = set(Settings.__dataclass_fields__)
    for key in raw:
        if key not in known:
            raise SettingsError(f"{key}: unknown setting (known: {', '.join(sorted(known))})")
    missing = sorted(known - set(raw) - {"log_file", "state_store", "other_relays", "metrics_listen"})
    if missing:
        raise SettingsError(f"{missing[0]}: is required")
    timeout = raw["client_ring_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise SettingsError(f"client_ring_timeout: must be positive seconds, got {timeout!r}")
    return Settings(
        routing_file=Path(raw["routing_file"]),
        sip_listen=_address("sip_listen", raw["sip_listen"]),
        proxy=_address("proxy", raw["proxy"]),
        trusted_proxies=_ip_list("trusted_proxies", raw["trusted_proxies"]),
        rtpengine_ng=_address("rtpengine_ng", raw["rtpengine_ng"]),
        dtmf_listen=_address("dtmf_listen", raw["dtmf_listen"]),
        pcap_dir=Path(raw["pcap_dir"]),
        recordings_dir=Path(raw["recordings_dir"]),
        cdr_file=Path(raw["cdr_file"]),
        log_file=Path(raw["log_file"]) if raw.get("log_file") else None,
        prompts_dir=Path(raw["prompts_dir"]),
        client_ring_timeout=float(timeout),
        state_store=_store_url("state_store", raw.get("state_store")),
        other_relays=_addresses("other_relays", raw.get("other_relays", [])),
        metrics_listen=(_address("metrics_listen", raw["metrics_listen"]) if raw.get("metrics_listen")
                        else None),
    )


def _addresses(key: str, value: Any) -> tuple[Address, ...]:
    if not isinstance(value, list):
        raise SettingsError(f"{key}: must be a list of IP:PORT, got {value!r}")
    return tuple(_address(f"{key}[{i}]", item) for i, item in enumerate(value))


STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def _store_url(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith(STORE_SCHEMES):
        raise SettingsError(f"{key}: must be a Redis URL ({', '.join(STORE_SCHEMES)}...), got {value!r}")
    return value
