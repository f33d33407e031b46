"""Builders shared by the ingest tests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from runstream_common.messages import ProposalRegistered
from runstream_ingest.adapters.disk import LocalDisk
from runstream_ingest.settings import Settings
from runstream_ingest.tables import ProposalTable


def facility_event(event: str, proposal: object, run: object, **extra: object) -> bytes:
    return json.dumps({"event": event, "proposal": proposal, "run": run, **extra}).encode()


def make_run_folder(proposal_dir: Path, run: int, kind: str = "raw", age_s: float = 3600.0) -> Path:
    """A run folder with one file whose mtime is ``age_s`` in the past."""
    folder = proposal_dir / kind / f"r{run:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"RAW-R{run:04d}-DA01-S00000.h5"
    f.write_bytes(b"x" * 16)
    old = time.time() - age_s
    os.utime(f, (old, old))
    os.utime(folder, (old, old))
    return folder


def registered(tmp_path: Path, *proposals: int) -> tuple[ProposalTable, dict[int, Path]]:
    """Register proposals whose data roots point straight at their proposal folders."""
    table = ProposalTable()
    dirs: dict[int, Path] = {}
    for p in proposals:
        pdir = tmp_path / "exp" / "HED" / "202601" / f"p{p:06d}"
        (pdir / "raw").mkdir(parents=True, exist_ok=True)
        ctx = tmp_path / f"ctx{p}"
        ctx.mkdir(exist_ok=True)
        table.apply(ProposalRegistered(proposal=p, context_dir=str(ctx), data_root=str(pdir)))
        dirs[p] = pdir
    return table, dirs


def disk_for(settings: Settings) -> LocalDisk:
    return LocalDisk(settings.layout(), settings.settle_s)
