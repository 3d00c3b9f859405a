"""The ``student:`` section of a run file: which architecture, its config keys, and building it.

Why its own module: the section's valid keys depend on its ``type`` (a BiLSTM has ``vectors``, a
Transformer a ``tokenizer``, each has its own config dataclass), so checking it is more than one
``config_from_dict`` call, and both ``distill`` and ``task-agnostic`` read it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..students.configs import BiLSTMStudentConfig, TransformerStudentConfig
from .yaml_sections import build_section, section_values

__all__ = ["StudentSpec", "STUDENT_CONFIGS", "student_section_keys", "parse_student_section", "build_student",
           "spec_summary"]

STUDENT_CONFIGS = {"bilstm": BiLSTMStudentConfig, "transformer": TransformerStudentConfig}
# keys of the section that are not fields of the architecture's config dataclass
_OWN_KEYS = {"bilstm": ("vectors",), "transformer": ("tokenizer",)}


@dataclass
class StudentSpec:
    """``type`` picks the architecture; ``vectors`` (bilstm: None, "kumo" or a GloVe/word2vec text file) and
    ``tokenizer`` (transformer: hub name, folder or "minilm") are its inputs; ``config`` holds the rest of the
    section as the architecture's config dataclass."""

    type: str = "bilstm"
    vectors: Optional[str] = None
    tokenizer: str = "minilm"
    config: Any = None

    def __post_init__(self):
        if self.type not in STUDENT_CONFIGS:
            raise ValueError(f"type: expected one of {sorted(STUDENT_CONFIGS)}, got {self.type!r}")
        if self.config is None:
            self.config = STUDENT_CONFIGS[self.type]()


def student_section_keys(student_type: str) -> List[str]:
    """Every key a ``student:`` section of this type accepts."""
    cfg_cls = STUDENT_CONFIGS.get(student_type)
    fields = [f.name for f in dataclasses.fields(cfg_cls)] if cfg_cls else []
    return ["type", *_OWN_KEYS.get(student_type, ()), *fields]


def parse_student_section(data: Any, source: str, default_type: str = "bilstm",
                          allowed_types: Sequence[str] = tuple(STUDENT_CONFIGS),
                          own_keys: Optional[Sequence[str]] = None) -> StudentSpec:
    """A :class:`StudentSpec` from the YAML section (None: all defaults).  ``own_keys`` restricts the
    non-config keys (e.g. none when the tokenizer is the teacher's).  Errors name ``student.<key>`` and the file."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: key 'student': expected a mapping, got {type(data).__name__} {data!r}")
    data = dict(data)
    student_type = data.pop("type", default_type)
    if student_type not in allowed_types:
        raise ValueError(f"{source}: key 'student.type': expected one of {list(allowed_types)}, got {student_type!r}")
    own = _OWN_KEYS[student_type] if own_keys is None else tuple(own_keys)
    cfg_cls = STUDENT_CONFIGS[student_type]
    known = ["type", *own, *(f.name for f in dataclasses.fields(cfg_cls))]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {[f'student.{k}' for k in unknown]} for a {student_type!r} "
                         f"student (known student keys: {sorted(known)})")
    spec_values = section_values(StudentSpec, {k: data.pop(k) for k in own if k in data}, "student", source,
                                 exclude=("type", "config"))
    config = build_section(cfg_cls, section_values(cfg_cls, data, "student", source), "student", source)
    if spec_values.get("vectors") == "kumo" and config.embedding_dim != 50:
        raise ValueError(f"{source}: key 'student.embedding_dim': the kumo GloVe vectors are 50-d, "
                         f"got {config.embedding_dim}")
    return StudentSpec(type=student_type, config=config, **spec_values)


def build_student(spec: StudentSpec, tasks: Sequence, train: Mapping[str, Sequence], source: str = "<dict>",
                  seed: int = 0):
    """A new student for ``tasks`` (TaskDefs): a BiLSTM's vocabulary comes from the ``train`` examples; the
    weights are drawn after ``torch.manual_seed(seed)`` so a rerun (or a resume) builds the same one."""
    import torch

    torch.manual_seed(seed)
    if spec.type == "bilstm":
        from ..students import BiLSTMStudent

        if spec.vectors not in (None, "kumo") and not Path(spec.vectors).is_file():
            raise FileNotFoundError(f"{source}: key 'student.vectors': no word-vector file at {spec.vectors}")
        return BiLSTMStudent.from_examples(dict(train), list(tasks), spec.config, vectors_path=spec.vectors)
    from ..students import TransformerStudent
    from ..teachers.loading import load_tokenizer

    return TransformerStudent(load_tokenizer(spec.tokenizer), list(tasks), spec.config)


def spec_summary(spec: StudentSpec) -> Dict[str, Any]:
    """The section as plain data (for summaries)."""
    own = {k: getattr(spec, k) for k in _OWN_KEYS[spec.type]}
    return {"type": spec.type, **own, **spec.config.to_dict()}
