"""The persistent soft-target store: raw per-teacher logits, computed once, aggregated at read time.

Layout of a store folder::

    store.json                      fingerprint + {"complete": bool}; rewritten atomically
    <task>/meta.json                K, N, C, dtype, kind, shard size; written first
    <task>/uids.json                row order (row i holds the example with uid uids[i])
    <task>/shards/00000.npy ...     [K, n, C] per shard; a shard exists under its final name only once
                                    fully written (temporary file + os.replace)
    <task>/logits.npy               [K, N, C] memory-mapped, assembled from the shards when all are done
    <task>/COMPLETE                 written after logits.npy; the task reads as complete only with it

A store opens for reading only when ``store.json`` says complete, so a crash at any point never leaves a
store that reads as complete.  The fingerprint (teacher weights, tokenizer identity, max length, data hash,
augmentation) is checked on every open; a different one is refused with the list of what differs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import TEMP_MARKER, atomic_write, remove_temp_leftovers, temp_prefix

DTYPES = ("float16", "float32")
AGGREGATES = ("mean_probs", "mean_logits", "weights")
_FORMAT = 1


class StaleStoreError(ValueError):
    """The store on disk was computed under another fingerprint (other teachers, data, settings)."""


class IncompleteStoreError(RuntimeError):
    """The store (or a task in it) was not finished, e.g. its run was killed."""


# ------------------------------------------------------------------------------------------------ helpers
def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint_digest(components: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the fingerprint components."""
    return hashlib.sha256(_canonical(components).encode()).hexdigest()


def examples_hash(examples) -> str:
    """Hash of the (uid, texts) of a list of examples, in order: stands in for a data file hash."""
    h = hashlib.sha256()
    for e in examples:
        h.update(_canonical([e.uid, list(e.texts)]).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def file_hash(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _flatten(obj, prefix="") -> Dict[str, Any]:
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}


def fingerprint_diff(stored: Mapping, requested: Mapping) -> List[str]:
    """Human-readable differences between two fingerprints ("max_length: stored 64, requested 128")."""
    a, b = _flatten(stored), _flatten(requested)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            lines.append(f"{key}: not in the store, requested {b[key]!r}")
        elif key not in b:
            lines.append(f"{key}: stored {a[key]!r}, not in the request")
        elif _canonical(a[key]) != _canonical(b[key]):
            lines.append(f"{key}: stored {a[key]!r}, requested {b[key]!r}")
    return lines


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text), binary=False)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array))


def _check_task_name(task: str) -> None:
    if not task or "/" in task or "\\" in task or task.startswith("."):
        raise ValueError(f"task: {task!r} cannot be used as a folder name in the store")


# What a store writes, so that ``overwrite`` removes exactly that and nothing a user put there.
_TASK_FILES = ("meta.json", "uids.json", "logits.npy", "COMPLETE", "shards")


_STORE_TMP = temp_prefix("store.json")


def _is_temp(p: Path) -> bool:
    return p.name.startswith(".") and TEMP_MARKER in p.name and not p.is_symlink()


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _is_store_meta(p: Path) -> bool:
    meta = _read_json(p) if p.is_file() and not p.is_symlink() else None
    return isinstance(meta, dict) and "fingerprint" in meta and "format" in meta


def _is_task_dir(d: Path) -> bool:
    """A folder a store wrote for one task: non-empty, only the store's files (meta.json, if there, is ours)."""
    if d.is_symlink() or not d.is_dir():
        return False
    entries = list(d.iterdir())
    if not entries or not all(p.name in _TASK_FILES or _is_temp(p) for p in entries):
        return False
    if (d / "meta.json").exists():
        meta = _read_json(d / "meta.json")
        if not (isinstance(meta, dict) and "uids_hash" in meta and "fingerprint_digest" in meta):
            return False
    shards = d / "shards"
    if shards.exists():
        if shards.is_symlink() or not shards.is_dir():
            return False
        if not all((p.suffix == ".npy" and p.stem.isdigit() and p.is_file()) or _is_temp(p) for p in shards.iterdir()):
            return False
    return True


def _store_entries(directory: Path):
    """(entries the store wrote, other entries) of a store folder."""
    ours, other = [], []
    for p in sorted(directory.iterdir()):
        if (p.name == "store.json" and _is_store_meta(p)) or (_is_temp(p) and p.name.startswith(_STORE_TMP)) \
                or _is_task_dir(p):
            ours.append(p)
        else:
            other.append(p)
    return ours, other


