"""The per-batch distillation loss: teacher logits from the soft-target store, the fused ``kd_loss``
underneath, hard labels mixed in, and the plain loss for whatever has no teacher."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F

from ..data.examples import Example
from ..losses import kd_loss
from ..tasks.definition import TaskDef
from .config import DistillConfig

IGNORE = -100


class DistillObjective:
    """Computes one task-homogeneous batch's loss (see :class:`DistillConfig` for the formula).

    ``store`` is a :class:`~mkd_fast.soft_targets.SoftTargetStore` (or None: hard labels only).  The
    store's tasks are checked against the task definitions up front: a class count that differs from the
    student's head is an error, never a silent broadcast."""

    def __init__(self, tasks: Mapping[str, TaskDef], config: DistillConfig, store=None):
        self.tasks = dict(tasks)
        self.config = config
        self.store = store
        self._stored: Dict[str, Set[str]] = {}
        if store is not None:
            for name in self.tasks:
                if name in store.tasks:
                    info = store.task_info(name)
                    if int(info["num_classes"]) != self.tasks[name].num_labels:
                        raise ValueError(f"soft_targets: task {name!r} has {info['num_classes']} teacher outputs in "
                                         f"the store but {self.tasks[name].num_labels} in the task definition")
                    if config.teachers is not None:
                        k = int(info["num_teachers"])
                        bad = [i for i in config.teachers if not 0 <= i < k]
                        if bad:
                            raise ValueError(f"teachers: indices {bad} out of range for task {name!r} ({k} teachers)")
                    self._stored[name] = set(store.uids(name))

    def has_teacher(self, task: str) -> bool:
        return task in self._stored

    def teacher_logits(self, task: str, examples: Sequence[Example]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(teacher logits [K, B, C] with zeros where missing, bool [B] rows that have them) or (None, None)."""
        if task not in self._stored:
            return None, None
        present = torch.tensor([e.uid in self._stored[task] for e in examples], dtype=torch.bool)
        if not bool(present.all()) and not self.config.allow_missing_targets:
            missing = [e.uid for e in examples if e.uid not in self._stored[task]][:3]
            raise KeyError(f"soft_targets: examples {missing} of task {task!r} are not in the soft-target store "
                           "(compute the store over the same examples, or set allow_missing_targets)")
        uids = [e.uid for e, p in zip(examples, present.tolist()) if p]
        k = len(self.config.teachers) if self.config.teachers is not None else int(self.store.task_info(task)["num_teachers"])
        out = torch.zeros(k, len(examples), self.tasks[task].num_labels)
        if uids:
            out[:, present] = self.store.logits(task, uids, self.config.teachers)
        if self.config.aggregate == "mean_logits" or self.tasks[task].kind == "regression":
            out = out.mean(0, keepdim=True)
        return out, present

    def labels(self, task: str, examples: Sequence[Example], device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(label tensor, bool [B] rows that have a label); classification labels use -100 where missing."""
        has = torch.tensor([e.label is not None for e in examples], dtype=torch.bool, device=device)
        if self.tasks[task].kind == "regression":
            vals = [float(e.label) if e.label is not None else 0.0 for e in examples]
            return torch.tensor(vals, dtype=torch.float32, device=device), has
        vals = [int(e.label) if e.label is not None else IGNORE for e in examples]
        return torch.tensor(vals, dtype=torch.long, device=device), has

    def __call__(self, task: str, student_logits: torch.Tensor, examples: Sequence[Example],
                 teacher: Optional[torch.Tensor] = None, present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scalar loss of one batch, already multiplied by the task's weight."""
        cfg = self.config
        device = student_logits.device
        s = student_logits.float()
        labels, labeled = self.labels(task, examples, device)
        weight = float(cfg.task_weights.get(task, 1.0))
        is_regression = self.tasks[task].kind == "regression"
        if teacher is None:  # no teacher for this task: the plain supervised loss
            if not bool(labeled.any()):
                raise ValueError(f"examples: a batch of task {task!r} has neither labels nor teacher outputs")
            if is_regression:
                return weight * F.mse_loss(s[labeled, 0], labels[labeled])
            return weight * F.cross_entropy(s, labels, ignore_index=IGNORE)
        teacher = teacher.to(device)
        present = present.to(device)
        mix = cfg.regression_label_weight if is_regression else cfg.alpha
        common = dict(divergence="mse" if is_regression else cfg.divergence, temperature=cfg.temperature,
                      scale_t2=cfg.scale_t2, backend=cfg.backend)
        if not is_regression and bool(present.all()) and bool(labeled.all()):
            # The common case: one fused call does the soft term and the hard-label mix.
            return weight * kd_loss(s, teacher, labels=labels if mix > 0 else None, alpha=mix, **common)
        soft = kd_loss(s, teacher, mask=present, reduction="none", **common)
        if is_regression:
            hard = torch.where(labeled, (s[:, 0] - labels) ** 2, torch.zeros_like(labels))
        else:
            hard = F.cross_entropy(s, labels, ignore_index=IGNORE, reduction="none")
        hard_weight = torch.where(present, torch.full_like(hard, mix), torch.ones_like(hard))
        rows = (1.0 - mix) * soft + hard_weight * hard
        counted = present | labeled
        return weight * rows.sum() / counted.sum().clamp_min(1)
