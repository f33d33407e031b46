"""Hooks at the points of handling a result where a crash matters most.

Only tests install them (``build_app(settings, hooks=Hooks(...))``; the crash
tests start a store process through ``tests/support/store_with_hooks.py``);
production passes none and nothing is called. There is no setting for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runstream_common.messages import ResultsReady

ResultHook = Callable[[ResultsReady], None]


@dataclass(frozen=True)
class Hooks:
    """Called, when set, at these points; each receives what is being handled."""

    before_merge: ResultHook | None = None
    """A result is about to be merged into its run file."""
    before_replace: Callable[[Path], None] | None = None
    """The merged copy (this path) is about to replace the run file."""
    after_merge: ResultHook | None = None
    """Merged into the run file; not yet committed to the database."""
    after_commit: ResultHook | None = None
    """Committed to the database; not yet published, the fragment not yet deleted."""
    projecting: Callable[[], None] | None = None
    """Inside the DAMNIT database's transaction, before its COMMIT."""


def call(hook: ResultHook | None, message: ResultsReady) -> None:
    if hook is not None:
        hook(message)
