"""callbackd's figures for Prometheus (prometheus-client), served at /metrics on metrics_listen.

The engine records each event where it happens (a trigger taken or refused,
a call-back ended, a limit hit, a typed number denied, the INVITEs it sends);
how many callbacks are at each stage is read off the engine's sessions at
each scrape, so it is never out of step with them.
"""

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from callbackd.machine import RESULTS, State

# What became of a trigger: a call-back follows (accepted), or the edge routes
# the caller by the DID's scheme (every other outcome).
TRIGGER_OUTCOMES = ("accepted", "repeated", "refused", "not_listed", "over_limit", "at_capacity",
                    "store_down")
# The limits a call-back may hit: the inventory keys that set them.
LIMITS = ("max_per_hour", "max_per_day", "max_concurrent", "max_call_minutes")
# Why a typed number is not dialled: the prompt the employee hears.
DENIALS = ("invalid_number", "not_allowed")
# Every stage a callback can be in while it is in progress.
STAGES = tuple(s.value for s in State if s is not State.DONE)

TRIGGERS = Counter("callbackd_triggers", "Triggers from the edge, by what became of them", ["outcome"])
CALLBACKS = Counter("callbackd_callbacks", "Callbacks ended, by their CDR's result", ["result"])
LIMIT_HITS = Counter("callbackd_limit_hits", "Call-backs refused or calls ended by a limit", ["limit"])
DENIED_DESTINATIONS = Counter("callbackd_denied_destinations",
                              "Numbers the employee typed that were not dialled", ["reason"])
# Includes the DID's callback.delay (1 s by default).
TRIGGER_TO_CALLBACK = Histogram(
    "callbackd_trigger_to_callback_invite_seconds",
    "From the trigger to the call-back's first INVITE to the employee",
    buckets=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0))
DIGITS_TO_CLIENT = Histogram(
    "callbackd_hash_to_client_invite_seconds",
    "From the key that ends the client's number (#) to the client's INVITE",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))

# Every series from the start: a rate over a counter that appears late loses its first increase.
for _labels, _values in ((TRIGGERS, TRIGGER_OUTCOMES), (CALLBACKS, RESULTS), (LIMIT_HITS, LIMITS),
                         (DENIED_DESTINATIONS, DENIALS)):
    for _value in _values:
        _labels.labels(_value)


def by_stage(states: Iterable[str]) -> dict[str, int]:
    """How many callbacks are at each stage, every stage listed (0 for none)."""
    tally = Tally(str(s) for s in states)
    return {stage: tally.get(stage, 0) for stage in STAGES}


class ActiveCallbacks(Collector):
    """callbackd_active_callbacks{stage}, from `states()` (the machines' states) at each scrape."""

    def __init__(self, states: Callable[[], Iterable[str]]):
        self._states = states

    def collect(self):
        family = GaugeMetricFamily("callbackd_active_callbacks", "Callbacks in progress, by stage",
                                   labels=["stage"])
        for stage, count in by_stage(self._states()).items():
            family.add_metric([stage], count)
        yield family


def serve(address: tuple[str, int], states: Callable[[], Iterable[str]]) -> None:
    """Serve the figures (and the process's own: memory, CPU, open files) on `address`, in a thread."""
    REGISTRY.register(ActiveCallbacks(states))
    start_http_server(address[1], address[0])
