"""Commands the builder runs on the machine, each one checked."""

from __future__ import annotations

import subprocess


class CommandError(RuntimeError):
    """A command failed; the message has the command and what it printed."""


def run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=600)
    if check and result.returncode != 0:
        raise CommandError(f"{' '.join(argv)}: exit {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()}")
    return result


def enter(pid: int, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    """Run argv inside the host whose holder is `pid`: its mounts, network, names and processes."""
    return run("nsenter", f"--target={pid}", "--mount", "--uts", "--ipc", "--net", "--pid",
               "--", *argv, check=check, input=input)
