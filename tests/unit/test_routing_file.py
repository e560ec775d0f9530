"""RoutingFile: loaded again only when replaced; a bad new file raises once and is not retried."""

import json
import os
from pathlib import Path

import pytest
import yaml

from vpbx import model
from vpbx.routing_file import RoutingFile

LAB_VARS = Path(__file__).resolve().parents[2] / "inventories" / "lab" / "group_vars" / "all.yml"


def replace(path: Path, text: str) -> None:
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


@pytest.fixture
def variables():
    return yaml.safe_load(LAB_VARS.read_text())


@pytest.fixture
def path(tmp_path, variables):
    p = tmp_path / "routing.json"
    replace(p, json.dumps(model.dump(model.load(variables))))
    return p


def test_load_then_nothing_new_until_replaced(path, variables):
    routing = RoutingFile(path)
    first = routing.load()
    assert routing.replaced() is None
    variables["vpbx_number_lists"][0]["numbers"].append("+421905777888")
    replace(path, json.dumps(model.dump(model.load(variables))))
    second = routing.replaced()
    assert second is not None and second != first
    assert routing.replaced() is None


def test_a_bad_new_file_raises_once_and_keeps_nothing_half_loaded(path, variables):
    routing = RoutingFile(path)
    routing.load()
    loaded = routing.version
    replace(path, "{")
    with pytest.raises(ValueError):
        routing.replaced()
    assert routing.version == loaded
    assert routing.replaced() is None  # not tried again until replaced in turn
    replace(path, json.dumps(model.dump(model.load(variables))))
    assert routing.replaced() is not None


def test_a_file_that_is_gone_counts_as_not_replaced(path):
    routing = RoutingFile(path)
    routing.load()
    path.unlink()
    assert routing.replaced() is None


def test_the_first_load_of_a_missing_file_raises(tmp_path):
    with pytest.raises(OSError):
        RoutingFile(tmp_path / "nothing.json").load()
