"""Distil a tiny BERT classifier into a smaller one with `DistillationTrainer` (offline, CPU, seconds).

A 2-layer teacher is first fitted to the labels, then distilled into a 1-layer student twice: with a live
teacher, and with the teacher's logits cached in a dataset column (the way soft targets from
`mkd_fast.soft_targets` are used).  Models are built from configs, so nothing is downloaded; the point is
the wiring, and the printed distillation loss going down.

    python examples/hf_trainer_distill.py
"""
from __future__ import annotations

import sys
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, PrinterCallback, Trainer, TrainingArguments

from mkd_fast.integrations import DistillationTrainer

VOCAB, SEQ_LEN, N_CLASSES, N_EXAMPLES = 64, 12, 3, 64


def tiny_bert(hidden: int, layers: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=SEQ_LEN, num_labels=N_CLASSES)
    return BertForSequenceClassification(config)


def make_examples(seed: int = 0):
    """Random token sequences; the label is the most frequent of three token ranges (learnable)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (N_EXAMPLES, SEQ_LEN), generator=g)
    labels = torch.stack([(ids % N_CLASSES == c).sum(1) for c in range(N_CLASSES)], 1).argmax(1)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(SEQ_LEN, dtype=torch.long), "labels": labels[i]}
            for i in range(N_EXAMPLES)]


def training_args(out: str, steps: int, lr: float) -> TrainingArguments:
    return TrainingArguments(output_dir=out, use_cpu=True, report_to=[], per_device_train_batch_size=16,
                             max_steps=steps, learning_rate=lr, logging_steps=5, save_strategy="no",
                             disable_tqdm=True, log_level="warning")


def train_teacher(examples) -> BertForSequenceClassification:
    """The teacher: a larger model fitted to the labels first (a plain Trainer; its own CE loss)."""
    teacher = tiny_bert(hidden=32, layers=2, seed=0)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=teacher, args=training_args(out, steps=60, lr=5e-3), train_dataset=examples)
        trainer.remove_callback(PrinterCallback)  # we print the losses ourselves
        trainer.train()
    return teacher.eval()


def distil(examples, teacher=None, steps: int = 30) -> list:
    """Distillation losses logged every 5 steps; live teacher if given, else the examples' cached logits."""
    student = tiny_bert(hidden=16, layers=1, seed=1)
    with tempfile.TemporaryDirectory() as out:
        trainer = DistillationTrainer(model=student, args=training_args(out, steps, lr=3e-3),
                                      train_dataset=examples, teacher_model=teacher, temperature=2.0,
                                      divergence="kl", alpha=0.5)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def main() -> int:
    torch.set_num_threads(1)
    examples = make_examples()
    teacher = train_teacher(examples)
    ok = True
    for mode in ("live teacher", "cached teacher logits"):
        if mode == "live teacher":
            losses = distil(examples, teacher=teacher)
        else:
            with torch.no_grad():  # one teacher pass over the data, stored as a column
                cached = teacher(input_ids=torch.stack([ex["input_ids"] for ex in examples])).logits
            losses = distil([dict(ex, teacher_logits=cached[i]) for i, ex in enumerate(examples)])
        print(f"{mode}: distillation loss every 5 steps: " + " ".join(f"{x:.4f}" for x in losses))
        ok &= losses[-1] < losses[0]
    print("loss went down" if ok else "loss did NOT go down")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
