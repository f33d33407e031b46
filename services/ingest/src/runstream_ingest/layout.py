"""Where a proposal's data is on disk, and whether a folder has finished being written.

Blocking file-system calls live here; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

DataKind = Literal["raw", "proc"]


@dataclass(frozen=True, slots=True)
class Layout:
    """The facility's folder layout (DAMNIT's: ``<root>/<instrument>/<cycle>/pNNNNNN/raw/rNNNN``)."""

    data_root: str
    proposal_dir_glob: str = "*/*/p{proposal:06d}"
    run_dir_format: str = "r{run:04d}"

    def proposal_dir(self, proposal: int, data_root: str | None = None) -> Path | None:
        """The proposal folder, or None if it cannot be found.

        ``data_root`` (from the registration) wins over the default root. A root
        that already holds ``raw/`` or ``proc/``, or is named like the proposal
        folder, *is* the proposal folder; otherwise the glob is tried under it.
        """
        root = Path(data_root or self.data_root)
        pattern = self.proposal_dir_glob.format(proposal=proposal)
        if (root / "raw").is_dir() or (root / "proc").is_dir() or root.name == Path(pattern).name:
            return root
        matches = sorted(glob.glob(str(root / pattern)))
        dirs = [m for m in matches if os.path.isdir(m)]
        return Path(dirs[0]) if dirs else None

    def run_dir(self, proposal_dir: Path, run: int, kind: DataKind) -> Path:
        return proposal_dir / kind / self.run_dir_format.format(run=run)

    def run_folder_regex(self) -> re.Pattern[str]:
        """A regex matching run folder names, with the run number as group 1."""
        head, sep, tail = self.run_dir_format.partition("{run")
        if not sep:
            raise ValueError(f"run_dir_format {self.run_dir_format!r} has no {{run}} field")
        tail = tail.split("}", 1)[1] if "}" in tail else ""
        return re.compile(f"^{re.escape(head)}(\\d+){re.escape(tail)}$")

    def run_folders(self, proposal_dir: Path, kind: DataKind = "raw") -> dict[int, Path]:
        """Run number -> folder, for every run folder under ``proposal_dir/kind``."""
        base = proposal_dir / kind
        regex = self.run_folder_regex()
        out: dict[int, Path] = {}
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            return out
        for entry in entries:
            m = regex.match(entry.name)
            if m and entry.is_dir():
                out[int(m.group(1))] = Path(entry.path)
        return out


class Completeness(StrEnum):
    MISSING = "missing"
    EMPTY = "empty"
    BUSY = "busy"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class FolderState:
    state: Completeness
    files: int = 0
    newest_mtime: float = 0.0
    quiet_s: float = 0.0
    newest_change: float = 0.0  # also inode change times: when the entries got here

    @property
    def complete(self) -> bool:
        return self.state is Completeness.COMPLETE

    def describe(self, path: Path, settle_s: float) -> str:
        if self.state is Completeness.MISSING:
            return f"{path} does not exist yet"
        if self.state is Completeness.EMPTY:
            return f"{path} has no files yet"
        if self.state is Completeness.BUSY:
            return f"{path} is still being written (changed {self.quiet_s:.1f} s ago, settle time {settle_s:g} s)"
        return f"{path} is complete ({self.files} files)"


def folder_state(path: Path, settle_s: float, now: float) -> FolderState:
    """Complete = exists, holds at least one file, and nothing in it changed for ``settle_s``.

    A symbolic link counts as a file whether or not its target exists (a dangling
    link to data that was moved elsewhere must not keep the run incomplete).
    ``newest_change`` also takes the inode change times: a copy that keeps the
    original mtimes (``cp -a``, ``rsync -a``) still sets them to the time of the copy.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return FolderState(Completeness.MISSING)
    if not path.is_dir():
        return FolderState(Completeness.MISSING)
    files = 0
    newest, changed = st.st_mtime, st.st_ctime
    for dirpath, _dirnames, filenames in os.walk(path):
        try:
            st = os.stat(dirpath)
        except FileNotFoundError:
            continue
        newest, changed = max(newest, st.st_mtime), max(changed, st.st_ctime)
        for name in filenames:
            entry = os.path.join(dirpath, name)
            try:
                st = os.stat(entry)
            except FileNotFoundError:
                try:
                    st = os.lstat(entry)  # a dangling link: its own times
                except FileNotFoundError:  # renamed while we looked: still busy
                    return FolderState(Completeness.BUSY, files, now, 0.0, now)
            files += 1
            newest, changed = max(newest, st.st_mtime), max(changed, st.st_ctime)
    changed = max(changed, newest)
    quiet = max(0.0, now - newest)
    if files == 0:
        return FolderState(Completeness.EMPTY, 0, newest, quiet, changed)
    if quiet < settle_s:
        return FolderState(Completeness.BUSY, files, newest, quiet, changed)
    return FolderState(Completeness.COMPLETE, files, newest, quiet, changed)
