"""Merging executor fragments into the per-run HDF5 file, crash-safely (blocking; run in a thread).

The run file ``<context_dir>/extracted_data/p{P}_r{R}.h5`` has DAMNIT's layout::

    /{name}/data or /{name}/<NetCDF4 group>    the data (attr _damnit_objtype)
    /.reduced/{name}                           the summary (attrs units, max_diff, ...)
    /.preview/{name}                           an explicit preview
    /.errors/{name}                            str(exception), attr type

A merge never modifies the run file in place: it copies the current file to a
temporary sibling, applies the changes there, fsyncs it and renames it over the
run file (then fsyncs the folder). A crash at any point leaves the old or the
new file; leftover temporary files are removed by the next merge of that run.

A new run's file (none yet, arrays not compressed on the way) starts as a byte copy
of its fragment instead, if that copy passes :mod:`.hdf5_adopt`'s strict check; it
is pruned to what the object copy would have produced and then completed by the same
per-item code. The fragment itself is only read, never changed or moved: a message
redelivered after a crash reads it again.

HDF5 object copies between files (H5Ocopy) do not carry object references, so
NetCDF4 groups lose their dimension scales; :func:`copy_object` re-attaches
them and renumbers the NetCDF dimension ids so they stay unique in the file, as
if xarray had written the group there directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from runstream_common.messages import InlineSummary, ResultAttrs

from . import hdf5_adopt
from .hdf5_layout import (
    COORDS,
    DIMID,
    ERRORS,
    PREVIEW,
    REDUCED,
    RUN_FILE_SPACE,
    SECTIONS,
    section_path,
)

log = logging.getLogger("runstream.store.hdf5")


Action = Literal["fragment", "inline", "error", "clear"]


class FragmentUnreadable(Exception):
    """The fragment is not a readable HDF5 file."""


class UnsafeFragmentObject(ValueError):
    """A fragment item has a link or data outside the fragment: its result becomes an
    error (``StoreWriteError``), the run's other results are stored."""


class MergeItem(ResultAttrs):
    """What to do with one variable in the run file: its data from the fragment, its
    inline summary, its error, or nothing any more (``clear``); the value's attributes
    are the shared ``ResultAttrs``."""

    name: str
    action: Action
    summary: InlineSummary = None


@dataclass(frozen=True, slots=True)
class MergeRequest:
    target: Path
    fragment: Path | None
    items: tuple[MergeItem, ...]
    provenance: str
    start_time: float | None = None
    compress_min_bytes: int = 1024
    copy_chunk_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """Variables that could not be written, with the reason (their error is stored instead),
    and scalar summaries read from the fragment for results whose message could not carry
    them (NaN, infinities: JSON has no such numbers)."""

    failed: dict[str, str]
    summaries: dict[str, float | complex] = field(default_factory=dict)
    adopted: bool = False  # the fragment's bytes became the run file (else objects copied)
    copy_reason: str = ""  # why they were not (a new run's fragment could not be adopted)


