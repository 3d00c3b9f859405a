"""Task-agnostic distillation (stage 2 of MITKD, ERNIE 3.0 Tiny, arXiv 2301.03416).

A frozen multi-task teacher teaches a small Transformer student on unlabeled text, before any per-task
fine-tuning, so the student inherits the teacher's general representations and not only its task outputs.
Teacher and student read the same masked input; three terms pull the student toward the teacher:

* ``mlm_kl``: KL(teacher || student) of the masked-LM distributions at the masked positions, computed by the
  fused :func:`mkd_fast.kd_loss`.  The teacher's distribution comes from its MLM head when it has one (a
  ``BertForMaskedLM``), otherwise from its tied word embeddings (last hidden @ E^T), since a multi-task
  teacher's ``BertModel`` encoder has no head.  The summary's ``mlm_source`` says which.
* ``hidden_mse``: MSE between a learned linear projection of each mapped student layer (the embedding output
  is layer 0) and the teacher layer it maps to, over real (non-padding) tokens, averaged over the layers.
* ``attention_kl``: KL between the head-averaged attention distributions of each mapped layer pair, over
  real query rows.  Head averaging lets the two models have different head counts.  The student's
  attention-probability dropout is off during this stage: transformers returns the post-dropout
  probabilities, whose zeros would make this KL noisy (and infinite without the clamp).

Pairs of texts (from pair-task examples) are fed as one pair input ``[CLS] a [SEP] b [SEP]``, the format the
teacher was trained on and the student will be fine-tuned on, so segment embeddings and cross-sentence
attention are distilled too.  The checkpoint (student, projections, optimizer, scheduler, grad scaler, RNG,
step, data position) makes a killed-and-resumed run finish with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..optim import no_weight_decay, warmup_schedule
from ..data.examples import Example
from ..teachers.training import _rng_state, _set_rng_state, atomic_torch_save, config_from_yaml
from .metrics_log import MetricsLog
from .task_agnostic_data import (EpochBatches, TokenizedCorpus, mask_tokens, read_text_file, step_generator,
                                 unlabeled_inputs)
from .task_agnostic_losses import LOSS_TERMS, LayerProjections, TaskAgnosticObjective
from .task_agnostic_models import (FrozenTeacher, check_shared_vocabulary, check_student, eager_attention,
                                   no_attention_dropout)

__all__ = ["TaskAgnosticConfig", "load_task_agnostic_config", "task_agnostic_distill", "read_text_file",
           "default_layer_map", "check_layer_map", "save_student", "LOSS_TERMS"]

AMP_MODES = ("no", "bf16", "fp16")
# Settings a resumed run may change: they do not alter what is computed.
RESUME_FREE_KEYS = ("output_dir", "checkpoint_every", "progress", "device", "backend")


# --------------------------------------------------------------------------------------------------- config
@dataclass
class TaskAgnosticConfig:
    """Settings of one task-agnostic distillation run (YAML keys are the field names).

    ``layer_map`` maps student layers to teacher layers; 0 is the embedding output and may only map to 0.
    None: the embedding output to the teacher's, and student layer i (1..Ls) to teacher layer
    ``i * Lt // Ls`` (evenly spaced, last to last).  Hidden MSE uses every pair, attention KL the pairs with
    i >= 1.  ``temperature`` applies to the MLM term only (attention maps are already probabilities)."""

    output_dir: str = "runs/task_agnostic"
    steps: int = 1000
    batch_size: int = 32
    max_length: int = 128
    lr: float = 5e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0             # 0 disables clipping
    mask_prob: float = 0.15                # BERT masking: of these, 80% [MASK], 10% a random token, 10% kept
    temperature: float = 1.0
    mlm_kl_weight: float = 1.0
    hidden_mse_weight: float = 1.0
    attention_kl_weight: float = 1.0
    layer_map: Optional[Dict[int, int]] = None
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 200            # steps; a checkpoint is also written at the end
    progress: bool = True
    amp: str = "no"                        # "bf16" / "fp16" through torch.autocast (+ GradScaler for fp16)
    backend: str = "auto"                  # kd_loss backend

    def __post_init__(self):
        for name in ("steps", "batch_size", "max_length", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob: expected a value in (0, 1), got {self.mask_prob!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {self.temperature!r}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio: expected a value in [0, 1], got {self.warmup_ratio!r}")
        for name in ("lr", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative, got {getattr(self, name)!r}")
        weights = self.loss_weights()
        for name, w in weights.items():
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"{name}_weight: expected a finite non-negative number, got {w!r}")
        if not any(weights.values()):
            raise ValueError("mlm_kl_weight, hidden_mse_weight, attention_kl_weight: at least one must be > 0")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: expected one of {AMP_MODES}, got {self.amp!r}")
        if self.layer_map is not None:
            self.layer_map = {int(k): int(v) for k, v in dict(self.layer_map).items()}

    def loss_weights(self) -> Dict[str, float]:
        return {t: float(getattr(self, f"{t}_weight")) for t in LOSS_TERMS}


def load_task_agnostic_config(path) -> TaskAgnosticConfig:
    """A :class:`TaskAgnosticConfig` from YAML; unknown keys and wrong types name the key and file."""
    return config_from_yaml(TaskAgnosticConfig, path)


def default_layer_map(student_layers: int, teacher_layers: int) -> Dict[int, int]:
    """Embeddings to embeddings, then student layer i to teacher layer ``i * Lt // Ls`` (last to last)."""
    return {0: 0, **{i: i * teacher_layers // student_layers for i in range(1, student_layers + 1)}}


def check_layer_map(layer_map: Mapping[int, int], student_layers: int, teacher_layers: int) -> Dict[int, int]:
    """The map, sorted, or a ValueError naming ``layer_map`` and the offending entry."""
    if not layer_map:
        raise ValueError("layer_map: empty; map at least one student layer to a teacher layer")
    out = {}
    for s, t in sorted((int(k), int(v)) for k, v in layer_map.items()):
        if not 0 <= s <= student_layers:
            raise ValueError(f"layer_map: student layer {s} does not exist (the student has layers 0..{student_layers},"
                             f" 0 being the embedding output)")
        if not 0 <= t <= teacher_layers:
            raise ValueError(f"layer_map: teacher layer {t} (for student layer {s}) does not exist "
                             f"(the teacher has layers 0..{teacher_layers})")
        if (s == 0) != (t == 0):
            raise ValueError(f"layer_map: {s} -> {t}: the embedding output (layer 0) can only map to layer 0")
        out[s] = t
    return out


# ------------------------------------------------------------------------------------------------ training
def build_optimizer(student: nn.Module, projections: nn.Module, cfg: TaskAgnosticConfig) -> torch.optim.AdamW:
    """AdamW over student and projections; biases and norms get no weight decay."""
    decay, plain = [], []
    for prefix, module in (("student.", student), ("projections.", projections)):
        for name, p in module.named_parameters():
            if p.requires_grad:
                (plain if no_weight_decay(prefix + name) else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=cfg.lr)


def _check_resume_config(saved: Mapping[str, Any], cfg: TaskAgnosticConfig) -> None:
    now = dataclasses.asdict(cfg)
    changed = sorted(k for k in now if k not in RESUME_FREE_KEYS and k in saved and saved[k] != now[k])
    if changed:
        raise ValueError(f"resume: the checkpoint was written with other settings for {changed} "
                         f"({', '.join(f'{k}: {saved[k]!r} -> {now[k]!r}' for k in changed)}); "
                         "resume needs the same settings (or start a fresh output_dir)")


def check_max_length(max_length: int, **models: nn.Module) -> None:
    """``max_length`` must fit every model's position embeddings (an index error deep in BERT otherwise)."""
    for who, model in models.items():
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length: {max_length} exceeds the {who}'s {limit} position embeddings")


def save_student(student: nn.Module, out_dir: Path) -> Dict[str, str]:
    """The distilled student, without the projections: in its own folder format when it has one
    (``save_pretrained``, e.g. a TransformerStudent) as ``student/``, else its state dict as ``student.pt``."""
    if callable(getattr(student, "save_pretrained", None)):
        return {"student_dir": str(student.save_pretrained(out_dir / "student"))}
    path = out_dir / "student.pt"
    atomic_torch_save({k: v.detach().cpu() for k, v in student.state_dict().items()}, path)
    return {"student_path": str(path)}


def task_agnostic_distill(teacher: nn.Module, student: nn.Module, texts: Union[Sequence[str], Sequence[Example]],
                          config: TaskAgnosticConfig, *, tokenizer=None, resume: bool = False,
                          stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
    """Distill ``teacher`` (frozen, eval mode) into ``student`` on unlabeled ``texts`` for ``config.steps`` steps.

    ``teacher``: a MultiTaskTeacher or a transformers model (then pass ``tokenizer``).  ``student``: has
    ``encoder`` (transformers model sharing the teacher's vocabulary), ``features(**batch) -> (hidden states
    incl. the embedding output, attentions)`` and ``mlm_logits(hidden) -> [..., vocab]``.  ``texts``: strings
    or Examples (labels ignored; pairs stay pairs).  Writes ``checkpoint.pt`` (every ``checkpoint_every``
    steps and at the end), ``metrics.jsonl`` (the loss terms per step) and, when finished, the student
    without the projections (see :func:`save_student`) to ``config.output_dir``.  ``resume=True`` continues
    from the checkpoint; ``stop_after_steps`` ends the call after that many steps (with a checkpoint)."""
    if not isinstance(config, TaskAgnosticConfig):
        raise TypeError(f"config: expected a TaskAgnosticConfig, got {type(config).__name__}")
    cfg = config
    t_view = FrozenTeacher(teacher, tokenizer)
    s_encoder = check_student(student)
    check_shared_vocabulary(t_view, student)
    tok = t_view.tokenizer
    if tok.mask_token_id is None:
        raise ValueError("tokenizer: has no mask token; masked-LM distillation needs one")
    s_layers = int(s_encoder.config.num_hidden_layers)
    layer_map = check_layer_map(cfg.layer_map if cfg.layer_map is not None
                                else default_layer_map(s_layers, t_view.num_layers), s_layers, t_view.num_layers)
    if cfg.attention_kl_weight > 0 and not any(s >= 1 for s in layer_map):
        raise ValueError("layer_map: attention_kl_weight > 0 needs at least one mapped transformer layer (>= 1)")
    check_max_length(cfg.max_length, teacher=t_view.model, student=s_encoder)
    corpus = TokenizedCorpus(unlabeled_inputs(texts), tok, cfg.max_length)

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    projections = LayerProjections(list(layer_map), int(s_encoder.config.hidden_size), t_view.hidden_size)
    teacher.to(device)
    student.to(device)
    projections.to(device)
    optimizer = build_optimizer(student, projections, cfg)
    scheduler = warmup_schedule(optimizer, int(round(cfg.warmup_ratio * cfg.steps)), cfg.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    batches = EpochBatches(len(corpus), cfg.batch_size, cfg.seed)
    log = MetricsLog(out_dir)
    step, elapsed_before = 0, 0.0
    first: Optional[Dict[str, float]] = None
    last: Optional[Dict[str, float]] = None
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_resume_config(state["config"], cfg)
        if state["corpus"] != corpus.fingerprint:
            raise ValueError("texts: not the corpus the checkpoint was written with; resume needs the same texts")
        student.load_state_dict(state["student"])
        projections.load_state_dict(state["projections"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["data"])
        _set_rng_state(state["rng"])
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        first, last = state["first_losses"], state["last_losses"]
    log.truncate_after(step)  # a fresh run starts an empty log; a resumed one drops steps after the checkpoint
    objective = TaskAgnosticObjective(t_view, student, projections, layer_map, cfg.loss_weights(),
                                      temperature=cfg.temperature, backend=cfg.backend)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    weights = cfg.loss_weights()
    t0 = time.perf_counter()

    def save_checkpoint():
        atomic_torch_save({"student": student.state_dict(), "projections": projections.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "rng": _rng_state(), "step": step,
                           "data": batches.state_dict(), "corpus": corpus.fingerprint, "layer_map": layer_map,
                           "first_losses": first, "last_losses": last,
                           "elapsed": elapsed_before + time.perf_counter() - t0,
                           "config": dataclasses.asdict(cfg)}, ckpt_path)

    from tqdm.auto import tqdm

    end = cfg.steps if stop_after_steps is None else min(cfg.steps, int(stop_after_steps))
    teacher_was_training, student_was_training = teacher.training, student.training
    teacher.eval()
    student.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="task-agnostic distill", disable=not cfg.progress, leave=False)
    try:
        with eager_attention(t_view.model), eager_attention(s_encoder), no_attention_dropout(s_encoder):
            while step < end:
                batch = {k: v.to(device) for k, v in corpus.batch(batches.next()).items()}
                batch["input_ids"], masked = mask_tokens(
                    batch["input_ids"], batch["attention_mask"], mask_token_id=tok.mask_token_id,
                    special_ids=tok.all_special_ids, vocab_size=len(tok), mask_prob=cfg.mask_prob,
                    generator=step_generator(cfg.seed, step))
                terms = objective(batch, masked, autocast)
                values = {k: float(v.detach()) for k, v in terms.items()}
                if not math.isfinite(values["loss"]) and cfg.amp != "fp16":
                    raise FloatingPointError(f"step {step + 1}: non-finite loss {values}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["loss"]).backward()
                if cfg.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                first = first if first is not None else values
                last = values
                log.write("train", step, {**values, "lr": scheduler.get_last_lr()[0]})
                bar.update(1)
                bar.set_postfix({k: f"{values[k]:.4f}" for k in ("loss", *[t for t in LOSS_TERMS if weights[t] > 0])})
                if step % cfg.checkpoint_every == 0 or step == end:
                    save_checkpoint()
    finally:
        bar.close()
        teacher.train(teacher_was_training)
        student.train(student_was_training)

    finished = step >= cfg.steps
    summary: Dict[str, Any] = {
        "steps": step, "total_steps": cfg.steps, "finished": finished,
        "losses": {"first": first, "last": last}, "seconds": elapsed_before + time.perf_counter() - t0,
        "mlm_source": t_view.mlm_source, "layer_map": layer_map, "texts": len(corpus),
        "data_position": batches.state_dict(), "checkpoint": str(ckpt_path), "log": str(log.path)}
    if finished:
        summary.update(save_student(student, out_dir))
    return summary
