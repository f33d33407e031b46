"""docs/asyncapi/ must describe the services as the code builds them.

When ``test_committed_asyncapi_is_current`` fails, regenerate and commit:

    uv run python scripts/asyncapi.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from runstream_common.topics import Topics

from deploy.settings_env import service_entry_points

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "asyncapi.py"
COMMITTED = REPO / "docs" / "asyncapi"
REGENERATE = "docs/asyncapi is stale: run `uv run python scripts/asyncapi.py` and commit the result"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runstream_asyncapi_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh generation, in a separate process (it edits its own environment)."""
    out = tmp_path_factory.mktemp("asyncapi")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    # A different environment must not change the output: the script scrubs it.
    env["RUNSTREAM_KAFKA_TOPIC_PREFIX"] = "somebody-elses-prefix"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("*.json"))}


def committed() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(COMMITTED.glob("*.json"))}


def test_one_document_per_service(generated: dict[str, str]) -> None:
    assert sorted(generated) == sorted(f"{name}.json" for name in service_entry_points())


def test_committed_asyncapi_is_current(generated: dict[str, str]) -> None:
    current = committed()
    assert sorted(current) == sorted(generated), REGENERATE
    for name, content in generated.items():
        assert current[name] == content, f"{name}: {REGENERATE}"


@pytest.mark.parametrize("service", sorted(service_entry_points()))
def test_documents_describe_runstream_topics(service: str) -> None:
    document: dict[str, Any] = json.loads((COMMITTED / f"{service}.json").read_text())
    assert document["asyncapi"].startswith("3.")
    assert document["info"]["title"] == f"runstream-{service}"
    topics = set(Topics("runstream").all())
    for key, channel in document["channels"].items():
        assert channel["address"] in topics, f"{key}: {channel['address']} is not a runstream topic"
    for key, operation in document["operations"].items():
        ref = operation["channel"]["$ref"]
        assert ref.startswith("#/channels/"), ref
        channel = ref.removeprefix("#/channels/").replace("%20", " ")
        assert channel in document["channels"], f"{key} refers to a missing channel"


def test_creating_an_app_must_not_touch_the_network() -> None:
    script = load_script()
    lookup = socket.getaddrinfo

    def connecting() -> None:
        socket.create_connection(("127.0.0.1", 9), timeout=1)

    def resolving() -> None:
        socket.getaddrinfo("kafka.invalid", 9092)

    with pytest.raises(script.NetworkAtCreation, match="create_connection"):
        script.specification("connecting", connecting)
    with pytest.raises(script.NetworkAtCreation, match="getaddrinfo"):
        script.specification("resolving", resolving)
    assert socket.getaddrinfo is lookup, "the guard must restore the socket module"


def test_check_mode_reports_stale_documents(tmp_path: Path) -> None:
    script = load_script()
    files = {"a.json": "{}\n", "b.json": "[]\n"}
    assert script.write(files, tmp_path) == ["wrote a.json", "wrote b.json"]
    assert script.stale(files, tmp_path) == []
    (tmp_path / "a.json").write_text('{"old": 1}\n')
    (tmp_path / "gone.json").write_text("{}\n")
    assert script.stale(files, tmp_path) == [
        "gone.json: no such service",
        "a.json: differs from the code",
    ]
    assert script.write(files, tmp_path) == ["removed gone.json", "wrote a.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
