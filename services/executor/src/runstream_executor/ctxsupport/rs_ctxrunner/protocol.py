"""Length-prefixed pickle frames between the service and its workers.

Workers run user code, which can write to their end of the channel: the service
reads their frames with :func:`safe_loads`, which builds plain data only (the
built-in containers, numpy arrays, dtypes and scalars, dates). Anything else
is refused (:class:`RefusedFrame`) instead of being imported or called.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct("!Q")
PICKLE_PROTOCOL = 4  # readable by every Python >= 3.8


def dumps(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=PICKLE_PROTOCOL)
    return HEADER.pack(len(body)) + body


def loads(body: bytes) -> Any:
    return pickle.loads(body)


class RefusedFrame(EOFError):
    """A frame from a worker that is not plain data (the service does not load it)."""


SAFE_GLOBALS = frozenset(
    {
        *(("builtins", n) for n in ("set", "frozenset", "complex", "slice", "range", "bytearray")),
        ("collections", "OrderedDict"),
        *(("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")),
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(
            (m, n)
            for m in ("numpy.core.multiarray", "numpy._core.multiarray")
            for n in ("_reconstruct", "scalar")
        ),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class _PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS or module == "numpy.dtypes":
            return super().find_class(module, name)
        raise RefusedFrame(f"a worker sent {module}.{name}, which the service does not load")


def safe_loads(body: bytes) -> Any:
    """Unpickle plain data only (see the module's docstring)."""
    try:
        return _PlainData(io.BytesIO(body)).load()
    except RefusedFrame:
        raise
    except Exception as exc:
        raise RefusedFrame(f"a worker sent a malformed frame: {exc!r}") from exc


def read_frame(stream: BinaryIO) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        raise EOFError("peer closed the pipe")
    (size,) = HEADER.unpack(header)
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError("peer closed the pipe mid-frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return pickle.loads(b"".join(chunks))


def write_frame(stream: BinaryIO, message: Any) -> None:
    stream.write(dumps(message))
    stream.flush()
