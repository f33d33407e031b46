"""The throughput benchmark's workload: mock runs with real data, and its two contexts.

The runs are EXtra-data's mock FXE DA file (two XGMs and a camera, 400 trains)
with seeded non-zero data written into it: the camera's ``data.image.pixels``
(400 x 255 x 1024 uint16, 209 MB per run), both XGMs' ``intensityTD`` and the
beam position. Every run gets its own seed, so no two runs are the same bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

PROPOSAL = 1234
VERSION = "1"  # bump when the data written below changes (a kept --data-dir is rebuilt)

SA1 = "SA1_XTD2_XGM/DOOCS/MAIN"
SPB = "SPB_XTD9_XGM/DOOCS/MAIN"
CAMERA = "FXE_XAD_GEC/CAM/CAMERA:daqOutput"

# A typical beamline context: XGM reductions, a mean over the ~200 MB camera source,
# 2-D images, a dependency chain, a string and one variable that fails.
ELEVEN_VARIABLES = f'''
from damnit_ctx import Variable, Cell
import numpy as np

SA1 = "{SA1}"
SPB = "{SPB}"
CAMERA = "{CAMERA}"

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="XGM/SA1 energy", summary="mean", units="uJ")
def xgm_energy(run):
    return run[SA1 + ":output", "data.intensityTD"].ndarray()[:, 0]

@Variable(title="XGM/SA1 per train", units="uJ")
def xgm_per_train(run):
    return run[SA1 + ":output", "data.intensityTD"].ndarray()[:, :50].sum(axis=1)

@Variable(title="XGM/SPB peak", summary="max", units="uJ")
def spb_peak(run):
    return run[SPB + ":output", "data.intensityTD"].ndarray()[:, :50].max(axis=1)

@Variable(title="XGM/Beam x", summary="mean", units="mm")
def beam_x(run):
    return run[SA1, "beamPosition.ixPos"].ndarray()

@Variable(title="XGM/Pulse map")
def pulse_map(run):
    return run[SA1 + ":output", "data.intensityTD"].ndarray()[:, :100]

@Variable(title="Camera/Mean image")
def camera_mean(run):
    return run[CAMERA, "data.image.pixels"].ndarray().mean(axis=0)

@Variable(title="Camera/Peak")
def camera_peak(run, image: "var#camera_mean"):
    return Cell(float(image.max()), bold=True)

@Variable(title="XGM/Energy per train", units="uJ")
def energy_per_train(run, energy: "var#xgm_energy", trains: "var#n_trains"):
    return float(np.sum(energy)) / trains

@Variable(title="Run label")
def label(run, number: "meta#run_number", proposal: "meta#proposal"):
    return f"p{{proposal}} r{{number}}"

@Variable(title="Broken")
def broken(run):
    return 1 / 0
'''

ONE_CONSTANT = """
from damnit_ctx import Variable

@Variable(title="One")
def one(run):
    return 1
"""

ELEVEN_NAMES = frozenset(
    {
        "n_trains",
        "xgm_energy",
        "xgm_per_train",
        "spb_peak",
        "beam_x",
        "pulse_map",
        "camera_mean",
        "camera_peak",
        "energy_per_train",
        "label",
        "broken",
    }
)


def _fill(path: Path, seed: int) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "r+") as f:
        pixels = f[f"INSTRUMENT/{CAMERA}/data/image/pixels"]
        n = pixels.shape[0]
        for start in range(0, n, 100):  # 100 frames (52 MB) at a time
            stop = min(n, start + 100)
            frames = rng.integers(1, 4096, size=(stop - start, *pixels.shape[1:]), dtype=np.uint16)
            pixels[start:stop] = frames
        for xgm in (SA1, SPB):
            ds = f[f"INSTRUMENT/{xgm}:output/data/intensityTD"]
            ds[:] = rng.gamma(4.0, 250.0, size=ds.shape).astype(np.float32)
        ix = f[f"CONTROL/{SA1}/beamPosition/ixPos/value"]
        ix[:] = rng.normal(0.1, 0.02, size=ix.shape).astype(np.float32)


def make_runs(root: Path, runs: int, seed: int = 2026) -> Path:
    """``root/p001234/raw/r0001..`` with seeded data; kept if it is already complete."""
    from extra_data.tests.make_examples import make_fxe_da_file

    prop = root / f"p{PROPOSAL:06d}"
    marker = prop / f".complete-v{VERSION}-seed{seed}-runs{runs}"
    if marker.exists():
        return prop
    if prop.exists():
        shutil.rmtree(prop)
    template = root / "template.h5"
    make_fxe_da_file(str(template))
    for run in range(1, runs + 1):
        dest = prop / "raw" / f"r{run:04d}" / f"RAW-R{run:04d}-DA01-S00000.h5"
        dest.parent.mkdir(parents=True)
        shutil.copyfile(template, dest)
        _fill(dest, seed + run)
    template.unlink()
    marker.touch()
    return prop


def alias_runs(prop: Path, first: int, count: int, runs: int) -> list[int]:
    """Run numbers ``first..`` whose folders are links to runs 1..``runs`` (same bytes)."""
    numbers = []
    for i in range(count):
        number = first + i
        link = prop / "raw" / f"r{number:04d}"
        if not link.exists():
            link.symlink_to(f"r{(i % runs) + 1:04d}")
        numbers.append(number)
    return numbers


def warm_page_cache(prop: Path) -> int:
    """Read every data file once, so every phase reads from the page cache alike."""
    total = 0
    for path in sorted(prop.glob("raw/r*/*.h5")):
        if path.parent.is_symlink():
            continue
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total
