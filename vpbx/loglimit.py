"""A log line per refused packet, up to a rate: a flood must not fill the disk.

Refusals (a trigger from a stranger, a forged DTMF datagram) are what an
attacker controls, so their log lines are capped: at most `burst` lines per
`interval` seconds; the first line after a quiet spell says how many were
left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LogLimiter:
    """Lets `burst` lines through per `interval` seconds and counts the rest."""

    def __init__(self, burst: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._window_start = float("-inf")
        self._in_window = 0
        self.suppressed = 0

    def allow(self) -> int | None:
        """None: leave this line out. Otherwise log it, and say that this many were left out before."""
        now = self._clock()
        if now - self._window_start >= self.interval:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self.burst:
            self.suppressed += 1
            return None
        self._in_window += 1
        left_out, self.suppressed = self.suppressed, 0
        return left_out

    def log(self, logger: logging.Logger, level: int, message: str, *args: object) -> None:
        left_out = self.allow()
        if left_out is None:
            return
        if left_out:
            message += f" ({left_out} more like it not logged)"
        logger.log(level, message, *args)
