"""Optimizer parameter groups and learning-rate schedules shared by every training loop (teachers, the
multi-task distiller, the task-agnostic stage), so they all treat biases, norms and task heads alike."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

SCHEDULES = ("linear", "cosine", "constant")


def no_weight_decay(name: str) -> bool:
    """Biases and normalisation weights are not decayed (the usual BERT/AdamW convention)."""
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or name.endswith("norm.weight")


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, head_lr: Optional[float] = None) -> List[dict]:
    """Trainable parameters in groups: task heads (names starting with ``heads.``) at ``head_lr`` (default
    ``lr``), the rest at ``lr``; each split into decayed and not decayed (:func:`no_weight_decay`)."""
    groups: Dict[Tuple[bool, bool], List[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("heads."), not no_weight_decay(name)), []).append(p)
    head_lr = head_lr if head_lr is not None else lr
    return [{"params": ps, "lr": head_lr if is_head else lr, "weight_decay": weight_decay if decay else 0.0}
            for (is_head, decay), ps in sorted(groups.items())]


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, kind: str = "linear"):
    """LR factor rising linearly over ``warmup`` steps, then linear decay to 0 at ``total``, cosine decay,
    or constant."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {kind!r}")

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
