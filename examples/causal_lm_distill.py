"""Token-level distillation of a tiny GPT-2 into a smaller one in a plain PyTorch loop (offline, CPU, seconds).

Prompt + response sequences with right padding; only response tokens are learnt (`make_lm_labels` sets
padding and prompt tokens to -100), and `causal_lm_kd_loss` scores position t against token t+1.  The
teacher's vocabulary is padded to a multiple of 64 (as many LMs' are), so `truncate_teacher_vocab=True`
keeps its first V classes.  Models are random, built from configs: nothing is downloaded.

    python examples/causal_lm_distill.py
"""
from __future__ import annotations

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mkd_fast.integrations import causal_lm_kd_loss, make_lm_labels

VOCAB, TEACHER_VOCAB, SEQ_LEN, BATCH = 100, 128, 16, 8


def tiny_gpt2(vocab: int, layers: int, width: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=layers, n_embd=width, n_head=2,
                                      n_positions=SEQ_LEN, bos_token_id=0, eos_token_id=0))


def make_batch(g: torch.Generator):
    """Prompts of 3-6 tokens, responses of 3-8 tokens, right-padded with token 0."""
    ids = torch.zeros(BATCH, SEQ_LEN, dtype=torch.long)
    attention = torch.zeros(BATCH, SEQ_LEN, dtype=torch.long)
    prompt_lengths = torch.randint(3, 7, (BATCH,), generator=g)
    for i in range(BATCH):
        n = int(prompt_lengths[i]) + int(torch.randint(3, 9, (1,), generator=g))
        ids[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        attention[i, :n] = 1
    labels = make_lm_labels(ids, attention_mask=attention, prompt_lengths=prompt_lengths)
    return ids, attention, labels


def main() -> int:
    torch.set_num_threads(1)
    teacher = tiny_gpt2(TEACHER_VOCAB, layers=2, width=64, seed=0).eval().requires_grad_(False)
    student = tiny_gpt2(VOCAB, layers=1, width=32, seed=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    batches = [make_batch(g) for _ in range(4)]
    losses = []
    for step in range(40):
        ids, attention, labels = batches[step % len(batches)]
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits
        student_logits = student(input_ids=ids, attention_mask=attention).logits
        loss = causal_lm_kd_loss(student_logits, teacher_logits, labels, temperature=1.0, divergence="kl",
                                 alpha=0.1, truncate_teacher_vocab=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 5 == 0 or step == 39:
            print(f"step {step:2d}  loss {loss.item():.4f}")
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    ok = last < first
    print(f"mean loss of the first 4 steps {first:.4f}, of the last 4 {last:.4f}: "
          + ("loss went down" if ok else "loss did NOT go down"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
