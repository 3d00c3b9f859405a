"""What every student shares: task heads by name, batched prediction from examples or raw text, and a
saved-folder format that :func:`load_student` can reopen without knowing the architecture.

Why a base class: the trainer, the evaluator and the CLI only ever talk to this interface, so a new
architecture is a new subclass (``student_type`` + ``encode``/``forward`` + its own assets), nothing more.

Saved folder: ``student.json`` (format, ``student_type``, config, task definitions, weights hash),
``weights.pt`` (the state dict) and the architecture's input assets (a vocabulary, or a tokenizer folder).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar, Dict, List, Mapping, Sequence, Union

import torch
from torch import nn

from ..data.examples import Example
from ..tasks.definition import TaskDef
from ..teachers.multitask import atomic_replace_dir, state_fingerprint, task_from_dict, task_to_dict

__all__ = ["StudentBase", "load_student", "normalize_tasks", "STUDENT_TYPES"]

_FORMAT = 1
META_FILE = "student.json"
WEIGHTS_FILE = "weights.pt"
STUDENT_TYPES: Dict[str, type] = {}   # student_type -> class, filled as subclasses are defined

TextInput = Union[Example, str, Sequence[str]]


def normalize_tasks(tasks: Union[Sequence[TaskDef], Mapping[str, TaskDef]]) -> Dict[str, TaskDef]:
    """An ordered ``{name: TaskDef}`` from a list or a mapping; at least one task, names unique."""
    items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    if not items:
        raise ValueError("tasks: a student needs at least one task")
    bad = [t for t in items if not isinstance(t, TaskDef)]
    if bad:
        raise TypeError(f"tasks: expected TaskDef objects, got {type(bad[0]).__name__}")
    names = [t.name for t in items]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks: duplicate task names in {names}")
    return {t.name: t for t in items}


class StudentBase(nn.Module):
    """A multi-task student: one encoder, one head per task under ``self.heads`` (so head parameter names
    start with "heads.").  ``forward(task_name, **batch)`` takes what :meth:`encode` returns and gives raw
    logits [B, num_labels] ([B, 1] for regression)."""

    student_type: ClassVar[str] = ""
    config_class: ClassVar[type] = type(None)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.student_type:
            STUDENT_TYPES[cls.student_type] = cls

    def __init__(self, tasks: Union[Sequence[TaskDef], Mapping[str, TaskDef]]):
        super().__init__()
        self.tasks: Dict[str, TaskDef] = normalize_tasks(tasks)

    # ---- what subclasses provide
    def encode(self, examples: Sequence[Example], device=None) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, task_name: str, **batch) -> torch.Tensor:
        raise NotImplementedError

    def _save_assets(self, folder: Path) -> None:
        """Write what the student needs besides its weights to read text (vocabulary, tokenizer)."""
        raise NotImplementedError

    @classmethod
    def _build_for_load(cls, folder: Path, config, tasks: List[TaskDef]) -> "StudentBase":
        """An untrained student of the saved shape, its input assets read from ``folder``."""
        raise NotImplementedError

    # ---- tasks
    @property
    def task_names(self) -> List[str]:
        return list(self.tasks)

    def task(self, task_name: str) -> TaskDef:
        try:
            return self.tasks[task_name]
        except KeyError:
            raise KeyError(f"task_name: this student has no head for {task_name!r} "
                           f"(it has {self.task_names})") from None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- prediction
    def _as_examples(self, task_name: str, items: Sequence[TextInput]) -> List[Example]:
        """Examples as they are; a str becomes a single-text example, a (str, str) a pair.  The number of
        texts must fit the task."""
        if isinstance(items, (str, Example)):
            raise TypeError(f"examples: expected a list of inputs, got a single {type(items).__name__}; "
                            f"wrap it in a list")
        task = self.task(task_name)
        want = 2 if task.is_pair else 1
        out = []
        for i, item in enumerate(items):
            if isinstance(item, Example):
                ex = item
            elif isinstance(item, str):
                ex = Example(f"{task_name}/input/{i}", task_name, (item,))
            elif isinstance(item, (tuple, list)) and all(isinstance(t, str) for t in item):
                ex = Example(f"{task_name}/input/{i}", task_name, tuple(item))
            else:
                raise TypeError(f"examples: item {i} is a {type(item).__name__}; expected an Example, a str or a "
                                f"(str, str) pair")
            if len(ex.texts) != want:
                kind = "sentence pairs" if want == 2 else "single texts"
                raise ValueError(f"examples: task {task_name!r} takes {kind}, item {i} has {len(ex.texts)} text(s)")
            out.append(ex)
        return out

    @torch.no_grad()
    def predict_logits(self, task_name: str, examples: Sequence[TextInput], batch_size: int = 256) -> torch.Tensor:
        """Raw logits, float32 on the CPU, [N, num_labels], in eval mode (the mode is restored after).
        Inputs are batched by length (less padding) and returned in the given order."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        exs = self._as_examples(task_name, examples)
        width = self.task(task_name).num_labels
        if not exs:
            return torch.zeros(0, width)
        order = sorted(range(len(exs)), key=lambda i: sum(len(t) for t in exs[i].texts))
        out = torch.empty(len(exs), width)
        was_training = self.training
        self.eval()
        device = self.device
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                logits = self(task_name, **self.encode([exs[i] for i in idx], device))
                out[torch.tensor(idx)] = logits.float().cpu()
        finally:
            self.train(was_training)
        return out

    def predict(self, task_name: str, texts: Sequence[TextInput], batch_size: int = 256) -> list:
        """Label names (classification) or float scores (regression), one per input."""
        task = self.task(task_name)
        logits = self.predict_logits(task_name, texts, batch_size=batch_size)
        if task.kind == "regression":
            return [float(v) for v in logits[:, 0]]
        return [task.label_names[int(i)] for i in logits.argmax(dim=-1)]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of (distinct) parameters, frozen ones included; ``exclude_embeddings`` leaves out the
        weights of every ``nn.Embedding`` (the usual way to compare model sizes across vocabularies)."""
        skip = set()
        if exclude_embeddings:
            for m in self.modules():
                if isinstance(m, nn.Embedding):
                    skip.update(id(p) for p in m.parameters())
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    # ---- persistence
    def save_pretrained(self, directory: Union[str, os.PathLike]) -> str:
        """Write config, task definitions, weights and input assets to ``directory`` atomically (a temporary
        sibling folder renamed into place; an existing folder is replaced).  Returns the folder path."""
        final = Path(directory)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, tmp / WEIGHTS_FILE)
            self._save_assets(tmp)
            meta = {"format": _FORMAT, "student_type": self.student_type, "config": self.config.to_dict(),
                    "tasks": [task_to_dict(t) for t in self.tasks.values()],
                    "weights_fingerprint": state_fingerprint(self)}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            atomic_replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(final)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], map_location="cpu") -> "StudentBase":
        """Inverse of :meth:`save_pretrained`.  Called on ``StudentBase`` it picks the class from the saved
        ``student_type``; on a subclass, a folder of another type is an error."""
        folder = Path(directory)
        meta = _read_meta(folder)
        student_type = meta.get("student_type")
        if cls is StudentBase:
            _import_architectures()
            if student_type not in STUDENT_TYPES:
                raise ValueError(f"{folder / META_FILE}: unknown student_type {student_type!r} "
                                 f"(known: {sorted(STUDENT_TYPES)})")
            target = STUDENT_TYPES[student_type]
        else:
            if student_type != cls.student_type:
                raise ValueError(f"directory: {folder} holds a {student_type!r} student, not a {cls.student_type!r} "
                                 f"one; use load_student() to open any type")
            target = cls
        config = target.config_class.from_dict(meta["config"])
        student = target._build_for_load(folder, config, [task_from_dict(t) for t in meta["tasks"]])
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        student.load_state_dict(state, strict=True)
        expected = meta.get("weights_fingerprint")
        if expected is not None and state_fingerprint(student) != expected:
            raise ValueError(f"{folder / WEIGHTS_FILE}: weights do not match the hash in {META_FILE} "
                             f"(a corrupted or mixed-up folder)")
        return student.to(map_location) if map_location is not None else student


def _read_meta(folder: Path) -> dict:
    path = folder / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"directory: {path} is missing; {folder} is not a saved student")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path}: unsupported student format {meta.get('format')!r} (expected {_FORMAT})")
    return meta


def _import_architectures() -> None:
    """Defining the subclasses registers their ``student_type``."""
    from . import bilstm, transformer  # noqa: F401


def load_student(directory: Union[str, os.PathLike], map_location="cpu") -> StudentBase:
    """Open any saved student; the class comes from ``student_type`` in its ``student.json``."""
    return StudentBase.from_pretrained(directory, map_location=map_location)
