"""Stand-ins for the rich modules typer imports for help but ``runstream`` rarely uses.

typer's help renderer (``typer.rich_utils``) imports ``rich.markdown`` (markdown-it,
pygments) and ``rich.traceback`` when it is first imported: about half the time of
``runstream --help``. Our help is rich markup, not Markdown, and a traceback is only
drawn when a command fails. ``defer()`` puts stand-in modules in ``sys.modules``;
the real module is imported the first time anything of it is used (a class made,
a function called, any other attribute read), so behaviour does not change.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

DEFERRED = {"rich.markdown": ("Markdown",), "rich.traceback": ("Traceback",)}


class _StandIn(types.ModuleType):
    """A module whose attributes come from the real one, imported on first use."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # the import system probing (__path__, ...): not a use
            raise AttributeError(attr)
        return getattr(real(self.__name__), attr)


def real(name: str) -> types.ModuleType:
    """The real module ``name`` (imported now if only its stand-in was there)."""
    module = sys.modules.get(name)
    if isinstance(module, _StandIn):
        del sys.modules[name]
        module = importlib.import_module(name)
    return module if module is not None else importlib.import_module(name)


class _ClassProxyMeta(type):
    def __getattr__(cls, attr: str) -> Any:  # class attributes: Traceback.from_exception
        return getattr(getattr(real(cls.__module__), cls.__name__), attr)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, getattr(real(cls.__module__), cls.__name__))


def _class_proxy(module: str, name: str) -> type:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        return getattr(real(module), name)(*args, **kwargs)

    return _ClassProxyMeta(name, (), {"__new__": __new__, "__module__": module})


def defer() -> None:
    """Install the stand-ins (no-op for a module that is imported already)."""
    for name, classes in DEFERRED.items():
        if name in sys.modules:
            continue
        stand_in = _StandIn(name)
        for cls in classes:
            setattr(stand_in, cls, _class_proxy(name, cls))
        sys.modules[name] = stand_in
