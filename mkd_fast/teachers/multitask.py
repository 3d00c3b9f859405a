"""Multi-task teachers (MT-DNN style: one shared encoder, one small head per task) and ensembles of them.

A teacher is saved as one folder (encoder, tokenizer, heads, task definitions) so the soft-target step can
load it anywhere, and its weights hash is what soft-target fingerprints record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..data.examples import Example
from ..tasks.definition import TaskDef
from .loading import tokenizer_identity

POOLINGS = ("cls", "mean")
_FORMAT = 1


# ----------------------------------------------------------------------------------------- task (de)serialising
def task_to_dict(task: TaskDef) -> dict:
    """A JSON-able form of a TaskDef (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(task)))


def task_from_dict(data: Mapping) -> TaskDef:
    """Inverse of :func:`task_to_dict`; unknown keys are an error (a newer format would silently lose them)."""
    names = {f.name for f in dataclasses.fields(TaskDef)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"task definition: unknown key(s) {unknown}")
    kw = dict(data)
    for key in ("label_names", "input_fields", "metrics"):
        if key in kw:
            kw[key] = tuple(kw[key])
    if "extra" in kw:
        kw["extra"] = tuple(tuple(p) for p in kw["extra"])
    return TaskDef(**kw)


def state_fingerprint(module: nn.Module) -> str:
    """sha256 (16 hex digits) of every parameter and buffer (names, dtypes, shapes, bytes).  Two teachers
    that would produce different logits hash differently."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder onto ``final``.  An existing ``final`` is moved aside first and removed
    after, so a reader sees either the old folder or the new, never a half-written one."""
    final = Path(final)
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)  # put the previous folder back: never leave no teacher at all
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


