"""Waiting for an event, with a generous limit, never for a duration."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.2
# Generous: a service restarted by its supervisor answers within a second or two.
DEFAULT_WAIT_S = 30.0


def wait_until(what: str, done: Callable[[], bool], timeout: float = DEFAULT_WAIT_S) -> None:
    """Poll `done` until it is true; fail naming `what` once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(POLL_S)
