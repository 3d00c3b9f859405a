"""The normalised description of one loss call, shared by every backend.

`kd_loss` validates the user's arguments once and turns them into a `KDSpec` plus row-shaped tensors
(student ``[N, C]``, teacher ``[K, N, C]``, labels ``[N]``, mask ``[N]``).  Backends only ever see this
form, so they never repeat argument checking and all agree on what the options mean.
"""
from __future__ import annotations

from dataclasses import dataclass

DIVERGENCES = ("kl", "reverse_kl", "jsd", "ce", "mse")
TEACHER_FORMATS = ("logits", "logprobs", "probs")
REDUCTIONS = ("none", "sum", "mean", "batchmean")

# Integer codes passed to the compiled kernels; they must match csrc/kd_params.h.
DIVERGENCE_CODES = {"kl": 0, "reverse_kl": 1, "jsd": 2, "ce": 3, "mse": 4}
FORMAT_CODES = {"logits": 0, "logprobs": 1, "probs": 2}


@dataclass(frozen=True)
class KDSpec:
    """Loss options after validation.  ``divergence`` never is "jsd" with beta 0 or 1 (mapped to KL)."""

    temperature: float = 1.0
    divergence: str = "kl"
    beta: float = 0.5
    teacher_format: str = "logits"
    alpha: float = 0.0
    ignore_index: int = -100
    scale_t2: bool = True

    @property
    def divergence_code(self) -> int:
        return DIVERGENCE_CODES[self.divergence]

    @property
    def format_code(self) -> int:
        return FORMAT_CODES[self.teacher_format]

    @property
    def soft_scale(self) -> float:
        """Factor on the soft term: T^2 (Hinton) for the temperature divergences when asked, else 1."""
        if self.scale_t2 and self.divergence != "mse":
            return self.temperature * self.temperature
        return 1.0


def resolve_jsd_endpoints(divergence: str, beta: float) -> str:
    """GKD/TRL convention: jsd with beta=0 is forward KL and with beta=1 reverse KL.

    (The mixture formula itself tends to 0 at both ends; TRL special-cases the endpoints and so do we.)
    """
    if divergence == "jsd" and beta == 0.0:
        return "kl"
    if divergence == "jsd" and beta == 1.0:
        return "reverse_kl"
    return divergence
