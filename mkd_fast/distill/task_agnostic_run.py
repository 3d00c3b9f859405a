"""`mkd-fast task-agnostic`: MITKD stage 2 from a YAML run file.

Why a run file: the stage needs a saved teacher, unlabeled text (a file, or the tasks' training
sentences), a Transformer student's shape and the :class:`TaskAgnosticConfig`; one checked file with
``--set`` overrides keeps it reproducible.  Shape::

    output_dir: runs/task_agnostic
    teacher: runs/teacher/teacher     # a saved MultiTaskTeacher folder (mkd-fast teacher train)
    tasks: null                       # the student's task heads; null: the teacher's tasks
    texts: null                       # a text file (one text a line); null: the tasks' training sentences
    data: glue                        # where the training sentences come from when texts is null
    data_dir: ../shared/data/glue
    student: {num_layers: 4, hidden_size: 312}   # TransformerStudentConfig keys (tokenizer: the teacher's)
    train: {steps: 1000, lr: 0.0005}             # TaskAgnosticConfig keys

The student is saved to ``output_dir/student``; fine-tune it per task with ``mkd-fast finetune`` and
``student_dir: <output_dir>/student`` (MITKD stage 3).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..students.configs import TransformerStudentConfig
from .student_spec import parse_student_section, student_section_keys
from .task_agnostic import TaskAgnosticConfig
from .yaml_sections import (apply_overrides, build_section, check_override_keys, read_yaml_mapping,
                            section_values)

__all__ = ["TaskAgnosticRunConfig", "task_agnostic_config_from_dict", "load_task_agnostic_run_config",
           "run_task_agnostic"]

_SECTIONS = ("student", "train")
_INTERNAL = ("source",)


@dataclass
class TaskAgnosticRunConfig:
    """Settings of one ``task-agnostic`` run (YAML keys: the field names, except ``source``, the file).
    ``seed`` seeds the data and the student's initial weights and is ``train.seed``'s default."""

    output_dir: str
    teacher: str
    tasks: Optional[List[str]] = None
    texts: Optional[str] = None
    data: str = "glue"
    data_dir: Optional[str] = None
    max_train_examples: Optional[int] = None
    synthetic_sizes: Any = None
    seed: int = 0
    student: TransformerStudentConfig = field(default_factory=TransformerStudentConfig)
    train: TaskAgnosticConfig = field(default_factory=TaskAgnosticConfig)
    source: str = "<dict>"

    def __post_init__(self):
        if self.tasks is not None and not self.tasks:
            raise ValueError("tasks: give at least one task, or null for the teacher's")
        if self.data not in ("glue", "synthetic"):
            raise ValueError(f"data: expected 'glue' or 'synthetic', got {self.data!r}")
        if self.texts is None and self.data == "glue" and not self.data_dir:
            raise ValueError("data_dir: required when texts is null and data is 'glue' (the tasks' training "
                             "sentences are the texts)")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"max_train_examples: must be >= 1 (or null for all), got {self.max_train_examples}")


def _schema() -> Dict[str, Optional[List[str]]]:
    schema: Dict[str, Optional[List[str]]] = {f.name: None for f in dataclasses.fields(TaskAgnosticRunConfig)
                                              if f.name not in _INTERNAL}
    schema["student"] = [k for k in student_section_keys("transformer") if k != "tokenizer"]
    schema["train"] = [f.name for f in dataclasses.fields(TaskAgnosticConfig)]
    return schema


def task_agnostic_config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> TaskAgnosticRunConfig:
    """Check every section and build the :class:`TaskAgnosticRunConfig`; errors name the dotted key and file."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    top = section_values(TaskAgnosticRunConfig, {k: v for k, v in data.items() if k not in _SECTIONS}, "", source,
                         exclude=_SECTIONS + _INTERNAL)
    student = parse_student_section(data.get("student"), source, "transformer", allowed_types=("transformer",),
                                    own_keys=())
    raw_train = data.get("train")
    if isinstance(raw_train, Mapping) and "output_dir" in raw_train:
        raise ValueError(f"{source}: key 'train.output_dir': not settable; the top-level output_dir decides where "
                         "the run writes")
    train_values = {"seed": top.get("seed", 0),
                    **section_values(TaskAgnosticConfig, raw_train, "train", source, exclude=("output_dir",)),
                    "output_dir": str(top["output_dir"])}
    train = build_section(TaskAgnosticConfig, train_values, "train", source)
    return build_section(TaskAgnosticRunConfig, {**top, "student": student.config, "train": train, "source": source},
                         "", source)


def load_task_agnostic_run_config(path, overrides: Sequence[str] = ()) -> TaskAgnosticRunConfig:
    """Read the run file, apply ``--set KEY=VALUE`` overrides, check it all."""
    data, keys = apply_overrides(read_yaml_mapping(path), overrides)
    check_override_keys(keys, _schema())
    source = str(path) if not keys else f"{path} (with --set {', '.join(keys)})"
    return task_agnostic_config_from_dict(data, source)


def run_task_agnostic(cfg: TaskAgnosticRunConfig, resume: bool = False,
                      stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
    """Load the teacher, gather the texts, build the student (heads for ``tasks``, the teacher's tokenizer),
    run :func:`task_agnostic_distill`.  Returns its summary (``student_dir`` when finished)."""
    import torch

    from ..students import TransformerStudent
    from ..tasks.glue import get_task
    from ..teachers import MultiTaskTeacher
    from .run_config import load_run_data
    from .task_agnostic import task_agnostic_distill
    from .task_agnostic_data import read_text_file

    if not (Path(cfg.teacher) / "teacher.json").is_file():
        raise FileNotFoundError(f"{cfg.source}: key 'teacher': no saved MultiTaskTeacher at {cfg.teacher} "
                                "(make one with `mkd-fast teacher train`)")
    if cfg.texts is not None and not Path(cfg.texts).is_file():
        raise FileNotFoundError(f"{cfg.source}: key 'texts': no text file at {cfg.texts}")
    teacher = MultiTaskTeacher.load(cfg.teacher)
    if teacher.tokenizer is None:
        raise ValueError(f"{cfg.source}: key 'teacher': the teacher at {cfg.teacher} was saved without its tokenizer; "
                         "the student needs it")
    names = list(cfg.tasks) if cfg.tasks is not None else teacher.task_names
    try:
        tasks = [teacher.tasks[n] if n in teacher.tasks else get_task(n) for n in names]
    except KeyError as exc:
        raise ValueError(f"{cfg.source}: key 'tasks': {exc.args[0]}") from None
    if cfg.texts is not None:
        texts: Sequence = read_text_file(cfg.texts)
    else:
        _, data = load_run_data(names, cfg.data, cfg.data_dir, cfg.seed, cfg.synthetic_sizes,
                                {"train": cfg.max_train_examples}, cfg.source)
        texts = [e for exs in data["train"].values() for e in exs]
    torch.manual_seed(cfg.seed)
    student = TransformerStudent(teacher.tokenizer, tasks, cfg.student)
    return task_agnostic_distill(teacher, student, texts, cfg.train, resume=resume, stop_after_steps=stop_after_steps)
