"""Built-in GLUE tasks and the task registry (so every loader, head and metric looks a task up by name).

Input fields use the Hugging Face ``nyu-mll/glue`` column names (what ``load_hub`` reads); where each
task's columns sit in the classic ``glue_data/`` TSV files is kept in ``TaskDef.extra`` (read it with
``task_extra``):

* ``glue_dir``: folder name under ``glue_data`` (``SST-2``);
* ``glue_text_columns``: comma-separated header names, or 0-based column indices when ``glue_header`` is
  ``"0"`` (CoLA has no header line);
* ``glue_label_column``: header name or index of the label;
* ``glue_dev_splits``: the dev file stems (``dev``, or MNLI's ``dev_matched,dev_mismatched``);
* ``glue_test_splits``: the test file stems (``test``, or MNLI's ``test_matched,test_mismatched``);
* ``glue_test_header`` / ``glue_test_text_columns``: where the test files differ from train/dev (CoLA's
  test.tsv has an ``index, sentence`` header while its train/dev files have none);
* ``hub_config``: the Hugging Face config name.

Users add tasks without code through a YAML file (``load_task_yaml``).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, List, Optional, Union

from .definition import TASK_KINDS, TaskDef

__all__ = [
    "GLUE_TASKS",
    "get_task",
    "register_task",
    "list_tasks",
    "load_task_yaml",
    "task_extra",
]


def _glue(name, label_names, input_fields, metrics, glue_dir, text_cols, label_col, *, kind="classification",
          header=True, dev_splits="dev", test_splits="test", test_text_cols=None, description=""):
    extra = (
        ("glue_dir", glue_dir),
        ("glue_text_columns", ",".join(str(c) for c in text_cols)),
        ("glue_label_column", str(label_col)),
        ("glue_header", "1" if header else "0"),
        ("glue_dev_splits", dev_splits),
        ("glue_test_splits", test_splits),
        ("hub_config", name),
    )
    if test_text_cols is not None:  # test files with their own header (CoLA)
        extra += (("glue_test_header", "1"), ("glue_test_text_columns", ",".join(test_text_cols)))
    return TaskDef(name=name, kind=kind, label_names=tuple(label_names), input_fields=tuple(input_fields),
                   label_field="label", metrics=tuple(metrics), description=description, extra=extra)


GLUE_TASKS: Dict[str, TaskDef] = {
    t.name: t
    for t in [
        # CoLA's glue_data files have no header: source, label, original-label mark, sentence.
        # Its test.tsv, unlike train/dev, has a header: index, sentence.
        _glue("cola", ("unacceptable", "acceptable"), ("sentence",), ("matthews",), "CoLA", (3,), 1,
              header=False, test_text_cols=("sentence",), description="Corpus of Linguistic Acceptability"),
        _glue("sst2", ("negative", "positive"), ("sentence",), ("accuracy",), "SST-2", ("sentence",), "label",
              description="Stanford Sentiment Treebank, binary"),
        _glue("mrpc", ("not_equivalent", "equivalent"), ("sentence1", "sentence2"), ("f1", "accuracy"), "MRPC",
              ("#1 String", "#2 String"), "Quality", description="Microsoft Research Paraphrase Corpus"),
        _glue("stsb", (), ("sentence1", "sentence2"), ("pearson", "spearman"), "STS-B",
              ("sentence1", "sentence2"), "score", kind="regression",
              description="Semantic Textual Similarity Benchmark, score 0..5"),
        _glue("qqp", ("not_duplicate", "duplicate"), ("question1", "question2"), ("f1", "accuracy"), "QQP",
              ("question1", "question2"), "is_duplicate", description="Quora Question Pairs"),
        _glue("mnli", ("entailment", "neutral", "contradiction"), ("premise", "hypothesis"), ("accuracy",), "MNLI",
              ("sentence1", "sentence2"), "gold_label", dev_splits="dev_matched,dev_mismatched",
              test_splits="test_matched,test_mismatched",
              description="Multi-Genre NLI"),
        _glue("qnli", ("entailment", "not_entailment"), ("question", "sentence"), ("accuracy",), "QNLI",
              ("question", "sentence"), "label", description="Question NLI (from SQuAD)"),
        _glue("rte", ("entailment", "not_entailment"), ("sentence1", "sentence2"), ("accuracy",), "RTE",
              ("sentence1", "sentence2"), "label", description="Recognizing Textual Entailment"),
        _glue("wnli", ("not_entailment", "entailment"), ("sentence1", "sentence2"), ("accuracy",), "WNLI",
              ("sentence1", "sentence2"), "label", description="Winograd NLI"),
    ]
}

_REGISTRY: Dict[str, TaskDef] = dict(GLUE_TASKS)
_LOCK = threading.Lock()


def _norm(name: str) -> str:
    """"SST-2", "sst_2" and "sst2" all name the same task."""
    return name.strip().lower().replace("-", "").replace("_", "") if isinstance(name, str) else name


def task_extra(task: TaskDef, key: str, default: Optional[str] = None) -> Optional[str]:
    """Look ``key`` up in ``task.extra`` (a tuple of pairs, kept hashable for the frozen dataclass)."""
    for k, v in task.extra:
        if k == key:
            return v
    return default


def register_task(task: TaskDef, overwrite: bool = False) -> TaskDef:
    """Add ``task`` to the registry.  Re-registering an identical definition is a no-op; a different one
    under a taken name needs ``overwrite=True`` (so a YAML file cannot silently shadow a built-in)."""
    if not isinstance(task, TaskDef):
        raise TypeError(f"task: expected a TaskDef, got {type(task).__name__}")
    key = _norm(task.name)
    with _LOCK:
        old = _REGISTRY.get(key)
        if old is not None and old != task and not overwrite:
            raise ValueError(f"task {task.name!r} is already registered with a different definition; "
                             "pass overwrite=True to replace it")
        _REGISTRY[key] = task
    return task


def get_task(name: Union[str, TaskDef]) -> TaskDef:
    """The registered task called ``name`` (case, "-" and "_" ignored); a TaskDef is returned as is."""
    if isinstance(name, TaskDef):
        return name
    key = _norm(name)
    if key not in _REGISTRY:
        # The synthetic tasks register themselves on import; import lazily to avoid a package cycle.
        from ..data import synthetic  # noqa: F401
    if key not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered: {list_tasks()}")
    return _REGISTRY[key]


def list_tasks() -> List[str]:
    return sorted(t.name for t in _REGISTRY.values())


_YAML_TYPES = {
    "name": str,
    "kind": str,
    "label_names": list,
    "input_fields": list,
    "label_field": str,
    "metrics": list,
    "description": str,
    "extra": dict,
}


def load_task_yaml(path: Union[str, Path], register: bool = True, overwrite: bool = False) -> TaskDef:
    """Read one task from a YAML mapping with keys ``name`` (required), ``kind``, ``label_names``,
    ``input_fields``, ``label_field``, ``metrics``, ``description`` and optionally ``extra`` (a mapping of
    strings, e.g. file column names).  Unknown keys and wrong types are a ValueError naming key and file."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is present wherever the CLI is used
        raise ImportError("load_task_yaml needs PyYAML: pip install pyyaml") from e
    from .metrics import METRICS

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of task keys at the top level, got {type(data).__name__}")
    for key, value in data.items():
        if key not in _YAML_TYPES:
            raise ValueError(f"{path}: unknown key {key!r}; allowed keys: {sorted(_YAML_TYPES)}")
        want = _YAML_TYPES[key]
        if not isinstance(value, want) or isinstance(value, bool):
            raise ValueError(f"{path}: key {key!r} must be a {want.__name__}, got {type(value).__name__} ({value!r})")
        if want is list and not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: key {key!r} must be a list of strings, got {value!r}")
        if want is dict and not all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in value.items()):
            raise ValueError(f"{path}: key {key!r} must map strings to strings, got {value!r}")
    if "name" not in data or not data["name"].strip():
        raise ValueError(f"{path}: key 'name' is required")
    kind = data.get("kind", "classification")
    if kind not in TASK_KINDS:
        raise ValueError(f"{path}: key 'kind' must be one of {TASK_KINDS}, got {kind!r}")
    for m in data.get("metrics", []):
        if m not in METRICS:
            raise ValueError(f"{path}: key 'metrics' has unknown metric {m!r}; known: {sorted(METRICS)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k != "extra"}
    if "metrics" not in kwargs:
        kwargs["metrics"] = ("accuracy",) if kind == "classification" else ("pearson", "spearman")
    extra = tuple((k, str(v)) for k, v in data.get("extra", {}).items())
    try:
        task = TaskDef(extra=extra, **kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if register:
        register_task(task, overwrite=overwrite)
    return task
