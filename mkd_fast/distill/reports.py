"""Plain-text reports of run results, as the CLI prints them.

Why apart from the CLI: the same score lines and tables serve ``distill``, ``finetune`` and ``eval``, and
formatting is easier to test (and to change) in one place.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["score_line", "metrics_table", "finetune_table"]


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def score_line(results: Mapping[str, Mapping[str, float]]) -> str:
    """``sst2 0.8123, mrpc 0.7000; macro 0.7562`` (each task's primary score), or ``no dev data``."""
    tasks = [f"{t} {m['score']:.4f}" for t, m in results.items() if t != "macro"]
    if not tasks:
        return "no dev data"
    macro = results.get("macro", {}).get("score")
    return ", ".join(tasks) + (f"; macro {macro:.4f}" if macro is not None else "")


def metrics_table(results: Mapping[str, Mapping[str, float]]) -> List[str]:
    """One line per task with every metric (primary ``score`` first), then the macro average."""
    lines = []
    width = max([len(t) for t in results] + [5])
    for task, metrics in results.items():
        if task == "macro":
            continue
        rest = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "score")
        lines.append(f"{task:<{width}}  score {metrics['score']:.4f}  {rest}".rstrip())
    if "macro" in results:
        lines.append(f"{'macro':<{width}}  score {results['macro']['score']:.4f}")
    return lines


def finetune_table(result: Mapping[str, Any]) -> List[str]:
    """Per task: the start student's dev score, the fine-tuned one, the change; then the macro averages
    and where each fine-tuned student is."""
    rows = result["tasks"]
    width = max([len(t) for t in rows] + [5])
    lines = [f"{'task':<{width}}  {'distilled':>9}  {'fine-tuned':>10}  {'change':>7}"]
    before_all, after_all = [], []
    for task, row in rows.items():
        before = row["before"]["score"] if row.get("before") else None
        after = row["after"]["score"] if row.get("after") else None
        change = after - before if before is not None and after is not None else None
        if before is not None and after is not None:
            before_all.append(before)
            after_all.append(after)
        lines.append(f"{task:<{width}}  {_fmt(before):>9}  {_fmt(after):>10}  "
                     f"{'-' if change is None else f'{change:+.4f}':>7}")
    if before_all:
        b, a = sum(before_all) / len(before_all), sum(after_all) / len(after_all)
        if math.isfinite(a - b):
            lines.append(f"{'macro':<{width}}  {b:>9.4f}  {a:>10.4f}  {a - b:>+7.4f}")
    for task, row in rows.items():
        where: Dict[str, Any] = row
        lines.append(f"{task}: fine-tuned student saved to {where.get('student_dir') or '(not finished)'}")
    return lines
