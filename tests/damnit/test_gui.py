"""DAMNIT 0.4's own Qt GUI (under Xvfb) on a folder runstream keeps: its table model holds
the runs and values, a run processed while it is open appears without a restart, and
a screenshot is saved (``$RUNSTREAM_STATE_DIR/artifacts/damnit-gui.png``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ARTIFACTS, SCRIPTS, DamnitStack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.asyncio(loop_scope="session"),
]

CONTEXT = """
from damnit_ctx import Variable
import numpy as np

@Variable(title="Trains", units="count")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Label")
def label(run, number: "meta#run_number"):
    return f"run {number}"

@Variable(title="Detector/Image")
def image(run, number: "meta#run_number"):
    return np.outer(np.arange(40.0), np.arange(30.0)) * number

@Variable(title="Detector/Line")
def line(run):
    return np.sin(np.arange(300) / 10.0)

@Variable(title="Broken")
def broken(run):
    raise ValueError("always fails")
"""


@contextlib.contextmanager
def xvfb() -> Iterator[str]:
    """Debian's Xvfb on a free display; stopped (by its pid) afterwards."""
    for _ in range(50):
        number = random.randint(200, 900)
        if (
            not Path(f"/tmp/.X11-unix/X{number}").exists()
            and not Path(f"/tmp/.X{number}-lock").exists()
        ):
            break
    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Xvfb :{number} did not start")
            time.sleep(0.1)
        yield f":{number}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _line(stream: asyncio.StreamReader, timeout: float) -> dict[str, Any]:
    while True:
        raw = await asyncio.wait_for(stream.readline(), timeout)
        if not raw:
            raise AssertionError("the GUI exited")
        text = raw.decode(errors="replace").strip()
        if text.startswith("{"):
            return json.loads(text)


async def test_damnit_gui_shows_runs_live(shared_stack: Any) -> None:
    stack: DamnitStack = await shared_stack(CONTEXT, 3102)
    stack.make_runs([1])
    await stack.process([1])
    await stack.wait_projected([1], ("n_trains", "label", "image", "line", "broken"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "damnit-gui.png"
    shot.unlink(missing_ok=True)
    log = stack.root / "logs" / "gui.log"
    with xvfb() as display, log.open("wb") as errors:
        env = {
            **os.environ,
            "DISPLAY": display,
            "QT_QPA_PLATFORM": "xcb",
            "AMORE_BROKER": stack.kafka.bootstrap_servers,
            "HOME": str(stack.root / "home"),
            "QTWEBENGINE_CHROMIUM_FLAGS": "--no-sandbox",
            "LIBGL_ALWAYS_SOFTWARE": "1",
        }
        gui = await asyncio.create_subprocess_exec(
            str(stack.python), str(SCRIPTS / "gui_probe.py"), str(stack.context_dir), "2",
            str(shot), stdout=asyncio.subprocess.PIPE, stderr=errors, env=env,
        )  # fmt: skip
        assert gui.stdout is not None
        try:
            ready = await _line(gui.stdout, 120)
            assert "ready" in ready, ready
            model = ready["ready"]
            assert {"n_trains", "label", "image", "line", "broken", "comment"} <= set(
                model["columns"]
            )
            assert "Detector/Image" in model["titles"]
            row = model["runs"]["1"]
            assert row["n_trains"] == 400
            assert row["label"] == "run 1"
            assert row["image"] == "<decoration>"  # the PNG thumbnail
            assert row["broken"] == "<decoration>"  # the error marker
            assert "2" not in model["runs"]

            stack.make_runs([2])  # processed while the GUI is open
            await stack.process([2])
            final = await _line(gui.stdout, 240)
            assert "error" not in final, final
            assert "final" in final, final
            assert final["final"]["runs"]["2"]["n_trains"] == 400
            assert final["final"]["runs"]["2"]["label"] == "run 2"
            assert await asyncio.wait_for(gui.wait(), 60) == 0
        finally:
            if gui.returncode is None:
                gui.kill()
                await gui.wait()
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes().startswith(b"\x89PNG")
