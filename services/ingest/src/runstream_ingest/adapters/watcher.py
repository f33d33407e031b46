"""The folder watcher: for facilities that send no events, a new complete run folder is a raw event.

Every ``watch_interval_s`` it lists ``raw/`` of each registered proposal. A run
folder is reported once it is *new* (something in it changed after the
proposal's registration, so registering an old proposal does not reprocess its
history) and *complete* (at least one file, nothing changed for ``settle_s``).
"New" takes the inode change times too, so a folder copied in with its
original modification times (``cp -a``, ``rsync -a``) is new; a dangling
symbolic link counts as a file.
Reports go to the transactional loop, which de-duplicates them against the run
catalog exactly like facility events; a restart simply reports again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..layout import folder_state
from ..settings import Settings
from ..tables import ProposalTable, RunCatalog
from .disk import LocalDisk
from .planning import Watched

log = logging.getLogger("runstream.ingest.watcher")


class FolderWatcher:
    def __init__(
        self,
        settings: Settings,
        proposals: ProposalTable,
        catalog: RunCatalog,
        disk: LocalDisk,
        sink: asyncio.Queue[Watched],
    ) -> None:
        self.settings = settings
        self.proposals = proposals
        self.catalog = catalog
        self.disk = disk
        self.sink = sink
        self._reported: set[tuple[int, int]] = set()
        self.scans = 0

    def scan(self, now: float) -> list[Watched]:
        """Blocking: the run folders that became complete since the last scan."""
        found: list[Watched] = []
        layout = self.settings.layout()
        for registration in self.proposals.all():
            proposal_dir = self.disk.proposal_dir(registration)
            if proposal_dir is None:
                continue
            since = registration.registered_at.timestamp()
            for run, path in sorted(layout.run_folders(proposal_dir, "raw").items()):
                key = (registration.proposal, run)
                if key in self._reported:
                    continue
                known = self.catalog.get(*key)
                if known is not None and known.raw_seen:
                    self._reported.add(key)
                    continue
                state = folder_state(path, self.settings.settle_s, now)
                if not state.complete or state.newest_change < since:
                    continue
                self._reported.add(key)
                found.append(Watched(registration.proposal, run, path))
        return found

    async def run(self) -> None:
        while True:
            try:
                found = await asyncio.to_thread(self.scan, time.time())
            except OSError as exc:
                log.warning("folder scan failed, trying again: %s", exc)
                found = []
            self.scans += 1
            for item in found:
                log.info("new complete run folder p%d r%d: %s", item.proposal, item.run, item.path)
                self.sink.put_nowait(item)
            await asyncio.sleep(self.settings.watch_interval_s)
