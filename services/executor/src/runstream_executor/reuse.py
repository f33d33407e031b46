"""Outcomes kept on the shared data path so later passes need not recompute them.

A raw pass keeps the outcomes (value, None, or error) of raw variables that
proc or cluster variables depend on; a proc pass or a cluster job of the same
run and the same context revision (content hash) reuses them instead of
recomputing. Files are written atomically; a missing or unreadable file just
means "recompute". Blocking: call through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import uuid
from pathlib import Path

from .context import LoadedContext
from .outcome import Outcome

log = logging.getLogger("runstream.executor.reuse")


def reuse_path(base: Path, proposal: int, run: int, context_hash: str) -> Path:
    return base / f"p{proposal}_r{run}.{context_hash[:24]}.pkl"


def worth_keeping(ctx: LoadedContext) -> set[str]:
    """Variables that some proc or cluster variable depends on (directly or not)."""
    keep: set[str] = set()
    for name, var in ctx.variables.items():
        if var.data == "proc" or var.cluster:
            keep |= {
                d
                for d in ctx.all_deps(name)
                if ctx.variables[d].data == "raw" and not ctx.variables[d].cluster
            }
    return keep


def save(path: Path, outcomes: dict[str, Outcome], names: set[str], max_value_bytes: int) -> int:
    """Merge the outcomes of ``names`` into ``path``. Returns how many were kept."""
    entries = load_raw(path)
    kept = 0
    for name in names:
        outcome = outcomes.get(name)
        if outcome is None or outcome.reused:
            continue
        if outcome.status == "ok" and (
            outcome.value is None or len(outcome.value) > max_value_bytes
        ):
            continue  # not picklable (pinned) or too big: recompute next time
        entries[name] = outcome.to_cache()
        kept += 1
    if not kept:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.writing")
    with open(tmp, "wb") as f:
        pickle.dump(entries, f, protocol=4)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # Outcomes of older context revisions of this run are of no use any more.
    prefix = path.name.split(".", 1)[0] + "."
    for old in path.parent.glob(prefix + "*.pkl"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()
    return kept


def load_raw(path: Path) -> dict[str, dict[str, object]]:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except FileNotFoundError:
        return {}
    except Exception as exc:
        log.warning("ignoring unreadable reuse file %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def load(path: Path, names: set[str]) -> dict[str, Outcome]:
    """Reusable outcomes among ``names``."""
    return {n: Outcome.from_cache(d) for n, d in load_raw(path).items() if n in names}
