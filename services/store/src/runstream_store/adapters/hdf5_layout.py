"""Names and file settings of DAMNIT's per-run HDF5 layout, shared by the merge modules."""

from __future__ import annotations

from typing import Any

import h5py

REDUCED = ".reduced"
PREVIEW = ".preview"
ERRORS = ".errors"
SECTIONS = ("", REDUCED, PREVIEW, ERRORS)
DIMID = "_Netcdf4Dimid"
COORDS = "_Netcdf4Coordinates"

# Persistent free-space tracking: space of replaced objects is reused by later merges, so a
# run file does not grow with every reprocessing. The executor writes its fragments with the
# same settings (rs_ctxrunner.h5write), so a fragment can become a run file as it is.
RUN_FILE_SPACE: dict[str, Any] = {"fs_strategy": "fsm", "fs_persist": True, "fs_threshold": 1}
RUN_FILE_SPACE_STRATEGY = (h5py.h5f.FSPACE_STRATEGY_FSM_AGGR, True, 1)


def section_path(section: str, name: str) -> str:
    """``name`` in ``section`` (the root for ``""``)."""
    return f"{section}/{name}" if section else name
