"""What the load benches report: figures of their steps, and their block in RESULTS.md.

Each bench's results are dicts (JSON-able): per side a list of steps
(`sipp_load.Step` as dicts) and its best passing step.
"""

from __future__ import annotations

import json
from pathlib import Path

from sipp_load import FAIL_LIMIT, KEEP_UP, ms

__all__ = ["best", "common_rate", "loose_max", "ms", "publish", "ratio", "step_at", "us", "write_results"]


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def us(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.1f}"


def best(entry: dict, side: str) -> dict | None:
    return entry.get(side, {}).get("best")


def step_at(entry: dict, side: str, rate: int) -> dict | None:
    return next((s for s in entry.get(side, {}).get("steps", []) if s["rate"] == rate and s["ok"]), None)


def loose_max(entry: dict, side: str) -> int | None:
    """The highest step with < 1% failed and SIPp at its rate, whatever its p95."""
    rates = [s["rate"] for s in entry.get(side, {}).get("steps", [])
             if s["created"] and s["failed"] / s["created"] < FAIL_LIMIT
             and s["achieved"] >= KEEP_UP * s["rate"]]
    return max(rates) if rates else None


def common_rate(entry: dict, sides: tuple[str, ...]) -> int | None:
    """The highest rate every side passed (each side's ramp runs the same rates)."""
    passed = [{s["rate"] for s in entry.get(side, {}).get("steps", []) if s["ok"]} for side in sides]
    common = set.intersection(*passed) if passed else set()
    return max(common) if common else None


def write_results(path: Path, block: str, machine_info: dict[str, str], section: str, bench: str) -> None:
    """Replace `bench`'s block in RESULTS.md under `section`, creating the file or the section if absent."""
    begin, end = f"<!-- {bench}: begin -->", f"<!-- {bench}: end -->"
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        text = "# Benchmarks\n\n## Machine\n\n" + "".join(
            f"- {k}: {v}\n" for k, v in machine_info.items() if k != "load average")
    body = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + body + tail
    elif section in text:
        # No markers yet: the section is this bench's, its body is replaced whole.
        head, rest = text.split(section, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        text = head + section + "\n\n" + body + "\n\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{body}\n"
    path.write_text(text)


def publish(block: str, results: dict, json_path: Path | None, results_md: Path | None, section: str,
            bench: str) -> None:
    """Print the block; write every figure as JSON and the block into RESULTS.md where asked."""
    print("\n" + block)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2, default=str))
    if results_md:
        write_results(results_md, block, results["machine"], section, bench)
        print(f"\nwrote {results_md}")
