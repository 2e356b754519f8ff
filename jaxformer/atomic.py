"""Atomic file writes: write to a temp file in the target's folder, then rename it into place.

A reader sees the old file or the complete new one, never a half-written one; an interrupted or failed write
leaves no temp file behind (the rename is atomic because source and target are on the same file system).

    write_text(path, text)
    write_bytes(path, data)
    with replacing(path) as tmp:     # write tmp however you like; on success it becomes `path`
        np.save(tmp, array)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a fresh temp path beside `path`; on a clean exit rename it to `path`, on an error delete it.

    `durable=True` fsyncs the file before the rename (for large caches whose loss would cost a re-computation)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, written atomically."""
    write_bytes(path, text.encode("utf-8"))
