"""Context runtime: load context files, evaluate variables, summarise, write HDF5.

Modules import each other relatively so the package works both as the
top-level ``rs_ctxrunner`` (inside workers) and as
``runstream_executor.ctxsupport.rs_ctxrunner`` (pure helpers in the service).
"""
