"""Binary summaries (thumbnails, trendlines, arrays) read from the run files (blocking).

PostgreSQL records only that such a summary exists (kind ``blob``); its bytes live in
``.reduced/{name}`` of ``extracted_data/p{P}_r{R}.h5``, as in DAMNIT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py

from ..adapters.hdf5_layout import REDUCED
from ..adapters.hdf5_merge import run_file_path
from .rows import RunSnapshot, blob_value

log = logging.getLogger("runstream.store.damnit")


def read_blobs(
    context_dir: str, proposal: int, snaps: Sequence[RunSnapshot]
) -> dict[tuple[int, str], bytes | None]:
    found: dict[tuple[int, str], bytes | None] = {}
    for snap in snaps:
        names = [pv.name for pv in snap.values if pv.value.kind == "blob"]
        if not names:
            continue
        path = Path(run_file_path(context_dir, proposal, snap.run))
        if not path.exists():  # deleted by hand: the summary cannot be shown
            log.warning("run file %s is missing; its binary summaries are left empty", path)
            found.update({(snap.run, name): None for name in names})
            continue
        with h5py.File(path, "r") as f:  # other errors: the batch is retried
            for name in names:
                where = f"{REDUCED}/{name}"
                found[(snap.run, name)] = blob_value(f[where][()]) if where in f else None
    return found
