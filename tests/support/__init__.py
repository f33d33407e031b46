"""Helpers shared by tests (importable as `support`, tests/ is on pytest\x27s pythonpath)."""
