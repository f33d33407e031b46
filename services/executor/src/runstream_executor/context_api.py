"""The context-file API for ``runstream.context`` (``from runstream.context import Variable``).

Inside a worker the context runtime is on ``sys.path`` as ``rs_ctxrunner``: the
names must come from that very module, or the loader would not recognise the
variables. Elsewhere (an IDE, a notebook, a script using ``Pipeline``) the
packaged ``ctxsupport`` folder is appended to ``sys.path`` first, so that context
code run by ``Pipeline.from_str`` (``from damnit_ctx import Variable``) and this
module share the same classes.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import rs_ctxrunner.api  # noqa: F401
except ImportError:  # not inside a worker
    sys.path.append(str(Path(__file__).resolve().parent / "ctxsupport"))

# The names are listed once, in damnit_ctx (the module DAMNIT's context files import).
from damnit_ctx import *  # noqa: F403
from damnit_ctx import __all__ as __all__