def run_file_path(context_dir: str | Path, proposal: int, run: int) -> Path:
    return Path(context_dir) / "extracted_data" / f"p{proposal}_r{run}.h5"


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}."


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporary files a crashed merge of ``target`` left behind."""
    removed = []
    if target.parent.is_dir():
        for path in target.parent.glob(f"{_tmp_prefix(target)}*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def merge(request: MergeRequest, *, before_replace: Any = None) -> MergeOutcome:
    """Apply ``request`` to its run file atomically. ``before_replace`` is a test hook."""
    target = request.target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = target.with_name(f"{_tmp_prefix(target)}{uuid.uuid4().hex}.tmp")
    try:
        outcome = _write_temporary(request, tmp)
        fsync_path(tmp)
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent, directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return outcome


def _write_temporary(request: MergeRequest, tmp: Path) -> MergeOutcome:
    """The new run file at ``tmp``: the fragment adopted if it can be, else copied into."""
    reason = _adopt_precondition(request)
    if reason is None:
        outcome, reason = _adopt(request, tmp)
        if outcome is not None:
            return outcome
    if request.fragment is not None:
        log.debug("%s: copying objects from the fragment: %s", request.target, reason)
    return replace(_copy(request, tmp), copy_reason=reason)


def _adopt_precondition(request: MergeRequest) -> str | None:
    if request.fragment is None or not _fragment_names(request):
        return "no fragment data"
    if request.compress_min_bytes != 0:
        return "arrays are compressed on the way"
    if request.target.exists():
        return "the run file exists"
    return None


def _fragment_names(request: MergeRequest) -> set[str]:
    return {i.name for i in request.items if i.action == "fragment"}


def _adopt(request: MergeRequest, tmp: Path) -> tuple[MergeOutcome | None, str]:
    """A byte copy of the fragment at ``tmp``, checked, pruned and completed; or None and
    why it was not adopted (``tmp`` is then left for the copy path to overwrite).

    The copy is checked, not the fragment: what is checked is what is kept. A refused
    copy costs a byte copy and an open (small next to the object copy that follows)."""
    assert request.fragment is not None
    keep = _fragment_names(request)
    try:
        # a copy, never the fragment itself: a redelivered message reads it again
        shutil.copyfile(request.fragment, tmp)
        with h5py.File(tmp, "r+") as out:
            reason = hdf5_adopt.refusal(out, keep)
            if reason is not None:
                return None, reason
            placed = hdf5_adopt.prune(out, keep)
            failed, summaries = _apply(
                out, request, lambda item: item.name in placed, _Present(out, scan=False)
            )
            reason = hdf5_adopt.waste_refusal(out)
    except Exception as exc:  # anything odd in a file made by user code: copy instead
        return None, f"adopting the fragment failed: {exc!r}"
    if reason is not None:
        return None, reason
    return MergeOutcome(failed, summaries, adopted=True), ""


def _copy(request: MergeRequest, tmp: Path) -> MergeOutcome:
    """The run file (or a new one) at ``tmp``, each object of the fragment copied into it."""
    if request.target.exists():
        shutil.copyfile(request.target, tmp)
        shutil.copymode(request.target, tmp)
        out = h5py.File(tmp, "r+")
    else:
        out = h5py.File(tmp, "w", **RUN_FILE_SPACE)
    with out, _open_fragment(request) as src:
        place = None if src is None else _Copied(out, src, request)
        failed, summaries = _apply(out, request, place, _Present(out))
    return MergeOutcome(failed, summaries)


@contextlib.contextmanager
def _open_fragment(request: MergeRequest) -> Iterator[h5py.File | None]:
    needs = any(i.action == "fragment" for i in request.items)
    if request.fragment is None or not needs:
        yield None
        return
    try:
        src = h5py.File(request.fragment, "r", locking=False)
    except OSError as exc:
        raise FragmentUnreadable(f"cannot read fragment {request.fragment}: {exc}") from exc
    with src:
        yield src


class _Copied:
    """Copies the objects of fragment items from the fragment into the file."""

    def __init__(self, out: h5py.File, src: h5py.File, request: MergeRequest) -> None:
        self.out = out
        self.src = src
        self.dimids = _DimIds(out)
        self.compress_min_bytes = request.compress_min_bytes
        self.copy_chunk_bytes = request.copy_chunk_bytes

    def __call__(self, item: MergeItem) -> bool:
        copied = False
        for section in (s for s in SECTIONS if s != ERRORS):
            refused = hdf5_adopt.copy_refusal(self.src, section, item.name)
            if refused:
                raise UnsafeFragmentObject(refused)
            path = section_path(section, item.name)
            if path not in self.src:
                continue
            parent = self.out.require_group(section) if section else self.out
            # summaries and previews are small: only data arrays are compressed (if asked)
            limit = self.compress_min_bytes if not section else 0
            copy_object(
                self.src[path], parent, item.name, self.dimids, limit,
                copy_chunk_bytes=self.copy_chunk_bytes,
            )  # fmt: skip
            copied = True
        return copied


Place = Callable[[MergeItem], bool]


def _apply(
    out: h5py.File, request: MergeRequest, place: Place | None, present: _Present
) -> tuple[dict[str, str], dict[str, float | complex]]:
    """Apply the request's items to ``out``; ``place`` puts a fragment item's objects there.

    Returns the variables that could not be written (stored as errors instead) and the
    scalar summaries read from the file."""
    if "provenance" not in out.attrs:  # the run file keeps the first provenance, as DAMNIT
        out.attrs["provenance"] = request.provenance
    failed: dict[str, str] = {}
    summaries: dict[str, float | complex] = {}
    for item in request.items:
        present.delete(item.name)
        try:
            if item.action == "fragment":
                _apply_fragment_item(out, item, place, summaries)
            elif item.action == "inline":
                _write_inline(out, item, present)
            elif item.action == "error":
                write_error(out, item.name, item.error or "", item.error_cls or "Exception")
        except Exception as exc:
            log.warning("could not write %s into %s: %r", item.name, request.target, exc)
            delete_variable(out, item.name)
            reason = f"the store could not write this result: {type(exc).__name__}: {exc}"
            write_error(out, item.name, reason, "StoreWriteError")
            failed[item.name] = reason
    names = {i.name for i in request.items}
    if request.start_time is not None and "start_time" not in names:
        present.delete("start_time")
        _write_inline(
            out,
            MergeItem(name="start_time", action="inline", summary=float(request.start_time)),
            present,
        )
    return failed, summaries


def _apply_fragment_item(
    out: h5py.File, item: MergeItem, place: Place | None, summaries: dict[str, float | complex]
) -> None:
    if place is None:
        raise FileNotFoundError("the result has no fragment")
    placed = place(item)
    name = item.name
    reduced_path = f"{REDUCED}/{name}"
    if reduced_path in out:
        _set_summary_attrs(out[reduced_path], item, only_missing=True)
    elif item.summary is not None:
        reduced = _write_scalar(out.require_group(REDUCED), name, _summary_array(item.summary))
        _set_summary_attrs(reduced, item)
        if name not in out:
            _write_scalar(out.require_group(name), "data", _summary_array(item.summary))
        placed = True
    if not placed:
        raise KeyError(f"the fragment has no objects for {name!r}")
    if item.summary is None and item.summary_type in (None, "complex"):
        scalar = _scalar_summary(out, name)
        if scalar is not None:
            summaries[name] = scalar


class _Present:
    """Which variables have objects in each section (read once per merge; cheap deletes)."""

    def __init__(self, out: h5py.File, *, scan: bool = True) -> None:
        self.out = out
        self.sections: dict[str, set[str]] = {}
        for section in SECTIONS:
            if not scan:  # nothing to replace (an adopted fragment, pruned)
                self.sections[section] = set()
            elif not section:
                self.sections[section] = set(out.keys())
            elif section in out:
                self.sections[section] = set(out[section].keys())
            else:
                self.sections[section] = set()

    def group(self, section: str) -> h5py.Group:
        return self.out.require_group(section) if section else self.out

    def delete(self, name: str) -> None:
        for section, names in self.sections.items():
            if name in names:
                del self.out[f"{section}/{name}" if section else name]
                names.discard(name)


def _scalar_summary(out: h5py.File, name: str) -> float | complex | None:
    """A 0-d numeric ``.reduced/{name}`` as float or complex (None for anything else)."""
    path = f"{REDUCED}/{name}"
    if path not in out:
        return None
    ds = out[path]
    if ds.shape != () or ds.dtype.kind not in "fc":
        return None
    value = ds[()]
    return complex(value) if ds.dtype.kind == "c" else float(value)


def delete_variable(out: h5py.File, name: str) -> None:
    """Remove every object of ``name``: data, summary, preview and error."""
    for section in SECTIONS:
        path = f"{section}/{name}" if section else name
        if path in out:
            del out[path]


def write_error(out: h5py.File, name: str, message: str, error_cls: str) -> None:
    errors = out.require_group(ERRORS)
    ds = errors.create_dataset(name, data=message, dtype=h5py.string_dtype())
    ds.attrs["type"] = error_cls


def _summary_array(summary: InlineSummary) -> Any:
    if isinstance(summary, tuple):
        return np.complex128(complex(summary[0], summary[1]))
    if isinstance(summary, bool):
        return np.bool_(summary)
    if isinstance(summary, int):
        if -(2**63) <= summary < 2**63:
            return np.int64(summary)
        return str(summary)
    if isinstance(summary, float):
        return np.float64(summary)
    return summary


def _write_scalar(group: h5py.Group, name: str, value: Any) -> h5py.Dataset:
    if isinstance(value, str):
        return group.create_dataset(name, data=value, dtype=h5py.string_dtype())
    return group.create_dataset(name, data=value)


def _write_inline(out: h5py.File, item: MergeItem, present: _Present | None = None) -> None:
    if item.summary is None:
        return
    value = _summary_array(item.summary)
    _write_scalar(out.create_group(item.name), "data", value)
    reduced_group = present.group(REDUCED) if present else out.require_group(REDUCED)
    reduced = _write_scalar(reduced_group, item.name, value)
    _set_summary_attrs(reduced, item)


def _set_summary_attrs(ds: h5py.Dataset, item: MergeItem, *, only_missing: bool = False) -> None:
    attrs: dict[str, Any] = {}
    if item.summary_method:
        attrs["summary_method"] = item.summary_method
    if item.summary_type == "trendline":
        attrs["summary_type"] = "trendline"
    if item.max_diff is not None:
        attrs["max_diff"] = np.float64(item.max_diff)
    if item.bold is not None:
        attrs["bold"] = bool(item.bold)
    if item.background is not None:
        attrs["background"] = np.asarray(item.background, dtype=np.uint8)
    if item.units:
        attrs["units"] = item.units
    for key, value in attrs.items():
        if only_missing and key in ds.attrs:
            continue
        ds.attrs[key] = value


# ---------------------------------------------------------------------- copying objects
class _DimIds:
    """Hands out NetCDF dimension ids that are unused in the target file."""

    def __init__(self, out: h5py.File) -> None:
        self._out = out
        self._next: int | None = None

    def _scan(self) -> int:
        found: list[int] = []

        def visit(_: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and DIMID in obj.attrs:
                found.append(int(obj.attrs[DIMID]))

        self._out.visititems(visit)
        return max(found) + 1 if found else 0

    def reserve(self, count: int) -> int:
        if self._next is None:  # scanned lazily: only merges with NetCDF groups need it
            self._next = self._scan()
        start = self._next
        self._next += count
        return start


def _is_netcdf_tree(obj: h5py.Group) -> bool:
    found = False

    def visit(_: str, item: Any) -> bool | None:
        nonlocal found
        if isinstance(item, h5py.Dataset) and (
            "DIMENSION_LIST" in item.attrs or item.attrs.get("CLASS") == b"DIMENSION_SCALE"
        ):
            found = True
            return True
        return None

    obj.visititems(visit)
    return found


def copy_object(
    source: h5py.Group | h5py.Dataset,
    parent: h5py.Group,
    name: str,
    dimids: _DimIds,
    compress_min_bytes: int = 0,
    *,
    copy_chunk_bytes: int = 64 * 1024 * 1024,
) -> None:
    """Copy ``source`` (from another file) to ``parent[name]``, NetCDF structure intact.

    Memory stays bounded whatever the size of the data: HDF5's own object copy
    goes through a small buffer, and arrays compressed on the way are copied in
    slabs of at most ``copy_chunk_bytes``.
    """
    if isinstance(source, h5py.Dataset):
        _copy_dataset(source, parent, name, compress_min_bytes, copy_chunk_bytes)
        return
    if not _is_netcdf_tree(source):
        group = parent.create_group(name)
        for key, value in source.attrs.items():
            group.attrs[key] = value
        for child_name, child in source.items():
            copy_object(
                child,
                group,
                child_name,
                dimids,
                compress_min_bytes,
                copy_chunk_bytes=copy_chunk_bytes,
            )
        return
    source.file.copy(source, parent, name)
    _reattach_dimension_scales(source, parent[name])
    _renumber_dimids(parent[name], dimids)


def _copy_dataset(
    source: h5py.Dataset, parent: h5py.Group, name: str, min_bytes: int, chunk_bytes: int
) -> None:
    """Copy a plain dataset; compress it (gzip 1 + shuffle) if it is an uncompressed array of
    at least ``min_bytes`` (0: never, the default: DAMNIT 0.4 stores plain datasets as they are).

    The compressed copy is written in slabs along the first axis of at most
    ``chunk_bytes`` (chunk by chunk if one row is larger), never the whole array at once.
    """
    compressible = (
        min_bytes > 0
        and source.ndim >= 1
        and source.compression is None
        and source.nbytes >= min_bytes
        and source.dtype.kind in "biuf"
        and "DIMENSION_LIST" not in source.attrs
        and source.attrs.get("CLASS") != b"DIMENSION_SCALE"
    )
    if not compressible:
        source.file.copy(source, parent, name)
        return
    ds = parent.create_dataset(
        name,
        shape=source.shape,
        dtype=source.dtype,
        compression="gzip",
        compression_opts=1,
        shuffle=True,
        chunks=True,
    )
    rows = source.shape[0]
    row_bytes = max(1, source.nbytes // rows) if rows else 1
    if row_bytes > chunk_bytes:  # rows larger than the budget: the output's own chunks
        for selection in ds.iter_chunks():
            ds[selection] = source[selection]
    else:
        step = chunk_bytes // row_bytes
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            ds[start:stop] = source[start:stop]
    for key, value in source.attrs.items():
        ds.attrs[key] = value


def _relative(root: h5py.Group, path: str | None) -> str | None:
    if path is None:
        return None
    prefix = root.name.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _reattach_dimension_scales(source: h5py.Group, copied: h5py.Group) -> None:
    """Rebuild DIMENSION_LIST / REFERENCE_LIST in ``copied`` after a cross-file copy."""
    attachments: list[tuple[str, int, str]] = []

    def collect(rel: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and "DIMENSION_LIST" in obj.attrs:
            for axis, refs in enumerate(obj.attrs["DIMENSION_LIST"]):
                for ref in np.atleast_1d(refs):
                    scale = _relative(source, source.file[ref].name)
                    if scale is None:
                        log.warning("%s: dimension scale outside the copied group", obj.name)
                        continue
                    attachments.append((rel, axis, scale))

    source.visititems(collect)

    def clean(_: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            for attr in ("DIMENSION_LIST", "REFERENCE_LIST"):
                if attr in obj.attrs:
                    del obj.attrs[attr]

    copied.visititems(clean)
    for rel, axis, scale in attachments:
        copied[rel].dims[axis].attach_scale(copied[scale])


def _renumber_dimids(group: h5py.Group, dimids: _DimIds) -> None:
    datasets: list[h5py.Dataset] = []

    def collect(_: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and (DIMID in obj.attrs or COORDS in obj.attrs):
            datasets.append(obj)

    group.visititems(collect)
    old_ids = sorted(
        {int(ds.attrs[DIMID]) for ds in datasets if DIMID in ds.attrs}
        | {int(i) for ds in datasets if COORDS in ds.attrs for i in np.atleast_1d(ds.attrs[COORDS])}
    )
    if not old_ids:
        return
    start = dimids.reserve(len(old_ids))
    mapping = {old: start + i for i, old in enumerate(old_ids)}
    for ds in datasets:
        if DIMID in ds.attrs:
            ds.attrs[DIMID] = np.int32(mapping[int(ds.attrs[DIMID])])
        if COORDS in ds.attrs:
            ds.attrs[COORDS] = np.asarray(
                [mapping[int(i)] for i in np.atleast_1d(ds.attrs[COORDS])], dtype=np.int32
            )


def variables_in(path: Path) -> Sequence[str]:
    """Names with data, summary or error in a run file (for tests and checks)."""
    with h5py.File(path, "r", locking=False) as f:
        names = {n for n in f if not n.startswith(".")}
        for section in (REDUCED, ERRORS, PREVIEW):
            if section in f:
                names.update(f[section])
    return sorted(names)
