"""MT-DNN's second stage: fine-tune a saved multi-task teacher on one task at a time, CPU.

The multi-task MiniLM teacher of benchmarks/mkd_glue.py (stage 1: SST-2, MRPC, RTE and STS-B together) is
fine-tuned on each task in ``--tasks`` alone (full training set, small learning rate), and scored on the full
dev set after each epoch.  RTE gains the most: 2,490 training pairs are too few for the shared stage alone.

    python benchmarks/teacher_finetune.py [--tasks rte] [--teacher-dir build/mkd_glue_run/teacher/teacher]

Work files go to build/teacher_finetune/<task> (git-ignored); a finished or interrupted run there is resumed
(a finished one is only re-scored).  Results: benchmarks/results/teacher_finetune.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_info import git_commit  # noqa: E402
from teacher_glue import baseline, load_data  # noqa: E402

from mkd_fast.teachers import MultiTaskTeacher, TeacherTrainConfig, train_teacher  # noqa: E402
from mkd_fast.teachers.training import evaluate_teacher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    p.add_argument("--teacher-dir", default=str(ROOT / "build" / "mkd_glue_run" / "teacher" / "teacher"))
    p.add_argument("--tasks", nargs="+", default=["rte"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work-dir", default=str(ROOT / "build" / "teacher_finetune"))
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "teacher_finetune.json"))
    args = p.parse_args(argv)
    if not (Path(args.teacher_dir) / "teacher.json").is_file():
        p.error(f"--teacher-dir: no saved teacher in {args.teacher_dir} (run benchmarks/mkd_glue.py --teacher-only)")
    defs, data, loader = load_data(Path(args.data_dir))
    unknown = [t for t in args.tasks if t not in defs]
    if unknown:
        p.error(f"--tasks: unknown {unknown}; expected some of {sorted(defs)}")

    results = {}
    for task in args.tasks:
        teacher = MultiTaskTeacher.load(args.teacher_dir)
        score_before = evaluate_teacher(teacher, {task: data["dev"][task]}, args.max_length, 128)[task]["score"]
        cfg = TeacherTrainConfig(output_dir=str(Path(args.work_dir) / task), tasks=[task], model="minilm",
                                 max_length=args.max_length, batch_size=args.batch_size, eval_batch_size=128,
                                 epochs=args.epochs, lr=args.lr, head_lr=args.lr, warmup_ratio=0.1, pooling="mean",
                                 seed=args.seed, checkpoint_every=1000, progress=True)
        t0 = time.perf_counter()
        summary = train_teacher(cfg, teacher, {task: data["train"][task]}, {task: data["dev"][task]}, resume=True)
        history = [{"epoch": h.get("epoch"), "dev": h["dev"][task]} for h in summary["history"]]
        results[task] = {"multi_task_teacher": score_before, "after_finetuning": history[-1]["dev"]["score"],
                         "history": history, "metric": defs[task].metrics[0],
                         "baseline": baseline(defs[task], data["train"][task], data["dev"][task]),
                         "train_examples": len(data["train"][task]), "dev_examples": len(data["dev"][task]),
                         "seconds_training": round(summary.get("seconds", time.perf_counter() - t0), 1)}
        print(f"{task}: multi-task teacher {score_before:.4f} -> fine-tuned {results[task]['after_finetuning']:.4f} "
              f"(majority/chance {results[task]['baseline']:.4f})", flush=True)

    out = {"results": results,
           "settings": {k: getattr(args, k) for k in ("teacher_dir", "epochs", "lr", "batch_size", "max_length", "seed")},
           "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
           "commit": git_commit(), "loader": loader}
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