# -------------------------------------------------------------------------------------------------- writer
class SoftTargetWriter:
    """Fills a store shard by shard.  Reopening a folder made under the same fingerprint continues it
    (finished shards are kept); another fingerprint is refused unless ``overwrite=True``."""

    def __init__(self, directory: Union[str, os.PathLike], fingerprint: Mapping[str, Any], *, overwrite: bool = False):
        self.dir = Path(directory)
        self.fingerprint = json.loads(_canonical(fingerprint))
        meta_path = self.dir / "store.json"
        remove_temp_leftovers(self.dir, ["store.json"])  # a killed run's half-written store.json
        if not meta_path.is_file() and self.dir.is_dir() and any(self.dir.iterdir()):
            if not overwrite:
                # e.g. an overwrite killed half-way: leftovers of unknown origin must not be taken for ours
                raise StaleStoreError(f"soft-target store {self.dir}: the folder is not empty but has no store.json; "
                                      "refusing to reuse what is in it (pass overwrite / choose another folder)")
            self._remove_store_files()
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") != self.fingerprint:
                if not overwrite:
                    diff = fingerprint_diff(meta.get("fingerprint", {}), self.fingerprint)
                    raise StaleStoreError(
                        f"soft-target store {self.dir} was computed with a different fingerprint; refusing to reuse "
                        f"it (pass overwrite / choose another folder). Differences: " + "; ".join(diff))
                self._remove_store_files()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not meta_path.is_file():
            self._write_store_meta(complete=False)

    def _remove_store_files(self) -> None:
        """``overwrite``: remove what a store writes (store.json, its task folders, temporary files) and
        nothing else.  A folder without a valid store.json that holds anything else is refused untouched,
        so pointing ``output_dir`` at e.g. a home folder loses nothing."""
        ours, other = _store_entries(self.dir)
        has_meta = any(p.name == "store.json" for p in ours)
        if other and not has_meta:
            names = [p.name + ("/" if p.is_dir() else "") for p in other]
            raise StaleStoreError(
                f"soft-target store {self.dir}: refusing to overwrite a folder that is not a soft-target store "
                f"(no valid store.json; it holds {names[:10]}{' ...' if len(names) > 10 else ''}); "
                "choose an empty or new folder")
        if has_meta:
            os.remove(self.dir / "store.json")  # first, so that a kill during the removal leaves no valid store
        for p in ours:
            if p.name == "store.json":
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)

    def _write_store_meta(self, complete: bool, tasks: Optional[Sequence[str]] = None) -> None:
        meta = {"format": _FORMAT, "fingerprint": self.fingerprint, "digest": fingerprint_digest(self.fingerprint),
                "complete": bool(complete), "tasks": list(tasks or [])}
        _atomic_write_text(self.dir / "store.json", json.dumps(meta, indent=2))

    # ---- per task
    def _task_dir(self, task: str) -> Path:
        _check_task_name(task)
        return self.dir / task

    def begin_task(self, task: str, uids: Sequence[str], num_teachers: int, num_classes: int, *,
                   kind: str = "classification", dtype: str = "float16", shard_size: int = 1024) -> None:
        """Declare a task's rows; on a continued run the declaration must match the one on disk."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        uids = [str(u) for u in uids]
        if len(set(uids)) != len(uids):
            raise ValueError(f"uids: duplicate example uids in task {task!r}")
        meta = {"task": task, "kind": kind, "num_teachers": int(num_teachers), "num_examples": len(uids),
                "num_classes": int(num_classes), "dtype": dtype, "shard_size": int(shard_size),
                "num_shards": (len(uids) + shard_size - 1) // shard_size,
                "uids_hash": hashlib.sha256("\n".join(uids).encode()).hexdigest()[:16],
                "fingerprint_digest": fingerprint_digest(self.fingerprint)}
        d = self._task_dir(task)
        # a killed run can leave shard-sized (or logits.npy-sized) temporary files behind
        remove_temp_leftovers(d)
        remove_temp_leftovers(d / "shards")
        if (d / "meta.json").is_file():
            old = json.loads((d / "meta.json").read_text())
            if old != meta:
                diff = fingerprint_diff(old, meta)
                raise StaleStoreError(f"soft-target store {self.dir}: task {task!r} was started with other settings: "
                                      + "; ".join(diff))
            return
        (d / "shards").mkdir(parents=True, exist_ok=True)
        _atomic_write_text(d / "uids.json", json.dumps(uids))
        _atomic_write_text(d / "meta.json", json.dumps(meta, indent=2))

    def task_meta(self, task: str) -> dict:
        p = self._task_dir(task) / "meta.json"
        if not p.is_file():
            raise KeyError(f"task: {task!r} was not begun in {self.dir}")
        return json.loads(p.read_text())

    def _shard_path(self, task: str, index: int) -> Path:
        return self._task_dir(task) / "shards" / f"{index:05d}.npy"

    def has_shard(self, task: str, index: int) -> bool:
        return self.task_complete(task) or self._shard_path(task, index).is_file()

    def task_complete(self, task: str) -> bool:
        return (self._task_dir(task) / "COMPLETE").is_file()

    def write_shard(self, task: str, index: int, logits) -> None:
        """Store rows [index*shard_size, ...) of a task: raw logits [K, n, C]."""
        meta = self.task_meta(task)
        arr = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        start = index * meta["shard_size"]
        n = min(meta["shard_size"], meta["num_examples"] - start)
        want = (meta["num_teachers"], n, meta["num_classes"])
        if not 0 <= index < meta["num_shards"] or arr.shape != want:
            raise ValueError(f"write_shard({task!r}, {index}): expected shape {want} for shard {index} of "
                             f"{meta['num_shards']}, got {arr.shape}")
        if np.isnan(arr).any():
            raise ValueError(f"write_shard({task!r}, {index}): the teacher produced NaN logits")
        finite = arr[np.isfinite(arr)]
        if meta["dtype"] == "float16" and finite.size and np.abs(finite).max() > np.finfo(np.float16).max:
            raise ValueError(f"write_shard({task!r}, {index}): logits up to {np.abs(finite).max():.4g} overflow "
                             "float16; store with dtype='float32'")
        _atomic_save_npy(self._shard_path(task, index), arr.astype(meta["dtype"]))

    def finalize_task(self, task: str, *, keep_shards: bool = False) -> None:
        """Assemble the shards into one memory-mappable ``logits.npy`` and mark the task complete."""
        if self.task_complete(task):
            if not keep_shards:  # a run killed between COMPLETE and the removal below left a full copy
                shutil.rmtree(self._task_dir(task) / "shards", ignore_errors=True)
            return
        meta = self.task_meta(task)
        d = self._task_dir(task)
        missing = [i for i in range(meta["num_shards"]) if not self._shard_path(task, i).is_file()]
        if missing:
            raise IncompleteStoreError(f"task {task!r}: shards {missing[:10]} are not written yet")
        fd, tmp = tempfile.mkstemp(prefix=".logits.tmp-", suffix=".npy", dir=d)
        os.close(fd)
        try:
            shape = (meta["num_teachers"], meta["num_examples"], meta["num_classes"])
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=meta["dtype"], shape=shape)
            for i in range(meta["num_shards"]):
                s = i * meta["shard_size"]
                shard = np.load(self._shard_path(task, i))
                out[:, s:s + shard.shape[1]] = shard
            out.flush()
            del out
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, d / "logits.npy")
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _atomic_write_text(d / "COMPLETE", json.dumps({"num_examples": meta["num_examples"]}))
        if not keep_shards:
            shutil.rmtree(d / "shards", ignore_errors=True)

    def finalize(self, tasks: Sequence[str]) -> "SoftTargetStore":
        """Mark the whole store complete (every listed task must be complete) and open it for reading."""
        unfinished = [t for t in tasks if not self.task_complete(t)]
        if unfinished:
            raise IncompleteStoreError(f"soft-target store {self.dir}: tasks {unfinished} are not complete")
        self._write_store_meta(complete=True, tasks=tasks)
        return SoftTargetStore(self.dir, fingerprint=self.fingerprint)


# -------------------------------------------------------------------------------------------------- reader
class _TaskView:
    def __init__(self, d: Path):
        self.meta = json.loads((d / "meta.json").read_text())
        self.uids: List[str] = json.loads((d / "uids.json").read_text())
        self.row = {u: i for i, u in enumerate(self.uids)}
        self.logits = np.load(d / "logits.npy", mmap_mode="r")


class SoftTargetStore:
    """Read side of a finished store.  ``fingerprint`` (optional) must equal the stored one; a mismatch
    raises :class:`StaleStoreError` listing what differs."""

    def __init__(self, directory: Union[str, os.PathLike], fingerprint: Optional[Mapping[str, Any]] = None):
        self.dir = Path(directory)
        meta_path = self.dir / "store.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"soft-target store: {meta_path} not found; {self.dir} is not a store")
        meta = json.loads(meta_path.read_text())
        if fingerprint is not None:
            requested = json.loads(_canonical(fingerprint))
            if meta.get("fingerprint") != requested:
                raise StaleStoreError(f"soft-target store {self.dir} is stale: it was computed with a different "
                                      "fingerprint. Differences: " + "; ".join(fingerprint_diff(meta.get("fingerprint", {}), requested)))
        if not meta.get("complete"):
            raise IncompleteStoreError(f"soft-target store {self.dir} is incomplete (its run did not finish); "
                                       "rerun the soft-target computation to resume it")
        self.fingerprint = meta["fingerprint"]
        self.digest = meta["digest"]
        self._tasks: Dict[str, _TaskView] = {}
        for t in meta["tasks"]:
            if not (self.dir / t / "COMPLETE").is_file():
                raise IncompleteStoreError(f"soft-target store {self.dir}: task {t!r} has no completion marker")
            self._tasks[t] = _TaskView(self.dir / t)

    @property
    def tasks(self) -> List[str]:
        return list(self._tasks)

    def _view(self, task: str) -> _TaskView:
        try:
            return self._tasks[task]
        except KeyError:
            raise KeyError(f"task: the store has no task {task!r} (it has {self.tasks})") from None

    def task_info(self, task: str) -> dict:
        return dict(self._view(task).meta)

    def uids(self, task: str) -> List[str]:
        return list(self._view(task).uids)

    def rows(self, task: str, uids: Iterable[Any]) -> np.ndarray:
        """Row index of each uid.  Uids are matched as ``str(uid)``, as the writer stores them, so integer
        or numpy uids work."""
        if isinstance(uids, (str, bytes)):
            raise TypeError(f"uids: expected a sequence of uids, got a single {type(uids).__name__} {uids!r}")
        view = self._view(task)
        out = []
        for u in uids:
            try:
                out.append(view.row[str(u)])
            except KeyError:
                raise KeyError(f"uids: example {u!r} is not in the store for task {task!r}") from None
        return np.asarray(out, dtype=np.int64)

    def _teacher_index(self, view: _TaskView, teachers: Optional[Sequence[int]]) -> List[int]:
        k = view.meta["num_teachers"]
        if teachers is None:
            return list(range(k))
        teachers = [int(t) for t in teachers]
        bad = [t for t in teachers if not 0 <= t < k]
        if bad or not teachers:
            raise ValueError(f"teachers: indices {teachers} out of range for {k} teachers")
        return teachers

    def logits(self, task: str, uids: Sequence[str], teachers: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Raw logits [K', B, C] (float32) of the chosen teachers (default all), rows in ``uids`` order."""
        view = self._view(task)
        rows = self.rows(task, uids)
        tsel = self._teacher_index(view, teachers)
        if not len(rows):
            return torch.zeros(len(tsel), 0, view.meta["num_classes"])
        arr = np.asarray(view.logits[:, rows])[tsel]  # rows first: only the requested rows are read from disk
        return torch.from_numpy(arr.astype(np.float32, copy=True))

    def soft_targets(self, task: str, uids: Sequence[str], *, temperature: float = 1.0, aggregate: str = "mean_probs",
                     weights: Optional[Sequence[float]] = None, teachers: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Aggregated targets [B, C] from the stored raw logits, with no teacher run.

        Classification: ``mean_probs`` = mean_k softmax(z_k / T) (MT-DNN-KD), ``mean_logits`` =
        softmax(mean_k z_k / T), ``weights`` = sum_k w_k softmax(z_k / T) / sum_k w_k.  Regression: the
        (weighted) mean of the raw outputs (temperature does not apply)."""
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate: expected one of {AGGREGATES}, got {aggregate!r}")
        if temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {temperature}")
        z = self.logits(task, uids, teachers)  # [K, B, C]
        k = z.shape[0]
        if aggregate == "weights":
            if weights is None or len(weights) != k:
                raise ValueError(f"weights: aggregate='weights' needs one weight per selected teacher ({k}), got {weights}")
            w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
            if (w < 0).any() or float(w.sum()) <= 0:
                raise ValueError(f"weights: must be non-negative with a positive sum, got {list(weights)}")
            w = (w / w.sum()).view(k, 1, 1)
        elif weights is not None:
            raise ValueError(f"weights: only used with aggregate='weights' (got aggregate={aggregate!r})")
        else:
            w = torch.full((k, 1, 1), 1.0 / k)
        if self._view(task).meta["kind"] == "regression":
            return (w * z).sum(0)
        if aggregate == "mean_logits":
            return torch.softmax((w * z).sum(0) / temperature, dim=-1)
        return (w * torch.softmax(z / temperature, dim=-1)).sum(0)


def open_store(directory, fingerprint: Optional[Mapping[str, Any]] = None) -> SoftTargetStore:
    return SoftTargetStore(directory, fingerprint)
