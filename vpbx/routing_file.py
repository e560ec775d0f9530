"""routing.json as the services read it: rendered by Ansible, replaced by rename, loaded again when replaced.

Kamailio's workers and callbackd each hold a `RoutingFile` and ask it on
every request whether the file was replaced: a `stat`, about a microsecond.
So a list change applies with the next request in every process, and no
signal or RPC has to reach each of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vpbx import model

Version = tuple[int, int, int]


class RoutingFile:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.version: Version | None = None
        self.refused: Version | None = None

    def _version(self) -> Version:
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def load(self) -> model.Config:
        """The file in place now (errors raise: OSError, ValueError, model.InventoryError)."""
        # The version first: a file replaced while being read is loaded again next time.
        version = self._version()
        with self.path.open() as f:
            config = model.load(json.load(f), rendered=True)
        self.version = version
        return config

    def replaced(self) -> model.Config | None:
        """The new routing if the file was replaced since the last load, else None.

        A new file that does not load raises once; it is not tried again until
        it is replaced in turn, and the caller keeps the routing it has. A file
        that is gone (mid-deploy) counts as not replaced.
        """
        try:
            version = self._version()
        except OSError:
            return None
        if version == self.version or version == self.refused:
            return None
        try:
            return self.load()
        except Exception:
            self.refused = version
            raise
