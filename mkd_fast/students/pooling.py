"""Sequence -> vector pooling that never looks at padding.

Why a module of its own: each pooling has its own way to keep padding out (-inf for max, weights for
mean, a masked softmax for attention, the recurrence's own final states for "last"), and a padded batch
must give exactly what the examples give one by one.
"""
from __future__ import annotations

import torch
from torch import nn

from .configs import LSTM_POOLINGS


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, T] bool, True at the first ``lengths[b]`` positions of row b."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_max(outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, D] over the real positions only (every row must have one)."""
    return outputs.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values


def masked_mean(outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(outputs.dtype)
    return (outputs * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class AdditiveAttentionPooling(nn.Module):
    """Learned additive attention, ``score_t = v . tanh(W h_t + b)``, softmax over the real positions."""

    def __init__(self, width: int):
        super().__init__()
        self.project = nn.Linear(width, width)
        self.score = nn.Linear(width, 1, bias=False)

    def forward(self, outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.project(outputs))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return torch.bmm(weights.unsqueeze(1), outputs).squeeze(1)


class RecurrentPooler(nn.Module):
    """Pools the per-position outputs of a (Bi)LSTM; "last" takes the final hidden state of each direction
    of the top layer (forward: after the last real word; backward: after reading back to word 0)."""

    def __init__(self, mode: str, width: int, num_directions: int):
        super().__init__()
        if mode not in LSTM_POOLINGS:
            raise ValueError(f"pooling: expected one of {LSTM_POOLINGS}, got {mode!r}")
        self.mode = mode
        self.num_directions = num_directions
        self.attention = AdditiveAttentionPooling(width) if mode == "attention" else None

    def forward(self, outputs: torch.Tensor, mask: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        if self.mode == "max":
            return masked_max(outputs, mask)
        if self.mode == "mean":
            return masked_mean(outputs, mask)
        if self.mode == "attention":
            return self.attention(outputs, mask)
        top = h_n[-self.num_directions:]               # [D, B, H], forward first
        return top.transpose(0, 1).reshape(outputs.shape[0], -1)
