"""callbackd's figures: callbacks counted by stage at each scrape, and what the engine records as a
trigger is taken or refused (read from the registry before and after: the counters are the process's)."""

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from test_config import load
from test_engine_limits import COLLEAGUE, clock, end, make_engine, trigger  # noqa: F401 (clock: a fixture)

from callbackd import metrics
from callbackd.config import SettingsError
from callbackd.engine import AT_CAPACITY, OVER_LIMIT


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_stage_is_counted_and_those_with_none_are_zero():
    counts = metrics.by_stage(["waiting", "bridged", "bridged", metrics.State.COLLECTING])
    assert counts["waiting"] == 1 and counts["bridged"] == 2 and counts["collecting"] == 1
    assert counts["dialing_client"] == 0
    assert set(counts) == set(metrics.STAGES)
    assert "done" not in counts


def test_the_active_gauge_reads_the_states_at_each_scrape():
    states = ["calling_employee"]
    registry = CollectorRegistry()
    registry.register(metrics.ActiveCallbacks(lambda: states))
    assert registry.get_sample_value("callbackd_active_callbacks", {"stage": "calling_employee"}) == 1
    states.append("calling_employee")
    assert registry.get_sample_value("callbackd_active_callbacks", {"stage": "calling_employee"}) == 2
    assert b'callbackd_active_callbacks{stage="bridged"} 0.0' in generate_latest(registry)


def test_every_result_and_outcome_has_a_series_before_it_happens():
    text = generate_latest(REGISTRY).decode()
    for result in ("bridged", "denied", "client_busy"):
        assert f'callbackd_callbacks_total{{result="{result}"}}' in text
    assert 'callbackd_triggers_total{outcome="over_limit"}' in text
    assert 'callbackd_limit_hits_total{limit="max_per_day"}' in text


@pytest.mark.usefixtures("clock")
def test_an_accepted_trigger_and_one_over_the_hourly_limit_are_counted(tmp_path):
    engine = make_engine(tmp_path, max_per_hour=1)
    before = {k: sample("callbackd_triggers_total", outcome=k) for k in ("accepted", "over_limit")}
    hits = sample("callbackd_limit_hits_total", limit="max_per_hour")
    trigger(engine)
    end(engine)
    assert trigger(engine) == OVER_LIMIT
    assert sample("callbackd_triggers_total", outcome="accepted") == before["accepted"] + 1
    assert sample("callbackd_triggers_total", outcome="over_limit") == before["over_limit"] + 1
    assert sample("callbackd_limit_hits_total", limit="max_per_hour") == hits + 1


@pytest.mark.usefixtures("clock")
def test_a_trigger_at_capacity_and_a_repeated_one_are_counted(tmp_path):
    engine = make_engine(tmp_path, max_concurrent=1)
    repeated = sample("callbackd_triggers_total", outcome="repeated")
    capacity = sample("callbackd_limit_hits_total", limit="max_concurrent")
    trigger(engine)
    trigger(engine)
    assert trigger(engine, employee=COLLEAGUE) == AT_CAPACITY
    assert sample("callbackd_triggers_total", outcome="repeated") == repeated + 1
    assert sample("callbackd_limit_hits_total", limit="max_concurrent") == capacity + 1
    assert engine.stages() == ["waiting"]


def test_metrics_listen_is_optional_and_checked(tmp_path):
    assert load(tmp_path).metrics_listen is None
    assert load(tmp_path, metrics_listen="10.0.0.7:9496").metrics_listen == ("10.0.0.7", 9496)
    with pytest.raises(SettingsError, match=r"^metrics_listen: must be IP:PORT"):
        load(tmp_path, metrics_listen="10.0.0.7")
