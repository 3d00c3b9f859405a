"""Unlabeled text for task-agnostic distillation: reading it, tokenizing it once, ordering and masking batches.

Why a module of its own: everything that decides *which tokens* a step sees lives here, and all of it is a
function of (seed, epoch, step), so a resumed run sees exactly the batches and masks an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch

from ..data.examples import Example


def read_text_file(path: Union[str, os.PathLike], encoding: str = "utf-8") -> List[str]:
    """The non-blank lines of a text file (stripped), one unlabeled text each."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no text file at {p}")
    with open(p, "r", encoding=encoding) as fh:
        return [line.strip() for line in fh if line.strip()]


def unlabeled_inputs(texts: Union[Sequence[str], Sequence[Example]]) -> List[Tuple[str, ...]]:
    """One input per text or example: a 1-tuple, or a 2-tuple for a pair example (labels are dropped)."""
    if isinstance(texts, (str, bytes, os.PathLike)):
        raise ValueError("texts: got a single string or path; pass a list of texts (read_text_file(path) for a file)")
    out = []
    for i, item in enumerate(texts):
        if isinstance(item, str):
            parts: Tuple[str, ...] = (item,)
        elif isinstance(item, Example):
            parts = tuple(item.texts)
        else:
            raise ValueError(f"texts[{i}]: expected a str or an Example, got {type(item).__name__}")
        if not 1 <= len(parts) <= 2 or not all(isinstance(t, str) for t in parts):
            raise ValueError(f"texts[{i}]: expected one text or a pair of texts, got {parts!r}")
        if any(t.strip() for t in parts):
            out.append(parts)
    if not out:
        raise ValueError("texts: no non-blank text to distill on")
    return out


class TokenizedCorpus:
    """The unlabeled inputs tokenized once (truncated, unpadded); ``batch(indices)`` pads one batch.

    Singles and pairs are tokenized separately and may share a batch."""

    def __init__(self, inputs: Sequence[Tuple[str, ...]], tokenizer, max_length: int, chunk: int = 2048):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer: has no pad token; cannot pad batches")
        self.pad_id = int(tokenizer.pad_token_id)
        self.ids: List[List[int]] = [[] for _ in inputs]
        self.types: List[List[int]] = [[] for _ in inputs]
        h = hashlib.sha256()
        for n_parts in (1, 2):
            where = [i for i, x in enumerate(inputs) if len(x) == n_parts]
            for start in range(0, len(where), chunk):
                idx = where[start:start + chunk]
                firsts = [inputs[i][0] for i in idx]
                seconds = [inputs[i][1] for i in idx] if n_parts == 2 else None
                enc = tokenizer(firsts, seconds, truncation=True, max_length=int(max_length),
                                return_token_type_ids=True)
                for j, i in enumerate(idx):
                    self.ids[i] = list(enc["input_ids"][j])
                    self.types[i] = list(enc["token_type_ids"][j])
        for ids in self.ids:
            h.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
        self.fingerprint = h.hexdigest()[:16]   # resume refuses a different corpus

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int]) -> Dict[str, torch.Tensor]:
        width = max(len(self.ids[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(indices), width), dtype=torch.long)
        att = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            n = len(self.ids[i])
            ids[row, :n] = torch.tensor(self.ids[i])
            types[row, :n] = torch.tensor(self.types[i])
            att[row, :n] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": att}


class EpochBatches:
    """Batches in a seeded order per epoch (depends only on seed and epoch); ``epoch``/``position`` resume it."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> List[List[int]]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.size).tolist()
        return [perm[i:i + self.batch_size] for i in range(0, self.size, self.batch_size)]

    def next(self) -> List[int]:
        order = self._order(self.epoch)
        if self.position >= len(order):
            self.epoch, self.position = self.epoch + 1, 0
            order = self._order(self.epoch)
        indices = order[self.position]
        self.position += 1
        return indices

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_token_id: int,
                special_ids: Sequence[int], vocab_size: int, mask_prob: float,
                generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of real, non-special tokens: (masked input ids, bool [B, T] of the chosen positions).

    Draws come from ``generator`` (on the CPU), so a step's mask depends only on its seed."""
    ids_cpu, att_cpu = input_ids.cpu(), attention_mask.cpu().bool()
    candidates = att_cpu & ~torch.isin(ids_cpu, torch.tensor(list(special_ids), dtype=ids_cpu.dtype))
    u = torch.rand(ids_cpu.shape, generator=generator)
    chosen = candidates & (u < mask_prob)
    action = torch.rand(ids_cpu.shape, generator=generator)
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[[i for i in special_ids if 0 <= i < vocab_size]] = False
    pool = ordinary.nonzero().squeeze(1)   # random replacements are never [PAD], [CLS], ...
    random_ids = pool[torch.randint(0, len(pool), ids_cpu.shape, generator=generator)]
    out = ids_cpu.clone()
    out[chosen & (action < 0.8)] = mask_token_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    out[swap] = random_ids[swap]
    return out.to(input_ids.device), chosen.to(input_ids.device)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The masking RNG of one step: a function of (seed, step) only, so resume needs no extra state."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))
