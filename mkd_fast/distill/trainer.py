"""`MultiTaskDistiller`: one student, several tasks, teacher logits from the soft-target store.

The shape people know from TextBrewer (build a distiller, call ``train`` with callbacks), with what its users
ask for: multi-task x multi-teacher in one run, mixed precision through ``torch.amp``, full checkpoints
that resume exactly, DDP through ``torchrun`` (the teacher never runs here: its logits come from the store).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import atomic_write, remove_temp_leftovers
from ..data.examples import Example
from ..optim import param_groups, warmup_schedule
from ..tasks.definition import TaskDef
from ..teachers.training import _rng_state, _set_rng_state, atomic_torch_save, settings_diff
from .config import HARMLESS_KEYS, DistillConfig
from .evaluation import evaluate_model, metric_value
from .metrics_log import MetricsLog
from .objective import DistillObjective
from .sampling import TaskSampler


class Callback:
    """Hooks called by :meth:`MultiTaskDistiller.train`; override what you need."""

    def on_step(self, distiller: "MultiTaskDistiller", step: int, logs: Dict[str, Any]) -> None:
        pass

    def on_evaluate(self, distiller: "MultiTaskDistiller", step: int, results: Dict[str, Dict[str, float]]) -> None:
        pass

    def on_train_end(self, distiller: "MultiTaskDistiller", summary: Dict[str, Any]) -> None:
        pass


class _FunctionCallback(Callback):
    """A plain function ``f(distiller, step, results)`` is called after each evaluation (TextBrewer style)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def on_evaluate(self, distiller, step, results):
        self.fn(distiller, step, results)


