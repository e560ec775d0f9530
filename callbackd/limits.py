"""How many call-backs an employee had on a DID: the per-hour and per-day limits.

Every call-back placed costs the PBX two calls, so a listed number that is
stolen or spoofed must not make it dial all day. `admit()` is the whole
interface, and it counts and checks in one step: a shared store (Redis, for
several engines) must do both atomically too, or two engines would each let
the last call-back through.

Windows slide: "the last hour" is the 3600 s before now, not the clock hour,
so a burst at the turn of an hour is not let through twice. Times are epoch
seconds (`time.time()`), the clock every engine host shares.
"""

from collections import deque
from dataclasses import dataclass
from typing import Protocol

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
# How often the counts of employees idle for a day are dropped.
SWEEP_INTERVAL_S = HOUR_S


@dataclass(frozen=True)
class Refused:
    """Why a call-back is not placed: `count` in the window already reached `maximum`."""

    count: int
    window: str  # "hour" or "day"
    maximum: int

    @property
    def key(self) -> str:
        """The inventory key that set the limit (callback.max_per_hour, ...)."""
        return f"max_per_{self.window}"

    def __str__(self) -> str:
        return f"{self.count} call-backs in the last {self.window} ({self.key} {self.maximum})"


class Limits(Protocol):
    def admit(self, did: str, employee: str, max_per_hour: int, max_per_day: int,
              now: float) -> Refused | None:
        """Count one call-back of `employee` on `did` at `now`, or say why not (then nothing is counted)."""


class MemoryLimits:
    """The counts of one engine, in its memory: a restart forgets them."""

    def __init__(self) -> None:
        # (did, employee) -> epoch seconds of its call-backs in the last day, oldest first.
        self._placed: dict[tuple[str, str], deque[float]] = {}
        self._swept_at = float("-inf")

    def admit(self, did: str, employee: str, max_per_hour: int, max_per_day: int,
              now: float) -> Refused | None:
        self._sweep(now)
        placed = self._placed.setdefault((did, employee), deque())
        while placed and placed[0] <= now - DAY_S:
            placed.popleft()
        # The day first: it is the refusal that lasts, so it is the one to tell.
        if len(placed) >= max_per_day:
            return Refused(len(placed), "day", max_per_day)
        last_hour = sum(1 for at in placed if at > now - HOUR_S)
        if last_hour >= max_per_hour:
            return Refused(last_hour, "hour", max_per_hour)
        placed.append(now)
        return None

    def _sweep(self, now: float) -> None:
        """Forget employees with no call-back in the last day, so the table does not grow forever."""
        if now - self._swept_at < SWEEP_INTERVAL_S:
            return
        self._swept_at = now
        for key in [k for k, placed in self._placed.items() if not placed or placed[-1] <= now - DAY_S]:
            del self._placed[key]
