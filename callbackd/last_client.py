"""Whom an employee last called through a DID: what `**` at the digits prompt dials again.

Written when the engine places a client call (the number dialled, E.164),
read when a call-back starts; one number per (DID, employee), the newest.
The shared store (callbackd.store.RedisLastClients) keeps it for every
engine; without one, the engine's memory does, and a restart forgets it.
A number nobody redialled for LAST_CLIENT_TTL_S lapses: a client of last
quarter is no longer "the last client".
"""

from typing import Protocol

LAST_CLIENT_TTL_S = 30 * 24 * 3600


class LastClients(Protocol):
    def get(self, did: str, employee: str, now: float) -> str | None:
        """The E.164 number `employee` last called through `did`, None when there is none."""

    def put(self, did: str, employee: str, e164: str, now: float) -> None:
        """`employee` is calling `e164` through `did`."""


class MemoryLastClients:
    """The last clients of one engine, in its memory."""

    def __init__(self) -> None:
        # (did, employee) -> (E.164, epoch seconds it was written)
        self._last: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, did: str, employee: str, now: float) -> str | None:
        found = self._last.get((did, employee))
        if found is None or found[1] <= now - LAST_CLIENT_TTL_S:
            return None
        return found[0]

    def put(self, did: str, employee: str, e164: str, now: float) -> None:
        # One entry per employee who ever called a client: a DID's list bounds the table.
        self._last[(did, employee)] = (e164, now)
