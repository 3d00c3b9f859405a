"""`mkd-fast predict`: inputs from the command line or a file, a saved student's predictions, and writing them.

Why its own module: reading inputs (the task's text columns in a TSV/CSV/JSONL file, as the data loaders
read them) and writing rows (JSONL or TSV, by the output's extension) are file formats, not modelling.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..data.examples import Example

__all__ = ["open_student_for", "inputs_from_texts", "inputs_from_file", "prediction_rows", "format_rows", "write_rows"]


def open_student_for(student_dir, task_name: str):
    """The saved student at ``student_dir``, checked to have a head for ``task_name``."""
    from .base import load_student

    if not Path(student_dir).is_dir():
        raise FileNotFoundError(f"--student: no saved student folder {student_dir}")
    student = load_student(student_dir)
    if task_name not in student.tasks:
        raise ValueError(f"--task: the student at {student_dir} has no head for {task_name!r} "
                         f"(it has {student.task_names})")
    return student


def inputs_from_texts(task, text: str, text_b: Optional[str] = None) -> List[Example]:
    """One example from ``--text`` (and ``--text-b`` for a pair task); the count must fit the task."""
    if task.is_pair and text_b is None:
        raise ValueError(f"--text-b: task {task.name!r} takes sentence pairs; give the second text too")
    if not task.is_pair and text_b is not None:
        raise ValueError(f"--text-b: task {task.name!r} takes single sentences")
    texts = (text,) if text_b is None else (text, text_b)
    return [Example(f"{task.name}/input/0", task.name, texts)]


def inputs_from_file(task, path) -> List[Example]:
    """The rows of a .tsv/.csv (with a header) or .jsonl file: the task's ``input_fields`` columns are the
    texts; a label column, when present, is read too (and ignored by prediction)."""
    from ..data.tabular import load_table

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input: no file {path}")
    return load_table(path, task)


def prediction_rows(student, task_name: str, examples: Sequence[Example],
                    batch_size: int = 256) -> List[Dict[str, Any]]:
    """One row per example: ``uid``, ``prediction`` (the label name, or the score for regression; what
    ``student.predict`` returns) and, for classification, ``probabilities`` {label: softmax probability}."""
    task = student.task(task_name)
    logits = student.predict_logits(task_name, list(examples), batch_size=batch_size)
    rows = []
    if task.kind == "regression":
        for e, z in zip(examples, logits[:, 0].tolist()):
            rows.append({"uid": e.uid, "prediction": float(z)})
        return rows
    probs = torch.softmax(logits, dim=-1)
    for e, p, idx in zip(examples, probs.tolist(), logits.argmax(dim=-1).tolist()):
        rows.append({"uid": e.uid, "prediction": task.label_names[idx],
                     "probabilities": dict(zip(task.label_names, p))})
    return rows


def _cells(row: Dict[str, Any]) -> List[str]:
    if "probabilities" in row:
        return [row["prediction"], f"{row['probabilities'][row['prediction']]:.4f}"]
    return [f"{row['prediction']:.4f}"]


def format_rows(rows: Sequence[Dict[str, Any]], with_uid: bool) -> List[str]:
    """Tab-separated lines for the terminal: [uid,] prediction[, its probability]."""
    return ["\t".join(([r["uid"]] if with_uid else []) + _cells(r)) for r in rows]


def write_rows(rows: Sequence[Dict[str, Any]], path) -> None:
    """``.jsonl``: one JSON object per row; ``.tsv``: uid, prediction and one ``p_<label>`` column per class."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".tsv"):
        raise ValueError(f"--output: expected a .jsonl or .tsv file name, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if suffix == ".jsonl":
            for r in rows:
                fh.write(json.dumps(r) + "\n")
            return
        labels = list(rows[0].get("probabilities", {})) if rows else []
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["uid", "prediction", *[f"p_{lab}" for lab in labels]])
        for r in rows:
            writer.writerow([r["uid"], r["prediction"], *[f"{r['probabilities'][lab]:.6f}" for lab in labels]])
