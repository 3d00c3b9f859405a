"""The small feed-forward pieces students put after their encoder: shared FC layers and task heads."""
from __future__ import annotations

from typing import Sequence, Tuple

from torch import nn


def fc_relu_stack(in_dim: int, dims: Sequence[int], dropout: float) -> Tuple[nn.Sequential, int]:
    """Linear + ReLU + Dropout per entry of ``dims`` (empty: identity); returns the stack and its output
    width."""
    layers = []
    for d in dims:
        layers += [nn.Linear(in_dim, int(d)), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = int(d)
    return nn.Sequential(*layers), in_dim


def task_head(in_dim: int, num_labels: int, dropout: float, hidden: int = 0) -> nn.Sequential:
    """Dropout, an optional FC+ReLU of width ``hidden`` (Tang et al.'s head; 0 = none), then the output
    layer to ``num_labels`` raw logits."""
    layers = [nn.Dropout(dropout)]
    if hidden:
        layers += [nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = hidden
    layers.append(nn.Linear(in_dim, num_labels))
    return nn.Sequential(*layers)
