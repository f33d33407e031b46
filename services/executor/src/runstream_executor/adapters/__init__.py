"""I/O adapters of the executor."""
