"""What a task is (like mt-dnn's task file): the fields every loader, model head and metric agrees on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

TASK_KINDS = ("classification", "regression")


@dataclass(frozen=True)
class TaskDef:
    """One task.  ``label_names`` gives the classes of a classification task (their order is the class
    index); a regression task has none and one output.  ``input_fields`` names one text column (single
    sentence) or two (sentence pair)."""

    name: str
    kind: str = "classification"
    label_names: Tuple[str, ...] = ()
    input_fields: Tuple[str, ...] = ("sentence",)
    label_field: str = "label"
    metrics: Tuple[str, ...] = ("accuracy",)
    description: str = ""
    extra: Tuple[Tuple[str, str], ...] = field(default=())  # free-form (key, value) pairs, e.g. file names

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"kind: expected one of {TASK_KINDS} for task {self.name!r}, got {self.kind!r}")
        if self.kind == "classification" and len(self.label_names) < 2:
            raise ValueError(f"label_names: a classification task ({self.name!r}) needs at least 2 labels")
        if self.kind == "regression" and self.label_names:
            raise ValueError(f"label_names: a regression task ({self.name!r}) has no label names")
        if len(self.input_fields) not in (1, 2):
            raise ValueError(f"input_fields: expected 1 or 2 text fields for {self.name!r}, got {self.input_fields}")

    @property
    def num_labels(self) -> int:
        """Width of the task head's output: the number of classes, or 1 for regression."""
        return len(self.label_names) if self.kind == "classification" else 1

    @property
    def is_pair(self) -> bool:
        return len(self.input_fields) == 2
