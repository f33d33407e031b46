"""``from runstream.context import Variable`` works like ``damnit_ctx``, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CONTEXT = """
from runstream.context import Cell, Skip, Variable

@Variable(title="Trains", units="trains")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Half")
def half(run, n: "var#n_trains"):
    return Cell(n / 2, bold=True)

@Variable(title="Skipped")
def skipped(run):
    raise Skip("not today")
"""


def test_runstream_context_module_in_a_context_file(mock_proposal: Path, tmp_path: Path) -> None:
    context = tmp_path / "context.py"
    context.write_text(textwrap.dedent(CONTEXT))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runstream.cli",
            "context",
            "eval",
            str(context),
            "--proposal-dir",
            str(mock_proposal),
            "--proposal",
            "1234",
            "--run",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RUNSTREAM_EXECUTOR_WORKERS": "1"},
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    variables = json.loads(proc.stdout)["variables"]
    assert variables["n_trains"]["summary"] == 400
    assert variables["n_trains"]["units"] == "trains"
    assert variables["half"]["summary"] == 200
    assert variables["skipped"]["error"] == "not today"
    assert variables["skipped"]["error_cls"] == "Skip"
