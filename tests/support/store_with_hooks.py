"""A store process with a test's fault injection (crash tests only).

    python tests/support/store_with_hooks.py POINT

Settings come from the environment, as for ``runstream serve store``; the app is
built with :class:`runstream_store.hooks.Hooks` that end the process with status
137 (as ``kill -9`` would) at POINT:

- ``before_replace``: the merged copy of a run file is about to replace it;
- ``after_merge``: merged into the run file, not yet committed to the database;
- ``after_commit``: committed, not yet published, the fragment not yet deleted;
- ``during_projection``: inside the DAMNIT database's transaction, before COMMIT;
- ``poison_result``: while merging any result that has a variable named
  :data:`POISON_MARK` (a stand-in for a fragment that crashes HDF5).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import anyio
from runstream_common.logs import configure_logging
from runstream_common.messages import ResultsReady
from runstream_store.app import build_app
from runstream_store.hooks import Hooks
from runstream_store.settings import Settings

POISON_MARK = "crash_the_store"
POINTS = ("before_replace", "after_merge", "after_commit", "during_projection", "poison_result")
SCRIPT = Path(__file__).resolve()

log = logging.getLogger("runstream.store")


def die(point: str) -> None:
    log.critical("fault injection: dying at %s", point)
    logging.shutdown()
    os._exit(137)


def hooks_for(point: str) -> Hooks:
    """Hooks that end the process at ``point`` (one of :data:`POINTS`)."""

    def at_result(message: ResultsReady) -> None:
        die(point)

    def poisoned(message: ResultsReady) -> None:
        if any(result.name == POISON_MARK for result in message.results):
            die(point)

    def replacing(path: Path) -> None:
        die(point)

    def projecting() -> None:
        die(point)

    return {
        "before_replace": Hooks(before_replace=replacing),
        "after_merge": Hooks(after_merge=at_result),
        "after_commit": Hooks(after_commit=at_result),
        "during_projection": Hooks(projecting=projecting),
        "poison_result": Hooks(before_merge=poisoned),
    }[point]


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in POINTS:
        raise SystemExit(f"usage: {argv[0]} {{{','.join(POINTS)}}}")
    settings = Settings()
    configure_logging(settings.log_level)
    anyio.run(build_app(settings, hooks=hooks_for(argv[1])).app.run)


if __name__ == "__main__":
    main(sys.argv)
