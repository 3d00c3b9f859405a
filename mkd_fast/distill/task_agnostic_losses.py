"""The three loss terms of task-agnostic distillation (masked-LM KL, hidden-state MSE, attention KL) and
the objective that combines them for one batch.

Why a module of its own: the terms are pure functions of the two models' outputs, so they are tested against
hand-computed values and for padding invariance without running the training loop.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, Mapping, Sequence

import torch
from torch import nn

from ..losses import kd_loss
from .task_agnostic_models import FrozenTeacher

LOSS_TERMS = ("mlm_kl", "hidden_mse", "attention_kl")
ATTENTION_EPS = 1e-12      # student attention probabilities are clamped here before the log: log 0 has no gradient


class LayerProjections(nn.Module):
    """One learned linear map (student hidden -> teacher hidden) per mapped student layer.

    Part of this stage only: saved with the checkpoint, never with the student."""

    def __init__(self, layers: Sequence[int], student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.maps = nn.ModuleDict({str(s): nn.Linear(student_hidden, teacher_hidden) for s in layers})

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.maps[str(layer)](hidden)


def mlm_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                backend: str = "auto") -> torch.Tensor:
    """KL(teacher || student) of the tempered masked-LM distributions, [M, V] each, averaged over the M
    positions and scaled by T^2 (kd_loss's convention, so gradients keep their size as T changes)."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    return kd_loss(student_logits.float(), teacher_logits.float(), temperature=temperature, divergence="kl",
                   backend=backend)


def hidden_mse_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                    projections: LayerProjections, layer_map: Mapping[int, int],
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over mapped layers of the MSE (over real tokens and teacher features) of projected student states."""
    real = attention_mask.bool()
    count = real.sum().clamp_min(1)
    terms = []
    for s, t in layer_map.items():
        diff = projections(s, student_hidden[s].float()) - teacher_hidden[t].float()
        per_token = diff.pow(2).mean(-1)
        terms.append(torch.where(real, per_token, torch.zeros_like(per_token)).sum() / count)
    return torch.stack(terms).mean()


def attention_kl_loss(student_attentions: Sequence[torch.Tensor], teacher_attentions: Sequence[torch.Tensor],
                      layer_map: Mapping[int, int], attention_mask: torch.Tensor,
                      backend: str = "auto") -> torch.Tensor:
    """Mean over mapped layer pairs (student layer >= 1) of KL(teacher || student) between head-averaged
    attention distributions [B, T, T], over real query rows.  ``attentions[i - 1]`` is layer i's map."""
    pairs = [(s, t) for s, t in layer_map.items() if s >= 1]
    if not pairs:
        raise ValueError("layer_map: attention_kl needs at least one mapped transformer layer (>= 1)")
    rows = attention_mask.bool().reshape(-1)
    terms = []
    for s, t in pairs:
        p_s = student_attentions[s - 1].float().mean(1)
        p_t = teacher_attentions[t - 1].float().mean(1)
        width = p_s.shape[-1]
        log_p_s = p_s.clamp_min(ATTENTION_EPS).log().reshape(-1, width)
        terms.append(kd_loss(log_p_s, p_t.reshape(-1, width), divergence="kl", teacher_format="probs",
                             mask=rows, backend=backend))
    return torch.stack(terms).mean()


class TaskAgnosticObjective:
    """The three loss terms for one batch; the teacher stays frozen, the projections are trained."""

    def __init__(self, teacher: FrozenTeacher, student: nn.Module, projections: LayerProjections,
                 layer_map: Mapping[int, int], weights: Mapping[str, float], *, temperature: float = 1.0,
                 backend: str = "auto"):
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"weights: unknown loss term(s) {unknown} (known: {list(LOSS_TERMS)})")
        self.teacher, self.student, self.projections = teacher, student, projections
        self.layer_map = dict(layer_map)
        self.weights = {t: float(weights.get(t, 0.0)) for t in LOSS_TERMS}
        self.temperature, self.backend = temperature, backend

    def __call__(self, batch: Mapping[str, torch.Tensor], masked: torch.Tensor,
                 autocast=nullcontext) -> Dict[str, torch.Tensor]:
        """{"loss": weighted sum, and each term}; terms with weight 0 are reported but carry no gradient."""
        with autocast():
            t_out = self.teacher.outputs(batch, masked)
            s_hidden, s_attn = self.student.features(**batch)
            last = s_hidden[-1][masked]
            s_logits = self.student.mlm_logits(last.unsqueeze(0))[0] if last.shape[0] else last[:, :0]
        if self.weights["attention_kl"] > 0 and (not s_attn or not t_out.attentions):
            raise RuntimeError("attention_kl: the student or the teacher returned no attention maps "
                               "(attention implementation other than eager?)")
        terms = {
            "mlm_kl": mlm_kl_loss(s_logits, t_out.mlm_logits, self.temperature, self.backend),
            "hidden_mse": hidden_mse_loss(s_hidden, t_out.hidden_states, self.projections, self.layer_map,
                                          batch["attention_mask"]),
            "attention_kl": (attention_kl_loss(s_attn, t_out.attentions, self.layer_map, batch["attention_mask"],
                                               self.backend) if s_attn and t_out.attentions
                             else torch.zeros((), device=last.device)),
        }
        total = sum(w * terms[k] for k, w in self.weights.items() if w > 0)
        out = {k: (v if self.weights[k] > 0 else v.detach()) for k, v in terms.items()}
        out["loss"] = total
        return out
