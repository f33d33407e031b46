"""``runstream context check|eval`` and a DAMNIT context file running unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from runstream_executor.cli import context_app
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

DAMNIT_CONTEXT = Path(__file__).parent / "contexts" / "damnit_style.py"
FAST_ENV = {
    "RUNSTREAM_EXECUTOR_PRELOAD": "numpy,extra_data",
    "RUNSTREAM_EXECUTOR_PARALLEL_VARIABLES": "2",
}


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    return CliRunner()


@pytest.fixture
def damnit_context(tmp_path: Path) -> Path:
    path = tmp_path / "amore" / "context.py"
    path.parent.mkdir()
    shutil.copyfile(DAMNIT_CONTEXT, path)
    return path


def test_check_valid_context_prints_warnings_and_exits_0(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "context.py"
    path.write_text(
        "from damnit_ctx import Variable, Cell\nimport os\n\n"
        "@Variable\ndef a(run, x: 'var#b'):\n    return x\n\n"
        "@Variable\ndef b(run):\n    return 1\n"
    )
    result = runner.invoke(context_app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "is valid: 2 variable(s), 2 warning(s)" in result.stdout
    assert "'damnit_ctx.Cell' imported but unused" in result.stderr
    assert "'os' imported but unused" in result.stderr
    assert "undefined name 'var'" not in result.stderr  # var# annotations are not names


def test_check_lists_every_problem_and_exits_1(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "context.py"
    path.write_text(
        "from damnit_ctx import Variable\n\n"
        "@Variable(title='T')\ndef a(run):\n    return 1\n\n"
        "@Variable(title='T', units='')\ndef b(run, y: 'var#missing'):\n    return 1\n"
    )
    result = runner.invoke(context_app, ["check", str(path)])
    assert result.exit_code == 1
    assert "3 problem(s)" in result.stderr
    assert f"{path}:line 7: Duplicate title 'T'" in result.stderr
    assert "units must be a non-empty string" in result.stderr
    assert "Missing dependency" in result.stderr
    path.write_text("def f(:\n")
    result = runner.invoke(context_app, ["check", str(path)])
    assert result.exit_code == 1
    assert "SyntaxError" in result.stderr
    result = runner.invoke(context_app, ["check", str(tmp_path / "absent.py")])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr


def test_damnit_context_runs_unchanged(
    damnit_context: Path, mock_proposal: Path, tmp_path: Path
) -> None:
    """A real ``runstream context eval --json`` process: stdout is exactly one JSON object."""
    output = tmp_path / "p1234_r1.h5"
    env = {**os.environ, **FAST_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runstream_executor.cli",
            "eval",
            str(damnit_context),
            "--proposal-dir",
            str(mock_proposal),
            "--proposal",
            "1234",
            "--run",
            "1",
            "--json",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["proposal"] == 1234
    assert doc["run"] == 1
    v = doc["variables"]
    assert "_norm" not in v  # transient
    assert set(v) == {
        "n_trains",
        "xgm_intensity",
        "xgm_x",
        "camera_mean",
        "camera_peak",
        "run_info",
        "sample",
        "detector",
        "energy_ratio",
        "normalised",
        "table",
    }
    assert v["n_trains"] == {
        "title": "Trains",
        "summary": 400,
        "summary_type": None,
        "units": None,
        "error": None,
        "error_cls": None,
    }
    # the mock XGM DataArray carries units "μJ", which beat Variable units (quirk 2)
    assert v["xgm_intensity"]["units"] == "μJ"
    assert isinstance(v["xgm_intensity"]["summary"], float)
    assert v["camera_mean"]["summary_type"] == "thumbnail"
    assert v["camera_mean"]["summary"] is None
    assert isinstance(v["camera_peak"]["summary"], float)
    assert v["run_info"]["summary"] == "p1234 r1"
    assert v["sample"]["error_cls"] == "RuntimeError"
    assert "no metadata provider" in v["sample"]["error"]
    assert v["detector"] == {
        "title": "Detector",
        "summary": None,
        "summary_type": None,
        "units": None,
        "error": "No AGIPD in this run",
        "error_cls": "Skip",
    }
    assert v["normalised"]["summary"] == 8.0
    assert str(v["table"]["summary"]).startswith("Dataset (")
    with h5py.File(output, "r") as f:
        assert {"n_trains", "xgm_intensity", "camera_mean", "table", "start_time"} <= set(f)
        assert f["xgm_intensity"].attrs["_damnit_objtype"] == "dataarray"
        assert f[".errors/detector"].attrs["type"] == "Skip"
        assert "_norm" not in f
        assert "_norm" not in f[".reduced"]


def test_eval_match_data_and_bad_input(
    runner: CliRunner, damnit_context: Path, mock_proposal: Path
) -> None:
    args = ["eval", str(damnit_context), "--proposal-dir", str(mock_proposal), "--proposal", "1234"]
    result = runner.invoke(context_app, [*args, "--run", "3", "--match", "peak", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # camera_peak is proc (r0003 has no proc folder: skipped with a reason); its dependency runs.
    assert set(doc["variables"]) == {"camera_peak", "camera_mean"}
    assert doc["variables"]["camera_peak"]["error_cls"] == "Skip"
    assert doc["variables"]["camera_peak"]["error"].startswith("proc data not available for run 3")

    result = runner.invoke(context_app, [*args, "--run", "1", "--data", "raw", "--match", "trains"])
    assert result.exit_code == 0, result.output
    assert "Trains" in result.stdout
    assert "400" in result.stdout
    assert "Normalised trains" in result.stdout

    result = runner.invoke(context_app, [*args, "--run", "99"])
    assert result.exit_code == 1
    assert "no run folder" in result.stderr
    broken = damnit_context.parent / "broken.py"
    broken.write_text(
        "from damnit_ctx import Variable\n\n@Variable(data='scratch')\ndef a(run):\n    return 1\n"
    )
    result = runner.invoke(
        context_app,
        [
            "eval",
            str(broken),
            "--proposal-dir",
            str(mock_proposal),
            "--proposal",
            "1",
            "--run",
            "1",
        ],
    )
    assert result.exit_code == 1
    assert "'scratch' is not a valid RunData" in result.stderr


def test_eval_finds_the_proposal_folder_from_settings(
    runner: CliRunner,
    damnit_context: Path,
    mock_proposal: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["eval", str(damnit_context), "--proposal", "1234", "--run", "2", "--match", "trains"]
    result = runner.invoke(context_app, [*args, "--json"])
    assert result.exit_code == 1
    assert "RUNSTREAM_EXECUTOR_DATA_ROOT is not set" in result.stderr
    monkeypatch.setenv("RUNSTREAM_EXECUTOR_DATA_ROOT", str(mock_proposal.parent))
    monkeypatch.setenv("RUNSTREAM_EXECUTOR_PROPOSAL_DIR_PATTERN", "p{proposal:06d}")
    result = runner.invoke(context_app, [*args, "--json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["variables"]["n_trains"]["summary"] == 400


def test_eval_json_shapes_for_none_complex_and_transient(
    runner: CliRunner, tmp_path: Path, mock_proposal: Path
) -> None:
    path = tmp_path / "context.py"
    path.write_text(
        "from damnit_ctx import Variable\n\n"
        "@Variable(title='Nothing')\ndef nothing(run):\n    return None\n\n"
        "@Variable(title='Z', units='V')\ndef z(run):\n    return 1.5 - 2j\n\n"
        "@Variable(transient=True)\ndef hidden(run):\n    return 3\n\n"
        "@Variable(title='Uses hidden')\ndef uses(run, h: 'var#hidden'):\n    return h + 1\n"
    )
    result = runner.invoke(
        context_app,
        [
            "eval",
            str(path),
            "--proposal-dir",
            str(mock_proposal),
            "--proposal",
            "1234",
            "--run",
            "1",
            "--json",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    variables = json.loads(result.stdout)["variables"]
    assert variables == {
        "nothing": {
            "title": "Nothing",
            "summary": None,
            "summary_type": None,
            "units": None,
            "error": None,
            "error_cls": None,
        },
        "z": {
            "title": "Z",
            "summary": [1.5, -2.0],
            "summary_type": "complex",
            "units": "V",
            "error": None,
            "error_cls": None,
        },
        "uses": {
            "title": "Uses hidden",
            "summary": 4,
            "summary_type": None,
            "units": None,
            "error": None,
            "error_cls": None,
        },
    }


GROUP_CONTEXT = """
from damnit_ctx import Variable, Group

