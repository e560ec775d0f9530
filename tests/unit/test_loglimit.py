"""Refusals an attacker causes are logged, but not without limit."""

import logging

from vpbx.loglimit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_up_to_the_burst_are_logged_then_counted():
    limiter = LogLimiter(burst=3, interval=60, clock=Clock())
    assert [limiter.allow() for _ in range(5)] == [0, 0, 0, None, None]
    assert limiter.suppressed == 2


def test_the_first_line_of_the_next_interval_says_how_many_were_left_out():
    clock = Clock()
    limiter = LogLimiter(burst=1, interval=60, clock=clock)
    assert [limiter.allow() for _ in range(4)] == [0, None, None, None]
    clock.now += 60
    assert limiter.allow() == 3
    assert limiter.allow() is None


def test_log_appends_the_count_of_lines_left_out(caplog):
    clock = Clock()
    limiter = LogLimiter(burst=1, interval=10, clock=clock)
    logger = logging.getLogger("test.loglimit")
    with caplog.at_level(logging.WARNING, logger="test.loglimit"):
        for _ in range(3):
            limiter.log(logger, logging.WARNING, "from %s refused", "127.0.0.66:5060")
        clock.now += 10
        limiter.log(logger, logging.WARNING, "from %s refused", "127.0.0.66:5060")
    assert [r.getMessage() for r in caplog.records] == [
        "from 127.0.0.66:5060 refused",
        "from 127.0.0.66:5060 refused (2 more like it not logged)",
    ]
