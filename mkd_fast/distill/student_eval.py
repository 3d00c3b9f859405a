"""`mkd-fast eval`: a saved student's metrics on a labeled split, per task and macro-averaged.

Why its own module: the CLI only parses flags; finding the tasks (the student's own definitions),
loading the split and refusing an unlabeled one happen here, testable without a shell.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

__all__ = ["evaluate_student_dir"]


def evaluate_student_dir(student_dir, tasks: Optional[Sequence[str]] = None, data: str = "glue",
                         data_dir: Optional[str] = None, split: str = "dev", seed: int = 0, synthetic_sizes: Any = None,
                         max_examples: Optional[int] = None, batch_size: int = 256) -> Dict[str, Dict[str, float]]:
    """:func:`evaluate_model` of the student saved at ``student_dir`` on ``split`` of ``tasks`` (default:
    all its heads), scored with the task definitions saved in the student.  Raises when no example of the
    split is labeled (e.g. GLUE test files)."""
    from pathlib import Path

    from ..students import load_student
    from .evaluation import evaluate_model
    from .run_config import load_run_data

    if not Path(student_dir).is_dir():
        raise FileNotFoundError(f"--student: no saved student folder {student_dir}")
    student = load_student(student_dir)
    names = list(tasks) if tasks else student.task_names
    missing = [t for t in names if t not in student.tasks]
    if missing:
        raise ValueError(f"--tasks: the student at {student_dir} has no head for {missing} "
                         f"(it has {student.task_names})")
    if data == "glue" and not data_dir:
        raise ValueError("--data-dir: required with --data glue")
    _, splits = load_run_data(names, data, data_dir, seed, synthetic_sizes, {split: max_examples},
                              source="mkd-fast eval")
    results = evaluate_model(student, {t: student.tasks[t] for t in names}, splits[split], batch_size)
    if not results:
        raise ValueError(f"--split: no labeled examples in split {split!r} of {names}; evaluation needs labels")
    return results
