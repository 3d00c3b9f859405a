"""Local CSV / TSV / JSONL files with a column mapping, for tasks that are not in ``glue_data`` layout.

Error rules (the same as the GLUE loader): a malformed row (wrong column count, missing field,
unparsable or unknown label) is a ValueError naming the file and the 1-based line number.  Nothing is
dropped silently.  TSV is read without quoting (like GLUE's files); CSV with standard double quotes.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from ..tasks.definition import TaskDef
from ..tasks.glue import get_task
from .examples import Example

__all__ = ["load_table", "parse_label", "AUTO"]

AUTO = "auto"  # label_column default: the task's label_field when the file has it, else unlabeled


def parse_label(raw, task: TaskDef, where: str) -> Union[int, float]:
    """Map a raw label to a class index (by name, or as an integer index) or a float score.
    ``where`` ("file:line") goes into the error message."""
    if task.kind == "regression":
        if isinstance(raw, bool):
            raise ValueError(f"{where}: label {raw!r} is not a number (task {task.name!r} is regression)")
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {raw!r} is not a number (task {task.name!r} is regression)") from None
        if not math.isfinite(value):
            raise ValueError(f"{where}: label {raw!r} is not finite")
        return value
    if isinstance(raw, str):
        s = raw.strip()
        if s in task.label_names:
            return task.label_names.index(s)
        try:
            idx = int(s)
        except ValueError:
            raise ValueError(
                f"{where}: unknown label {raw!r} for task {task.name!r}; expected one of {list(task.label_names)} "
                f"or an index 0..{task.num_labels - 1}"
            ) from None
    elif isinstance(raw, bool) or not isinstance(raw, (int, float)) or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError(f"{where}: label {raw!r} is not a class name or index for task {task.name!r}")
    else:
        idx = int(raw)
    if not 0 <= idx < task.num_labels:
        raise ValueError(f"{where}: label index {idx} out of range 0..{task.num_labels - 1} for task {task.name!r}")
    return idx


def _infer_fmt(path: Path, fmt: Optional[str]) -> str:
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    fmt = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "csv": "csv", "tsv": "tsv", "txt": "tsv"}.get(fmt, fmt)
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"fmt: cannot tell the format of {path} (got {fmt!r}); pass fmt='csv', 'tsv' or 'jsonl'")
    return fmt


def _rows(path: Path, fmt: str) -> Iterator[Tuple[int, dict]]:
    """(1-based line number, row mapping) for each data row."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if fmt == "jsonl":
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
            return
        if fmt == "csv":
            reader = csv.reader(f)
        else:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = None
        for fields in reader:
            lineno = reader.line_num
            if not fields or fields == [""]:
                continue
            if header is None:
                header = [h.strip() for h in fields]
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path}:{lineno}: expected {len(header)} columns ({header}), got {len(fields)}")
            yield lineno, dict(zip(header, fields))


def load_table(
    path: Union[str, Path],
    task: Union[TaskDef, str],
    text_columns: Optional[Sequence[str]] = None,
    label_column: Optional[str] = AUTO,
    fmt: Optional[str] = None,
    split: Optional[str] = None,
) -> List[Example]:
    """Read ``path`` into Examples of ``task``.

    ``text_columns`` defaults to ``task.input_fields``; ``label_column`` to ``task.label_field`` if the
    first row has it (else the rows are unlabeled, e.g. a transfer set); ``None`` means unlabeled.
    ``uid`` is ``f"{task}/{split}/{row_index}"`` with ``split`` defaulting to the file's stem."""
    path = Path(path)
    task = get_task(task)
    fmt = _infer_fmt(path, fmt)
    text_columns = tuple(text_columns) if text_columns is not None else task.input_fields
    if len(text_columns) != len(task.input_fields):
        raise ValueError(f"text_columns: task {task.name!r} takes {len(task.input_fields)} texts, got {text_columns}")
    split = split or path.stem
    out: List[Example] = []
    resolved_label = label_column
    for i, (lineno, row) in enumerate(_rows(path, fmt)):
        where = f"{path}:{lineno}"
        if i == 0 and resolved_label == AUTO:
            resolved_label = task.label_field if task.label_field in row else None
        texts = []
        for col in text_columns:
            if col not in row:
                raise ValueError(f"{where}: missing text column {col!r} (text_columns); row has {sorted(row)}")
            val = row[col]
            if not isinstance(val, str):
                raise ValueError(f"{where}: text column {col!r} is not a string: {val!r}")
            texts.append(val.strip())
        label = None
        if resolved_label is not None:
            if resolved_label not in row or row[resolved_label] is None or row[resolved_label] == "":
                raise ValueError(f"{where}: missing label column {resolved_label!r} (label_column)")
            label = parse_label(row[resolved_label], task, where)
        out.append(Example(uid=f"{task.name}/{split}/{i}", task=task.name, texts=tuple(texts), label=label))
    return out
