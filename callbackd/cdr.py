"""Call detail records: one JSON object per line, appended to a file.

Each record is written with one ``write(2)`` on a file opened ``O_APPEND`` and
then fsync'd: the kernel places every append atomically at the end of the
file, so lines of several writers (threads or processes on the same host) do
not interleave and a crash leaves no half line behind an acknowledged record.
The file is opened for each record, so log rotation (rename + new file) needs
no signal.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILE_MODE = 0o640
DIR_MODE = 0o755


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One record as a UTF-8 JSON line (non-ASCII kept as is, no newline inside)."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    # json.dumps escapes control characters in strings, so the only newline is ours.
    return text.encode("utf-8") + b"\n"


class CdrWriter:
    """Appends CDRs to ``path`` (e.g. ``/var/log/vpbx/cdr.jsonl``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def written(self, callback_id: str) -> bool:
        """Whether the CDR of `callback_id` is in the file already (a restarted engine asks)."""
        needle = encode_line({"id": callback_id})[1:-2]
        try:
            with self.path.open("rb") as f:
                return any(needle in line for line in f)
        except FileNotFoundError:
            return False

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (the engine passes ``cdr.to_json_dict()``).

        Raises ``TypeError``/``ValueError`` for a record JSON cannot encode
        (nothing is written then) and ``OSError`` when the disk says no.
        """
        line = encode_line(record)
        with self._lock:
            self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                written = os.write(fd, line)
                if written != len(line):  # a full disk; never seen for a regular file otherwise
                    raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
                os.fsync(fd)
            finally:
                os.close(fd)
