"""Outcomes kept on the shared data path so later passes need not recompute them.

A raw pass keeps the outcomes (value, None, or error) of raw variables that
proc or cluster variables depend on; a proc pass or a cluster job of the same
run and the same context revision (content hash) reuses them instead of
recomputing. Files are written atomically; a missing or unreadable file just
means "recompute". Blocking: call through ``asyncio.to_thread``.

The folder is writable by the proposal's own context code, so the service
never unpickles what it finds there: a file is ``MAGIC``, an 8-byte header
length, a JSON header (the outcomes, each value replaced by its offset and
length) and the values' bytes. Those bytes are pickles made by a worker, and
are only ever unpickled by a worker evaluating that same context.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import uuid
from pathlib import Path
from typing import Any

from .context import LoadedContext
from .outcome import Outcome

log = logging.getLogger("runstream.executor.reuse")

MAGIC = b"RSREUSE1"
SUFFIX = ".rsr"
_LENGTH = struct.Struct("!Q")
_MAX_HEADER = 64 * 1024 * 1024


def reuse_path(base: Path, proposal: int, run: int, context_hash: str) -> Path:
    return base / f"p{proposal}_r{run}.{context_hash[:24]}{SUFFIX}"


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
        _dump(entries, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # Outcomes of older context revisions of this run (and files of the former pickle
    # format, never read) are of no use any more.
    prefix = path.name.split(".", 1)[0] + "."
    for old in [*path.parent.glob(prefix + "*" + SUFFIX), *path.parent.glob(prefix + "*.pkl")]:
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()
    return kept


def _dump(entries: dict[str, Any], f: Any) -> None:
    blobs: list[bytes] = []
    offset = 0

    def strip(entry: dict[str, Any]) -> dict[str, Any]:
        nonlocal offset
        out = {**entry, "children": [strip(c) for c in entry.get("children") or ()]}
        value = entry.get("value")
        if isinstance(value, bytes):
            out["value"] = [offset, len(value)]
            blobs.append(value)
            offset += len(value)
        return out

    header = json.dumps({n: strip(e) for n, e in entries.items()}).encode()
    f.write(MAGIC + _LENGTH.pack(len(header)) + header)
    for blob in blobs:
        f.write(blob)


def _parse(data: bytes) -> dict[str, dict[str, Any]]:
    """The entries of a reuse file (JSON and bytes only: nothing in it can run code)."""
    if not data.startswith(MAGIC):
        raise ValueError("not a runstream reuse file")
    start = len(MAGIC) + _LENGTH.size
    (size,) = _LENGTH.unpack(data[len(MAGIC) : start])
    if size > min(_MAX_HEADER, len(data) - start):
        raise ValueError("truncated header")
    header = json.loads(data[start : start + size])
    base = start + size

    def restore(entry: Any) -> dict[str, Any]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError("malformed entry")
        if entry.get("status") not in ("ok", "none", "error"):
            raise ValueError("malformed status")
        if any(not isinstance(entry.get(k), str | None) for k in ("error", "error_cls")):
            raise ValueError("malformed error")
        if not isinstance(entry.get("children"), list):
            raise ValueError("malformed children")
        value = entry.get("value")
        if value is not None:
            offset, length = (int(v) for v in value)
            if offset < 0 or length < 0 or base + offset + length > len(data):
                raise ValueError("value outside the file")
            value = data[base + offset : base + offset + length]
        return {**entry, "value": value, "children": [restore(c) for c in entry["children"]]}

    if not isinstance(header, dict):
        raise ValueError("malformed header")
    return {str(n): restore(e) for n, e in header.items()}


def load_raw(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        return _parse(data)
    except FileNotFoundError:
        return {}
    except Exception as exc:
        log.warning("ignoring unreadable reuse file %s: %s", path, exc)
        return {}


def load(path: Path, names: set[str]) -> dict[str, Outcome]:
    """Reusable outcomes among ``names``."""
    return {n: Outcome.from_cache(d) for n, d in load_raw(path).items() if n in names}
