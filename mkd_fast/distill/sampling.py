"""Which task each step trains on, and which examples form its (task-homogeneous) batch.

Everything is a pure function of (seed, step) and each task's cursor, so the sampler's state is a few
integers: a resumed run draws exactly the batches an uninterrupted run would have drawn.
"""
from __future__ import annotations

import zlib
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from .config import SAMPLING


def task_probabilities(sizes: Mapping[str, int], strategy: str, tau: float = 0.5) -> Dict[str, float]:
    """p(task): proportional to size, to size ** tau ("temperature", tau < 1 flattens), or uniform."""
    if strategy not in SAMPLING:
        raise ValueError(f"sampling: expected one of {SAMPLING}, got {strategy!r}")
    names = list(sizes)
    if strategy in ("uniform", "round_robin"):
        w = np.ones(len(names))
    else:
        power = 1.0 if strategy == "proportional" else float(tau)
        w = np.array([float(sizes[t]) ** power for t in names])
    return dict(zip(names, (w / w.sum()).tolist()))


class TaskSampler:
    """Draws (task, example indices) per step.

    Tasks: ``proportional`` / ``temperature`` / ``uniform`` draw a task at random each step (seeded by the
    step number); ``round_robin`` cycles through the tasks.  Within a task, examples come from a seeded
    permutation per task epoch, consumed ``batch_size`` at a time (the last batch of an epoch may be
    short), so every example is seen once per task epoch.  With ``world_size > 1`` each step draws
    ``batch_size * world_size`` examples and rank r takes every world_size-th of them."""

    def __init__(self, sizes: Mapping[str, int], batch_size: int, strategy: str = "proportional", tau: float = 0.5,
                 seed: int = 0, world_size: int = 1, rank: int = 0):
        empty = [t for t, n in sizes.items() if n < 1]
        if empty:
            raise ValueError(f"sizes: task(s) {empty} have no examples")
        if not sizes:
            raise ValueError("sizes: no tasks")
        self.sizes = {t: int(n) for t, n in sizes.items()}
        self.tasks = list(self.sizes)
        self.batch_size = int(batch_size)
        self.strategy = strategy
        self.probs = task_probabilities(self.sizes, strategy, tau)
        self.seed = int(seed)
        self.world_size, self.rank = int(world_size), int(rank)
        self.step = 0
        self.cursor: Dict[str, Tuple[int, int]] = {t: (0, 0) for t in self.tasks}  # (task epoch, position)

    def steps_per_epoch(self) -> int:
        """Steps for one pass over every task's data (each step consumes one global batch)."""
        glob = self.batch_size * self.world_size
        return sum(-(-n // glob) for n in self.sizes.values())

    def _task_for_step(self, step: int) -> str:
        if self.strategy == "round_robin":
            return self.tasks[step % len(self.tasks)]
        rng = np.random.default_rng([self.seed, step, 0x7A5C])
        p = np.array([self.probs[t] for t in self.tasks])
        return self.tasks[int(rng.choice(len(self.tasks), p=p))]

    def _permutation(self, task: str, epoch: int) -> np.ndarray:
        key = zlib.crc32(task.encode("utf-8"))
        return np.random.default_rng([self.seed, key, epoch]).permutation(self.sizes[task])

    def next(self) -> Tuple[str, List[int]]:
        """The next step's task and this rank's example indices; advances the state."""
        task = self._task_for_step(self.step)
        epoch, pos = self.cursor[task]
        glob = self.batch_size * self.world_size
        perm = self._permutation(task, epoch)
        idx = perm[pos:pos + glob].tolist()
        pos += glob
        if pos >= len(perm):
            epoch, pos = epoch + 1, 0
        self.cursor[task] = (epoch, pos)
        self.step += 1
        mine = idx[self.rank::self.world_size]
        if not mine:  # a short last batch smaller than world_size: this rank repeats the first example
            mine = idx[:1]
        return task, mine

    def state_dict(self) -> dict:
        return {"step": self.step, "cursor": {t: list(c) for t, c in self.cursor.items()}, "seed": self.seed,
                "batch_size": self.batch_size, "sizes": dict(self.sizes), "strategy": self.strategy,
                "world_size": self.world_size}

    def load_state_dict(self, state: Mapping, strict_keys: Optional[Tuple[str, ...]] = None) -> None:
        for key in strict_keys or ("seed", "batch_size", "sizes", "strategy", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint sampler {key} is {state[key]!r} but this run has {getattr(self, key)!r}; "
                                 "resume needs the same data, batch and sampling settings")
        self.step = int(state["step"])
        self.cursor = {t: (int(c[0]), int(c[1])) for t, c in state["cursor"].items()}
