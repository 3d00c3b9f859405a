"""`DistillationTrainer`: a Hugging Face `Trainer` whose loss is the fused `kd_loss` against a teacher.

The teacher is either *live* (a model kept outside ``self.model``, so the Trainer never trains, saves or
wraps it in DDP; it runs in eval mode under ``no_grad`` on the student's device) or *cached* (its logits
arrive in the batch under ``teacher_logits_key``, from a dataset column or a `SoftTargetCollator`).
The student is called without ``labels``, so it does not compute a loss of its own that would be thrown away.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from transformers import Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..losses import KDLoss, kd_loss
from .causal_lm import causal_lm_kd_loss, make_lm_labels
from .vocab import match_teacher_classes


def _logits_of(outputs, who: str) -> torch.Tensor:
    """The logits of a model output: a ModelOutput / dict (``logits``), a tuple (first item) or a tensor."""
    if isinstance(outputs, dict):
        logits = outputs.get("logits")
    elif isinstance(outputs, (tuple, list)):
        logits = outputs[0] if outputs else None
    else:
        logits = outputs
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{who}: expected the model output to hold a logits tensor (outputs.logits or "
                        f"outputs[0]), got {type(logits).__name__}")
    return logits


def _model_device(model: torch.nn.Module) -> Optional[torch.device]:
    param = next(model.parameters(), None)
    return None if param is None else param.device


class DistillationTrainer(Trainer):
    """`transformers.Trainer` that trains the student (``model``) on ``mkd_fast.kd_loss`` to a teacher.

    Loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * D(teacher || student) at temperature T
    (``scale_t2`` as in `kd_loss`), over the rows whose ``labels`` are not -100.  Logits ``[B, C]``
    (sequence classification) and ``[B, T, C]`` (token classification) are used as they are; a causal LM's
    ``[B, T, V]`` logits are scored against the next token (``shift_labels``: None = detect causal LMs as
    the Trainer does).  Without ``labels``, token-level logits are masked with ``attention_mask``.

    teacher_model: a live teacher; frozen here (``requires_grad_(False)``), never part of ``model``.
        Leave it None to read cached logits from each batch under ``teacher_logits_key`` (``[B, C]`` /
        ``[B, T, V]``, or batch-first ensembles ``[B, K, C]`` / ``[B, K, T, V]``).
    When the Trainer passes ``num_items_in_batch`` (the label count of the whole accumulated batch), the
    loss is normalised by it, so gradient accumulation weights every token equally; otherwise it is the
    mean over this batch's counted rows and the Trainer divides by the accumulation steps.
    """

    def __init__(self, *args, teacher_model: Optional[torch.nn.Module] = None, temperature: float = 1.0,
                 divergence: str = "kl", alpha: float = 0.0, beta: float = 0.5, scale_t2: bool = True,
                 backend: str = "auto", teacher_logits_key: str = "teacher_logits",
                 shift_labels: Optional[bool] = None, truncate_teacher_vocab: bool = False, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("compute_loss_func: DistillationTrainer computes the loss itself with kd_loss; "
                             "pass no compute_loss_func")
        # Validates every loss option (and the backend) before any model work.
        KDLoss(temperature, divergence, beta=beta, alpha=alpha, scale_t2=scale_t2, backend=backend)
        if not isinstance(teacher_logits_key, str) or not teacher_logits_key:
            raise ValueError(f"teacher_logits_key: expected a non-empty string, got {teacher_logits_key!r}")
        if shift_labels is not None and not isinstance(shift_labels, bool):
            raise TypeError(f"shift_labels: expected None (detect) or a bool, got {type(shift_labels).__name__}")
        if not isinstance(truncate_teacher_vocab, bool):
            raise TypeError(f"truncate_teacher_vocab: expected a bool, got {type(truncate_teacher_vocab).__name__}")
        if teacher_model is not None and not isinstance(teacher_model, torch.nn.Module):
            raise TypeError(f"teacher_model: expected a torch.nn.Module or None, got {type(teacher_model).__name__}")
        self.teacher_logits_key = teacher_logits_key  # before the Trainer's set-up, which may filter columns
        super().__init__(*args, **kwargs)
        if self.args.label_smoothing_factor != 0:
            raise ValueError("label_smoothing_factor: not supported by DistillationTrainer (the teacher's soft "
                             "targets take the place of label smoothing); set it to 0")
        if teacher_model is not None:
            if any(m is teacher_model for m in self.model.modules()):
                raise ValueError("teacher_model: the teacher is (part of) the student model; it would be trained. "
                                 "Pass a separate model.")
            teacher_model.requires_grad_(False)
            teacher_model.eval()
        self.teacher_model = teacher_model
        self.loss_options = dict(temperature=temperature, divergence=divergence, beta=beta, alpha=alpha,
                                 scale_t2=scale_t2, backend=backend)
        self.truncate_teacher_vocab = truncate_teacher_vocab
        self.shift_labels = self._detect_causal_lm() if shift_labels is None else shift_labels
        # The Trainer counts ``num_items_in_batch`` over ``labels[..., 1:]`` when this is set: make its count
        # the number of tokens this loss scores.
        self._loss_shifts_labels = self.shift_labels

    def _detect_causal_lm(self) -> bool:
        """A causal LM by the Trainer's own rule for its default loss (the model class is a causal-LM class)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        return unwrapped._get_name() in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()

    # ---- keep the teacher's columns through the Trainer's "remove unused columns" filtering
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = [self.teacher_logits_key, getattr(self.data_collator, "uid_key", None)]
        self._signature_columns += [k for k in extra if k and k not in self._signature_columns]

    # ---- the teacher
    def _teacher_logits(self, inputs: Dict[str, Any], cached: Optional[torch.Tensor],
                        student_logits: torch.Tensor) -> torch.Tensor:
        if self.teacher_model is not None:
            if cached is not None:
                raise ValueError(f"inputs: the batch holds cached teacher logits under {self.teacher_logits_key!r} "
                                 "but a live teacher_model was also given; use one of them")
            teacher = self.teacher_model
            placed_by_user = getattr(teacher, "hf_device_map", None) is not None  # sharded with device_map
            if not placed_by_user and _model_device(teacher) not in (None, student_logits.device):
                teacher.to(student_logits.device)
            teacher.eval()  # every step: something may have switched it to train mode (dropout)
            with torch.no_grad():
                return _logits_of(teacher(**inputs), "teacher_model").detach().to(student_logits.device)
        if cached is None:
            raise ValueError(f"inputs: no teacher_model was given, so every batch needs cached teacher logits "
                             f"under {self.teacher_logits_key!r}; the batch has keys {sorted(inputs)}")
        if not isinstance(cached, torch.Tensor):
            raise TypeError(f"{self.teacher_logits_key}: expected a tensor of teacher logits, got "
                            f"{type(cached).__name__}")
        cached = cached.to(student_logits.device)
        if cached.dim() == student_logits.dim() + 1:
            cached = cached.movedim(1, 0)  # batch-first ensemble [B, K, ...] -> kd_loss's [K, B, ...]
        if not cached.dtype.is_floating_point:
            raise TypeError(f"{self.teacher_logits_key}: expected floating-point logits, got {cached.dtype}")
        return cached

    # ---- the loss
    def _normalizer(self, num_items_in_batch, labels) -> Optional[torch.Tensor]:
        if num_items_in_batch is None or labels is None:
            return None
        count = torch.as_tensor(num_items_in_batch).reshape(-1)[0].to(torch.float64)
        if self.args.n_gpu > 1 and not self.args.average_tokens_across_devices:
            count = count * self.args.n_gpu  # DataParallel: the Trainer passed a per-GPU share of the count
        return count.clamp_min(1.0)  # an accumulated batch with no counted token gives loss 0, not an error

    def _distillation_loss(self, student_logits, teacher_logits, labels, inputs, normalizer) -> torch.Tensor:
        teacher_logits = match_teacher_classes(student_logits, teacher_logits,
                                               truncate_teacher_vocab=self.truncate_teacher_vocab)
        options = self.loss_options
        if labels is not None and labels.dtype.is_floating_point:
            if options["alpha"] > 0:
                raise ValueError("alpha: hard-label mixing needs integer class labels, but the batch's labels are "
                                 f"{labels.dtype} (a regression task?); use alpha=0")
            labels = None  # regression targets: nothing to mask or mix
        attention_mask = inputs.get("attention_mask")
        if self.shift_labels:
            if labels is None:
                input_ids = inputs.get("input_ids")
                if input_ids is None:
                    raise ValueError("inputs: a causal LM batch needs labels or input_ids to know the next tokens")
                labels = make_lm_labels(input_ids, attention_mask=attention_mask)
            return causal_lm_kd_loss(student_logits, teacher_logits, labels, normalizer=normalizer,
                                     **options)
        mask = None
        if labels is None and student_logits.dim() == 3 and attention_mask is not None:
            mask = attention_mask.bool()  # token-level logits without labels: skip padding
        return kd_loss(student_logits, teacher_logits, labels=labels, mask=mask, normalizer=normalizer, **options)

    def compute_loss(self, model: torch.nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch=None):
        """Distillation loss of one batch (signature of transformers 5.x, which passes ``num_items_in_batch``)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        cached = inputs.pop(self.teacher_logits_key, None)
        outputs = model(**inputs)
        student_logits = _logits_of(outputs, "model")
        teacher_logits = self._teacher_logits(inputs, cached, student_logits)
        normalizer = self._normalizer(num_items_in_batch, labels)
        loss = self._distillation_loss(student_logits, teacher_logits, labels, inputs, normalizer)
        if normalizer is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # num_items_in_batch counts every process's tokens and DDP averages the gradients: undo that mean,
            # as the Trainer's own loss does.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Without labels the Trainer calls the model directly: drop the cached teacher logits it cannot take."""
        has_labels = bool(self.label_names) and all(inputs.get(k) is not None for k in self.label_names)
        if not has_labels:
            inputs = {k: v for k, v in inputs.items() if k != self.teacher_logits_key}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
