"""The context-file API under runstream's own name.

``from runstream.context import Variable, Cell, Skip`` in a context file is the
same as ``from damnit_ctx import ...``: both resolve to the classes the
executor's loader recognises (inside workers too). The names are the
executor's ``context_api``; this module only gives them our package's name.
"""

from runstream_executor.context_api import *  # noqa: F403
from runstream_executor.context_api import __all__ as __all__
