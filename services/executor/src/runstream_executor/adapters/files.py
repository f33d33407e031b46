"""The executor's file I/O as a port: run folders, context files, reuse files, fragments.

Every call is blocking underneath (file system, fsync), so the adapter runs it in a thread;
tests may pass an in-memory :class:`RunFiles` instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from .. import reuse
from ..context import ContextSource
from ..outcome import Outcome
from ..results import commit_fragment, remove_stale_partials


class RunFiles(Protocol):
    async def is_folder(self, path: str) -> bool: ...

    async def read_context(self, path: Path) -> ContextSource:
        """The context file's text and hash; OSError or UnicodeDecodeError if unreadable."""
        ...

    async def load_kept(self, path: Path, names: set[str]) -> dict[str, Outcome]:
        """Values an earlier pass kept (those of ``names`` it has)."""
        ...

    async def keep(
        self, path: Path, outcomes: dict[str, Outcome], names: set[str], max_value_bytes: int
    ) -> None:
        """Keep ``names``'s values for later passes; OSError if they cannot be written."""
        ...

    async def commit_fragment(self, fragment: str, partials_older_than_s: float) -> list[str]:
        """Make the fragment durable and in place; remove partial fragments of attempts that
        died; return the removed ones."""
        ...


class LocalRunFiles:
    """:class:`RunFiles` on the local (or cluster) file system."""

    async def is_folder(self, path: str) -> bool:
        return await asyncio.to_thread(Path(path).is_dir)

    async def read_context(self, path: Path) -> ContextSource:
        return await asyncio.to_thread(ContextSource.read, path)

    async def load_kept(self, path: Path, names: set[str]) -> dict[str, Outcome]:
        return await asyncio.to_thread(reuse.load, path, names)

    async def keep(
        self, path: Path, outcomes: dict[str, Outcome], names: set[str], max_value_bytes: int
    ) -> None:
        await asyncio.to_thread(reuse.save, path, outcomes, names, max_value_bytes)

    async def commit_fragment(self, fragment: str, partials_older_than_s: float) -> list[str]:
        def commit() -> list[str]:
            commit_fragment(fragment)
            return remove_stale_partials(fragment, partials_older_than_s)

        return await asyncio.to_thread(commit)
