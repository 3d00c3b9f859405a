"""The `mkd-fast` command line."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _info(_args) -> int:
    import torch

    from . import __version__
    from .backends import backends

    print(f"mkd_fast {__version__}, torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, "
          f"GPU {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    for name, st in backends().items():
        print(f"  {name:<7} {'available' if st.available else 'missing':<10} {st.reason}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(repeats=args.repeats, use_compile=not args.no_compile, threads=args.threads)
    return 0


def _teacher_train(args) -> int:
    from .teachers.training import load_train_config, train_from_config

    cfg = load_train_config(args.config)
    summary = train_from_config(cfg, resume=args.resume)
    for entry in summary["history"]:
        scores = ", ".join(f"{t} {m['score']:.4f}" for t, m in entry["dev"].items())
        print(f"epoch {entry['epoch']} (step {entry['step']}): {scores or 'no dev data'}")
    print(f"teacher saved to {summary['teacher_dir']}" if summary["finished"]
          else f"stopped at step {summary['steps']}; checkpoint {summary['checkpoint']}")
    return 0


def _soft_targets(args) -> int:
    from .soft_targets.compute import compute_from_config, load_soft_target_config

    store = compute_from_config(load_soft_target_config(args.config))
    for task in store.tasks:
        info = store.task_info(task)
        print(f"{task}: {info['num_teachers']} teacher(s) x {info['num_examples']} examples x {info['num_classes']}")
    print(f"soft-target store complete: {store.dir} (fingerprint {store.digest[:12]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mkd-fast", description="Fused distillation losses and multi-task KD")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list the loss backends and why any is missing")
    info.set_defaults(func=_info)
    demo = sub.add_parser("demo", help="check and time the fused losses on this machine")
    demo.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    demo.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    demo.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    demo.set_defaults(func=_demo)
    teacher = sub.add_parser("teacher", help="multi-task teachers")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True)
    ttrain = tsub.add_parser("train", help="train a multi-task teacher from a YAML config (TeacherTrainConfig)")
    ttrain.add_argument("--config", required=True, help="YAML file with TeacherTrainConfig keys")
    ttrain.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    ttrain.set_defaults(func=_teacher_train)
    st = sub.add_parser("soft-targets", help="compute the soft-target store from a YAML config (SoftTargetConfig)")
    st.add_argument("--config", required=True, help="YAML file with SoftTargetConfig keys")
    st.set_defaults(func=_soft_targets)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