@Group(tags="XGM")
class XGM:
    device: str

    @Variable(title="Trains")
    def n_trains(self, run):
        return len(run[self.device, "beamPosition.ixPos"].train_id_coordinates())

@Group
class Outer:
    xgm: XGM
    spare: "XGM | None" = None

    @Variable(title="Doubled", tags="derived")
    def doubled(self, run, n: "self#xgm.n_trains"):
        return 2 * n

    @Variable(title="Spare")
    def spare_trains(self, run, n: "self#spare.n_trains"):
        return n

outer = Outer(xgm=XGM(device="SA1_XTD2_XGM/DOOCS/MAIN"), title="Check")
"""


def test_check_and_eval_a_context_with_groups(
    runner: CliRunner, tmp_path: Path, mock_proposal: Path
) -> None:
    path = tmp_path / "context.py"
    path.write_text(GROUP_CONTEXT)
    result = runner.invoke(context_app, ["check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["variables"]) == {
        "outer.xgm.n_trains",
        "outer.doubled",
        "outer.spare_trains",
        "outer.__missing__.spare.n_trains",
    }
    output = tmp_path / "r1.h5"
    args = ["eval", str(path), "--proposal-dir", str(mock_proposal), "--proposal", "1234"]
    result = runner.invoke(context_app, [*args, "--run", "1", "--json", "--output", str(output)])
    assert result.exit_code == 0, result.output
    variables = json.loads(result.stdout)["variables"]
    assert {n: (v["title"], v["summary"]) for n, v in variables.items()} == {
        "outer.xgm.n_trains": ("outer/xgm/Trains", 400),  # titled by its path
        "outer.doubled": ("Check/Doubled", 800),
        "outer.spare_trains": ("Check/Spare", None),
    }
    assert variables["outer.spare_trains"]["error"] == (
        "Dependencies returned no data:\n- 'outer.__missing__.spare.n_trains'"
    )
    with h5py.File(output, "r") as f:
        assert f[".reduced/outer.doubled"][()] == 800
        assert f[".errors/outer.spare_trains"].attrs["type"] == "Skip"
    # --match looks at titles: "xgm/trains" selects the nested group's variable only.
    result = runner.invoke(context_app, [*args, "--run", "1", "--json", "--match", "XGM/TRAINS"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["variables"]) == {"outer.xgm.n_trains"}
    result = runner.invoke(context_app, [*args, "--run", "1", "--json", "--match", "doubled"])
    assert set(json.loads(result.stdout)["variables"]) == {"outer.doubled", "outer.xgm.n_trains"}
    # "spare_" is only in a name (outer.spare_trains is titled "Check/Spare").
    result = runner.invoke(context_app, [*args, "--run", "1", "--json", "--match", "spare_"])
    assert json.loads(result.stdout)["variables"] == {}


def test_check_reports_a_group_error_with_damnits_message(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "context.py"
    path.write_text(GROUP_CONTEXT + "\nalias = outer\n")
    result = runner.invoke(context_app, ["check", str(path)])
    assert result.exit_code == 1
    assert (
        "GroupError: Group instance of 'Outer' is assigned to multiple names "
        "['alias', 'outer'] without an explicit name." in result.stderr
    )
