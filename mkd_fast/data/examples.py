"""One example, as every loader returns it and every teacher/student view consumes it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union


@dataclass(frozen=True)
class Example:
    """``uid`` is stable across runs and views (e.g. "sst2/train/41", or a content hash for augmented
    copies), so a teacher's soft targets and a student's inputs are joined by it.  ``texts`` holds one
    text (single sentence) or two (pair).  ``label`` is a class index, a float score (regression), or
    None for unlabeled text."""

    uid: str
    task: str
    texts: Tuple[str, ...]
    label: Optional[Union[int, float]] = None
