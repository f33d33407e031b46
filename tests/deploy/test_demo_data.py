"""The demo's mock runs hold seeded, plausible data, and the demo context makes sense of them.

``./task demo`` needs the running services; this checks its two inputs on their
own: the data generator (deploy/demo/mockdata.py) and the context file evaluated
on its runs with ``runstream context eval``, against the demo's own list of
expected values (deploy/demo/demo.py EXPECTED).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from runstream_executor.cli import context_app
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMO / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mockdata() -> ModuleType:
    return load("mockdata")


@pytest.fixture(scope="module")
def proposal(mockdata: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    template = mockdata.make_template(root / "template.h5")
    for run in (1, 2):
        for kind, prefix in (("raw", "RAW"), ("proc", "CORR")):
            dest = root / "p009999" / kind / f"r{run:04d}" / f"{prefix}-R{run:04d}-DA01-S00000.h5"
            mockdata.make_run(template, dest, run, seed=9999)
    return root / "p009999"


def test_mock_runs_are_seeded_and_plausible(
    mockdata: ModuleType, proposal: Path, tmp_path: Path
) -> None:
    from extra_data import RunDirectory

    run = RunDirectory(str(proposal / "raw" / "r0001"))
    energies = run["SA1_XTD2_XGM/DOOCS/MAIN:output", "data.intensityTD"].ndarray()
    pulses = energies[:, : mockdata.PULSES]
    assert (pulses > 0).all()
    assert (energies[:, mockdata.PULSES :] == 0).all()
    settings = mockdata.RunSettings.of(1, np.random.default_rng((9999, 1)))
    assert pulses.mean() == pytest.approx(settings.energy_uj, rel=0.05)
    assert pulses.std() / pulses.mean() == pytest.approx(0.15, abs=0.04)  # SASE + drift
    spb = run["SPB_XTD9_XGM/DOOCS/MAIN:output", "data.intensityTD"].ndarray()[:, :10]
    assert spb.mean() / pulses.mean() == pytest.approx(0.92, abs=0.01)
    x = run["SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.ixPos"].ndarray()
    assert np.std(x) > 0
    assert abs(np.mean(x) - settings.x_mm) < 0.1

    frames = run["FXE_XAD_GEC/CAM/CAMERA:daqOutput", "data.image.pixels"].ndarray()
    assert frames.shape == (400, *mockdata.FRAME_SHAPE)
    image = frames.mean(axis=0)
    row, col = np.unravel_index(np.argmax(image), image.shape)
    assert abs(row - settings.spot_row) <= 2
    assert abs(col - settings.spot_col) <= 2
    assert image.max() > 1500
    assert 90 < np.median(image) < 110
    assert frames[:, :5, :5].std() > 5  # noise, not a flat background

    # The same seed gives the same file; another run gives another one.
    again = mockdata.make_run(
        mockdata.make_template(tmp_path / "t.h5"), tmp_path / "r1.h5", 1, seed=9999
    )
    assert again == settings
    from extra_data import H5File

    copy = H5File(str(tmp_path / "r1.h5"))
    np.testing.assert_array_equal(
        copy["SA1_XTD2_XGM/DOOCS/MAIN:output", "data.intensityTD"].ndarray(), energies
    )
    other = RunDirectory(str(proposal / "raw" / "r0002"))
    assert not np.array_equal(
        other["SA1_XTD2_XGM/DOOCS/MAIN:output", "data.intensityTD"].ndarray(), energies
    )
    assert mockdata.is_current(proposal / "raw" / "r0001" / "RAW-R0001-DA01-S00000.h5")
    assert not mockdata.is_current(tmp_path / "t.h5")  # EXtra-data's zeros


def test_demo_context_on_the_mock_runs(proposal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = load("demo")
    monkeypatch.setenv("RUNSTREAM_EXECUTOR_WORKERS", "2")
    result = CliRunner().invoke(
        context_app,
        [
            "eval",
            str(DEMO / "context.py"),
            "--proposal-dir",
            str(proposal),
            "--proposal",
            "9999",
            "--run",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)["variables"]
    for name, kind in demo.EXPECTED.items():
        entry = values[name]
        if kind == "error":
            assert entry["error_cls"] == "ZeroDivisionError"
            continue
        assert entry["error"] is None, (name, entry)
        if kind == "number":
            assert isinstance(entry["summary"], int | float), name
            assert entry["summary"] != 0, name
        elif kind == "string":
            assert entry["summary"] == "p9999 r1"
        else:
            assert entry["summary_type"] == kind, (name, entry)
    energy = values["sa1.pulse_energy"]
    assert (energy["title"], energy["units"]) == ("XGM SA1/Pulse energy", "uJ")
    assert 400 < energy["summary"] < 800
    assert values["xgm_intensity"]["summary"] == pytest.approx(energy["summary"], rel=0.05)
    assert values["transmission"]["summary"] == pytest.approx(0.92, abs=0.01)
    assert values["n_trains"]["summary"] == 400
    assert values["camera_peak"]["summary"] > 1500  # the beam spot


def test_demo_make_data_fills_raw_and_links_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNSTREAM_STATE_DIR", str(tmp_path))  # never the real .state
    demo = load("demo")
    assert tmp_path in demo.DEMO.parents
    # An older demo state: EXtra-data's zero-filled file in place of run 1.
    old = demo.DEMO / "data" / "p009999" / "raw" / "r0001" / "RAW-R0001-DA01-S00000.h5"
    old.parent.mkdir(parents=True)
    from extra_data.tests.make_examples import make_fxe_da_file

    make_fxe_da_file(str(old))
    proposal_dir = demo.make_data()
    mockdata = sys.modules["mockdata"]
    for run in demo.RUNS:
        raw = proposal_dir / "raw" / f"r{run:04d}" / f"RAW-R{run:04d}-DA01-S00000.h5"
        proc = proposal_dir / "proc" / f"r{run:04d}" / f"CORR-R{run:04d}-DA01-S00000.h5"
        assert mockdata.is_current(raw)
        assert proc.samefile(raw)  # calibration changes nothing in the demo
    stamp = (proposal_dir / "raw" / "r0002" / "RAW-R0002-DA01-S00000.h5").stat().st_mtime_ns
    demo.make_data()  # a second demo run keeps the files
    assert (proposal_dir / "raw" / "r0002" / "RAW-R0002-DA01-S00000.h5").stat().st_mtime_ns == stamp
