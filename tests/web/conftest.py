"""Browser fixtures: Debian's chromium driven by Playwright, and one live system per module.

Chromium comes from Debian (``deploy/local/chromium.sh install``, run by
``./task test``; the fixture runs it too when the browser is missing), never
from Playwright's own download. Screenshots go to ``.artifacts/web/`` (or
``$RUNSTREAM_TEST_ARTIFACTS``), which git ignores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.kafka import delete_topics

from .harness import REPO, WebSystem, drop_database, run, start_system

CHROMIUM_SH = REPO / "deploy" / "local" / "chromium.sh"
ARTIFACTS = Path(os.environ.get("RUNSTREAM_TEST_ARTIFACTS", REPO / ".artifacts")) / "web"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = subprocess.run(["bash", str(CHROMIUM_SH), "path"], capture_output=True, text=True)
    if found.returncode != 0:
        installed = subprocess.run(
            ["bash", str(CHROMIUM_SH), "install"], capture_output=True, text=True, timeout=900
        )
        if installed.returncode != 0:
            pytest.fail(f"cannot install chromium:\n{installed.stderr[-3000:]}", pytrace=False)
        found = subprocess.run(["bash", str(CHROMIUM_SH), "path"], capture_output=True, text=True)
    return found.stdout.strip()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def live(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSystem]:
    """Store, executor, ingest, slurm-gateway (local backend) and web as real processes."""
    root = tmp_path_factory.mktemp("web")
    system = start_system(stack.bootstrap_servers, stack.postgres_dsn, root)
    try:
        yield system
    finally:
        system.system.stop()
        delete_topics(stack.bootstrap_servers, system.kafka.topic_prefix)
        logs = ARTIFACTS / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for key, proc in system.system.procs.items():
            if proc.log.exists():
                shutil.copyfile(proc.log, logs / f"{key}.log")
        run(drop_database(stack.postgres_dsn, system.dsn))


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context; its page is screenshot into the artifacts at the end."""
    context = browser.new_context(viewport={"width": 1600, "height": 800}, accept_downloads=True)
    errors: list[str] = []
    new_page = context.new_page()
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    new_page.page_errors = errors
    try:
        yield new_page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # the page may be gone after a failure; never hide the failure
        with contextlib.suppress(Exception):
            new_page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
        context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
