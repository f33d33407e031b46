"""runstream web: the live run table in a browser, one more client of the topics."""

__all__ = ["__version__"]
__version__ = "0.1.0"
