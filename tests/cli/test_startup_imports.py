"""``runstream`` starts quickly because commands import what they use, when they run.

Timings are in bench/cli/bench_startup.py; these tests check the mechanism: which
modules a command loads, and that deferring them changes nothing visible.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# (typer itself imports pydantic to convert a sub-command's parameters)
HEAVY = (
    "numpy",
    "pandas",
    "pydantic_settings",
    "runstream_common.messages",
    "h5py",
    "xarray",
    "faststream",
    "aiokafka",
    "asyncpg",
)


def loaded_after(argv: list[str]) -> tuple[dict[str, bool], str]:
    """Run ``runstream ARGV`` in a fresh interpreter; which heavy modules it imported."""
    probe = (
        "import json, sys\n"
        "import runstream.cli as cli\n"
        f"sys.argv = ['runstream', *{argv!r}]\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        f"mods = {(*HEAVY, 'pydantic', 'markdown_it', 'pygments')!r}\n"
        "sys.stderr.write(json.dumps({m: m in sys.modules for m in mods}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stdout


@pytest.mark.parametrize(
    "argv", [["--help"], ["context", "--help"], ["reprocess", "--help"], ["table", "--help"]]
)
def test_help_imports_no_service_machinery(argv: list[str]) -> None:
    loaded, output = loaded_after(argv)
    assert "Usage: runstream" in output
    assert {m for m, yes in loaded.items() if yes} - {"pydantic"} == set()


def test_root_help_lists_every_command_without_pydantic() -> None:
    loaded, output = loaded_after(["--help"])
    assert "pydantic" not in [m for m, yes in loaded.items() if yes]
    for command in ("serve", "health", "table", "context", "proposal", "reprocess", "cancel"):
        assert command in output


def test_deferred_rich_modules_work_when_used() -> None:
    probe = """
import sys
from runstream.lazy_rich import defer
defer()
import typer.rich_utils  # what `runstream --help` imports
assert "markdown_it" not in sys.modules and "rich.syntax" not in sys.modules
from rich.traceback import Traceback
try:
    1 / 0
except ZeroDivisionError as exc:
    tb = Traceback.from_exception(type(exc), exc, exc.__traceback__)
assert isinstance(tb, Traceback)
import io
from rich.console import Console
from rich.markdown import Markdown
console = Console(record=True, width=40, file=io.StringIO())
console.print(Markdown("# Title"), tb)
text = console.export_text()
assert "Title" in text and "ZeroDivisionError" in text, text
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.stdout.strip() == "ok", proc.stderr
