"""Mock European XFEL runs with plausible, seeded data for the demo.

EXtra-data's mock FXE file gives the layout (two XGMs, a camera, 400 trains);
its values are all zero. This fills them the way the real devices would read:

- XGMs (``SA1_XTD2_XGM``, ``SPB_XTD9_XGM``): per-pulse energies in uJ with SASE
  statistics (gamma distributed, ~14 % rms), a slow drift over the run, a fixed
  number of pulses per train (the rest of the 1000 slots are zero), beam
  positions in mm, and the slow data (photon flux, number of bunches).
- Camera (``FXE_XAD_GEC/CAM/CAMERA``): 400 frames of 80 x 100 pixels, a
  Gaussian beam spot whose brightness follows the XGM energy and whose position
  jitters from train to train, on a dark offset with read and shot noise.

Each run has its own settings (a mean pulse energy scan, a moving spot), and
every value comes from ``numpy.random.default_rng((seed, run))``: the same seed
gives the same files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

XGMS = ("SA1_XTD2_XGM/DOOCS/MAIN", "SPB_XTD9_XGM/DOOCS/MAIN")
CAMERA = "FXE_XAD_GEC/CAM/CAMERA"
FRAME_SHAPE = (80, 100)  # rows, columns
PULSES = 10  # pulses per train
SASE_MODES = 50  # gamma shape: rms fluctuation 1/sqrt(50) = 14 %
MARKER = "runstream_mock_version"
VERSION = 1


@dataclass(frozen=True)
class RunSettings:
    """What changes from run to run."""

    energy_uj: float  # mean pulse energy at SA1
    spot_row: float  # beam spot centre on the camera (pixels)
    spot_col: float
    x_mm: float  # XGM beam position offsets
    y_mm: float

    @classmethod
    def of(cls, run: int, rng: np.random.Generator) -> RunSettings:
        return cls(
            energy_uj=float(450.0 + 150.0 * (run % 7) + rng.normal(0, 10)),
            spot_row=float(FRAME_SHAPE[0] / 2 + 5.0 * np.sin(run)),
            spot_col=float(FRAME_SHAPE[1] / 2 + 4.0 * (run % 5 - 2)),
            x_mm=float(0.2 * np.cos(run) + rng.normal(0, 0.02)),
            y_mm=float(-0.1 + 0.05 * (run % 3) + rng.normal(0, 0.02)),
        )


def _pulse_energies(rng: np.random.Generator, trains: int, mean_uj: float) -> np.ndarray:
    """(trains, PULSES) SASE pulse energies around a slowly drifting mean."""
    drift = 1.0 + 0.05 * np.sin(np.linspace(0, 2 * np.pi, trains) + rng.uniform(0, np.pi))
    means = mean_uj * drift[:, None]
    return rng.gamma(SASE_MODES, means / SASE_MODES, size=(trains, PULSES))


def _fill_xgm(f: h5py.File, source: str, energies: np.ndarray, s: RunSettings, rng: np.random.Generator) -> None:  # fmt: skip
    trains = energies.shape[0]
    fast = f[f"INSTRUMENT/{source}:output/data"]
    # Only the first PULSES slots hold pulses; the others keep the fill value 0 (and take
    # no space: their chunks are never written).
    fast["intensityTD"][:, :PULSES] = energies
    fast["intensityAUXTD"][:, :PULSES] = energies * rng.normal(0.98, 0.01, size=energies.shape)
    for key, offset in (("xTD", s.x_mm), ("yTD", s.y_mm)):
        fast[key][:, :PULSES] = rng.normal(offset, 0.03, size=energies.shape)
    slow = f[f"CONTROL/{source}"]
    per_train = energies.mean(axis=1)
    walk = np.cumsum(rng.normal(0, 0.002, size=(2, trains)), axis=1)
    slow["beamPosition/ixPos/value"][:] = s.x_mm + walk[0] + rng.normal(0, 0.01, trains)
    slow["beamPosition/iyPos/value"][:] = s.y_mm + walk[1] + rng.normal(0, 0.01, trains)
    slow["pulseEnergy/photonFlux/value"][:] = per_train
    slow["pulseEnergy/nummberOfBunches/value"][:] = PULSES


def _fill_camera(f: h5py.File, train_energy: np.ndarray, s: RunSettings, rng: np.random.Generator) -> None:  # fmt: skip
    trains = train_energy.shape[0]
    rows, cols = FRAME_SHAPE
    data = f[f"INSTRUMENT/{CAMERA}:daqOutput/data/image"]
    del data["pixels"]
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    jitter = rng.normal(0, 1.5, size=(trains, 2)).astype(np.float32)
    amplitude = (2000.0 * train_energy / train_energy.mean()).astype(np.float32)
    frames = np.empty((trains, rows, cols), dtype=np.uint16)
    for t in range(trains):  # one frame at a time: ~80 kB of temporaries
        dy = yy - (s.spot_row + jitter[t, 0])
        dx = xx - (s.spot_col + jitter[t, 1])
        signal = 100.0 + amplitude[t] * np.exp(-(dy**2 / (2 * 4.0**2) + dx**2 / (2 * 6.0**2)))
        noisy = signal + rng.standard_normal((rows, cols), dtype=np.float32) * np.sqrt(signal + 9)
        frames[t] = np.clip(noisy, 0, 65535)
    data.create_dataset(
        "pixels", data=frames, chunks=(1, rows, cols), compression="gzip", compression_opts=1,
        shuffle=True,
    )  # fmt: skip
    data["dims"][:] = np.array([cols, rows], dtype=np.uint64)
    data["bitsPerPixel"][:] = 16


def fill_run(path: Path, run: int, seed: int) -> RunSettings:
    """Overwrite the zeros of an EXtra-data mock FXE file with run ``run``'s data."""
    rng = np.random.default_rng((seed, run))
    settings = RunSettings.of(run, rng)
    with h5py.File(path, "r+") as f:
        trains = f[f"INSTRUMENT/{XGMS[0]}:output/data/intensityTD"].shape[0]
        sa1 = _pulse_energies(rng, trains, settings.energy_uj)
        _fill_xgm(f, XGMS[0], sa1, settings, rng)
        # Downstream (SPB): the same pulses, 8 % transport loss, its own noise.
        spb = sa1 * 0.92 * rng.normal(1.0, 0.02, size=sa1.shape)
        _fill_xgm(f, XGMS[1], spb, settings, rng)
        _fill_camera(f, sa1.sum(axis=1), settings, rng)
        f.attrs[MARKER] = VERSION
    return settings


def is_current(path: Path) -> bool:
    """Whether ``path`` is a mock file of this version (older demo states hold zeros)."""
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get(MARKER) == VERSION)
    except OSError:
        return False


def make_run(template: Path, dest: Path, run: int, seed: int) -> RunSettings:
    """``dest``: a copy of the layout ``template`` filled with run ``run``'s data."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(template, tmp)
    settings = fill_run(tmp, run, seed)
    tmp.replace(dest)
    return settings


def make_template(path: Path) -> Path:
    """EXtra-data's mock FXE file: the layout every run file starts from."""
    from extra_data.tests.make_examples import make_fxe_da_file

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_fxe_da_file(str(path))
    return path
