"""Token-level distillation of a causal language model with the fused `kd_loss`.

The logits at position t predict token t+1, so the targets are the labels shifted left by one.  Only the
labels are shifted (the last position gets ``ignore_index``), never the ``[B, T, V]`` logits: slicing them
would make `kd_loss` copy the largest tensors of the step.  Student and teacher logits at the same position
both predict the same next token, so they are compared unshifted.  Tokens labelled ``ignore_index``
(padding, the prompt) count for neither the soft nor the hard term.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch

from ..losses import kd_loss
from .vocab import match_teacher_classes


def _check_token_tensor(name: str, t, shape=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape [batch, seq_len], got {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (student_logits without the vocabulary "
                         f"dimension), got {tuple(t.shape)}")


def _prompt_lengths_tensor(prompt_lengths, batch: int, device) -> torch.Tensor:
    if isinstance(prompt_lengths, numbers.Integral) and not isinstance(prompt_lengths, bool):
        lengths = torch.full((batch,), int(prompt_lengths), dtype=torch.long, device=device)
    else:
        lengths = torch.as_tensor(prompt_lengths, device=device)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.shape != (batch,):
            raise ValueError(f"prompt_lengths: expected an int or {batch} integers (one per sequence), got "
                             f"{prompt_lengths!r}")
        lengths = lengths.long()
    if bool((lengths < 0).any()):
        raise ValueError(f"prompt_lengths: expected lengths >= 0, got {lengths.tolist()}")
    return lengths


def make_lm_labels(input_ids: torch.Tensor, *, attention_mask: Optional[torch.Tensor] = None,
                   prompt_lengths: Union[int, Sequence[int], torch.Tensor, None] = None,
                   loss_mask: Optional[torch.Tensor] = None, ignore_index: int = -100) -> torch.Tensor:
    """Labels ``[B, T]`` for causal-LM distillation: ``input_ids`` with padding and prompt tokens set to
    ``ignore_index`` (Hugging Face convention: labels are *not* shifted; the loss shifts them).

    ``attention_mask`` marks real tokens (left or right padding both work: a prompt starts at the first
    real token).  ``prompt_lengths`` (int, or one per sequence) counts the prompt tokens that are context
    only.  ``loss_mask`` (bool ``[B, T]``, True = learn this token) is applied on top.
    """
    _check_token_tensor("input_ids", input_ids)
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids: expected an integer tensor of token ids, got {input_ids.dtype}")
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        _check_token_tensor("attention_mask", attention_mask, input_ids.shape)
        keep &= attention_mask.bool()
    if prompt_lengths is not None:
        batch, seq_len = input_ids.shape
        lengths = _prompt_lengths_tensor(prompt_lengths, batch, input_ids.device)
        real = keep if attention_mask is not None else torch.ones_like(keep)
        # Index of the first real token (0 for right padding); seq_len for a sequence with none.
        positions = torch.arange(seq_len, device=input_ids.device).expand(batch, seq_len)
        first = torch.where(real, positions, torch.full_like(positions, seq_len)).min(dim=1).values
        keep &= positions >= (first + lengths)[:, None]
    if loss_mask is not None:
        _check_token_tensor("loss_mask", loss_mask, input_ids.shape)
        if loss_mask.dtype != torch.bool:
            raise TypeError(f"loss_mask: expected a bool tensor (True = learn this token), got {loss_mask.dtype}")
        keep &= loss_mask
    return torch.where(keep, input_ids.long(), torch.full_like(input_ids, ignore_index, dtype=torch.long))


def shift_labels_left(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``out[..., t] = labels[..., t + 1]``; the last position, which has no next token, is ``ignore_index``."""
    shifted = torch.full_like(labels, ignore_index)
    shifted[..., :-1] = labels[..., 1:]
    return shifted


def causal_lm_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: Optional[torch.Tensor] = None, *, input_ids: Optional[torch.Tensor] = None,
                      loss_mask: Optional[torch.Tensor] = None, temperature: float = 1.0, divergence: str = "kl",
                      beta: float = 0.5, alpha: float = 0.0, ignore_index: int = -100,
                      truncate_teacher_vocab: bool = False, scale_t2: bool = True, reduction: str = "batchmean",
                      normalizer: Optional[Union[float, torch.Tensor]] = None,
                      backend: str = "auto") -> torch.Tensor:
    """Next-token distillation loss of a causal LM.

    student_logits ``[B, T, V]``; teacher_logits ``[B, T, V']`` or ``[K, B, T, V']`` (an ensemble).  Give
    either ``labels`` ``[B, T]`` (unshifted, ``ignore_index`` on padding and prompt tokens, as for a Hugging
    Face causal LM) or ``input_ids`` ``[B, T]`` with an optional bool ``loss_mask`` (True = learn this token).
    Position t is scored against token t+1 only where that token counts.  ``alpha`` mixes in the hard
    next-token cross-entropy.  ``reduction="batchmean"`` averages over the counted tokens; ``normalizer``
    replaces that count (e.g. the token count of a whole accumulated batch); ``"none"`` gives ``[B, T]``
    with zeros where nothing counts.  If no token counts the loss is 0 with a zero gradient.

    V' must equal V; with ``truncate_teacher_vocab=True`` a larger teacher vocabulary is cut to the
    student's first V classes.  The other options are those of `mkd_fast.kd_loss`.
    """
    if not isinstance(student_logits, torch.Tensor):
        raise TypeError(f"student_logits: expected a torch.Tensor, got {type(student_logits).__name__}")
    if student_logits.dim() != 3:
        raise ValueError("student_logits: expected a tensor of shape [batch, seq_len, vocab], got "
                         f"{tuple(student_logits.shape)}")
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() not in (3, 4):
        raise ValueError("teacher_logits: expected a tensor of shape [batch, seq_len, vocab] or "
                         "[teachers, batch, seq_len, vocab]")
    if (labels is None) == (input_ids is None):
        raise ValueError("labels, input_ids: pass exactly one of them (labels = input_ids with ignore_index on "
                         "tokens that do not count)")
    if loss_mask is not None and input_ids is None:
        raise ValueError("loss_mask: only used with input_ids; with labels, set ignored tokens to ignore_index")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")

    lead_shape = student_logits.shape[:-1]
    if labels is None:
        _check_token_tensor("input_ids", input_ids, lead_shape)
        labels = make_lm_labels(input_ids, loss_mask=loss_mask, ignore_index=ignore_index)
    else:
        _check_token_tensor("labels", labels, lead_shape)
    if teacher_logits.shape[-3:-1] != lead_shape:
        raise ValueError(f"teacher_logits: expected batch and sequence sizes {tuple(lead_shape)} like "
                         f"student_logits, got shape {tuple(teacher_logits.shape)}")
    teacher_logits = match_teacher_classes(student_logits, teacher_logits,
                                           truncate_teacher_vocab=truncate_teacher_vocab)
    targets = shift_labels_left(labels.to(student_logits.device), ignore_index)
    return kd_loss(student_logits, teacher_logits, temperature=temperature, divergence=divergence, beta=beta,
                   labels=targets, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                   scale_t2=scale_t2, normalizer=normalizer, backend=backend)
