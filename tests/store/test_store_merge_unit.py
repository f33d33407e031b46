"""The HDF5 merge on its own: layout, replacement semantics and crash safety (no services)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from runstream_store.adapters.hdf5_merge import (
    MergeItem,
    MergeRequest,
    merge,
    remove_stale_temporaries,
    run_file_path,
)
from runstream_store.handlers import merge_item

from .fragments import Fragment

pytestmark = pytest.mark.unit


def _request(frag: Fragment, target: Path) -> MergeRequest:
    path = frag.write()
    return MergeRequest(
        target=target,
        fragment=path,
        items=tuple(merge_item(r) for r in frag.results),
        provenance="context.py",
        compress_min_bytes=256,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dimension_ids(path: Path) -> list[int]:
    ids: list[int] = []
    with h5py.File(path, "r") as f:

        def visit(_: str, obj: object) -> None:
            if (
                isinstance(obj, h5py.Dataset)
                and obj.attrs.get("CLASS") == b"DIMENSION_SCALE"
                and "_Netcdf4Dimid" in obj.attrs
            ):
                ids.append(int(obj.attrs["_Netcdf4Dimid"]))

        f.visititems(visit)
    return ids


def test_netcdf_groups_keep_dimensions_and_get_unique_dimension_ids(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    a = xr.DataArray(
        np.arange(6.0).reshape(2, 3),
        dims=("t", "p"),
        coords={"t": [10, 11], "aux": ("t", [0.5, 0.25])},
        attrs={"units": "mJ"},
        name="a",
    )
    b = xr.Dataset({"v": (("t",), [1, 2, 3])}, coords={"t": [5, 6, 7]})
    for _ in range(3):  # merged again and again: ids stay unique
        frag = Fragment(tmp_path, 1, 1)
        frag.dataarray("a", a)
        frag.dataset("b", b)
        merge(_request(frag, target))
    ids = _dimension_ids(target)
    assert len(ids) == len(set(ids)) == 3  # t, p of a and t of b
    assert xr.load_dataarray(target, group="a", engine="h5netcdf").identical(a)
    assert xr.load_dataset(target, group="b", engine="h5netcdf").drop_attrs().identical(b)
    with h5py.File(target, "r") as f:  # dimension scales attached to the copies
        assert f["a/a"].dims[0][0].name == "/a/t"


def test_plain_arrays_are_compressed_and_small_ones_are_not(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    frag = Fragment(tmp_path, 1, 1)
    frag.array("big", np.zeros(10_000))
    frag.array("tiny", np.arange(3.0))
    merge(_request(frag, target))
    with h5py.File(target, "r") as f:
        assert f["big/data"].compression == "gzip"
        assert f["big/data"].shuffle
        assert f["tiny/data"].compression is None
        np.testing.assert_array_equal(f["big/data"][()], np.zeros(10_000))


def test_a_failed_merge_leaves_the_old_file_untouched(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    first = Fragment(tmp_path, 1, 1)
    first.array("trace", np.arange(100.0))
    merge(_request(first, target))
    before = _digest(target)

    second = Fragment(tmp_path, 1, 1)
    second.array("trace", np.zeros(100))

    def boom(_: Path) -> None:
        raise RuntimeError("disk vanished")

    with pytest.raises(RuntimeError):
        merge(_request(second, target), before_replace=boom)
    assert _digest(target) == before
    assert list(target.parent.glob(".*.tmp")) == []


def test_a_process_killed_mid_merge_leaves_the_old_file_and_the_next_merge_cleans_up(
    tmp_path: Path,
) -> None:
    target = run_file_path(tmp_path, 1, 1)
    first = Fragment(tmp_path, 1, 1)
    first.array("trace", np.arange(100.0))
    merge(_request(first, target))
    before = _digest(target)

    second = Fragment(tmp_path, 1, 1)
    second.array("trace", np.zeros(100))
    request = _request(second, target)
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from runstream_store.adapters.hdf5_merge import MergeItem, MergeRequest, merge
        items = {[(i.name, i.action, i.summary_type) for i in request.items]!r}
        request = MergeRequest(
            target=Path({str(target)!r}),
            fragment=Path({str(request.fragment)!r}),
            items=tuple(MergeItem(name=n, action=a, summary_type=t) for n, a, t in items),
            provenance="context.py",
        )
        merge(request, before_replace=lambda tmp: os._exit(137))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, timeout=120)
    assert done.returncode == 137
    assert _digest(target) == before  # the old state, complete
    leftovers = list(target.parent.glob(".*.tmp"))
    assert len(leftovers) == 1
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["trace/data"][()], np.arange(100.0))

    merge(request)  # the redelivered merge converges and removes the leftover
    assert list(target.parent.glob(".*.tmp")) == []
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["trace/data"][()], np.zeros(100))


def test_summary_attributes_written_for_inline_values(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    item = MergeItem(
        name="energy", action="inline", summary=1.25, units="mJ", max_diff=0.5, bold=True,
        background=(187, 221, 221), summary_method="mean",
    )  # fmt: skip
    merge(MergeRequest(target, None, (item,), "context.py", start_time=12.5))
    with h5py.File(target, "r") as f:
        reduced = f[".reduced/energy"]
        assert float(reduced[()]) == 1.25
        assert reduced.attrs["units"] == "mJ"
        assert reduced.attrs["max_diff"] == 0.5
        assert bool(reduced.attrs["bold"]) is True
        assert list(reduced.attrs["background"]) == [187, 221, 221]
        assert reduced.attrs["summary_method"] == "mean"
        assert float(f["start_time/data"][()]) == 12.5
        assert float(f["energy/data"][()]) == 1.25


def test_stale_temporaries_are_only_those_of_the_target(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    target.parent.mkdir(parents=True)
    mine = target.parent / f".{target.name}.abc.tmp"
    other = target.parent / ".p1_r2.h5.abc.tmp"
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    assert remove_stale_temporaries(target) == [mine]
    assert other.exists()


def test_reprocessing_does_not_grow_the_run_file(tmp_path: Path) -> None:
    target = run_file_path(tmp_path, 1, 1)
    sizes = []
    for i in range(6):
        frag = Fragment(tmp_path, 1, 1)
        # alternating sizes, incompressible, next to a small variable that is replaced too
        frag.array("big", np.random.default_rng(i).random(200_000 + (i % 2) * 60_000))
        frag.array("small", np.arange(10.0) + i)
        request = _request(frag, target)
        merge(replace(request, compress_min_bytes=2**62))  # contiguous storage
        sizes.append(target.stat().st_size)
    # after both sizes have been seen once, freed space is reused: no further growth
    assert max(sizes[2:]) <= sizes[1] * 1.01, sizes


@pytest.mark.parametrize(
    ("shape", "what"),
    [((4096, 4096), "slabs of rows"), ((2, 8 * 1024 * 1024), "chunks of rows too large")],
)
def test_large_arrays_are_copied_in_bounded_memory(
    tmp_path: Path, shape: tuple[int, int], what: str
) -> None:
    """A 128 MiB array is compressed into the run file without ever being read whole."""
    import tracemalloc

    target = run_file_path(tmp_path, 1, 1)
    frag = Fragment(tmp_path, 1, 1)
    frag.array("big", np.zeros(10_000))
    request = _request(frag, target)
    assert request.fragment is not None
    with h5py.File(request.fragment, "r+") as f:  # the data: 128 MiB, written slab by slab
        del f["big/data"]
        ds = f.create_dataset("big/data", shape=shape, dtype="f8")  # contiguous, uncompressed
        rows = max(1, shape[0] // 16)
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            ds[start : start + n] = np.repeat(
                np.arange(start, start + n, dtype="f8"), shape[1]
            ).reshape(n, shape[1])
    budget = 4 * 1024 * 1024
    tracemalloc.start()
    try:
        merge(replace(request, copy_chunk_bytes=budget))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = shape[0] * shape[1] * 8
    assert total == 128 * 1024 * 1024
    assert peak < 8 * budget, f"{what}: peak {peak / 2**20:.1f} MiB for a 128 MiB array"
    with h5py.File(target, "r") as f:
        out = f["big/data"]
        assert out.compression == "gzip"
        assert out.shape == shape
        for start in (0, shape[0] // 2, shape[0] - 1):  # spot checks, never the whole array
            np.testing.assert_array_equal(out[start, :1000], np.full(1000, float(start)))
            assert out[start, -1] == start
