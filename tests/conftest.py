"""Test-wide setup: Triton runs in its CPU interpreter (no GPU in CI), set before anything imports triton."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
