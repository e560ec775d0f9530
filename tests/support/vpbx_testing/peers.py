"""The keys of the SIPp scenarios, built the same way by every test."""

from vpbx_testing.sipp import G711A_PCAP, NO_HEADER


def caller_keys(did: str, caller: str, *, hangup: str = "local", header: str = NO_HEADER) -> dict:
    return {"did": did, "caller": caller, "header": header, "hangup": hangup,
            "hold_ms": 1000, "audio": G711A_PCAP}


def callee_keys(mode: str, *, user: str = "*", caller: str = "*", media: str = "*",
                hangup: str = "remote") -> dict:
    return {"mode": mode, "ring_ms": 200, "hangup": hangup, "hold_ms": 1000,
            "expect_user": user, "expect_from": caller, "expect_media": media}
