"""``python -m runstream_ingest``: run the service (same as ``runstream serve ingest``)."""

from __future__ import annotations

import anyio

from .app import create


def main() -> None:
    anyio.run(create().run)  # logging from the settings (RUNSTREAM_INGEST_LOG_LEVEL)


if __name__ == "__main__":
    main()
