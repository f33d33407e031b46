"""Generate docs/asyncapi/<service>.json from the services' FastStream apps.

    uv run python scripts/asyncapi.py                  # write docs/asyncapi/
    uv run python scripts/asyncapi.py --out DIR        # write elsewhere
    uv run python scripts/asyncapi.py --check          # exit 1 if docs/asyncapi/ is stale

Every service of the ``runstream.services`` entry-point group is built the way
its factory does it — ``build_app(Settings())`` of the entry point's module
(docs/development.md), without the extra start-up checks a ``create()`` may do
(the store's looks at the database schema) — and described with FastStream's
own generator (``app.schema.to_specification()``, AsyncAPI 3.0.0), the schema
``faststream docs gen --factory <module>:create`` writes.

The output must not depend on the machine: runstream's environment variables
are removed first, so the files describe the default settings (topic prefix
``runstream``, the local Kafka address). Creating an app must not touch the
network; the script fails if a factory opens a connection or resolves a name.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "asyncapi"
# Variables that would change the generated documents (prefix, servers, data root).
SCRUBBED_PREFIXES = ("RUNSTREAM_",)
SCRUBBED_NAMES = ("XFEL_DATA_ROOT", "SLURM_JWT")


class NetworkAtCreation(RuntimeError):
    """A service factory tried to reach the network while building its app."""


@contextmanager
def no_network(service: str) -> Iterator[None]:
    """Fail on any outgoing connection or name lookup while the block runs."""

    def refuse(what: str) -> Callable[..., Any]:
        def blocked(*args: Any, **kwargs: Any) -> Any:
            raise NetworkAtCreation(f"creating the {service} app attempted {what}{args[1:2]}")

        return blocked

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo,
             socket.create_connection)  # fmt: skip
    socket.socket.connect = refuse("socket.connect")  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse("socket.connect_ex")  # type: ignore[method-assign]
    socket.getaddrinfo = refuse("getaddrinfo")
    socket.create_connection = refuse("create_connection")
    try:
        yield
    finally:
        (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo,  # type: ignore[method-assign]
         socket.create_connection) = saved  # fmt: skip


def scrub_environment() -> None:
    for name in list(os.environ):
        if name.startswith(SCRUBBED_PREFIXES) or name in SCRUBBED_NAMES:
            del os.environ[name]


def specification(service: str, factory: Callable[[], Any]) -> dict[str, Any]:
    """The AsyncAPI document of one service, as JSON-compatible data."""
    with no_network(service):
        app = factory()
    schema = getattr(app, "schema", None)
    if schema is None:
        raise SystemExit(
            f"{service}: the app has no AsyncAPI specification (FastStream(..., specification=AsyncAPI(...)))"
        )
    document = schema.to_specification().to_jsonable()
    if not isinstance(document, dict):
        raise SystemExit(f"{service}: unexpected specification {type(document).__name__}")
    return document


def app_factory(ep: EntryPoint) -> Callable[[], Any]:
    """``build_app(Settings()).app`` of the entry point's module, or the entry point itself."""
    module = importlib.import_module(ep.module)
    build_app = getattr(module, "build_app", None)
    if build_app is None:
        return cast(Callable[[], Any], ep.load())
    package = ep.module.split(".", 1)[0]
    settings_class = importlib.import_module(f"{package}.settings").Settings
    return lambda: build_app(settings_class()).app


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> content for every service."""
    scrub_environment()
    files: dict[str, str] = {}
    for ep in sorted(entry_points(group="runstream.services"), key=lambda e: e.name):
        files[f"{ep.name}.json"] = render(specification(ep.name, app_factory(ep)))
    if not files:
        raise SystemExit("no runstream.services entry points: is the workspace installed?")
    return files


def write(files: dict[str, str], out: Path) -> list[str]:
    """Write ``files`` into ``out``, removing documents of services that no longer exist."""
    out.mkdir(parents=True, exist_ok=True)
    changed = []
    for stale in sorted(out.glob("*.json")):
        if stale.name not in files:
            stale.unlink()
            changed.append(f"removed {stale.name}")
    for name, content in files.items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed.append(f"wrote {name}")
    return changed


def stale(files: dict[str, str], out: Path) -> list[str]:
    problems = [
        f"{p.name}: no such service" for p in sorted(out.glob("*.json")) if p.name not in files
    ]
    for name, content in files.items():
        path = out / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"{name}: differs from the code")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        problems = stale(files, args.out)
        for problem in problems:
            print(f"stale: {problem}", file=sys.stderr)
        if problems:
            print("run: uv run python scripts/asyncapi.py", file=sys.stderr)
        return 1 if problems else 0
    for line in write(files, args.out) or ["up to date"]:
        print(f"{args.out}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
