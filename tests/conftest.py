"""Test-wide setup: without a GPU, Triton runs in its CPU interpreter (set before anything imports triton)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