def _dist_info():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def init_distributed_from_env(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1 in the environment): NCCL for CUDA,
    gloo otherwise.  Returns whether this process is part of a multi-process run."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def build_optimizer(model: torch.nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    """The configured optimizer over :func:`mkd_fast.optim.param_groups` (heads may get their own lr)."""
    params = param_groups(model, cfg.lr, cfg.weight_decay, cfg.head_lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "adadelta":  # Tang et al. 2019: Adadelta, lr 1.0
        return torch.optim.Adadelta(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)


class MultiTaskDistiller:
    """Train ``student`` on several tasks against the teachers in ``soft_targets``.

    ``student``: a multi-task model with ``encode(examples, device)``, ``forward(task, **batch)`` and
    ``predict_logits`` (``mkd_fast.students``).  ``tasks``: the task definitions (default: the student's).
    ``soft_targets``: a :class:`~mkd_fast.soft_targets.SoftTargetStore` or None (hard labels only).
    ``config``: a :class:`DistillConfig`.  ``train(train_data, dev_data, callbacks=...)`` runs it."""

    def __init__(self, student: torch.nn.Module, tasks: Union[None, Sequence[TaskDef], Mapping[str, TaskDef]] = None,
                 soft_targets=None, config: Optional[DistillConfig] = None):
        self.student = student
        if tasks is None:
            tasks = student.tasks
        self.tasks: Dict[str, TaskDef] = dict(tasks) if isinstance(tasks, Mapping) else {t.name: t for t in tasks}
        unknown = [t for t in self.tasks if t not in student.tasks]
        if unknown:
            raise ValueError(f"tasks: the student has no head for {unknown} (heads: {list(student.tasks)})")
        for name, task in self.tasks.items():
            if student.tasks[name].num_labels != task.num_labels:
                raise ValueError(f"tasks: task {name!r} has {task.num_labels} outputs but the student's head has "
                                 f"{student.tasks[name].num_labels}")
        self.config = config or DistillConfig()
        self.store = soft_targets
        self.objective = DistillObjective(self.tasks, self.config, soft_targets)

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, dev: Mapping[str, Sequence[Example]]) -> Dict[str, Dict[str, float]]:
        return evaluate_model(self.student, self.tasks, {t: v for t, v in dev.items() if t in self.tasks},
                              self.config.eval_batch_size)

    # ------------------------------------------------------------------------------------------ training
    def _check_data(self, train: Mapping[str, Sequence[Example]]) -> Dict[str, List[Example]]:
        unknown = [t for t in train if t not in self.tasks]
        if unknown:
            raise ValueError(f"train: tasks {unknown} are not among this distiller's tasks {list(self.tasks)}")
        data = {t: list(v) for t, v in train.items() if t in self.tasks}
        empty = [t for t, v in data.items() if not v]
        if empty:
            raise ValueError(f"train: no examples for task(s) {empty}")
        for t, exs in data.items():
            if not self.objective.has_teacher(t) and not any(e.label is not None for e in exs):
                raise ValueError(f"train: task {t!r} has no teacher in the store and no labeled examples")
        return data

    def train(self, train: Mapping[str, Sequence[Example]], dev: Optional[Mapping[str, Sequence[Example]]] = None, *,
              callbacks: Sequence[Union[Callback, Callable]] = (), resume: bool = False,
              stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
        """Run the configured number of steps; returns a summary dict.

        ``output_dir`` receives ``checkpoint.pt`` (full state, atomic), ``metrics.jsonl``,
        ``evaluations.csv``, ``best/`` (the best student by ``best_metric``, when there is dev data) and
        ``student/`` (the final student).  ``resume=True`` continues from the checkpoint; settings that
        change the result must match it.  ``stop_after_steps`` ends this call early (after a checkpoint)."""
        cfg = self.config
        data = self._check_data(train)
        world, rank = _dist_info()
        is_main = rank == 0
        out = Path(cfg.output_dir)
        ckpt_path = out / "checkpoint.pt"
        device = torch.device(cfg.device)
        cbs = [c if isinstance(c, Callback) else _FunctionCallback(c) for c in callbacks]

        torch.manual_seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
        np.random.seed(cfg.seed + rank)
        student = self.student.to(device)
        model = student
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None,
                                            find_unused_parameters=True)  # only one task head runs per step
        sampler = TaskSampler({t: len(v) for t, v in data.items()}, cfg.batch_size, cfg.sampling, cfg.sampling_tau,
                              cfg.seed, world_size=world, rank=rank)
        total = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * sampler.steps_per_epoch()))
        optimizer = build_optimizer(student, cfg)
        scheduler = warmup_schedule(optimizer, int(round(cfg.warmup_ratio * total)), total, cfg.schedule)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        log = MetricsLog(out, enabled=is_main, tensorboard=cfg.tensorboard)
        step, history, best, elapsed_before = 0, [], None, 0.0
        running: Dict[str, List[float]] = {}
        if is_main:  # what a killed run was writing (full-size checkpoints, half-saved students)
            remove_temp_leftovers(out, ["checkpoint.pt", "summary.json", "metrics.jsonl", "evaluations.csv",
                                        "best", "student"])
        if resume and ckpt_path.is_file():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            diffs = settings_diff(state["config"], dataclasses.asdict(cfg), HARMLESS_KEYS)
            if diffs:
                raise ValueError(f"resume: the checkpoint {ckpt_path} was written with other settings: " + "; ".join(diffs))
            student.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            sampler.load_state_dict(state["sampler"])
            _set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
            step, history, best = state["step"], state["history"], state["best"]
            running = state.get("running", {})  # losses since the last log line, so the log resumes exactly
            elapsed_before = state.get("elapsed", 0.0)
            log.truncate_after(step)
        elif is_main:
            out.mkdir(parents=True, exist_ok=True)
            if log.path.exists():
                log.path.unlink()  # a fresh run starts a fresh log
        _barrier()
        t0 = time.perf_counter()

        def save_checkpoint():
            rng = _rng_state()
            if world > 1:
                import torch.distributed as dist

                gathered = [None] * world
                dist.all_gather_object(gathered, rng)
                rng = gathered
            if is_main:
                atomic_torch_save({"model": student.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                   "sampler": sampler.state_dict(), "rng": rng, "step": step, "history": history,
                                   "best": best, "running": running, "elapsed": elapsed_before + time.perf_counter() - t0,
                                   "config": dataclasses.asdict(cfg)}, ckpt_path)
            _barrier()

        def run_eval():
            nonlocal best
            results = self.evaluate(dev)
            if not results:
                return
            history.append({"step": step, "dev": results})
            log.write("eval", step, {f"{t}.{m}": v for t, ms in results.items() for m, v in ms.items()})
            value = metric_value(results, cfg.best_metric)
            if best is None or (math.isfinite(value) and (not math.isfinite(best["value"]) or value > best["value"])):
                best = {"step": step, "value": value, "metric": cfg.best_metric}
                if is_main:
                    student.save_pretrained(out / "best")
            for c in cbs:
                c.on_evaluate(self, step, results)

        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="distill", disable=not (cfg.progress and is_main), leave=False)
        last_eval_step = history[-1]["step"] if history else -1
        while step < total:
            task, idx = sampler.next()
            exs = [data[task][i] for i in idx]
            teacher, present = self.objective.teacher_logits(task, exs)
            student.train()
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext():
                logits = model(task, **student.encode(exs, device))
            loss = self.objective(task, logits, exs, teacher, present)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            running.setdefault(task, []).append(value)
            logs = {"task": task, "loss": value, "lr": optimizer.param_groups[0]["lr"]}
            bar.update(1)
            bar.set_postfix(task=task, loss=f"{value:.4f}")
            for c in cbs:
                c.on_step(self, step, logs)
            if step % cfg.log_every == 0 or step == total:
                log.write("train", step, {**{f"{t}.loss": float(np.mean(v)) for t, v in running.items()},
                                          "lr": logs["lr"]})
                running = {}
            if dev and cfg.eval_every and step % cfg.eval_every == 0:
                run_eval()
                last_eval_step = step
            stopping = stop_after_steps is not None and step >= stop_after_steps and step < total
            if step % cfg.checkpoint_every == 0 or stopping:
                save_checkpoint()
            if stopping:
                break
        bar.close()
        finished = step >= total
        if finished:
            if dev and last_eval_step != step:
                run_eval()
            save_checkpoint()
        summary = {"steps": step, "total_steps": total, "finished": finished, "history": history, "best": best,
                   "seconds": elapsed_before + time.perf_counter() - t0, "checkpoint": str(ckpt_path),
                   "output_dir": str(out), "world_size": world}
        if finished and is_main:
            summary["student_dir"] = student.save_pretrained(out / "student")
            log.write_csv()
            atomic_write(out / "summary.json", lambda fh: fh.write(json.dumps(summary, indent=2, default=str)),
                         binary=False)
        log.close()
        _barrier()
        for c in cbs:
            c.on_train_end(self, summary)
        return summary
