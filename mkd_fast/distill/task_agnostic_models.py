"""The two models as task-agnostic distillation sees them: a frozen teacher view, the student interface check,
the shared-vocabulary check, and switches (eager attention, no attention dropout) held only for the stage.

Why a module of its own: a teacher can be a MultiTaskTeacher or a bare transformers model (with or without an
MLM head); everything downstream sees one shape of output, and a mismatched vocabulary fails here, loudly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

MLM_HEAD_NAMES = ("cls", "lm_head")   # BERT's and RoBERTa's masked-LM head attributes

def _vocab_of(tokenizer) -> Optional[Dict[str, int]]:
    try:
        return tokenizer.get_vocab()
    except Exception:  # a tokenizer without get_vocab: the size check is all we can do
        return None


class TeacherSide(NamedTuple):
    hidden_states: Tuple[torch.Tensor, ...]
    attentions: Tuple[torch.Tensor, ...]
    mlm_logits: torch.Tensor              # [M, V] at the masked positions


class FrozenTeacher:
    """Uniform view of the teacher: a MultiTaskTeacher (its ``encoder``) or a bare transformers model."""

    def __init__(self, teacher: nn.Module, tokenizer=None):
        from transformers import PreTrainedModel

        if isinstance(teacher, PreTrainedModel):
            model = teacher
        elif isinstance(getattr(teacher, "encoder", None), PreTrainedModel):
            model = teacher.encoder
        else:
            raise TypeError(f"teacher: expected a MultiTaskTeacher (a module with a transformers `encoder`) or a "
                            f"transformers model, got {type(teacher).__name__}")
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(teacher, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError("tokenizer: the teacher has no tokenizer attached; pass tokenizer=...")
        self.has_mlm_head = model.get_output_embeddings() is not None
        self.mlm_source = "mlm_head" if self.has_mlm_head else "tied_embeddings"
        # Applying a known head to the masked rows only avoids the full [B, T, vocab] logits.
        self.head = next((getattr(model, n) for n in MLM_HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)),
                         None) if self.has_mlm_head else None
        self.num_layers = int(model.config.num_hidden_layers)
        self.hidden_size = int(model.config.hidden_size)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)

    @torch.no_grad()
    def outputs(self, batch: Mapping[str, torch.Tensor], masked: torch.Tensor) -> TeacherSide:
        """Hidden states, attention maps and the MLM logits at ``masked`` [B, T] positions, without gradient."""
        if self.model.training:
            raise RuntimeError("teacher: in training mode; call .eval() first (dropout would make its targets noisy)")
        run = self.model.base_model if self.head is not None else self.model
        with eager_attention(self.model):  # a no-op when the training loop already switched it
            out = run(**batch, output_hidden_states=True, output_attentions=True, return_dict=True)
        hidden = tuple(out.hidden_states)
        if self.head is not None:
            logits = self.head(hidden[-1][masked])
        elif self.has_mlm_head:
            logits = out.logits[masked]
        else:
            logits = hidden[-1][masked] @ self.model.get_input_embeddings().weight.t()
        return TeacherSide(hidden, tuple(out.attentions or ()), logits.float())


def check_student(student: nn.Module) -> nn.Module:
    """The student's transformers encoder, after checking the interface this stage uses."""
    from transformers import PreTrainedModel

    missing = [a for a in ("encoder", "features", "mlm_logits") if not hasattr(student, a)]
    if missing:
        raise TypeError(f"student: {type(student).__name__} lacks {missing}; task-agnostic distillation needs "
                        "`encoder` (a transformers model), `features(**batch)` and `mlm_logits(hidden)`")
    if not isinstance(student.encoder, PreTrainedModel):
        raise TypeError(f"student: its `encoder` must be a transformers model, got {type(student.encoder).__name__}")
    return student.encoder


def check_shared_vocabulary(teacher: FrozenTeacher, student: nn.Module) -> None:
    """Teacher and student must score one vocabulary with one tokenizer; a ValueError names both sizes."""
    t_tok, s_tok = teacher.tokenizer, getattr(student, "tokenizer", None)
    s_vocab = int(student.encoder.get_input_embeddings().num_embeddings)
    if s_vocab != teacher.vocab_size:
        raise ValueError(f"vocabulary: the teacher has {teacher.vocab_size} token embeddings but the student has "
                         f"{s_vocab}; build the student with the teacher's tokenizer (vocab_size="
                         f"{teacher.vocab_size}) so their masked-LM distributions are over the same tokens")
    if len(t_tok) > teacher.vocab_size:
        raise ValueError(f"vocabulary: the teacher's tokenizer has {len(t_tok)} tokens but its model only "
                         f"{teacher.vocab_size} embeddings")
    if s_tok is not None and s_tok is not t_tok:
        if len(s_tok) != len(t_tok):
            raise ValueError(f"vocabulary: the teacher's tokenizer has {len(t_tok)} tokens but the student's has "
                             f"{len(s_tok)}; the student must use the teacher's tokenizer")
        t_vocab, s_vocab_map = _vocab_of(t_tok), _vocab_of(s_tok)
        if t_vocab is not None and s_vocab_map is not None and t_vocab != s_vocab_map:
            diff = sorted(set(t_vocab.items()) ^ set(s_vocab_map.items()))[:3]
            raise ValueError(f"vocabulary: the teacher's and the student's tokenizers both have {len(t_tok)} tokens "
                             f"but map them differently (e.g. {diff}); the student must use the teacher's tokenizer")


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch a transformers model to eager attention for the block: only eager returns attention maps."""
    previous = getattr(model.config, "_attn_implementation", None)
    change = previous not in (None, "eager")

    def set_impl(name):
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(name)
        else:  # transformers 4
            model.config._attn_implementation = name

    if change:
        set_impl("eager")
    try:
        yield
    finally:
        if change:
            set_impl(previous)


@contextmanager
def no_attention_dropout(model: nn.Module) -> Iterator[None]:
    """Zero the attention-probability dropout (the ``dropout`` of every ``*SelfAttention`` module) for the block."""
    saved = []
    for module in model.modules():
        drop = getattr(module, "dropout", None)
        if "SelfAttention" in type(module).__name__ and isinstance(drop, nn.Dropout):
            saved.append((drop, drop.p))
            drop.p = 0.0
    try:
        yield
    finally:
        for drop, p in saved:
            drop.p = p
