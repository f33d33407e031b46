"""Length-prefixed pickle frames between the service and its workers."""

from __future__ import annotations

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
