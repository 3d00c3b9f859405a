"""The `mkd-fast` command line: argument parsing only; the work is in the modules each command calls.

Errors a user can fix (a bad key, a missing file) are printed as one line and exit with status 2;
``--traceback`` shows the full Python traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, ImportError)  # what a user can fix


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

    run_demo(output_dir=args.output_dir, quick=args.quick, threads=args.threads)
    return 0


def _loss_demo(args) -> int:
    from .loss_demo import run_demo

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


def _print_finetune(result) -> None:
    from .distill.reports import finetune_table

    print(f"\nper-task fine-tuning of {result['start_dir']} (dev score):")
    for line in finetune_table(result):
        print(line)


def _distill(args) -> int:
    from .distill.reports import score_line
    from .distill.run_config import load_run_config, run_distill

    cfg = load_run_config(args.config, args.set)
    for note in cfg.recipe_notes():
        print(f"note: {note}")
    result = run_distill(cfg, resume=args.resume, stop_after_steps=args.stop_after)
    summary = result["distill"]
    if not summary["finished"]:
        print(f"stopped at step {summary['steps']} of {summary['total_steps']}; checkpoint {summary['checkpoint']} "
              "(continue with --resume)")
        return 0
    print(f"distilled student (dev): {score_line(result['dev'])}")
    if "student_dir" not in result:
        return 0  # a DDP rank other than 0: rank 0 saved the student
    best = summary.get("best")
    best_note = f"; best by {best['metric']} at step {best['step']}: {cfg.output_dir}/best" if best else ""
    print(f"student saved to {result['student_dir']}{best_note}")
    if "finetune" in result:
        _print_finetune(result["finetune"])
    return 0


def _finetune(args) -> int:
    from .distill.run_config import load_run_config, run_finetune

    _print_finetune(run_finetune(load_run_config(args.config, args.set), resume=args.resume))
    return 0


def _task_agnostic(args) -> int:
    from .distill.task_agnostic_run import load_task_agnostic_run_config, run_task_agnostic

    summary = run_task_agnostic(load_task_agnostic_run_config(args.config, args.set), resume=args.resume,
                                stop_after_steps=args.stop_after)
    if not summary["finished"]:
        print(f"stopped at step {summary['steps']} of {summary['total_steps']}; checkpoint {summary['checkpoint']} "
              "(continue with --resume)")
        return 0
    first, last = summary["losses"]["first"], summary["losses"]["last"]
    print(f"task-agnostic distillation: {summary['steps']} steps on {summary['texts']} texts, loss "
          f"{first['loss']:.4f} -> {last['loss']:.4f} (MLM distribution from the teacher's {summary['mlm_source']})")
    print(f"student saved to {summary['student_dir']}; fine-tune it per task with `mkd-fast finetune` "
          f"(student_dir: {summary['student_dir']})")
    return 0


def _eval(args) -> int:
    from .distill.reports import metrics_table
    from .distill.student_eval import evaluate_student_dir
    from .distill.yaml_sections import parse_yaml_value

    results = evaluate_student_dir(args.student, args.tasks, args.data, args.data_dir, args.split, args.seed,
                                   parse_yaml_value(args.synthetic_sizes or "", "--synthetic-sizes"),
                                   args.max_examples, args.batch_size)
    print(json.dumps(results, indent=2) if args.json else "\n".join(metrics_table(results)))
    return 0


def _predict(args) -> int:
    from .students.prediction_io import (format_rows, inputs_from_file, inputs_from_texts, open_student_for,
                                         prediction_rows, write_rows)

    student = open_student_for(args.student, args.task)
    task = student.task(args.task)
    if args.input is not None and (args.text is not None or args.text_b is not None):
        raise ValueError("--input: give either --input or --text (and --text-b), not both")
    if args.input is None and args.text is None:
        raise ValueError("--text / --input: give a text to classify or an input file")
    examples = (inputs_from_file(task, args.input) if args.input is not None
                else inputs_from_texts(task, args.text, args.text_b))
    rows = prediction_rows(student, args.task, examples, args.batch_size)
    if args.output:
        write_rows(rows, args.output)
        print(f"{len(rows)} prediction(s) written to {args.output}")
    else:
        print("\n".join(format_rows(rows, with_uid=args.input is not None)))
    return 0


def _add_run_options(p: argparse.ArgumentParser, what: str, stop: bool = True) -> None:
    p.add_argument("--config", required=True, help=f"YAML run file ({what})")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.lr=0.01 --set tasks=[sst2] (VALUE is YAML; repeatable)")
    if stop:
        p.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                       help="end this call after STEPS steps, with a checkpoint (continue later with --resume)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mkd-fast", description="Fused distillation losses and multi-task KD")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list the loss backends and why any is missing")
    info.set_defaults(func=_info)

    demo = sub.add_parser("demo", help="multi-task distillation end to end on the synthetic corpus (CPU)")
    demo.add_argument("--output-dir", default="runs/demo", help="where the demo's teacher, store and students go")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    demo.set_defaults(func=_demo)
    loss_demo = sub.add_parser("loss-demo", help="check and time the fused losses on this machine")
    loss_demo.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    loss_demo.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    loss_demo.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    loss_demo.set_defaults(func=_loss_demo)

    teacher = sub.add_parser("teacher", help="multi-task teachers")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True)
    ttrain = tsub.add_parser("train", help="train a multi-task teacher from a YAML config (TeacherTrainConfig)")
    ttrain.add_argument("--config", required=True, help="YAML file with TeacherTrainConfig keys")
    ttrain.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    ttrain.set_defaults(func=_teacher_train)
    st = sub.add_parser("soft-targets", help="compute the soft-target store from a YAML config (SoftTargetConfig)")
    st.add_argument("--config", required=True, help="YAML file with SoftTargetConfig keys")
    st.set_defaults(func=_soft_targets)

    distill = sub.add_parser("distill", help="distill a multi-task student from a YAML run file (then fine-tune "
                                             "per task when it has finetune:)")
    _add_run_options(distill, "mkd_fast.distill.run_config.DistillRunConfig")
    distill.set_defaults(func=_distill)
    finetune = sub.add_parser("finetune", help="per-task fine-tuning of the distilled student (or student_dir)")
    _add_run_options(finetune, "the distill run file", stop=False)
    finetune.set_defaults(func=_finetune)
    agnostic = sub.add_parser("task-agnostic", help="MITKD stage 2: task-agnostic distillation of a Transformer "
                                                    "student from a saved multi-task teacher")
    _add_run_options(agnostic, "mkd_fast.distill.task_agnostic_run.TaskAgnosticRunConfig")
    agnostic.set_defaults(func=_task_agnostic)

    ev = sub.add_parser("eval", help="a saved student's metrics on a labeled split")
    ev.add_argument("--student", required=True, help="saved student folder")
    ev.add_argument("--tasks", nargs="+", default=None, help="tasks to evaluate (default: all the student's heads)")
    ev.add_argument("--data", choices=("glue", "synthetic"), default="glue")
    ev.add_argument("--data-dir", default=None, help="GLUE data folder (with --data glue)")
    ev.add_argument("--split", default="dev")
    ev.add_argument("--seed", type=int, default=0, help="synthetic corpus / subsample seed")
    ev.add_argument("--synthetic-sizes", default=None, help="make_synthetic_corpus sizes, as YAML (e.g. 40)")
    ev.add_argument("--max-examples", type=int, default=None, help="a seeded subsample per task")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(func=_eval)

    pr = sub.add_parser("predict", help="a saved student's predictions for texts or a file")
    pr.add_argument("--student", required=True, help="saved student folder")
    pr.add_argument("--task", required=True, help="which task head")
    pr.add_argument("--text", default=None, help="the text (the first one of a pair)")
    pr.add_argument("--text-b", default=None, help="the second text, for pair tasks")
    pr.add_argument("--input", default=None, help=".tsv/.csv (with header) or .jsonl file; columns: the task's "
                                                  "input fields")
    pr.add_argument("--output", default=None, help="write the predictions to a .jsonl or .tsv file")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.set_defaults(func=_predict)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.traceback:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"mkd-fast {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
