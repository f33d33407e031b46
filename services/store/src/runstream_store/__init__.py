"""runstream store: the only writer of PostgreSQL and the per-run HDF5 files, and the GUI feed."""

__all__ = ["__version__"]
__version__ = "0.1.0"
