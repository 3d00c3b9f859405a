"""The settings of one multi-task distillation run, as a typed dataclass (YAML keys are the field names)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..optim import SCHEDULES
from ..spec import DIVERGENCES

SAMPLING = ("proportional", "temperature", "uniform", "round_robin")
OPTIMIZERS = ("adamw", "adam", "adadelta", "sgd")
AMP_MODES = ("no", "bf16", "fp16")
AGGREGATES = ("mean_probs", "mean_logits")

# Keys that do not change what a run computes: a resumed run may change them freely.
HARMLESS_KEYS = ("output_dir", "progress", "checkpoint_every", "device", "eval_batch_size", "tensorboard",
                 "log_every", "backend")


@dataclass
class DistillConfig:
    """Trainer settings.  Loss per task (classification), with teacher logits from the soft-target store:

    ``(1 - alpha) * soft + alpha * CE(labels)`` where ``soft`` is ``kd_loss(divergence, temperature)``
    (T^2-scaled for kl/ce when ``scale_t2``; "mse" is the MSE of raw logits, MKD and Tang et al.).
    Regression tasks: ``(1 - regression_label_weight) * MSE(student, teacher score) +
    regression_label_weight * MSE(student, label)``.  Tasks the store has no teacher for (and examples
    without a stored row, when ``allow_missing_targets``) keep their plain hard-label loss (MT-DNN-KD).
    ``alpha=1`` (or no store) is plain multi-task training on hard labels."""

    output_dir: str = "runs/distill"
    steps: Optional[int] = None            # total optimizer steps; None: ``epochs`` passes over the data
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 256
    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-3
    head_lr: Optional[float] = None        # None: same as lr
    weight_decay: float = 0.0
    schedule: str = "linear"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    amp: str = "no"                        # "bf16" / "fp16" through torch.autocast (+ GradScaler for fp16)
    # task sampling
    sampling: str = "proportional"
    sampling_tau: float = 0.5              # "temperature": p(task) proportional to size ** tau
    task_weights: Dict[str, float] = field(default_factory=dict)   # loss weight per task (default 1)
    # loss
    divergence: str = "mse"
    temperature: float = 1.0
    scale_t2: bool = True
    alpha: float = 0.0                     # weight of the hard-label CE (classification)
    regression_label_weight: float = 0.0   # weight of the label MSE (regression)
    aggregate: str = "mean_probs"          # how K teachers combine: as kd_loss does, or mean of logits first
    teachers: Optional[List[int]] = None   # a subset of the stored teachers (indices); None: all
    allow_missing_targets: bool = False    # examples without a stored row: hard-label loss instead of an error
    backend: str = "auto"                  # kd_loss backend
    # evaluation, checkpoints, logs
    eval_every: int = 0                    # steps; 0: only at the end
    best_metric: str = "macro"             # "macro", a task name (its score) or "task.metric"
    checkpoint_every: int = 200
    log_every: int = 10
    tensorboard: bool = False              # also log to TensorBoard (needs the tensorboard package)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("amp", self.amp, AMP_MODES)
        _choice("sampling", self.sampling, SAMPLING)
        _choice("divergence", self.divergence, DIVERGENCES)
        _choice("aggregate", self.aggregate, AGGREGATES)
        for key in ("batch_size", "eval_batch_size", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps: must be >= 1 (or None to use epochs), got {self.steps}")
        if self.steps is None and not self.epochs > 0:
            raise ValueError(f"epochs: must be > 0 when steps is None, got {self.epochs}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every: must be >= 0, got {self.eval_every}")
        for key in ("alpha", "regression_label_weight", "warmup_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        bad = {t: w for t, w in self.task_weights.items() if not w >= 0}
        if bad:
            raise ValueError(f"task_weights: weights must be >= 0, got {bad}")


def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}: expected one of {tuple(allowed)}, got {value!r}")