# ----------------------------------------------------------------------------------------------- the teacher
class MultiTaskTeacher(nn.Module):
    """Shared encoder (a transformers ``AutoModel``) + one head per task (dropout, linear to
    ``task.num_labels``; 1 output for regression).  ``forward(task_name, **tokenized)`` returns raw logits
    [B, C] (regression: [B, 1])."""

    def __init__(self, encoder: nn.Module, tasks: Sequence[TaskDef], tokenizer=None, *, dropout: float = 0.1,
                 pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        if not tasks:
            raise ValueError("tasks: a MultiTaskTeacher needs at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: duplicate task names in {names}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.tasks: Dict[str, TaskDef] = {t.name: t for t in tasks}
        self.dropout = float(dropout)
        self.pooling = pooling
        hidden = int(encoder.config.hidden_size)
        self.heads = nn.ModuleDict({
            t.name: nn.Sequential(nn.Dropout(self.dropout), nn.Linear(hidden, t.num_labels)) for t in tasks})

    @property
    def task_names(self) -> List[str]:
        return list(self.tasks)

    def _task(self, task_name: str) -> TaskDef:
        try:
            return self.tasks[task_name]
        except KeyError:
            raise KeyError(f"task_name: this teacher has no head for {task_name!r} (it has {self.task_names})") from None

    def pool(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """[B, T, H] -> [B, H]: the [CLS] vector, or the mask-weighted mean (what sentence-transformers
        encoders such as all-MiniLM were trained with)."""
        if self.pooling == "cls" or attention_mask is None:
            return hidden[:, 0]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, task_name: str, **tokenized) -> torch.Tensor:
        self._task(task_name)
        tokenized = {k: v for k, v in tokenized.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = self.encoder(**tokenized)
        pooled = self.pool(out.last_hidden_state, tokenized.get("attention_mask"))
        return self.heads[task_name](pooled)

    # ---- inputs
    def tokenize(self, examples: Sequence[Example], max_length: int, device=None) -> Dict[str, torch.Tensor]:
        """Tokenize one batch of examples (single sentences or pairs, all of one kind), truncated and padded."""
        return tokenize_examples(self.tokenizer, examples, max_length, device=device)

    @torch.no_grad()
    def predict_logits(self, task_name: str, examples: Sequence[Example], max_length: int,
                       batch_size: int = 64) -> torch.Tensor:
        """Raw logits [N, C] for a list of examples, in eval mode (the mode is restored after)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        outs = []
        try:
            for i in range(0, len(examples), batch_size):
                outs.append(self(task_name, **self.tokenize(examples[i:i + batch_size], max_length, device)).float().cpu())
        finally:
            self.train(was_training)
        width = self._task(task_name).num_labels
        return torch.cat(outs) if outs else torch.zeros(0, width)

    # ---- identity
    def weights_fingerprint(self) -> str:
        return state_fingerprint(self)

    def tokenizer_identity(self) -> str:
        if self.tokenizer is None:
            raise ValueError("tokenizer: this teacher has no tokenizer attached")
        return tokenizer_identity(self.tokenizer)

    # ---- persistence
    def save(self, directory: Union[str, os.PathLike]) -> str:
        """Write encoder, tokenizer, heads and task definitions to ``directory`` atomically (a temporary
        sibling folder renamed into place)."""
        final = Path(directory)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            self.encoder.save_pretrained(tmp / "encoder")
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "tokenizer")
            torch.save({k: v.detach().cpu() for k, v in self.heads.state_dict().items()}, tmp / "heads.pt")
            meta = {"format": _FORMAT, "dropout": self.dropout, "pooling": self.pooling,
                    "tasks": [task_to_dict(t) for t in self.tasks.values()],
                    # a BERT built without its (unused) pooler must load without one, or its weights hash changes
                    "encoder_kwargs": ({"add_pooling_layer": False}
                                       if hasattr(self.encoder, "pooler") and self.encoder.pooler is None else {}),
                    "weights_fingerprint": self.weights_fingerprint(),
                    "tokenizer_identity": tokenizer_identity(self.tokenizer) if self.tokenizer is not None else None}
            (tmp / "teacher.json").write_text(json.dumps(meta, indent=2))
            atomic_replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(final)

    @classmethod
    def load(cls, directory: Union[str, os.PathLike], *, map_location="cpu") -> "MultiTaskTeacher":
        """Inverse of :meth:`save`."""
        from transformers import AutoModel, AutoTokenizer

        d = Path(directory)
        meta_path = d / "teacher.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"MultiTaskTeacher.load: {meta_path} is missing; {d} is not a saved teacher")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path}: unsupported teacher format {meta.get('format')!r} (expected {_FORMAT})")
        encoder = AutoModel.from_pretrained(d / "encoder", local_files_only=True, **meta.get("encoder_kwargs", {}))
        tok = AutoTokenizer.from_pretrained(d / "tokenizer", local_files_only=True) if (d / "tokenizer").is_dir() else None
        teacher = cls(encoder, [task_from_dict(t) for t in meta["tasks"]], tok, dropout=meta["dropout"],
                      pooling=meta["pooling"])
        teacher.heads.load_state_dict(torch.load(d / "heads.pt", map_location="cpu", weights_only=True))
        return teacher.to(map_location) if map_location is not None else teacher


def tokenize_examples(tokenizer, examples: Sequence[Example], max_length: int, device=None) -> Dict[str, torch.Tensor]:
    """Tokenize a batch: pairs go in as (first, second) so the tokenizer adds [SEP] and segment ids."""
    if tokenizer is None:
        raise ValueError("tokenizer: cannot tokenize without a tokenizer")
    if not examples:
        raise ValueError("examples: empty batch")
    n_texts = {len(e.texts) for e in examples}
    if len(n_texts) != 1:
        raise ValueError("examples: a batch mixes single sentences and pairs")
    firsts = [e.texts[0] for e in examples]
    seconds = [e.texts[1] for e in examples] if n_texts == {2} else None
    enc = tokenizer(firsts, seconds, truncation=True, max_length=int(max_length), padding=True, return_tensors="pt")
    return {k: (v.to(device) if device is not None else v) for k, v in enc.items()}


# ---------------------------------------------------------------------------------------------- ensembles
TeacherLike = Union[MultiTaskTeacher, nn.Module]


class TeacherEnsemble(nn.Module):
    """K teachers per task, for any number of tasks; each task has its own list of teachers (K may differ
    per task) or none.  The same teacher object may serve several tasks (it is stored once).

    ``forward(task, **tokenized)`` stacks raw logits to [K, B, C] (only valid when the task's teachers share
    a tokenizer); :meth:`logits_for_examples` tokenizes once per distinct tokenizer instead."""

    def __init__(self, members: Mapping[str, Sequence[TeacherLike]]):
        super().__init__()
        unique: List[nn.Module] = []
        index: Dict[str, List[int]] = {}
        for task, teachers in members.items():
            ids = []
            for t in teachers:
                for j, u in enumerate(unique):
                    if u is t:
                        ids.append(j)
                        break
                else:
                    unique.append(t)
                    ids.append(len(unique) - 1)
            index[task] = ids
        self.teachers = nn.ModuleList(unique)
        self._index = index

    @classmethod
    def from_dirs(cls, members: Mapping[str, Sequence[Union[str, os.PathLike]]], map_location="cpu") -> "TeacherEnsemble":
        """Load saved teachers; a folder named for several tasks is loaded once."""
        cache: Dict[str, MultiTaskTeacher] = {}
        built = {}
        for task, dirs in members.items():
            built[task] = []
            for d in dirs:
                key = str(Path(d).resolve())
                if key not in cache:
                    cache[key] = MultiTaskTeacher.load(d, map_location=map_location)
                built[task].append(cache[key])
        return cls(built)

    @property
    def tasks(self) -> List[str]:
        return [t for t, ids in self._index.items() if ids]

    def has(self, task: str) -> bool:
        return bool(self._index.get(task))

    def members(self, task: str) -> List[TeacherLike]:
        """The task's teachers, in a fixed order (row k of the stacked logits is teacher k)."""
        if not self.has(task):
            raise KeyError(f"task: the ensemble has no teachers for {task!r} (it has {self.tasks})")
        return [self.teachers[i] for i in self._index[task]]

    def size(self, task: str) -> int:
        return len(self._index.get(task, []))

    def forward(self, task: str, **tokenized) -> torch.Tensor:
        return torch.stack([t(task, **tokenized) for t in self.members(task)])

    @torch.no_grad()
    def logits_for_examples(self, task: str, examples: Sequence[Example], max_length: int, device=None) -> torch.Tensor:
        """[K, B, C] raw logits for one batch; each teacher gets input from its own tokenizer."""
        outs = []
        cache: Dict[int, Dict[str, torch.Tensor]] = {}
        for t in self.members(task):
            tok = getattr(t, "tokenizer", None)
            if id(tok) not in cache:
                cache[id(tok)] = tokenize_examples(tok, examples, max_length, device=device)
            outs.append(t(task, **cache[id(tok)]).float())
        return torch.stack(outs)

    def fingerprint_parts(self) -> Dict[str, Dict[str, List[str]]]:
        """Per task, the weights hash and tokenizer identity of each member (for soft-target fingerprints)."""
        w, tk = {}, {}
        hashes = [t.weights_fingerprint() if hasattr(t, "weights_fingerprint") else state_fingerprint(t)
                  for t in self.teachers]
        toks = [tokenizer_identity(t.tokenizer) if getattr(t, "tokenizer", None) is not None else None
                for t in self.teachers]
        for task in self.tasks:
            w[task] = [hashes[i] for i in self._index[task]]
            tk[task] = [toks[i] for i in self._index[task]]
        return {"teacher_weights": w, "tokenizers": tk}
