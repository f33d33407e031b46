"""A new run's fragment adopted as its run file: the same file as the object copy, the
strict check's refusals, what is removed, and crash safety (h5py only, no services)."""

from __future__ import annotations

import cmath
import hashlib
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr
from runstream_store.adapters.hdf5_merge import MergeOutcome, MergeRequest, merge, run_file_path
from runstream_store.handlers import merge_item

from .fragments import Fragment

pytestmark = pytest.mark.unit

NEVER = 2**62  # compress_min_bytes no array reaches: the object copy, nothing compressed


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kind(dtype: np.dtype[Any]) -> str:
    return f"{dtype} {h5py.check_string_dtype(dtype)} {h5py.check_enum_dtype(dtype)}"


def _attrs(obj: h5py.HLObject) -> dict[str, tuple[str, str]]:
    return {k: (_kind(obj.attrs.get_id(k).dtype), repr(obj.attrs[k])) for k in obj.attrs}


def _dump(path: Path) -> dict[str, Any]:
    """Every object of a file: kind, type, shape, storage, data and attributes."""
    found: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        found["/"] = _attrs(f)

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                value = data.tobytes() if isinstance(data, np.ndarray) else repr(data)
                layout = (obj.chunks, obj.compression, obj.shuffle)
                found[name] = ("dataset", _kind(obj.dtype), obj.shape, layout, value, _attrs(obj))
            else:
                found[name] = ("group", _attrs(obj))

        f.visititems(visit)
    return found


def _fragment(tmp_path: Path, **kwargs: Any) -> Fragment:
    """Every plain type the executor writes, an error, a cleared value and a preview."""
    frag = Fragment(tmp_path, 1, 1, **kwargs)
    frag.scalar("an_int", 42, units="counts")
    frag.scalar("a_complex", complex(1.5, -2.0))
    frag.scalar("a_string", "hello runstream")
    frag.scalar("a_bool", True)
    frag.scalar("not_a_number", float("nan"))
    frag.scalar("inline_only", 7.5, in_fragment=False)
    frag.array("line", np.sin(np.linspace(0, 10, 2000)), units="mJ")
    frag.array("image2d", np.arange(64 * 48, dtype=np.float32).reshape(64, 48))
    frag.array("cube", np.random.default_rng(1).random((2, 3, 4, 5)))
    frag.image("figure", np.full((20, 30, 4), 200, dtype=np.uint8))
    frag.error("broken", "division by zero", "ZeroDivisionError")
    frag.none("nothing")
    return frag


def _request(frag: Fragment, target: Path, compress: int = 0) -> MergeRequest:
    path = frag.path or frag.write()
    items = []
    for result in frag.results:
        item = merge_item(result)
        if result.name == "not_a_number":  # JSON has no NaN: the executor sends no summary
            item = item.model_copy(update={"summary": None})
        items.append(item)
    # a result whose objects are missing from the fragment: stored as an error either way
    line = next(i for i in items if i.summary_type == "trendline")
    items.append(line.model_copy(update={"name": "missing"}))
    return MergeRequest(
        target=target,
        fragment=path,
        items=tuple(items),
        provenance="ctx-provenance",
        start_time=12.5,
        compress_min_bytes=compress,
    )


def _edit(frag: Fragment, change: Callable[[h5py.File], None]) -> None:
    assert frag.path is not None
    with h5py.File(frag.path, "r+") as f:
        change(f)


def _add_preview_and_start_time(f: h5py.File) -> None:
    f[".preview/line"] = np.arange(5.0)
    f["start_time/data"] = 99.0  # the executor's; the message's start time wins
    f[".reduced/start_time"] = 99.0


def _merge_both(request: MergeRequest, tmp_path: Path) -> tuple[MergeOutcome, MergeOutcome]:
    """The request merged into a new run file as it is, and by object copy elsewhere."""
    adopted = merge(request)
    copied_target = tmp_path / "copied" / request.target.name
    copied = merge(replace(request, target=copied_target, compress_min_bytes=NEVER))
    assert not copied.adopted
    assert _dump(request.target) == _dump(copied_target)
    assert adopted.failed == copied.failed
    assert adopted.summaries.keys() == copied.summaries.keys()
    return adopted, copied


