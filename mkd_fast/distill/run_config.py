"""`mkd-fast distill` and `mkd-fast finetune`: one YAML run file -> typed settings -> a distillation run.

Why: a run needs data, a soft-target store, a student and trainer settings; one checked file (plus
``--set`` overrides) describes all of it, so a run is reproducible from the file and nothing fails an
hour in on a typo.  The file's shape::

    output_dir: runs/mkd
    recipe: mkd              # optional: the recipe's settings are the defaults of train: / finetune:
    tasks: [sst2, mrpc]
    data: glue               # glue | synthetic
    data_dir: ../shared/data/glue
    soft_targets: runs/store # a store folder (mkd-fast soft-targets); null: hard labels only
    student: {type: bilstm, vectors: kumo, hidden_size: 150}
    train: {epochs: 3, lr: 0.001}          # DistillConfig keys
    finetune: {epochs: 1}                  # optional: per-task fine-tuning after distill

Outputs: ``output_dir/`` is the distill stage's folder (``student/``, ``best/``, ``checkpoint.pt``, logs),
``output_dir/finetune/<task>/`` each task's fine-tuning run, ``output_dir/run_config.yaml`` the resolved
settings (file + overrides + defaults).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..data.examples import Example
from ..tasks.definition import TaskDef
from .config import DistillConfig
from .recipes import get_recipe
from .student_spec import StudentSpec, parse_student_section, spec_summary, student_section_keys
from .yaml_sections import (apply_overrides, build_section, check_override_keys, read_yaml_mapping,
                            section_values)

__all__ = ["DistillRunConfig", "run_config_from_dict", "load_run_config", "run_distill", "run_finetune",
           "load_run_data", "final_dev_scores"]

DATA_SOURCES = ("glue", "synthetic")
SECTIONS = ("student", "train", "finetune")
_INTERNAL = ("source", "finetune_after_distill")   # fields that are not YAML keys


@dataclass
class DistillRunConfig:
    """Settings of one ``distill`` / ``finetune`` run; the YAML keys are the field names (except
    ``source``, the file it came from, and ``finetune_after_distill``, whether the file has a
    ``finetune:`` section).

    ``seed`` seeds the data (synthetic corpus, subsamples) and the student's initial weights, and is
    ``train.seed``'s default.  ``student_dir``: a saved student to start from instead of building one from
    ``student:`` (the two are exclusive).  ``finetune`` always holds the fine-tuning settings: the ``train:``
    settings, then the recipe's fine-tuning ones, then the ``finetune:`` section's keys."""

    output_dir: str
    tasks: List[str]
    recipe: Optional[str] = None
    data: str = "glue"
    data_dir: Optional[str] = None
    max_train_examples: Optional[int] = None   # per task, a seeded subsample (None: all)
    max_dev_examples: Optional[int] = None
    synthetic_sizes: Any = None                # make_synthetic_corpus's ``sizes`` (None: its defaults)
    seed: int = 0
    soft_targets: Optional[str] = None
    student_dir: Optional[str] = None
    student: StudentSpec = field(default_factory=StudentSpec)
    train: DistillConfig = field(default_factory=DistillConfig)
    finetune: DistillConfig = field(default_factory=DistillConfig)
    finetune_after_distill: bool = False
    source: str = "<dict>"

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: duplicate task names in {self.tasks}")
        if self.data not in DATA_SOURCES:
            raise ValueError(f"data: expected one of {DATA_SOURCES}, got {self.data!r}")
        if self.data == "glue" and not self.data_dir:
            raise ValueError("data_dir: required when data is 'glue'")
        for key in ("max_train_examples", "max_dev_examples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key}: must be >= 1 (or null for all), got {value}")
        if self.recipe is not None:
            get_recipe(self.recipe)  # "recipe: unknown recipe ..."

    @property
    def student_path(self) -> Path:
        """Where the distill stage saves its final student."""
        return Path(self.output_dir) / "student"

    def finetune_dir(self, task: str) -> Path:
        return Path(self.output_dir) / "finetune" / task

    def recipe_notes(self) -> List[str]:
        """What of the recipe this run does not do by itself (a recipe only supplies settings here)."""
        if self.recipe is None:
            return []
        recipe, notes = get_recipe(self.recipe), []
        if recipe.single_task and len(self.tasks) > 1:
            notes.append(f"recipe {recipe.name!r} trains one student per task; this run trains one student on "
                         f"{len(self.tasks)} tasks (use one run file per task for the paper's setup)")
        if recipe.augment_copies:
            notes.append(f"recipe {recipe.name!r} augments the transfer set ({recipe.augment_copies} copies per "
                         "example); distill trains on the examples as loaded, without augmentation")
        if recipe.task_agnostic and self.student_dir is None:
            notes.append(f"recipe {recipe.name!r} starts from a task-agnostic student: run `mkd-fast task-agnostic` "
                         "first and set student_dir to its student")
        return notes


# ------------------------------------------------------------------------------------------------ loading
def _top_keys() -> List[str]:
    return [f.name for f in dataclasses.fields(DistillRunConfig) if f.name not in _INTERNAL]


def _distill_keys() -> List[str]:
    return [f.name for f in dataclasses.fields(DistillConfig)]


def _student_type(data: Mapping[str, Any]) -> str:
    student = data.get("student")
    if isinstance(student, Mapping) and "type" in student:
        return student["type"]
    recipe = data.get("recipe")
    try:
        return get_recipe(recipe).student_type if isinstance(recipe, str) else "bilstm"
    except ValueError:
        return "bilstm"


def override_schema(data: Mapping[str, Any]) -> Dict[str, Optional[List[str]]]:
    """What ``--set`` may name: every top-level key; in sections, their keys (the student's by its type)."""
    schema: Dict[str, Optional[List[str]]] = {k: None for k in _top_keys()}
    schema.update(train=_distill_keys(), finetune=_distill_keys(), student=student_section_keys(_student_type(data)))
    return schema


def _distill_section(data: Mapping[str, Any], section: str, source: str) -> Dict[str, Any]:
    raw = data.get(section)
    if isinstance(raw, Mapping) and "output_dir" in raw:
        raise ValueError(f"{source}: key '{section}.output_dir': not settable; the top-level output_dir decides "
                         f"where the {section} stage writes")
    return section_values(DistillConfig, raw, section, source, exclude=("output_dir",))


def run_config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> DistillRunConfig:
    """Check every section of a run file's mapping and build the :class:`DistillRunConfig`; errors are
    ValueErrors naming the dotted key (``train.lr``) and ``source``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    top = section_values(DistillRunConfig, {k: v for k, v in data.items() if k not in SECTIONS}, "", source,
                         exclude=SECTIONS + _INTERNAL)
    try:
        recipe = get_recipe(top["recipe"]) if top.get("recipe") is not None else None
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    if top.get("student_dir") is not None and data.get("student") is not None:
        raise ValueError(f"{source}: keys 'student' and 'student_dir': give one (student_dir continues from a saved "
                         "student, whose own settings then apply)")
    student = parse_student_section(data.get("student"), source, recipe.student_type if recipe else "bilstm")
    output_dir = str(top["output_dir"])
    train_values = {**(recipe.distill if recipe else {}), "seed": top.get("seed", 0),
                    **_distill_section(data, "train", source), "output_dir": output_dir}
    train = build_section(DistillConfig, train_values, "train", source)
    finetune_values = {**train_values, **(recipe.finetune if recipe else {}),
                       **_distill_section(data, "finetune", source), "output_dir": str(Path(output_dir) / "finetune")}
    finetune = build_section(DistillConfig, finetune_values, "finetune", source)
    return build_section(DistillRunConfig, {**top, "student": student, "train": train, "finetune": finetune,
                                            "finetune_after_distill": data.get("finetune") is not None,
                                            "source": source}, "", source)


def load_run_config(path, overrides: Sequence[str] = ()) -> DistillRunConfig:
    """Read the run file ``path``, apply ``--set KEY=VALUE`` ``overrides`` (values are YAML), check it all."""
    data, keys = apply_overrides(read_yaml_mapping(path), overrides)
    check_override_keys(keys, override_schema(data))
    source = str(path) if not keys else f"{path} (with --set {', '.join(keys)})"
    return run_config_from_dict(data, source)


def resolved_settings(cfg: DistillRunConfig) -> Dict[str, Any]:
    """The run's settings as plain data, everything resolved (written next to the outputs)."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
           if f.name not in SECTIONS and f.name not in _INTERNAL}
    out["student"] = spec_summary(cfg.student) if cfg.student_dir is None else None
    out["train"] = dataclasses.asdict(cfg.train)
    out["finetune"] = dataclasses.asdict(cfg.finetune) if cfg.finetune_after_distill else None
    return out


