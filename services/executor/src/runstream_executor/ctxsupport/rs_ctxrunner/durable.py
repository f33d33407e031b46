"""Putting a finished file in place durably (no h5py here: the service uses it too)."""

from __future__ import annotations

import os


def commit(path: str) -> None:
    """Make ``path + '.writing'`` durable and put it in place: fsync, rename, fsync the folder.

    A crash leaves either no file at ``path`` or the whole of it.
    """
    tmp = path + ".writing"
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
