"""Self-contained context runtime, put on the worker's ``sys.path``.

Nothing here imports pydantic or any runstream package, so a foreign
interpreter (a proposal's ``context_python``) with only the scientific stack
can run it. ``damnit_ctx`` and ``runstream_ctx`` are the modules context files
import; ``rs_ctxrunner`` holds the loader, evaluation, summaries, the HDF5
layout writer and the worker loop.
"""