RESOLVED_FILE = "run_config.yaml"
# settings that decide the data and the student, which the trainer's own resume check (train: keys) cannot see
RESUME_CHECKED_KEYS = ("tasks", "data", "max_train_examples", "max_dev_examples", "synthetic_sizes", "seed",
                       "student_dir", "student")


def _write_resolved(cfg: DistillRunConfig) -> None:
    import yaml

    from ..atomic import atomic_write

    text = f"# resolved from {cfg.source}\n" + yaml.safe_dump(resolved_settings(cfg), sort_keys=False)
    atomic_write(Path(cfg.output_dir) / RESOLVED_FILE, lambda fh: fh.write(text), binary=False)


def _check_resume_settings(cfg: DistillRunConfig) -> None:
    """A resumed run must read the same data into the same student as the run it continues."""
    import yaml

    saved_path = Path(cfg.output_dir) / RESOLVED_FILE
    if not (Path(cfg.output_dir) / "checkpoint.pt").is_file() or not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = yaml.safe_load(yaml.safe_dump(resolved_settings(cfg)))

    def flat(key, value):
        if isinstance(value, dict):
            return {f"{key}.{k}": v for k, v in value.items()}
        return {key: value}

    diffs = []
    for key in RESUME_CHECKED_KEYS:
        old, new = flat(key, saved.get(key)), flat(key, now.get(key))
        diffs += [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                  if old.get(k) != new.get(k)]
    if diffs:
        raise ValueError(f"{cfg.source}: resume: the run in {cfg.output_dir} was started with other settings: "
                         + "; ".join(diffs) + " (use its settings, or another output_dir to start afresh)")


