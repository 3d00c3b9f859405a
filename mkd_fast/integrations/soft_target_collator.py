"""A data collator that joins cached teacher logits from a `SoftTargetStore` to each batch by example uid.

Reading the store per batch (by uid, not by position) keeps the join correct under shuffling, subsets and
augmented copies, and reads only the rows a batch needs from the memory-mapped store.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence


def _default_collate(features: List[Mapping[str, Any]]) -> Dict[str, Any]:
    from transformers import default_data_collator  # lazy: transformers is only needed when this runs

    return default_data_collator(features)


class SoftTargetCollator:
    """Wraps a collator: pops ``uid_key`` from each example and adds the stored raw teacher logits of the
    batch under ``key``, batch first: ``[B, C]`` for one teacher, ``[B, K, C]`` for K teachers.

    `DistillationTrainer` keeps ``uid_key`` and ``key`` through its column filtering when it is given
    this collator, and reads the logits as its cached teacher.
    """

    def __init__(self, store, task: str, *, collate_fn: Optional[Callable] = None, uid_key: str = "uid",
                 key: str = "teacher_logits", teachers: Optional[Sequence[int]] = None):
        if not hasattr(store, "logits"):
            raise TypeError(f"store: expected a mkd_fast.soft_targets.SoftTargetStore, got {type(store).__name__}")
        if task not in store.tasks:
            raise ValueError(f"task: {task!r} is not in the store (it holds {store.tasks})")
        for name, value in (("uid_key", uid_key), ("key", key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
        self.store, self.task = store, task
        self.collate_fn = collate_fn if collate_fn is not None else _default_collate
        self.uid_key, self.key, self.teachers = uid_key, key, teachers

    def __call__(self, features: List[Mapping[str, Any]]) -> Dict[str, Any]:
        uids, rest = [], []
        for i, feature in enumerate(features):
            if self.uid_key not in feature:
                raise KeyError(f"features: example {i} has no {self.uid_key!r} field to look up its teacher "
                               f"logits (keys: {sorted(feature)})")
            uids.append(str(feature[self.uid_key]))
            rest.append({k: v for k, v in feature.items() if k != self.uid_key})
        batch = dict(self.collate_fn(rest))
        logits = self.store.logits(self.task, uids, self.teachers)  # [K, B, C]
        batch[self.key] = logits[0] if logits.shape[0] == 1 else logits.transpose(0, 1).contiguous()
        return batch
