"""The run's metrics log: JSONL always (one record per line), a CSV of evaluations, TensorBoard if asked.

On resume the JSONL is cut back to the checkpoint's step, so a killed-and-resumed run's log reads like an
uninterrupted one (no duplicated steps).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..atomic import atomic_write


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class MetricsLog:
    def __init__(self, directory, *, enabled: bool = True, tensorboard: bool = False):
        self.dir = Path(directory)
        self.path = self.dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # the user asked for it: say why it is missing
                raise ImportError(f"tensorboard: logging to TensorBoard needs the tensorboard package ({exc})") from None
            self.tb = SummaryWriter(str(self.dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (left by a run killed after its last checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write(self.path, lambda fh: fh.write("".join(k + "\n" for k in keep)), binary=False)

    def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"kind": kind, "step": int(step), **{k: _clean(v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def records(self, kind: Optional[str] = None) -> List[Dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["kind"] == kind]

    def write_csv(self) -> Optional[Path]:
        """evaluations.csv: one row per evaluation, one column per metric."""
        rows = self.records("eval")
        if not self.enabled or not rows:
            return None
        columns = ["step"] + sorted({k for r in rows for k in r if k not in ("kind", "step")})
        out = self.dir / "evaluations.csv"

        def write(fh):
            w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(r)
        atomic_write(out, write, binary=False)
        return out

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
