"""Log set-up of a service process: one format, the level from the service's settings."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (the settings' ``log_level``, e.g. RUNSTREAM_STORE_LOG_LEVEL).

    Does nothing when logging is already configured: ``runstream serve --log-level``
    (the command line wins over the settings) or a test harness.
    """
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
