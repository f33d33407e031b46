"""runstream's own name for the context-file API: the same objects as ``damnit_ctx``."""

from damnit_ctx import *  # noqa: F403
from damnit_ctx import __all__ as __all__