# --------------------------------------------------------------------------------------------------- data
def load_run_data(task_names: Sequence[str], data: str, data_dir: Optional[str], seed: int, synthetic_sizes: Any,
                  max_examples: Mapping[str, Optional[int]], source: str = "<dict>",
                  ) -> Tuple[Dict[str, TaskDef], Dict[str, Dict[str, List[Example]]]]:
    """(task definitions, {split: {task: examples}}) for the splits in ``max_examples`` (each subsampled to
    its limit, seeded).  A missing GLUE folder is an error naming ``data_dir`` and the file."""
    from ..teachers.training import load_task_data, subsample

    if data == "glue" and data_dir and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"{source}: key 'data_dir': no folder {data_dir}")
    try:
        tasks, splits = load_task_data(task_names, data, data_dir, seed, synthetic_sizes, splits=tuple(max_examples))
    except KeyError as exc:  # get_task: "unknown task ..."
        raise ValueError(f"{source}: key 'tasks': {exc.args[0]}") from None
    except ValueError as exc:  # e.g. "tasks: unknown synthetic task ...": name the file too
        raise ValueError(f"{source}: {exc}") from None
    return tasks, {s: {t: subsample(v, max_examples[s], seed) for t, v in splits[s].items()} for s in splits}


def _open_store(cfg: DistillRunConfig):
    if cfg.soft_targets is None:
        return None
    from ..soft_targets import open_store

    if not Path(cfg.soft_targets).is_dir():
        raise FileNotFoundError(f"{cfg.source}: key 'soft_targets': no soft-target store folder {cfg.soft_targets} "
                                "(make one with `mkd-fast soft-targets`, or set soft_targets: null for hard labels)")
    return open_store(cfg.soft_targets)


def _load_saved_student(path, key: str, tasks: Mapping[str, TaskDef], source: str):
    from ..students import load_student

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{source}: key {key!r}: no saved student folder {path}")
    student = load_student(path)
    missing = [t for t in tasks if t not in student.tasks]
    if missing:
        raise ValueError(f"{source}: key {key!r}: the student at {path} has no head for task(s) {missing} "
                         f"(it has {student.task_names})")
    return student


def final_dev_scores(summary: Mapping[str, Any]) -> Dict[str, Dict[str, float]]:
    """The last evaluation of a :meth:`MultiTaskDistiller.train` summary ({} without dev data)."""
    history = summary.get("history") or []
    return dict(history[-1]["dev"]) if history else {}


