"""``python -m runstream_ingest``: run the service (same as ``runstream serve ingest``)."""

from __future__ import annotations

import logging
import os
import sys

import anyio

from .app import create


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("RUNSTREAM_INGEST_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    anyio.run(create().run)


if __name__ == "__main__":
    main()