def test_an_adopted_fragment_is_the_file_the_object_copy_makes(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    frag = _fragment(tmp_path)
    frag.write()
    _edit(frag, _add_preview_and_start_time)
    before = _digest(frag.path) if frag.path else ""
    adopted, _ = _merge_both(_request(frag, target), tmp_path)
    assert adopted.adopted, adopted.copy_reason
    assert frag.path is not None
    assert _digest(frag.path) == before  # only read
    assert set(adopted.failed) == {"missing"}
    assert cmath.isnan(adopted.summaries["not_a_number"])
    with h5py.File(target, "r") as f:
        assert dict(f.attrs) == {"provenance": "ctx-provenance"}
        assert float(f["start_time/data"][()]) == 12.5
        assert f[".errors/broken"].attrs["type"] == "ZeroDivisionError"
        assert f[".errors/missing"].attrs["type"] == "StoreWriteError"
        assert "nothing" not in f
        np.testing.assert_array_equal(f[".preview/line"][()], np.arange(5.0))
        np.testing.assert_array_equal(f["line/data"][()], frag.expected["line"])
        assert f[".reduced/line"].attrs["summary_type"] == "trendline"
        assert f[".reduced/an_int"].attrs["units"] == "counts"
        strategy = f.id.get_create_plist().get_file_space_strategy()
        assert strategy == (h5py.h5f.FSPACE_STRATEGY_FSM_AGGR, True, 1)


def _extras(f: h5py.File) -> None:
    """What a worker's user code could add: none of it is the store's to keep."""
    f.attrs["planted"] = "by user code"
    f["junk/data"] = np.arange(1000.0)
    f[".reduced"].attrs["planted"] = 1
    f[".reduced/ghost"] = 1.0
    f[".preview/ghost"] = np.arange(3)
    f[".errors/line"] = "not an error of this result"
    f[".errors/ghost"] = "nor this"
    f["inline_only/data"] = 1.0  # an inline result: its value comes from the message
    f[".reduced/inline_only"] = 1.0


def test_objects_and_attributes_the_copy_would_not_make_are_removed(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    frag = _fragment(tmp_path)
    frag.write()
    _edit(frag, _extras)
    adopted, _ = _merge_both(_request(frag, target), tmp_path)
    assert adopted.adopted, adopted.copy_reason
    with h5py.File(target, "r") as f:
        assert dict(f.attrs) == {"provenance": "ctx-provenance"}
        assert "junk" not in f
        assert dict(f[".reduced"].attrs) == {}
        assert "ghost" not in f[".reduced"]
        assert ".preview" not in f
        assert sorted(f[".errors"]) == ["broken", "missing"]
        assert float(f["inline_only/data"][()]) == 7.5
        assert float(f[".reduced/inline_only"][()]) == 7.5


def _soft_link(f: h5py.File) -> None:
    f["line/alias"] = h5py.SoftLink("/line/data")


def _external_link(f: h5py.File) -> None:
    other = Path(f.filename).with_name("other.h5")
    with h5py.File(other, "w") as o:
        o["x"] = np.arange(4.0)
    f["line/elsewhere"] = h5py.ExternalLink(str(other), "/x")


def _virtual_dataset(f: h5py.File) -> None:
    layout = h5py.VirtualLayout(shape=(2000,), dtype="f8")
    layout[:] = h5py.VirtualSource(".", "line/data", shape=(2000,))
    f["line"].create_virtual_dataset("view", layout)


def _external_storage(f: h5py.File) -> None:
    raw = Path(f.filename).with_name("raw.bin")
    raw.write_bytes(np.arange(4.0).tobytes())
    f["line"].create_dataset("outside", shape=(4,), dtype="<f8", external=[(str(raw), 0, 32)])


def _netcdf(frag: Fragment) -> None:
    da = xr.DataArray(np.arange(6.0), dims=("x",), coords={"x": np.arange(6) * 2}, name="v")
    frag.dataarray("netcdf", da)


def _big_junk(f: h5py.File) -> None:
    f["junk/data"] = np.random.default_rng(3).random(300_000)  # 2.3 MB, removed
    f[".preview/line"] = np.arange(10_000.0)  # kept, after it: the junk leaves a hole


# The first four are unsafe for the object copy too: it refuses the variable holding them
# (``unsafe``), which is stored as an error; the run's other results are stored.
REFUSED: list[tuple[str, Callable[[h5py.File], None] | None, dict[str, Any], str]] = [
    ("soft link", _soft_link, {"unsafe": True}, "line/alias is a soft link"),
    ("external link", _external_link, {"unsafe": True}, "line/elsewhere is an external link"),
    ("virtual dataset", _virtual_dataset, {"unsafe": True}, "line/view is a virtual dataset"),
    (
        "external storage",
        _external_storage,
        {"unsafe": True},
        "line/outside stores its data in external",
    ),
    ("NetCDF tree", None, {"netcdf": True}, "NetCDF"),
    ("older executor", None, {"file_space": False}, "does not track free space"),
    ("large removed objects", _big_junk, {}, "bytes free"),
]


@pytest.mark.parametrize(
    ("change", "options", "reason"),
    [pytest.param(c, o, r, id=i) for i, c, o, r in REFUSED],
)
def test_a_fragment_that_fails_the_check_is_copied_object_by_object(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[h5py.File], None] | None,
    options: dict[str, Any],
    reason: str,
) -> None:
    target = run_file_path(tmp_path, 1, 1)
    frag = _fragment(tmp_path, file_space=options.get("file_space", True))
    if options.get("netcdf"):
        _netcdf(frag)
    frag.write()
    if change is not None:
        _edit(frag, change)
    assert frag.path is not None
    before = _digest(frag.path)
    with caplog.at_level(logging.DEBUG, logger="runstream.store.hdf5"):
        adopted, _ = _merge_both(_request(frag, target), tmp_path)
    assert not adopted.adopted
    assert reason in adopted.copy_reason
    assert any(reason in r.getMessage() for r in caplog.records)
    assert _digest(frag.path) == before
    with h5py.File(target, "r") as f:  # and the file is right
        if options.get("unsafe"):
            assert "line" not in f
            assert "line" not in f[".reduced"]
            assert f[".errors/line"].attrs["type"] == "StoreWriteError"
            assert reason in f[".errors/line"][()].decode()
            assert set(adopted.failed) == {"line", "missing"}
        else:
            np.testing.assert_array_equal(f["line/data"][()], frag.expected["line"])
            assert set(adopted.failed) == {"missing"}
        np.testing.assert_array_equal(f["image2d/data"][()], frag.expected["image2d"])
        assert float(f["start_time/data"][()]) == 12.5
        assert "junk" not in f


def test_an_existing_run_file_or_compression_takes_the_object_copy(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    first = merge(_request(_fragment(tmp_path), target))
    assert first.adopted
    again = Fragment(tmp_path, 1, 1)
    again.array("line", np.zeros(2000))
    second = merge(_request(again, target))
    assert not second.adopted
    assert second.copy_reason == "the run file exists"
    other = run_file_path(tmp_path, 1, 2)
    compressed = merge(_request(_fragment(tmp_path), other, compress=256))
    assert not compressed.adopted
    assert compressed.copy_reason == "arrays are compressed on the way"
    with h5py.File(target, "r") as f, h5py.File(other, "r") as g:
        np.testing.assert_array_equal(f["line/data"][()], np.zeros(2000))
        assert g["cube/data"].compression == "gzip"


def test_a_crash_before_the_rename_leaves_no_run_file_and_the_fragment_intact(
    tmp_path: Path,
) -> None:
    target = run_file_path(tmp_path, 1, 1)
    frag = _fragment(tmp_path)
    request = _request(frag, target)
    assert frag.path is not None
    before = _digest(frag.path)
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from runstream_store.adapters.hdf5_merge import MergeItem, MergeRequest, merge
        items = tuple(MergeItem.model_validate_json(line) for line in sys.stdin)
        request = MergeRequest(
            target=Path({str(target)!r}), fragment=Path({str(frag.path)!r}), items=items,
            provenance="ctx-provenance", start_time=12.5, compress_min_bytes=0,
        )
        merge(request, before_replace=lambda tmp: os._exit(137))
        """
    )
    lines = "\n".join(i.model_dump_json() for i in request.items)
    done = subprocess.run(
        [sys.executable, "-c", script], input=lines, text=True, check=False, timeout=120
    )
    assert done.returncode == 137
    assert not target.exists()
    assert len(list(target.parent.glob(".*.tmp"))) == 1  # the killed merge's temporary
    assert _digest(frag.path) == before
    outcome = merge(request)  # the redelivered message
    assert outcome.adopted, outcome.copy_reason
    assert list(target.parent.glob(".*.tmp")) == []
    assert _digest(frag.path) == before
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["line/data"][()], frag.expected["line"])
