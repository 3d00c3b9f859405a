"""The settings of each student architecture, as typed dataclasses.

They live apart from the models so a config can be read, checked and written (YAML, the saved student's
json) without building a network; every bad value is refused here, naming the field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Mapping, Optional

LSTM_POOLINGS = ("max", "mean", "last", "attention")
EMBEDDING_MODES = ("trainable", "frozen", "frozen+trainable")
TRANSFORMER_POOLINGS = ("cls", "mean")


class _DictConfig:
    """``to_dict`` / ``from_dict`` for a config dataclass; an unknown key is an error (a typo would
    otherwise be silently ignored)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping):
        if not isinstance(data, Mapping):
            raise TypeError(f"data: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {unknown} (known: {sorted(names)})")
        return cls(**dict(data))


def _positive(name: str, value, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


def _probability(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a dropout probability in [0, 1), got {value!r}")


@dataclass
class BiLSTMStudentConfig(_DictConfig):
    """A word-level (Bi)LSTM student (Tang et al. 2019; the LSTM student of MKD).

    ``embedding_mode``: "trainable", "frozen" (pretrained vectors kept fixed) or "frozen+trainable"
    (Tang's two channels: a frozen and a trainable copy, concatenated, so the LSTM input is 2 x
    ``embedding_dim``).  ``shared_dims``: sizes of FC+ReLU layers shared by all tasks, applied to each
    sentence vector.  ``head_hidden``: an FC+ReLU of that size in every task head before its output layer
    (0 = none).  ``dropout`` is used on the embeddings, between LSTM layers and after every FC layer."""

    embedding_dim: int = 300
    embedding_mode: str = "trainable"
    hidden_size: int = 150                 # per direction
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "max"
    shared_dims: List[int] = field(default_factory=list)
    head_hidden: int = 0
    dropout: float = 0.1
    max_length: int = 128                  # words kept per text
    vocab_min_count: int = 1               # used by BiLSTMStudent.from_examples
    vocab_max_size: Optional[int] = None   # including the special tokens; None: no limit
    lowercase: bool = True

    def __post_init__(self):
        _positive("embedding_dim", self.embedding_dim)
        if self.embedding_mode not in EMBEDDING_MODES:
            raise ValueError(f"embedding_mode: expected one of {EMBEDDING_MODES}, got {self.embedding_mode!r}")
        _positive("hidden_size", self.hidden_size)
        if self.num_layers not in (1, 2):
            raise ValueError(f"num_layers: expected 1 or 2, got {self.num_layers!r}")
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"bidirectional: expected a bool, got {self.bidirectional!r}")
        if self.pooling not in LSTM_POOLINGS:
            raise ValueError(f"pooling: expected one of {LSTM_POOLINGS}, got {self.pooling!r}")
        self.shared_dims = list(self.shared_dims)
        for d in self.shared_dims:
            _positive("shared_dims", d)
        _positive("head_hidden", self.head_hidden, allow_zero=True)
        _probability("dropout", self.dropout)
        _positive("max_length", self.max_length)
        _positive("vocab_min_count", self.vocab_min_count)
        if self.vocab_max_size is not None:
            _positive("vocab_max_size", self.vocab_max_size)

    @property
    def lstm_input_size(self) -> int:
        return self.embedding_dim * (2 if self.embedding_mode == "frozen+trainable" else 1)

    @property
    def sequence_width(self) -> int:
        """Width of the per-position LSTM outputs (2 x hidden_size when bidirectional)."""
        return self.hidden_size * (2 if self.bidirectional else 1)


@dataclass
class TransformerStudentConfig(_DictConfig):
    """A small BERT (TinyBERT-4 sizes by default).  ``init_from``: a teacher encoder (hub name, local
    folder or "minilm") whose embeddings and layers ``init_layer_map`` (default: evenly spaced) are copied
    in at construction; the sizes must then match the teacher's."""

    num_layers: int = 4
    hidden_size: int = 312
    num_heads: int = 12
    intermediate_size: int = 1200
    max_length: int = 128                  # WordPiece tokens per input (pairs: both texts together)
    dropout: float = 0.1
    pooling: str = "cls"
    init_from: Optional[str] = None
    init_layer_map: Optional[List[int]] = None

    def __post_init__(self):
        _positive("num_layers", self.num_layers)
        _positive("hidden_size", self.hidden_size)
        _positive("num_heads", self.num_heads)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: must divide hidden_size ({self.hidden_size}), got {self.num_heads}")
        _positive("intermediate_size", self.intermediate_size)
        _positive("max_length", self.max_length)
        _probability("dropout", self.dropout)
        if self.pooling not in TRANSFORMER_POOLINGS:
            raise ValueError(f"pooling: expected one of {TRANSFORMER_POOLINGS}, got {self.pooling!r}")
        if self.init_layer_map is not None:
            self.init_layer_map = [int(i) for i in self.init_layer_map]
            if len(self.init_layer_map) != self.num_layers:
                raise ValueError(f"init_layer_map: expected {self.num_layers} teacher layer indices (one per "
                                 f"student layer), got {self.init_layer_map}")
