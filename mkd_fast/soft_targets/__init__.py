"""Soft targets: raw teacher logits computed once into a fingerprinted store, aggregated at read time."""
from .compute import SoftTargetConfig, build_fingerprint, compute_from_config, compute_soft_targets, load_soft_target_config
from .store import (IncompleteStoreError, SoftTargetStore, SoftTargetWriter, StaleStoreError, examples_hash,
                    file_hash, fingerprint_diff, open_store)

__all__ = ["SoftTargetConfig", "build_fingerprint", "compute_from_config", "compute_soft_targets",
           "load_soft_target_config", "IncompleteStoreError", "SoftTargetStore", "SoftTargetWriter", "StaleStoreError",
           "examples_hash", "file_hash", "fingerprint_diff", "open_store"]
