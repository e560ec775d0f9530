"""The names the edge, the engines and Kamailio's configuration share are vpbx.wire's, spelt nowhere else."""

import ast
import re
from pathlib import Path

import pytest

from vpbx import wire

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "roles" / "kamailio" / "templates" / "etc" / "kamailio"
SCRIPT = ROOT / "kemi" / "vpbx_router.py"
HEADERS = (wire.DID_HEADER, wire.EMPLOYEE_HEADER, wire.ACCEPT_HEADER)
TABLES = (wire.REGSRC_TABLE, wire.BAN_TABLE, wire.AUTH_FAIL_TABLE)
SOURCES = sorted([SCRIPT, *(ROOT / "callbackd").glob("*.py")])


@pytest.mark.parametrize("table", TABLES)
def test_kamailio_cfg_declares_every_htable_the_router_uses(table):
    cfg = (TEMPLATES / "kamailio.cfg.j2").read_text()
    assert f'modparam("htable", "htable", "{table}=>' in cfg


def test_the_engines_are_listed_in_the_dispatcher_set_the_router_selects():
    listing = (TEMPLATES / "vpbx" / "dispatcher.list.j2").read_text()
    sets = re.findall(r"^(\d+) sip:\{\{ engine \}\}", listing, re.MULTILINE)
    assert sets == [str(wire.ENGINE_SET)]


def test_the_edge_removes_every_header_of_ours_that_a_caller_sends():
    tree = ast.parse(SCRIPT.read_text())
    [own] = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
             and any(getattr(t, "id", None) == "OWN_HEADERS_RE" for t in node.targets)]
    for header in HEADERS:
        assert re.match(own, header) and re.match(own, header.lower()), header


def literals(path: Path) -> list[str]:
    """The string literals of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_router_and_the_engine_spell_no_header_or_table_of_their_own(path):
    for text in literals(path):
        assert not any(h.lower() in text.lower() for h in HEADERS), f"{path.name}: {text!r}"
        assert text not in TABLES, f"{path.name}: {text!r}"
