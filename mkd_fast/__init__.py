"""mkd_fast: fused distillation losses and multi-task knowledge distillation."""
from .backends import backends
from .fast_lstm import FastBiLSTM
from .losses import KDLoss, kd_loss
from .reference import kd_rows_reference

__version__ = "0.1.0"
__all__ = ["kd_loss", "KDLoss", "backends", "kd_rows_reference", "FastBiLSTM", "__version__"]
