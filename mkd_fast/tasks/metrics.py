"""GLUE's official metrics in plain numpy (no sklearn/scipy at runtime, so the package stays light).

Degenerate inputs never crash; they give these documented values:

* empty inputs: every metric is ``nan`` (there is nothing to score);
* ``f1`` with no positive predictions and no positive labels: ``0.0`` (sklearn's ``zero_division=0``);
* ``matthews_corrcoef`` when predictions or labels are constant: ``0.0`` (as sklearn);
* ``pearson`` / ``spearman`` when either side is constant: ``nan`` (correlation is undefined; as scipy).

``compute_metrics`` adds GLUE's ``combined`` score: the mean of the task's metrics (the metric itself for
single-metric tasks), ``nan`` if any of them is ``nan``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Union

import numpy as np

from .definition import TaskDef

__all__ = [
    "accuracy",
    "f1",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "rankdata",
    "METRICS",
    "compute_metrics",
    "combined_score",
]


def _as_array(x, name: str) -> np.ndarray:
    """Accept lists, numpy arrays and torch tensors (any device) without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


def _pair(predictions, labels):
    p = _as_array(predictions, "predictions")
    y = _as_array(labels, "labels")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"predictions and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    return p, y


def accuracy(predictions, labels) -> float:
    """Fraction of exact matches; ``nan`` when empty."""
    p, y = _pair(predictions, labels)
    if p.size == 0:
        return float("nan")
    return float(np.mean(p == y))


def f1(predictions, labels, positive: int = 1) -> float:
    """Binary F1 of class ``positive`` (GLUE: class 1, "equivalent"/"duplicate"); ``0.0`` when there is no
    true positive (including when no positive appears at all), ``nan`` when empty."""
    p, y = _pair(predictions, labels)
    if p.size == 0:
        return float("nan")
    pp, yp = p == positive, y == positive
    tp = float(np.sum(pp & yp))
    denom = float(np.sum(pp) + np.sum(yp))
    return 0.0 if tp == 0 else 2.0 * tp / denom


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation (multi-class form, as sklearn); ``0.0`` when either side is constant, ``nan``
    when empty."""
    p, y = _pair(predictions, labels)
    if p.size == 0:
        return float("nan")
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = classes.size
    yi, pi = inv[: y.size], inv[y.size :]
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (yi, pi), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n_correct, n = np.trace(cm), cm.sum()
    cov_ytyp = n_correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n * n - np.dot(p_sum, p_sum)
    cov_ytyt = n * n - np.dot(t_sum, t_sum)
    if cov_ypyp == 0 or cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp))


def pearson(predictions, labels) -> float:
    """Pearson's r in float64; ``nan`` when empty or either side is constant."""
    p, y = _pair(predictions, labels)
    if p.size == 0:
        return float("nan")
    p = p.astype(np.float64) - p.astype(np.float64).mean()
    y = y.astype(np.float64) - y.astype(np.float64).mean()
    denom = math.sqrt(float(np.dot(p, p)) * float(np.dot(y, y)))
    if denom == 0.0 or not math.isfinite(denom):
        return float("nan")
    return float(np.clip(np.dot(p, y) / denom, -1.0, 1.0))


def rankdata(x) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``rankdata(method="average")``)."""
    x = _as_array(x, "x")
    if x.size == 0:
        return np.zeros(0, dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    avg = ends - (counts - 1) / 2.0
    return avg[inv.reshape(-1)]


def spearman(predictions, labels) -> float:
    """Spearman's rho: Pearson's r of average ranks (so ties are handled as scipy does)."""
    p, y = _pair(predictions, labels)
    if p.size == 0:
        return float("nan")
    return pearson(rankdata(p), rankdata(y))


METRICS: Dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews_corrcoef,
    "matthews_corrcoef": matthews_corrcoef,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def combined_score(scores: Dict[str, float]) -> float:
    """GLUE's combined score: the mean of the given metric values (``nan`` if any is ``nan``)."""
    vals = [v for k, v in scores.items() if k != "combined"]
    return float(np.mean(vals)) if vals else float("nan")


def _to_predictions(task: TaskDef, predictions) -> np.ndarray:
    """Class indices from logits/probabilities (2-D, argmax) or indices (1-D); floats for regression."""
    if hasattr(predictions, "detach"):
        predictions = predictions.detach().cpu().numpy()
    arr = np.asarray(predictions)
    if task.kind == "classification":
        if arr.ndim == 2 and arr.shape[1] > 1:
            if arr.shape[1] != task.num_labels:
                raise ValueError(
                    f"predictions: task {task.name!r} has {task.num_labels} classes, got scores of width {arr.shape[1]}"
                )
            return arr.argmax(axis=1)
        return _as_array(arr, "predictions")
    return _as_array(arr, "predictions").astype(np.float64)


def compute_metrics(task: Union[TaskDef, str], predictions, labels) -> Dict[str, float]:
    """All of ``task``'s metrics plus ``combined``.  ``predictions`` may be class indices, or 2-D
    logits/probabilities (argmax is taken) for classification; scores for regression."""
    if isinstance(task, str):
        from .glue import get_task

        task = get_task(task)
    preds = _to_predictions(task, predictions)
    labs = _as_array(labels, "labels")
    out: Dict[str, float] = {}
    for name in task.metrics:
        if name not in METRICS:
            raise ValueError(f"metrics: unknown metric {name!r} in task {task.name!r}; known: {sorted(METRICS)}")
        out[name] = METRICS[name](preds, labs)
    out["combined"] = combined_score(out)
    return out
