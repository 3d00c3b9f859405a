"""Atomic file writes: a crash or a kill never leaves a half-written file where a complete one was expected."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, List, Optional, Union


def atomic_write(path: Union[str, Path], write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, fsync it, then rename it over ``path``.

    The rename is atomic on POSIX file systems: readers see the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
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


TEMP_MARKER = ".tmp-"


def temp_prefix(name: str) -> str:
    """Name prefix of the temporary siblings written for ``name`` (``.checkpoint.pt.tmp-``)."""
    return f".{name}{TEMP_MARKER}"


def remove_temp_leftovers(directory: Union[str, Path], names: Optional[Iterable[str]] = None) -> List[Path]:
    """Remove temporary files/folders that a killed write left in ``directory`` (no exception handler runs on
    SIGKILL, and they can be as large as the file being written).  ``names``: only the leftovers of these
    final names (``.{name}.tmp-*``), for folders the caller does not own; None: every ``.*.tmp-*`` entry.
    Only for a folder with one writer at a time: a concurrent writer's temporary file would be removed.
    Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    prefixes = None if names is None else tuple(temp_prefix(n) for n in names)
    removed = []
    for p in directory.iterdir():
        name = p.name
        ours = name.startswith(prefixes) if prefixes is not None else (name.startswith(".") and TEMP_MARKER in name)
        if not ours:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        removed.append(p)
    return removed
