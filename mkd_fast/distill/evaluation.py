"""Dev-set scores of a multi-task model: per-task metrics and their macro average."""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

import numpy as np

from ..data.examples import Example
from ..tasks.definition import TaskDef


def evaluate_model(model, tasks: Mapping[str, TaskDef], dev: Mapping[str, Sequence[Example]],
                   batch_size: int = 256) -> Dict[str, Dict[str, float]]:
    """``{task: metrics}`` plus ``"macro": {"score": mean of the task scores}`` for any model with
    ``predict_logits(task, examples, batch_size)`` (students).  Unlabeled dev examples are skipped."""
    from ..teachers.training import evaluate_predictions, label_array, predictions_from_logits

    results: Dict[str, Dict[str, float]] = {}
    for name, examples in dev.items():
        examples = [e for e in examples if e.label is not None]
        if not examples or name not in tasks:
            continue
        task = tasks[name]
        logits = model.predict_logits(name, examples, batch_size=batch_size)
        results[name] = evaluate_predictions(task, predictions_from_logits(task, logits), label_array(task, examples))
    if results:
        scores = [m["score"] for m in results.values()]
        results["macro"] = {"score": float(np.mean(scores)) if all(map(math.isfinite, scores)) else float("nan")}
    return results


def metric_value(results: Mapping[str, Mapping[str, float]], best_metric: str) -> float:
    """Read ``"macro"``, ``"task"`` (its score) or ``"task.metric"`` out of :func:`evaluate_model`'s result."""
    name, _, metric = best_metric.partition(".")
    if name not in results:
        raise KeyError(f"best_metric: {best_metric!r} names no evaluated task (have {sorted(results)})")
    metric = metric or "score"
    if metric not in results[name]:
        raise KeyError(f"best_metric: task {name!r} has no metric {metric!r} (have {sorted(results[name])})")
    return float(results[name][metric])