# ---------------------------------------------------------------------------------------------------- runs
def run_distill(cfg: DistillRunConfig, resume: bool = False, stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
    """What ``mkd-fast distill`` runs: data, store, student (new, or ``student_dir``), then
    ``MultiTaskDistiller.train``; then per-task fine-tuning when the file has ``finetune:``.

    Returns ``{"distill": trainer summary, "dev": final dev scores, "student_dir": ... (when finished),
    "finetune": run_finetune's result (when it ran)}``.  ``stop_after_steps`` ends the distill stage early
    (with a checkpoint; continue with ``resume=True``)."""
    from .student_spec import build_student
    from .trainer import MultiTaskDistiller, _dist_info, init_distributed_from_env

    init_distributed_from_env(cfg.train.device)  # under torchrun: one process per rank, DDP
    if resume:
        _check_resume_settings(cfg)
    store = _open_store(cfg)  # before any data work: a wrong path fails at once
    tasks, data = load_run_data(cfg.tasks, cfg.data, cfg.data_dir, cfg.seed, cfg.synthetic_sizes,
                                {"train": cfg.max_train_examples, "dev": cfg.max_dev_examples}, cfg.source)
    if cfg.student_dir is not None:
        student = _load_saved_student(cfg.student_dir, "student_dir", tasks, cfg.source)
    else:
        student = build_student(cfg.student, list(tasks.values()), data["train"], cfg.source, cfg.seed)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    _write_resolved(cfg)
    distiller = MultiTaskDistiller(student, list(tasks.values()), store, cfg.train)
    summary = distiller.train(data["train"], data["dev"], resume=resume, stop_after_steps=stop_after_steps)
    result: Dict[str, Any] = {"distill": summary, "dev": final_dev_scores(summary)}
    if _dist_info()[1] != 0:
        return result  # rank 0 saves the student and runs the per-task stage
    if summary["finished"]:
        result["student_dir"] = summary["student_dir"]
        if cfg.finetune_after_distill:
            result["finetune"] = _finetune_tasks(cfg, summary["student_dir"], tasks, data, store, resume)
    return result


def run_finetune(cfg: DistillRunConfig, resume: bool = False) -> Dict[str, Any]:
    """What ``mkd-fast finetune`` runs: per-task fine-tuning of ``output_dir/student`` (the distilled
    student), or of ``student_dir`` when there is none yet (e.g. a task-agnostic student, MITKD)."""
    if cfg.student_path.is_dir():
        start, key = cfg.student_path, "output_dir"
    elif cfg.student_dir is not None:
        start, key = Path(cfg.student_dir), "student_dir"
    else:
        raise FileNotFoundError(f"{cfg.source}: keys 'output_dir' / 'student_dir': nothing to fine-tune: no distilled "
                                f"student at {cfg.student_path} (run `mkd-fast distill` first) and no student_dir")
    store = _open_store(cfg)
    tasks, data = load_run_data(cfg.tasks, cfg.data, cfg.data_dir, cfg.seed, cfg.synthetic_sizes,
                                {"train": cfg.max_train_examples, "dev": cfg.max_dev_examples}, cfg.source)
    _load_saved_student(start, key, tasks, cfg.source)  # heads checked before any training
    return _finetune_tasks(cfg, start, tasks, data, store, resume)


def _task_best_metric(best_metric: str, task: str) -> str:
    """A one-task run selects by that task: "macro" unless ``best_metric`` names a metric of this task."""
    return best_metric if best_metric.partition(".")[0] == task else "macro"


def _finetune_tasks(cfg: DistillRunConfig, start_dir, tasks: Mapping[str, TaskDef],
                    data: Mapping[str, Mapping[str, List[Example]]], store, resume: bool) -> Dict[str, Any]:
    """For each task, a fresh copy of the student at ``start_dir`` trained on that task alone into
    ``output_dir/finetune/<task>``.  Returns ``{"start_dir", "before": dev scores of the start student,
    "tasks": {task: {"before", "after", "student_dir", "summary"}}}``."""
    from ..students import load_student
    from .evaluation import evaluate_model
    from .trainer import MultiTaskDistiller

    dev = data["dev"]
    before = evaluate_model(load_student(start_dir), tasks, dev, cfg.finetune.eval_batch_size)
    rows: Dict[str, Any] = {}
    for name, task in tasks.items():
        task_cfg = dataclasses.replace(cfg.finetune, output_dir=str(cfg.finetune_dir(name)),
                                       best_metric=_task_best_metric(cfg.finetune.best_metric, name),
                                       task_weights={k: v for k, v in cfg.finetune.task_weights.items() if k == name})
        student = load_student(start_dir)
        task_dev = {name: dev[name]} if dev.get(name) else None
        summary = MultiTaskDistiller(student, [task], store, task_cfg).train({name: data["train"][name]}, task_dev,
                                                                             resume=resume)
        rows[name] = {"before": before.get(name), "after": final_dev_scores(summary).get(name),
                      "student_dir": summary.get("student_dir"), "summary": summary}
    return {"start_dir": str(start_dir), "before": before, "tasks": rows}
