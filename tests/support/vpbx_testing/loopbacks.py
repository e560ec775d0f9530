"""The peers' addresses: loopback addresses (any 127.x.y.z is this host) that
no trunk trusts and no part of the PBX uses."""

import ipaddress

from vpbx import model

# First candidates for the peers' addresses.
PHONES_FROM = "127.0.0.10"
STRANGER_FROM = "127.0.0.66"


def untrusted_loopbacks(lab: model.Config, first: str, count: int) -> list[str]:
    """`count` loopback addresses from `first` up that no trunk trusts and no PBX part uses."""
    trusted = [ipaddress.ip_network(c) for t in lab.trunks for c in t.inbound_sources]
    taken = {lab.sip_listen.host, *(t.address.host for t in lab.trunks)}
    found: list[str] = []
    address = ipaddress.ip_address(first)
    while len(found) < count:
        if address not in ipaddress.ip_network("127.0.0.0/8"):
            raise ValueError(f"no {count} free loopback addresses from {first}")
        if str(address) not in taken and not any(address in net for net in trusted):
            found.append(str(address))
        address += 1
    return found
