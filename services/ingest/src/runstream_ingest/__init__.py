"""runstream ingest: facility events, a folder watcher and reprocess requests -> run messages."""

__all__ = ["__version__"]
__version__ = "0.1.0"
