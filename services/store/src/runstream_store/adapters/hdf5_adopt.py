"""Turning a byte copy of a fragment into a new run file (blocking; run in a thread).

A new run's fragment already holds its data in the run file's layout: copying its bytes
and removing what the run file must not hold is several times cheaper than copying
each object out of it (docs/benchmarks.md, "Fourth pass"). The fragment is written by a
worker that runs user code, so the copy is only adopted if it passes :func:`refusal`, a
strict check of everything that is kept, and :func:`prune` then removes every object and
attribute the object-by-object copy would not have produced. Anything unusual is
refused, and the caller copies object by object instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h5py

from .hdf5_layout import (
    COORDS,
    DIMID,
    ERRORS,
    PREVIEW,
    REDUCED,
    RUN_FILE_SPACE_STRATEGY,
    section_path,
)

Judge = Callable[[Any, str], str | None]  # (an h5py low-level object, its path)

# kept sections (errors come from the request, never from the fragment)
KEPT_SECTIONS = ("", REDUCED, PREVIEW)
# attributes of NetCDF trees and HDF5 dimension scales (the object copy rebuilds those)
MARKED_ATTRS = frozenset({"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", DIMID, COORDS})
# Free space that what was removed leaves inside the file (HDF5 gives back space at its
# end) and that makes adopting not worth it: more than 1 MiB, or more than half the file
# once it is over 64 KiB. The run file would carry it until later merges of the run
# reuse it, which for most runs never happens.
MAX_FREE_BYTES = 1024 * 1024
MAX_FREE_SHARE = 0.5
SMALL_FREE_BYTES = 64 * 1024


def refusal(f: h5py.File, keep: set[str]) -> str | None:
    """Why ``f`` (a copy of a fragment) cannot become the run file keeping the objects of
    ``keep``; None if it can. Reads only what would be kept (HDF5's low-level interface:
    several times faster than h5py's objects) and follows no soft or external link."""
    plist = f.id.get_create_plist()
    strategy = tuple(plist.get_file_space_strategy())
    if strategy != RUN_FILE_SPACE_STRATEGY:
        return f"the fragment does not track free space persistently {strategy}"
    if plist.get_userblock():
        return "the fragment has a user block"
    if keep.intersection((REDUCED, PREVIEW, ERRORS)):
        return "a variable is named like a section of the run file"
    for section in KEPT_SECTIONS:
        group = f.id
        if section:
            if not f.id.links.exists(section.encode()):
                continue
            reason = _link_refusal(f.id, section.encode(), section)
            if reason:
                return reason
            group = h5py.h5o.open(f.id, section.encode())
            reason = _object_refusal(group, section)
            if reason:
                return reason
            if not isinstance(group, h5py.h5g.GroupID):
                return f"{section} is not a group"
        for name in sorted(keep.intersection(n.decode() for n in group)):
            reason = _tree_refusal(group, name.encode(), section_path(section, name))
            if reason:
                return reason
    return None


def _tree_refusal(
    parent: h5py.h5g.GroupID, name: bytes, path: str, judge: Judge | None = None
) -> str | None:
    """Refuse anything in a kept tree the object copy would not reproduce as it is
    (``judge``: what each object must pass; the strict check by default)."""
    reason = _link_refusal(parent, name, path)
    if reason:
        return reason
    obj = h5py.h5o.open(parent, name)
    reason = (judge or _object_refusal)(obj, path)
    if reason or not isinstance(obj, h5py.h5g.GroupID):
        return reason
    for child in obj:
        reason = _tree_refusal(obj, child, f"{path}/{child.decode(errors='replace')}", judge)
        if reason:
            return reason
    return None


def copy_refusal(f: h5py.File, section: str, name: str) -> str | None:
    """Why the object copy must not take ``section/name`` from the fragment ``f``: a soft,
    external or user-defined link anywhere in it (the copy would follow it and store
    another file's data, or keep a link out of the run file), or data stored outside the
    file (virtual datasets, external storage). None if it has no such object or none at
    all. NetCDF trees, references and named datatypes are the copy's own business."""
    group = f.id
    if section:
        if not group.links.exists(section.encode()):
            return None
        reason = _link_refusal(group, section.encode(), section)
        if reason:
            return reason
        group = h5py.h5o.open(group, section.encode())
        if not isinstance(group, h5py.h5g.GroupID):
            return f"{section} is not a group"
    if not group.links.exists(name.encode()):
        return None
    return _tree_refusal(group, name.encode(), section_path(section, name), _stored_outside)


def _stored_outside(obj: h5py.h5o.ObjectID, path: str) -> str | None:
    if isinstance(obj, h5py.h5d.DatasetID):
        plist = obj.get_create_plist()
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            return f"{path} is a virtual dataset"
        if plist.get_external_count():
            return f"{path} stores its data in external files"
    return None


def _link_refusal(parent: h5py.h5g.GroupID, name: bytes, path: str) -> str | None:
    kind = parent.links.get_info(name).type
    if kind == h5py.h5l.TYPE_SOFT:
        return f"{path} is a soft link"
    if kind == h5py.h5l.TYPE_EXTERNAL:
        return f"{path} is an external link"
    if kind != h5py.h5l.TYPE_HARD:
        return f"{path} is a user-defined link"
    return None


def _object_refusal(obj: h5py.h5o.ObjectID, path: str) -> str | None:
    """Groups and datasets linked once, with plain attributes and types, stored in the file."""
    if isinstance(obj, h5py.h5t.TypeID):
        return f"{path} is a named datatype"
    if not isinstance(obj, h5py.h5g.GroupID | h5py.h5d.DatasetID):
        return f"{path} is not a group or a dataset"
    info = h5py.h5o.get_info(obj)
    if info.rc != 1:
        return f"{path} is linked more than once"
    for index in range(info.num_attrs):
        attr = h5py.h5a.open(obj, index=index)
        name = attr.get_name().decode(errors="replace")
        if name in MARKED_ATTRS:
            return f"{path} has a {name} attribute (NetCDF, dimension scales, HDF5 classes)"
        reason = _type_refusal(attr.get_type(), f"attribute {name!r} of {path}")
        if reason:
            return reason
    if isinstance(obj, h5py.h5d.DatasetID):
        return _dataset_refusal(obj, path)
    return None


def _type_refusal(kind: h5py.h5t.TypeID, what: str) -> str | None:
    if kind.committed():
        return f"{what} has a named datatype"
    if kind.detect_class(h5py.h5t.REFERENCE):
        return f"{what} holds object references"
    return None


def _dataset_refusal(ds: h5py.h5d.DatasetID, path: str) -> str | None:
    return _stored_outside(ds, path) or _type_refusal(ds.get_type(), path)


def prune(f: h5py.File, keep: set[str]) -> set[str]:
    """Remove from ``f`` everything but the objects of ``keep`` (checked by :func:`refusal`):
    root attributes, other root objects, ``.errors``, other summaries and previews.
    Returns the names of ``keep`` that have objects left."""
    for key in list(f.attrs):
        del f.attrs[key]
    placed: set[str] = set()
    for name in list(f):
        if name in (REDUCED, PREVIEW):
            placed |= _prune_section(f, name, keep)
        elif name in keep:
            placed.add(name)
        else:
            del f[name]
    return placed


def _prune_section(f: h5py.File, section: str, keep: set[str]) -> set[str]:
    group = f[section]
    for key in list(group.attrs):
        del group.attrs[key]
    names = set(group)
    for name in names - keep:
        del group[name]
    if not names & keep:
        del f[section]
    return names & keep


def waste_refusal(f: h5py.File) -> str | None:
    """Refuse a file whose removed objects left much free space in it."""
    free = f.id.get_freespace()
    size = f.id.get_filesize()
    if free > MAX_FREE_BYTES or (free > SMALL_FREE_BYTES and free > MAX_FREE_SHARE * size):
        return f"what was removed leaves {free} of {size} bytes free"
    return None
