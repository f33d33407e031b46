"""The context-file API under runstream's own name.

``from runstream.context import Variable, Cell, Skip`` in a context file is the
same as ``from damnit_ctx import ...``: both resolve to the classes the
executor's loader recognises (inside workers too).
"""

from runstream_executor.context_api import (
    Cell,
    ContextFileErrors,
    DependencyError,
    Group,
    GroupError,
    Pipeline,
    RunData,
    Skip,
    Variable,
)

__all__ = [
    "Cell",
    "ContextFileErrors",
    "DependencyError",
    "Group",
    "GroupError",
    "Pipeline",
    "RunData",
    "Skip",
    "Variable",
]
