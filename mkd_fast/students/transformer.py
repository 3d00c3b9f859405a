"""A small BERT student (TinyBERT / MiniLM sizes) on a given WordPiece tokenizer, usually the teacher's.

Besides task heads it exposes what task-agnostic distillation needs (MITKD, TinyBERT-style): every hidden
state and attention map (:meth:`TransformerStudent.features`) and masked-LM logits through the tied
word-embedding matrix (:meth:`TransformerStudent.mlm_logits`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..data.examples import Example
from ..tasks.definition import TaskDef
from ..teachers.loading import load_encoder
from ..teachers.multitask import tokenize_examples
from .base import StudentBase
from .configs import TransformerStudentConfig
from .heads import task_head
from .pooling import masked_mean

TOKENIZER_DIR = "tokenizer"
_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def evenly_spaced_layers(student_layers: int, teacher_layers: int) -> List[int]:
    """Teacher layer (0-based) for each student layer, spread evenly and ending at the top layer
    (TinyBERT's g(m) = m * N / M): 4 of 6 -> [0, 2, 3, 5], 3 of 12 -> [3, 7, 11]."""
    return [max(0, (m + 1) * teacher_layers // student_layers - 1) for m in range(student_layers)]


def _bert_model(encoder) -> nn.Module:
    """The BertModel inside ``encoder`` (a BertModel, or a teacher that holds one as ``.encoder``)."""
    for candidate in (encoder, getattr(encoder, "encoder", None)):
        inner = getattr(candidate, "encoder", None)
        if candidate is not None and hasattr(candidate, "embeddings") and hasattr(inner, "layer"):
            return candidate
    raise TypeError(f"encoder: expected a BERT-style encoder (with .embeddings and .encoder.layer), "
                    f"got {type(encoder).__name__}")


class TransformerStudent(StudentBase):
    """BERT encoder (random init unless ``config.init_from``) + per task: dropout and a linear layer on the
    pooled vector ([CLS] or masked mean).  Pairs are tokenized as (text_a, text_b) like the teachers'."""

    student_type = "transformer"
    config_class = TransformerStudentConfig

    def __init__(self, tokenizer, tasks: Union[Sequence[TaskDef], Mapping[str, TaskDef]],
                 config: Optional[TransformerStudentConfig] = None):
        super().__init__(tasks)
        from transformers import BertConfig, BertModel

        if tokenizer is None or not callable(tokenizer):
            raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        config = config if config is not None else TransformerStudentConfig()
        if not isinstance(config, TransformerStudentConfig):
            raise TypeError(f"config: expected a TransformerStudentConfig, got {type(config).__name__}")
        self.config = config
        self.tokenizer = tokenizer
        bert_config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
            hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
            max_position_embeddings=config.max_length, type_vocab_size=2,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            attn_implementation="sdpa")
        self.encoder = BertModel(bert_config, add_pooling_layer=False)
        self.mlm_bias = nn.Parameter(torch.zeros(len(tokenizer)))
        self.heads = nn.ModuleDict({t.name: task_head(config.hidden_size, t.num_labels, config.dropout)
                                    for t in self.tasks.values()})
        if config.init_from is not None:
            teacher, _ = load_encoder(config.init_from, with_tokenizer=False)
            self.init_from_teacher(teacher, config.init_layer_map)

    # ---- initialisation from a teacher
    @torch.no_grad()
    def init_from_teacher(self, encoder, layer_map: Optional[List[int]] = None) -> List[int]:
        """Copy the embeddings (the first ``max_length`` positions) and the teacher layers ``layer_map[i]``
        into student layer i (default: :func:`evenly_spaced_layers`).  Sizes must match: hidden, heads,
        intermediate and vocabulary.  Returns the layer map used."""
        teacher = _bert_model(encoder)
        tc, sc = teacher.config, self.encoder.config
        for what, t_val, s_val in (("hidden size", tc.hidden_size, sc.hidden_size),
                                   ("number of attention heads", tc.num_attention_heads, sc.num_attention_heads),
                                   ("intermediate size", tc.intermediate_size, sc.intermediate_size)):
            if t_val != s_val:
                raise ValueError(f"encoder: the teacher's {what} is {t_val} but this student's is {s_val}; "
                                 f"weights can only be copied between equal sizes")
        t_layers = len(teacher.encoder.layer)
        if layer_map is None:
            layer_map = evenly_spaced_layers(sc.num_hidden_layers, t_layers)
        layer_map = [int(i) for i in layer_map]
        if len(layer_map) != sc.num_hidden_layers or not all(0 <= i < t_layers for i in layer_map):
            raise ValueError(f"layer_map: expected {sc.num_hidden_layers} teacher layer indices in "
                             f"[0, {t_layers}), got {layer_map}")
        teacher_params = dict(teacher.embeddings.named_parameters())
        for name, param in self.encoder.embeddings.named_parameters():
            src = teacher_params.get(name)
            if src is None:
                raise ValueError(f"encoder: the teacher's embeddings have no {name!r}")
            if name.startswith("position_embeddings") and src.shape[0] >= param.shape[0]:
                src = src[: param.shape[0]]
            if src.shape != param.shape:
                raise ValueError(f"encoder: embeddings.{name} has shape {tuple(src.shape)} in the teacher but "
                                 f"{tuple(param.shape)} here (for word_embeddings: use the teacher's tokenizer)")
            param.copy_(src)
        for student_layer, teacher_layer in zip(self.encoder.encoder.layer, layer_map):
            student_layer.load_state_dict(teacher.encoder.layer[teacher_layer].state_dict())
        return layer_map

    # ---- inputs
    def encode(self, examples: Sequence[Example], device=None) -> Dict[str, torch.Tensor]:
        """The tokenizer's ``input_ids``, ``attention_mask``, ``token_type_ids`` [B, T] (pairs as
        (text_a, text_b)), truncated to ``config.max_length``; on ``device`` when given."""
        return tokenize_examples(self.tokenizer, examples, self.config.max_length, device=device)

    def _model_inputs(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        unexpected = sorted(set(batch) - set(_MODEL_KEYS))
        if unexpected:
            raise ValueError(f"batch: unexpected key(s) {unexpected}; expected some of {list(_MODEL_KEYS)}")
        if "input_ids" not in batch:
            raise ValueError("batch: 'input_ids' is missing")
        return dict(batch)

    # ---- the network
    def pool(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """[B, T, H] -> [B, H]: the [CLS] vector, or the mean over real (unmasked) tokens."""
        if self.config.pooling == "cls" or attention_mask is None:
            return hidden[:, 0]
        return masked_mean(hidden, attention_mask.bool())

    def forward(self, task_name: str, **batch) -> torch.Tensor:
        self.task(task_name)
        inputs = self._model_inputs(batch)
        hidden = self.encoder(**inputs).last_hidden_state
        return self.heads[task_name](self.pool(hidden, inputs.get("attention_mask")))

    @contextlib.contextmanager
    def _eager_attention(self) -> Iterator[None]:
        """SDPA kernels return no attention maps, so switch to eager attention for the call."""
        current = getattr(self.encoder.config, "_attn_implementation", "eager")
        if current == "eager" or not hasattr(self.encoder, "set_attn_implementation"):
            yield  # transformers 4.x falls back to eager by itself when attentions are requested
            return
        self.encoder.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.encoder.set_attn_implementation(current)

    def features(self, **batch) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
        """(hidden_states, attentions) for task-agnostic distillation: ``num_layers + 1`` hidden states
        [B, T, H] (the embedding output first) and ``num_layers`` attention maps [B, heads, T, T] (softmax
        probabilities, zero at padded keys)."""
        inputs = self._model_inputs(batch)
        with self._eager_attention():
            out = self.encoder(**inputs, output_hidden_states=True, output_attentions=True)
        return tuple(out.hidden_states), tuple(out.attentions)

    def mlm_logits(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits [B, T, vocab] = ``hidden_last @ E^T + mlm_bias`` with E the word-embedding
        matrix (tied, no extra transform layer as in BERT's MLM head: the student's last hidden state is
        read directly against its vocabulary)."""
        if hidden_last.shape[-1] != self.config.hidden_size:
            raise ValueError(f"hidden_last: expected last dimension {self.config.hidden_size}, "
                             f"got shape {tuple(hidden_last.shape)}")
        return F.linear(hidden_last, self.encoder.embeddings.word_embeddings.weight, self.mlm_bias)

    # ---- persistence
    def _save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)

    @classmethod
    def _build_for_load(cls, folder: Path, config: TransformerStudentConfig,
                        tasks: List[TaskDef]) -> "TransformerStudent":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR, local_files_only=True)
        # the saved weights replace any teacher initialisation: do not load the teacher again
        student = cls(tokenizer, tasks, dataclasses.replace(config, init_from=None))
        student.config = config
        return student
