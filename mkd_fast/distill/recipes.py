"""Presets for the seed papers: each is a set of trainer settings plus the stages its paper runs.

=========  ==================================================================================================
recipe     what it reproduces
=========  ==================================================================================================
mkd        MKD (Liu et al. 2019, arXiv 1911.03588): multi-task teacher -> one multi-task student (BiLSTM or
           Transformer) trained on the MSE between student and teacher logits, tasks sampled in proportion
           to their size -> optional per-task fine-tuning (same loss, one task at a time).
mtdnn-kd   MT-DNN-KD (Liu et al. 2019, arXiv 1904.09482): per-task teacher ensembles; soft targets = mean of
           the members' class probabilities (T = 1); loss = 0.5 hard CE + 0.5 soft CE; tasks without a
           teacher keep their plain loss.
tang       Tang et al. 2019 (arXiv 1903.12136): single-task BiLSTM, MSE on logits, Adadelta lr 1.0, a
           transfer set augmented with masking / same-POS swaps / n-gram sampling (the soft-target store is
           computed over it).
mitkd      MITKD / ERNIE 3.0 Tiny (arXiv 2301.03416): multi-task-trained teacher -> task-agnostic
           distillation of a Transformer student on unlabeled text (MLM-logit KL, hidden-state MSE,
           attention KL) -> per-task fine-tuning on hard labels.
=========  ==================================================================================================
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict

from .config import DistillConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    paper: str
    student_type: str                     # the paper's student: "bilstm" or "transformer"
    distill: Dict[str, Any]               # DistillConfig settings of the multi-task distillation stage
    finetune: Dict[str, Any] = field(default_factory=dict)   # settings of per-task fine-tuning ({} : none)
    single_task: bool = False             # one student per task instead of one multi-task student
    augment_copies: int = 0               # transfer-set augmentation copies per example (Tang et al.)
    task_agnostic: bool = False           # run MITKD's task-agnostic stage before fine-tuning
    description: str = ""


RECIPES: Dict[str, Recipe] = {r.name: r for r in [
    Recipe("mkd", "arXiv 1911.03588", "bilstm",
           distill=dict(divergence="mse", alpha=0.0, regression_label_weight=0.0, sampling="proportional"),
           finetune=dict(divergence="mse", alpha=0.0, epochs=1.0),
           description="multi-task teacher -> multi-task student on logit MSE -> per-task fine-tuning"),
    Recipe("mtdnn-kd", "arXiv 1904.09482", "transformer",
           distill=dict(divergence="ce", temperature=1.0, alpha=0.5, regression_label_weight=0.5,
                        aggregate="mean_probs", allow_missing_targets=True, sampling="proportional"),
           description="per-task ensembles, mean of probabilities, 0.5 hard CE + 0.5 soft CE"),
    Recipe("tang", "arXiv 1903.12136", "bilstm",
           distill=dict(divergence="mse", alpha=0.0, optimizer="adadelta", lr=1.0, schedule="constant",
                        max_grad_norm=0.0),
           single_task=True, augment_copies=20,
           description="single-task BiLSTM, logit MSE on an augmented transfer set, Adadelta"),
    Recipe("mitkd", "arXiv 2301.03416", "transformer",
           distill=dict(alpha=1.0, regression_label_weight=1.0),
           finetune=dict(alpha=1.0, regression_label_weight=1.0, epochs=3.0),
           task_agnostic=True,
           description="multi-task teacher -> task-agnostic distillation -> per-task fine-tuning"),
]}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"recipe: unknown recipe {name!r}; known: {sorted(RECIPES)}") from None


def recipe_config(name: str, stage: str = "distill", **overrides) -> DistillConfig:
    """The recipe's DistillConfig for ``stage`` ("distill" or "finetune"), with ``overrides`` on top."""
    recipe = get_recipe(name)
    if stage not in ("distill", "finetune"):
        raise ValueError(f"stage: expected 'distill' or 'finetune', got {stage!r}")
    base = dict(recipe.distill)
    if stage == "finetune":
        base.update(recipe.finetune)
    known = {f.name for f in dataclasses.fields(DistillConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"overrides: unknown DistillConfig keys {unknown}")
    return DistillConfig(**{**base, **overrides})
