"""Reader for the classic ``glue_data/`` layout (``data_dir/SST-2/train.tsv`` ...), quirks included.

Why not ``csv``/pandas defaults: the files are tab separated with **no quoting** (sentences contain bare
``"``), so default readers merge or split MRPC/STS-B rows.  Each line is split on tabs, which is what
``csv.QUOTE_NONE`` does.  MRPC's header starts with a UTF-8 BOM (read as ``utf-8-sig``); RTE/QNLI/MNLI use
string labels (mapped through the TaskDef); STS-B has 10 columns and a float score; CoLA has no header.

A malformed row raises ValueError naming the file and its 1-based line.  With ``on_error="skip"`` such
rows are skipped instead (QQP's train file has a few truncated rows), counted in the returned list's
``skipped`` attribute and logged as a warning: never dropped silently.  Empty lines carry no row and are
ignored.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Union

from ..tasks.definition import TaskDef
from ..tasks.glue import get_task, task_extra
from .examples import Example
from .tabular import parse_label

__all__ = ["load_glue_split", "glue_splits", "glue_test_splits", "ExampleList"]

log = logging.getLogger(__name__)


class ExampleList(list):
    """A list of Examples that also says how many malformed rows were skipped (``on_error="skip"``)."""

    skipped: int = 0
    skipped_lines: List[int]

    def __init__(self, *args):
        super().__init__(*args)
        self.skipped = 0
        self.skipped_lines = []


def glue_test_splits(task: Union[TaskDef, str]) -> List[str]:
    """``task``'s unlabeled test split(s): ``["test"]``, or MNLI's ``test_matched``/``test_mismatched``."""
    return task_extra(get_task(task), "glue_test_splits", "test").split(",")


def glue_splits(task: Union[TaskDef, str]) -> List[str]:
    """Split names accepted for ``task``: train, its dev split(s), its test split(s)."""
    task = get_task(task)
    return ["train"] + task_extra(task, "glue_dev_splits", "dev").split(",") + glue_test_splits(task)


def load_glue_split(data_dir: Union[str, Path], task: Union[TaskDef, str], split: str,
                    on_error: str = "raise") -> ExampleList:
    """Examples of ``task``'s ``split`` ("train", "dev", or "test", whose rows are unlabeled; MNLI has
    "dev_matched"/"dev_mismatched" and "test_matched"/"test_mismatched" instead, see :func:`glue_splits`)
    from ``data_dir`` in glue_data layout.  ``uid = f"{task}/{split}/{i}"`` with
    ``i`` the 0-based data row; labels are class indices (floats for STS-B)."""
    task = get_task(task)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
    glue_dir = task_extra(task, "glue_dir")
    if glue_dir is None:
        raise ValueError(f"task: {task.name!r} has no glue_data layout (no 'glue_dir' in TaskDef.extra)")
    if split not in glue_splits(task):
        raise ValueError(f"split: {split!r} is not a split of {task.name!r}; expected one of {glue_splits(task)}")
    is_test = split in glue_test_splits(task)
    path = Path(data_dir) / glue_dir / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (data_dir={str(data_dir)!r}, task={task.name!r}, split={split!r})")

    has_header = task_extra(task, "glue_header", "1") == "1"
    text_spec = task_extra(task, "glue_text_columns").split(",")
    if is_test and task_extra(task, "glue_test_header") is not None:
        has_header = task_extra(task, "glue_test_header") == "1"
        text_spec = task_extra(task, "glue_test_text_columns", ",".join(text_spec)).split(",")
    label_spec = task_extra(task, "glue_label_column")
    out = ExampleList()
    n_cols = None
    text_idx = label_idx = None
    if not has_header:
        text_idx = [int(c) for c in text_spec]
        label_idx = int(label_spec) if not is_test else None

    with open(path, encoding="utf-8-sig", newline="") as f:
        lineno = 0
        row_i = -1  # 0-based data row, counting skipped rows too, so uids do not depend on on_error
        for raw in f:
            lineno += 1
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if has_header and n_cols is None:
                header = [h.strip() for h in fields]
                n_cols = len(header)
                missing = [c for c in text_spec if c not in header]
                if missing:
                    raise ValueError(f"{path}:{lineno}: header lacks text column(s) {missing}; header is {header}")
                text_idx = [header.index(c) for c in text_spec]
                label_idx = header.index(label_spec) if label_spec in header else None
                if label_idx is None and not is_test:
                    raise ValueError(f"{path}:{lineno}: header lacks label column {label_spec!r}; header is {header}")
                continue
            if n_cols is None:  # headerless (CoLA): the first row fixes the width
                n_cols = len(fields)
                if n_cols <= max(text_idx + ([label_idx] if label_idx is not None else [])):
                    raise ValueError(f"{path}:{lineno}: expected at least "
                                     f"{max(text_idx + [label_idx or 0]) + 1} columns, got {n_cols}")
            where = f"{path}:{lineno}"
            row_i += 1
            try:
                if len(fields) != n_cols:
                    raise ValueError(f"{where}: expected {n_cols} tab-separated columns, got {len(fields)}")
                label = parse_label(fields[label_idx], task, where) if label_idx is not None else None
            except ValueError as e:
                if on_error == "raise":
                    raise
                out.skipped += 1
                out.skipped_lines.append(lineno)
                log.debug("skipping %s", e)
                continue
            texts = tuple(fields[j].strip() for j in text_idx)
            out.append(Example(uid=f"{task.name}/{split}/{row_i}", task=task.name, texts=texts, label=label))
    if out.skipped:
        log.warning("%s: skipped %d malformed row(s) (lines %s%s)", path, out.skipped,
                    out.skipped_lines[:10], "..." if out.skipped > 10 else "")
    return out
