"""Shared contracts of runstream: message models, topic names, settings, errors, telemetry.

Only this package is shared between services. It must stay light: no h5py,
asyncpg or scientific stack imports (a test checks this).
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
