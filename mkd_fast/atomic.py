"""Atomic file writes: a crash or a kill never leaves a half-written file where a complete one was expected."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Union


def atomic_write(path: Union[str, Path], write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, fsync it, then rename it over ``path``.

    The rename is atomic on POSIX file systems: readers see the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
