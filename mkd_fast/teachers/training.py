"""Multi-task teacher training (MT-DNN style) with exact resume.

Each step draws one task-homogeneous batch; the epoch's batch order is a seeded shuffle of all tasks'
batches, so tasks are sampled in proportion to their size.  The order depends only on (seed, epoch), and the
checkpoint holds model, optimizer, scheduler, sampler position and RNG states, so a resumed run finishes
with the same weights as an uninterrupted one (CPU, same seed).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

import torch.nn.functional as F

from ..optim import param_groups, warmup_schedule
from ..atomic import atomic_write, remove_temp_leftovers
from ..data.examples import Example
from ..tasks.definition import TaskDef
from .multitask import MultiTaskTeacher

# ------------------------------------------------------------------------------------------- typed YAML configs
_MISSING = object()


def _check_type(value, tp, key: str, source: str):
    """Check (and lightly coerce: int -> float) one value against a type hint; ValueError names key and file."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key, source)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"{source}: key {key!r}: expected {tp}, got {type(value).__name__} {value!r}")
    if origin in (list, List, tuple, Tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: key {key!r}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [_check_type(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin in (tuple, Tuple) else items
    if origin in (dict, Dict, typing.Mapping):
        if not isinstance(value, dict):
            raise ValueError(f"{source}: key {key!r}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_check_type(k, kt, f"{key}.<key>", source): _check_type(v, vt, f"{key}.{k}", source)
                for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: key {key!r}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: key {key!r}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ValueError(f"{source}: key {key!r}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def config_from_dict(cls, data: Mapping, source: str = "<dict>"):
    """Build a config dataclass from a mapping: unknown keys, missing required keys and wrong types are
    ValueErrors naming the key and ``source`` (the YAML file)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown config key(s) {unknown} for {cls.__name__} "
                         f"(known: {sorted(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{source}: missing required config key {name!r} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def config_from_yaml(cls, path):
    """Read a YAML file into the config dataclass ``cls`` (see :func:`config_from_dict`)."""
    import yaml

    path = str(path)
    with open(path, "r", encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(cls, data, source=path)


@dataclass
class TeacherTrainConfig:
    """Settings of one multi-task teacher run (the YAML keys are these field names)."""

    output_dir: str
    tasks: List[str]
    model: str = "minilm"                 # hub name, local folder, or "minilm" (the pip-packaged MiniLM)
    data: str = "glue"                    # "glue" (files under data_dir) or "synthetic"
    data_dir: Optional[str] = None
    max_train_examples: Optional[int] = None   # per task, a seeded subsample (None: all)
    max_dev_examples: Optional[int] = None
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: int = 3
    lr: float = 5e-5
    head_lr: Optional[float] = None       # None: same as lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    dropout: float = 0.1
    pooling: str = "cls"
    seed: int = 0
    checkpoint_every: int = 100           # steps; a checkpoint is also written at each epoch end
    device: str = "cpu"
    progress: bool = True
    synthetic_sizes: Any = None           # make_synthetic_corpus's ``sizes`` (None: its defaults)

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        for key in ("batch_size", "eval_batch_size", "epochs", "max_length", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.data not in ("glue", "synthetic"):
            raise ValueError(f"data: expected 'glue' or 'synthetic', got {self.data!r}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio: must be in [0, 1], got {self.warmup_ratio}")


def load_train_config(path) -> TeacherTrainConfig:
    return config_from_yaml(TeacherTrainConfig, path)


# ------------------------------------------------------------------------------------------------ the sampler
class TaskBatchSampler:
    """Task-homogeneous batches, shuffled across tasks.  The order of epoch e is a pure function of
    (seed, e), so the sampler's state is just (epoch, position)."""

    def __init__(self, sizes: Mapping[str, int], batch_size: int, seed: int = 0):
        self.sizes = dict(sizes)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0

    def epoch_batches(self, epoch: int) -> List[Tuple[str, List[int]]]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for task in sorted(self.sizes):
            perm = rng.permutation(self.sizes[task]).tolist()
            batches += [(task, perm[i:i + self.batch_size]) for i in range(0, len(perm), self.batch_size)]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def batches_per_epoch(self) -> int:
        return sum(math.ceil(n / self.batch_size) for n in self.sizes.values())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "sizes": dict(self.sizes)}

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("seed", "batch_size", "sizes"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint sampler {key} is {state[key]!r} but this run has {getattr(self, key)!r}; "
                                 "resume needs the same data and batch settings")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ------------------------------------------------------------------------------------------------- metrics
def evaluate_predictions(task: TaskDef, predictions: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Dev metrics: everything :func:`mkd_fast.tasks.metrics.compute_metrics` reports for the task (its
    ``metrics`` plus ``combined``, the GLUE average), and ``score`` = the task's primary metric, the first
    of ``task.metrics`` (matthews for CoLA, pearson for STS-B, f1 for MRPC/QQP), so that model selection
    uses the metric the task is judged by.  ``accuracy`` (classification) / ``pearson`` (regression) are
    always present, as callers read them.  Metric errors propagate: a wrong score must not pass silently."""
    from ..tasks.metrics import METRICS, compute_metrics

    out = {k: float(v) for k, v in compute_metrics(task, predictions, labels).items()}
    fallback = "pearson" if task.kind == "regression" else "accuracy"
    if fallback not in out:
        out[fallback] = float(METRICS[fallback](np.asarray(predictions), np.asarray(labels)))
    # a task declared with no metrics is scored like load_task_yaml's default for its kind
    out["score"] = out[task.metrics[0]] if task.metrics else out[fallback]
    return out


def predictions_from_logits(task: TaskDef, logits) -> np.ndarray:
    """Class indices (classification) or scores (regression) from logits [N, C]."""
    logits = logits.float().cpu()
    return logits[:, 0].numpy() if task.kind == "regression" else logits.argmax(-1).numpy()


def label_array(task: TaskDef, examples: Sequence[Example]) -> np.ndarray:
    if task.kind == "regression":
        return np.array([float(e.label) for e in examples], dtype=np.float64)
    return np.array([int(e.label) for e in examples], dtype=np.int64)


@torch.no_grad()
def evaluate_teacher(teacher: MultiTaskTeacher, dev: Mapping[str, Sequence[Example]], max_length: int,
                     batch_size: int = 64) -> Dict[str, Dict[str, float]]:
    """Per task dev metrics (examples without a label are skipped)."""
    results = {}
    for name, examples in dev.items():
        examples = [e for e in examples if e.label is not None]
        if not examples:
            continue
        task = teacher.tasks[name]
        logits = teacher.predict_logits(name, examples, max_length, batch_size)
        results[name] = evaluate_predictions(task, predictions_from_logits(task, logits), label_array(task, examples))
    return results


# ---------------------------------------------------------------------------------------------- checkpoints
# Settings that do not change what a run computes: a resume may change them.  Every other config key must
# equal the checkpoint's, or the resumed run would silently mix two configurations.
RESUME_IGNORED_KEYS = frozenset({"progress", "checkpoint_every", "device", "eval_batch_size", "output_dir"})


def settings_diff(saved: Mapping[str, Any], current: Mapping[str, Any], ignored=(),
                  defaults: Optional[Mapping[str, Any]] = None) -> List[str]:
    """``"key: old -> new"`` for each key whose value differs between a checkpoint's settings and this run's,
    compared by value (JSON), skipping ``ignored``.  A key the checkpoint lacks takes ``defaults[key]``
    (a setting added since it was written), else counts as missing."""
    def canon(v):
        return json.dumps(v, sort_keys=True, default=str)

    defaults = defaults or {}
    lines = []
    for key in sorted(set(saved) | set(current)):
        if key in ignored:
            continue
        old = saved[key] if key in saved else defaults.get(key, "<missing>")
        new = current.get(key, "<missing>")
        if canon(old) != canon(new):
            lines.append(f"{key}: {old!r} -> {new!r}")
    return lines


def resume_config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """:func:`settings_diff` for teacher runs (keys in :data:`RESUME_IGNORED_KEYS` may differ)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TeacherTrainConfig)
                if f.default is not dataclasses.MISSING}
    return settings_diff(saved, current, RESUME_IGNORED_KEYS, defaults)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path) -> None:
    """torch.save through a temporary sibling and a rename: a crash leaves the previous file intact."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


# --------------------------------------------------------------------------------------------------- training
def subsample(examples: Sequence[Example], n: Optional[int], seed: int) -> List[Example]:
    """A seeded subsample of at most ``n`` examples (order kept); None keeps all."""
    examples = list(examples)
    if n is None or len(examples) <= n:
        return examples
    keep = sorted(np.random.default_rng(seed).choice(len(examples), size=n, replace=False).tolist())
    return [examples[i] for i in keep]


def start_regression_heads_at_mean(teacher: MultiTaskTeacher, train: Mapping[str, Sequence[Example]]) -> None:
    """Sets each regression head's output bias to the mean training label.  Why: a head that starts near 0
    on a 0..5 scale spends its first steps (and large gradients through the shared encoder) learning the
    offset; measured on the demo corpus this lifted the teacher's similarity Pearson after one epoch."""
    for name, examples in train.items():
        if teacher.tasks[name].kind == "regression" and examples:
            with torch.no_grad():
                teacher.heads[name][-1].bias.fill_(float(np.mean([float(e.label) for e in examples])))


def _task_loss(task: TaskDef, logits: torch.Tensor, labels: Sequence) -> torch.Tensor:
    if task.kind == "regression":
        target = torch.tensor([float(x) for x in labels], dtype=logits.dtype, device=logits.device)
        return F.mse_loss(logits[:, 0], target)
    target = torch.tensor([int(x) for x in labels], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


class _StopTraining(Exception):
    pass


def train_teacher(cfg: TeacherTrainConfig, teacher: MultiTaskTeacher, train: Mapping[str, Sequence[Example]],
                  dev: Optional[Mapping[str, Sequence[Example]]] = None, *, resume: bool = False,
                  stop_after_steps: Optional[int] = None,
                  step_callback: Optional[Callable[[int, float], None]] = None) -> Dict[str, Any]:
    """Train ``teacher`` on ``train`` ({task: labeled examples}); evaluate on ``dev`` after each epoch.

    Checkpoints go to ``cfg.output_dir/checkpoint.pt`` (atomically; every ``checkpoint_every`` steps and at
    each epoch end); the final teacher is saved to ``cfg.output_dir/teacher``.  ``resume=True`` continues
    from the checkpoint when there is one.  ``stop_after_steps`` ends the call after that many global steps
    (having written a checkpoint), e.g. to split a run or to test resume.  Returns a summary dict."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    # a killed run leaves checkpoint-sized temporary files (and teacher-sized folders) that nothing else removes
    remove_temp_leftovers(out_dir, ["checkpoint.pt", "teacher"])
    device = torch.device(cfg.device)
    missing = [t for t in train if t not in teacher.tasks]
    if missing:
        raise ValueError(f"train: tasks {missing} have no head in the teacher (heads: {teacher.task_names})")
    train = {t: [e for e in exs if e.label is not None] for t, exs in train.items()}
    empty = [t for t, exs in train.items() if not exs]
    if empty:
        raise ValueError(f"train: no labeled examples for task(s) {empty}")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    start_regression_heads_at_mean(teacher, train)
    teacher.to(device)
    sampler = TaskBatchSampler({t: len(v) for t, v in train.items()}, cfg.batch_size, cfg.seed)
    total_steps = sampler.batches_per_epoch() * cfg.epochs
    optimizer = torch.optim.AdamW(param_groups(teacher, cfg.lr, cfg.weight_decay, cfg.head_lr), lr=cfg.lr)
    scheduler = warmup_schedule(optimizer, int(round(cfg.warmup_ratio * total_steps)), total_steps)
    step, history = 0, []
    elapsed_before = 0.0
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("config") is not None:  # before loading anything: a mismatch would fail obscurely or not at all
            diff = resume_config_diff(state["config"], dataclasses.asdict(cfg))
            if diff:
                raise ValueError(f"resume: the checkpoint {ckpt_path} was written with other settings, which would "
                                 "change the result: " + "; ".join(diff) + ". Use the checkpoint's settings, or "
                                 "another output_dir to start afresh (only "
                                 f"{sorted(RESUME_IGNORED_KEYS)} may change on resume)")
        teacher.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"])
        step, history, elapsed_before = state["step"], state["history"], state.get("elapsed", 0.0)

    def save_checkpoint():
        atomic_torch_save({"model": teacher.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
                           "rng": _rng_state(), "step": step, "history": history,
                           "elapsed": elapsed_before + time.perf_counter() - t0,
                           "config": dataclasses.asdict(cfg)}, ckpt_path)

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    stopped = False
    while sampler.epoch < cfg.epochs and not stopped:
        batches = sampler.epoch_batches(sampler.epoch)
        teacher.train()
        bar = tqdm(total=len(batches), initial=sampler.position, desc=f"teacher epoch {sampler.epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress, leave=False)
        while sampler.position < len(batches):
            task_name, idx = batches[sampler.position]
            exs = [train[task_name][i] for i in idx]
            logits = teacher(task_name, **teacher.tokenize(exs, cfg.max_length, device))
            loss = _task_loss(teacher.tasks[task_name], logits, [e.label for e in exs])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(teacher.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            sampler.position += 1
            step += 1
            bar.update(1)
            bar.set_postfix(task=task_name, loss=f"{loss.item():.4f}")
            if step_callback is not None:
                step_callback(step, float(loss.item()))
            if sampler.position == len(batches):
                break  # the epoch-end checkpoint comes after evaluation
            if step % cfg.checkpoint_every == 0 or (stop_after_steps is not None and step >= stop_after_steps):
                save_checkpoint()
            if stop_after_steps is not None and step >= stop_after_steps:
                stopped = True
                break
        bar.close()
        if stopped:
            break
        metrics = evaluate_teacher(teacher, dev, cfg.max_length, cfg.eval_batch_size) if dev else {}
        history.append({"epoch": sampler.epoch + 1, "step": step, "dev": metrics})
        if cfg.progress and metrics:
            print(f"epoch {sampler.epoch + 1}: " + ", ".join(f"{t} {m['score']:.4f}" for t, m in metrics.items()))
        sampler.epoch += 1
        sampler.position = 0
        save_checkpoint()
        if stop_after_steps is not None and step >= stop_after_steps:
            stopped = True

    summary = {"steps": step, "total_steps": total_steps, "finished": sampler.epoch >= cfg.epochs,
               "history": history, "seconds": elapsed_before + time.perf_counter() - t0,
               "checkpoint": str(ckpt_path)}
    if summary["finished"]:
        summary["teacher_dir"] = teacher.save(out_dir / "teacher")
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ------------------------------------------------------------------------------------------------ data wiring
def load_task_data(cfg_tasks: Sequence[str], data: str, data_dir: Optional[str], seed: int = 0,
                   synthetic_sizes: Any = None,
                   splits: Sequence[str] = ("train", "dev")) -> Tuple[Dict[str, TaskDef], Dict[str, Dict[str, List[Example]]]]:
    """(task definitions, {split: {task: examples}}) from the GLUE files or the synthetic corpus (modules
    written alongside this one: ``mkd_fast.tasks.glue``, ``mkd_fast.data.glue_files``, ``mkd_fast.data.synthetic``)."""
    out: Dict[str, Dict[str, List[Example]]] = {s: {} for s in splits}
    if data == "glue":
        from ..data.glue_files import load_glue_split
        from ..tasks.glue import get_task

        if not data_dir:
            raise ValueError("data_dir: required when data is 'glue'")
        tasks = {name: get_task(name) for name in cfg_tasks}
        for name, task in tasks.items():
            for s in splits:
                out[s][task.name] = list(load_glue_split(data_dir, task.name, s))
        return {t.name: t for t in tasks.values()}, out
    from ..data.synthetic import make_synthetic_corpus
    from ..tasks.glue import get_task

    corpus = make_synthetic_corpus(seed, synthetic_sizes, tasks=list(cfg_tasks))
    tasks = {name: get_task(name) for name in cfg_tasks}
    for name in cfg_tasks:
        for s in splits:
            out[s][name] = list(corpus[name][s])
    return tasks, out


def train_from_config(cfg: TeacherTrainConfig, resume: bool = False) -> Dict[str, Any]:
    """What ``mkd-fast teacher train --config FILE`` runs."""
    from .loading import load_encoder

    tasks, data = load_task_data(cfg.tasks, cfg.data, cfg.data_dir, cfg.seed, cfg.synthetic_sizes)
    train = {t: subsample(v, cfg.max_train_examples, cfg.seed) for t, v in data["train"].items()}
    dev = {t: subsample(v, cfg.max_dev_examples, cfg.seed) for t, v in data["dev"].items()}
    torch.manual_seed(cfg.seed)  # head initialisation
    encoder, tok = load_encoder(cfg.model)
    teacher = MultiTaskTeacher(encoder, [tasks[t] for t in cfg.tasks], tok, dropout=cfg.dropout, pooling=cfg.pooling)
    return train_teacher(cfg, teacher, train, dev, resume=resume)
