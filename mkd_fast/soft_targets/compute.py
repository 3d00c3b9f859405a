"""Run every teacher over every task's examples once and fill the soft-target store, resumably.

Work is cut into shards (``shard_size`` examples); a shard is written atomically when done, so a killed run
restarted with the same fingerprint skips every finished shard and recomputes only the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..data.examples import Example
from ..tasks.definition import TaskDef
from ..teachers.multitask import TeacherEnsemble
from ..teachers.training import config_from_yaml, load_task_data, subsample
from .store import DTYPES, SoftTargetStore, SoftTargetWriter, examples_hash


@dataclass
class SoftTargetConfig:
    """Settings of one soft-target run (the YAML keys are these field names)."""

    output_dir: str
    tasks: List[str]
    teachers: List[str] = field(default_factory=list)            # saved teacher folders, used for every task
    task_teachers: Dict[str, List[str]] = field(default_factory=dict)  # per-task override
    data: str = "glue"
    data_dir: Optional[str] = None
    splits: List[str] = field(default_factory=lambda: ["train"])
    max_examples: Optional[int] = None     # per task and split, seeded subsample
    seed: int = 0
    max_length: int = 128
    batch_size: int = 64
    shard_size: int = 1024
    dtype: str = "float16"
    device: str = "cpu"
    augmentation: Dict[str, Any] = field(default_factory=dict)  # recorded in the fingerprint
    synthetic_sizes: Any = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {self.dtype!r}")
        for key in ("max_length", "batch_size", "shard_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not self.teachers and not self.task_teachers:
            raise ValueError("teachers: give teacher folders (teachers or task_teachers)")


def load_soft_target_config(path) -> SoftTargetConfig:
    return config_from_yaml(SoftTargetConfig, path)


def build_fingerprint(ensemble: TeacherEnsemble, examples: Mapping[str, Sequence[Example]], *, max_length: int,
                      dtype: str, augmentation: Optional[Mapping[str, Any]] = None,
                      data_hashes: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Everything the stored logits depend on.  ``data_hashes`` (e.g. data file hashes) replaces the
    per-task example hash when given."""
    parts = ensemble.fingerprint_parts()
    data = dict(data_hashes) if data_hashes is not None else {t: examples_hash(exs) for t, exs in examples.items()}
    return {"teacher_weights": {t: parts["teacher_weights"][t] for t in examples},
            "tokenizers": {t: parts["tokenizers"][t] for t in examples},
            "max_length": int(max_length), "dtype": dtype, "data": data,
            "augmentation": dict(augmentation or {})}


@torch.no_grad()
def compute_soft_targets(ensemble: TeacherEnsemble, examples: Mapping[str, Sequence[Example]],
                         tasks: Mapping[str, TaskDef], store_dir, *, max_length: int = 128, batch_size: int = 64,
                         shard_size: int = 1024, dtype: str = "float16", device="cpu",
                         augmentation: Optional[Mapping[str, Any]] = None,
                         data_hashes: Optional[Mapping[str, str]] = None, overwrite: bool = False,
                         progress: bool = True) -> SoftTargetStore:
    """Fill ``store_dir`` with raw logits [K, N, C] per task and return the opened store.

    Re-running with the same teachers/data/settings resumes: finished shards are skipped.  A different
    fingerprint is refused (StaleStoreError) unless ``overwrite``."""
    from tqdm.auto import tqdm

    missing = [t for t in examples if not ensemble.has(t)]
    if missing:
        raise ValueError(f"examples: tasks {missing} have no teachers in the ensemble (it has {ensemble.tasks})")
    no_def = [t for t in examples if t not in tasks]
    if no_def:
        raise ValueError(f"tasks: no task definition for {no_def}")
    fp = build_fingerprint(ensemble, examples, max_length=max_length, dtype=dtype, augmentation=augmentation,
                           data_hashes=data_hashes)
    writer = SoftTargetWriter(store_dir, fp, overwrite=overwrite)
    ensemble.to(device).eval()
    for task_name, exs in examples.items():
        exs = list(exs)
        task = tasks[task_name]
        writer.begin_task(task_name, [e.uid for e in exs], ensemble.size(task_name), task.num_labels,
                          kind=task.kind, dtype=dtype, shard_size=shard_size)
        n_shards = (len(exs) + shard_size - 1) // shard_size
        todo = [i for i in range(n_shards) if not writer.has_shard(task_name, i)]
        bar = tqdm(total=n_shards, initial=n_shards - len(todo), desc=f"soft targets {task_name}", unit="shard",
                   disable=not progress, leave=False)
        for i in todo:
            shard = exs[i * shard_size:(i + 1) * shard_size]
            parts = [ensemble.logits_for_examples(task_name, shard[j:j + batch_size], max_length, device=device).cpu()
                     for j in range(0, len(shard), batch_size)]
            writer.write_shard(task_name, i, torch.cat(parts, dim=1))
            bar.update(1)
        bar.close()
        writer.finalize_task(task_name)
    return writer.finalize(list(examples))


def compute_from_config(cfg: SoftTargetConfig) -> SoftTargetStore:
    """What ``mkd-fast soft-targets --config FILE`` runs."""
    task_defs, data = load_task_data(cfg.tasks, cfg.data, cfg.data_dir, cfg.seed, cfg.synthetic_sizes,
                                     splits=tuple(cfg.splits))
    members = {t: cfg.task_teachers.get(t, cfg.teachers) for t in cfg.tasks}
    empty = [t for t, m in members.items() if not m]
    if empty:
        raise ValueError(f"teachers: no teacher folders for task(s) {empty}")
    ensemble = TeacherEnsemble.from_dirs(members)
    examples = {t: [e for s in cfg.splits for e in subsample(data[s][t], cfg.max_examples, cfg.seed)] for t in cfg.tasks}
    return compute_soft_targets(ensemble, examples, task_defs, cfg.output_dir, max_length=cfg.max_length,
                                batch_size=cfg.batch_size, shard_size=cfg.shard_size, dtype=cfg.dtype,
                                device=cfg.device, augmentation=cfg.augmentation, overwrite=cfg.overwrite,
                                progress=cfg.progress)
