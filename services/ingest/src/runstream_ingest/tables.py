"""In-memory views of the two compacted topics ingest reads: proposals and the run catalog.

Both are rebuilt at start-up by reading their topic from the beginning, then kept
current by following it. The run catalog is also ingest's de-duplication state:
the transactional loop changes it through a :class:`CatalogTxn` whose changes
become visible in the table only after the Kafka transaction that carries them
committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from runstream_common.messages import ProposalRegistered, ProposalRemoved, RunKnown


@dataclass(frozen=True, slots=True)
class Registration:
    proposal: int
    context_dir: str
    data_root: str | None
    registered_at: datetime


class ProposalTable:
    """Registered proposals; the latest record per proposal wins.

    Copy-on-write: the follower task replaces the dict, so worker threads that
    read it (handlers, watcher) never see it change under them.
    """

    def __init__(self) -> None:
        self._by_proposal: dict[int, Registration] = {}

    def apply(self, event: ProposalRegistered | ProposalRemoved) -> None:
        table = dict(self._by_proposal)
        if isinstance(event, ProposalRegistered):
            table[event.proposal] = Registration(
                event.proposal, event.context_dir, event.data_root, event.time
            )
        else:
            table.pop(event.proposal, None)
        self._by_proposal = table

    def get(self, proposal: int) -> Registration | None:
        return self._by_proposal.get(proposal)

    def all(self) -> list[Registration]:
        table = self._by_proposal
        return [table[p] for p in sorted(table)]

    def __len__(self) -> int:
        return len(self._by_proposal)


def merge_known(old: RunKnown | None, new: RunKnown) -> RunKnown:
    """Flags only ever turn on; facility fields accumulate (newer values win)."""
    if old is None:
        return new
    return RunKnown(
        proposal=new.proposal,
        run=new.run,
        raw_seen=old.raw_seen or new.raw_seen,
        proc_seen=old.proc_seen or new.proc_seen,
        source={**old.source, **new.source},
        correlation_id=new.correlation_id,
    )


class RunCatalog:
    """Every run ingest knows, keyed by (proposal, run). Safe to merge from two threads."""

    def __init__(self) -> None:
        self._runs: dict[tuple[int, int], RunKnown] = {}
        self._lock = threading.Lock()

    def merge(self, entry: RunKnown) -> None:
        key = (entry.proposal, entry.run)
        with self._lock:
            self._runs[key] = merge_known(self._runs.get(key), entry)

    def get(self, proposal: int, run: int) -> RunKnown | None:
        return self._runs.get((proposal, run))

    def runs(self, proposal: int) -> list[int]:
        with self._lock:
            return sorted(r for (p, r) in self._runs if p == proposal)

    def __len__(self) -> int:
        return len(self._runs)

    def begin(self) -> CatalogTxn:
        return CatalogTxn(self)

    def commit(self, txn: CatalogTxn) -> None:
        for entry in txn.pending.values():
            self.merge(entry)


class CatalogTxn:
    """Catalog changes of one Kafka transaction; reads see them, the table does not yet."""

    def __init__(self, catalog: RunCatalog) -> None:
        self._catalog = catalog
        self.pending: dict[tuple[int, int], RunKnown] = {}

    def get(self, proposal: int, run: int) -> RunKnown | None:
        return self.pending.get((proposal, run)) or self._catalog.get(proposal, run)

    def put(self, entry: RunKnown) -> RunKnown:
        merged = merge_known(self.get(entry.proposal, entry.run), entry)
        self.pending[(entry.proposal, entry.run)] = merged
        return merged

    def runs(self, proposal: int) -> list[int]:
        pending = (r for (p, r) in self.pending if p == proposal)
        return sorted(set(self._catalog.runs(proposal)).union(pending))


def fold_proposals(events: Iterable[ProposalRegistered | ProposalRemoved]) -> ProposalTable:
    table = ProposalTable()
    for event in events:
        table.apply(event)
    return table


class RawInFlight:
    """Runs whose raw run message this process sent and whose raw pass has not finished yet.

    Filled when a raw run message commits, emptied by the executor's terminal
    processing state for it. Only what this process saw since it started: after
    a restart a proc event waits for the raw *message* only (the catalog). An
    entry older than ``ttl_s`` no longer counts (a raw pass that never reports
    must not hold proc events back forever) and is dropped.
    """

    def __init__(self, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._since: dict[tuple[int, int], float] = {}
        self._ttl_s = ttl_s
        self._clock = clock
        self._adds = 0

    def add(self, proposal: int, run: int) -> None:
        now = self._clock()
        self._since[(proposal, run)] = now
        self._adds += 1
        if self._adds % 1000 == 0:
            for key, since in list(self._since.items()):
                if now - since > self._ttl_s:
                    self._since.pop(key, None)

    def finish(self, proposal: int, run: int) -> None:
        self._since.pop((proposal, run), None)

    def __contains__(self, key: object) -> bool:
        since = self._since.get(key)  # type: ignore[call-overload]
        return since is not None and self._clock() - since <= self._ttl_s

    def __len__(self) -> int:
        return len(self._since)
