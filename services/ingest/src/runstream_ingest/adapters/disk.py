"""The real file system behind the handlers' :class:`~runstream_ingest.handlers.Disk` port."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from runstream_common.messages import Trigger

from ..layout import FolderState, Layout, folder_state
from ..tables import Registration


class LocalDisk:
    """Blocking; call from a worker thread. Found proposal folders are cached."""

    def __init__(
        self, layout: Layout, settle_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.layout = layout
        self.settle_s = settle_s
        self._clock = clock
        self._dirs: dict[tuple[int, str | None], Path] = {}

    def proposal_dir(self, registration: Registration) -> Path | None:
        key = (registration.proposal, registration.data_root)
        cached = self._dirs.get(key)
        if cached is not None:
            return cached
        found = self.layout.proposal_dir(registration.proposal, registration.data_root)
        if found is not None:
            self._dirs[key] = found
        return found

    def knows_proposal_dir(self, registration: Registration) -> bool:
        return (registration.proposal, registration.data_root) in self._dirs

    def run_dir(self, proposal_dir: Path, run: int, kind: Trigger) -> Path:
        return self.layout.run_dir(proposal_dir, run, "proc" if kind is Trigger.PROC else "raw")

    def folder(self, path: Path) -> FolderState:
        return folder_state(path, self.settle_s, self._clock())

    def exists(self, path: Path) -> bool:
        return path.is_dir()
