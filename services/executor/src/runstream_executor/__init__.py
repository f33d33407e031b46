"""runstream executor: DAMNIT-compatible context files evaluated per run by warm workers."""

__all__ = ["__version__"]
__version__ = "0.1.0"
