"""Using the fused loss in other trainers: a Hugging Face `Trainer` subclass and causal-LM token distillation.

`DistillationTrainer` and `SoftTargetCollator` are loaded on first use, so importing this package does not
import transformers (the causal-LM helpers need only torch).
"""
from .causal_lm import causal_lm_kd_loss, make_lm_labels, shift_labels_left
from .vocab import match_teacher_classes

_LAZY = {"DistillationTrainer": ".hf_trainer", "SoftTargetCollator": ".soft_target_collator"}

__all__ = ["DistillationTrainer", "SoftTargetCollator", "causal_lm_kd_loss", "make_lm_labels",
           "match_teacher_classes", "shift_labels_left"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
