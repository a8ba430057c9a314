"""Files that appear whole or not at all: written under a temporary name beside the target,
synced, then renamed over it. A reader, a resumed run or DVC never sees half a file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling to write to; on success it is synced and renamed to `path`.

    The final name only ever holds a complete file; on failure the temporary file is removed
    and an earlier file under the final name is left untouched. The temporary name is hidden
    and ends in `.part`, so directory scans skip it and cleanups can find it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        yield tmp
        # The data must be on disk before the rename makes it visible under the final name.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
