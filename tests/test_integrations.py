"""mkd_fast.integrations: the Hugging Face DistillationTrainer, causal-LM token distillation, the examples.

References are written here in plain float64 PyTorch (not with mkd_fast), so a wrong shift, mask, T^2 or
alpha mix in the integrations shows up as a numeric difference.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mkd_fast.integrations import causal_lm_kd_loss, make_lm_labels, match_teacher_classes, shift_labels_left

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ references
def reference_rows(student, teacher, labels, temperature, alpha):
    """Per-row Hinton loss in float64: alpha * CE(s, y) + (1 - alpha) * T^2 * KL(p_t || p_s) at T.

    teacher: [N, C] or [K, N, C] (an ensemble: tempered probabilities averaged)."""
    s, t = student.double(), teacher.double()
    pt = torch.softmax(t / temperature, dim=-1)
    if pt.dim() == 3:
        pt = pt.mean(0)
    log_ps = torch.log_softmax(s / temperature, dim=-1)
    kl = (pt * (pt.log() - log_ps)).sum(-1)
    rows = (1 - alpha) * temperature ** 2 * kl
    if alpha > 0:
        rows = rows + alpha * F.cross_entropy(s, labels.clamp_min(0), reduction="none")
    return rows


def reference_mean(student, teacher, labels, temperature, alpha):
    rows = reference_rows(student, teacher, labels, temperature, alpha)
    active = labels != -100
    return (rows * active).sum() / active.sum().clamp_min(1)


def reference_causal(student, teacher, labels, temperature, alpha):
    """Next-token loss by explicit loops: logits at t against token t+1, mean over counted tokens."""
    terms = []
    for b in range(student.shape[0]):
        for t in range(student.shape[1] - 1):
            target = labels[b, t + 1]
            if target != -100:
                terms.append(reference_rows(student[b, t:t + 1], teacher[b, t:t + 1], target.view(1),
                                            temperature, alpha)[0])
    return torch.stack(terms).mean()


# ------------------------------------------------------------------------------------------ causal LM
def test_causal_shift_matches_manual_loop_in_float64():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 11
    student = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100  # prompt
    labels[1, 5:] = -100  # padding
    loss = causal_lm_kd_loss(student, teacher, labels, temperature=2.0, alpha=0.3)
    (grad,) = torch.autograd.grad(loss, student)
    s_ref = student.detach().clone().requires_grad_(True)
    ref = reference_causal(s_ref, teacher, labels, 2.0, 0.3)
    (grad_ref,) = torch.autograd.grad(ref, s_ref)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)
    # An unshifted loss would differ: the test can tell the shift apart.
    unshifted = reference_mean(student.detach().reshape(-1, V), teacher.reshape(-1, V), labels.reshape(-1), 2.0, 0.3)
    assert not torch.allclose(loss.detach(), unshifted)


def test_causal_ignored_positions_contribute_nothing():
    g = torch.Generator().manual_seed(1)
    B, T, V = 2, 6, 9
    student = torch.randn(B, T, V, generator=g)
    teacher = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 1:3] = -100
    labels[1, 4:] = -100
    # Position t is scored iff labels[t + 1] counts; the last position never is.
    scored = shift_labels_left(labels) != -100
    assert not scored[:, -1].any()

    def loss_and_grad(s, t):
        s = s.clone().requires_grad_(True)
        loss = causal_lm_kd_loss(s, t, labels, temperature=1.5, alpha=0.5)
        loss.backward()
        return loss.detach(), s.grad

    loss0, grad0 = loss_and_grad(student, teacher)
    noise_s, noise_t = student.clone(), teacher.clone()
    noise_s[~scored] = torch.randn(int((~scored).sum()), V, generator=g) * 50
    noise_t[~scored] = float("nan")  # not even a NaN in an ignored teacher row may leak
    loss1, grad1 = loss_and_grad(noise_s, noise_t)
    torch.testing.assert_close(loss1, loss0)
    torch.testing.assert_close(grad1, grad0)
    assert torch.all(grad0[~scored] == 0) and torch.all(grad0[scored].abs().sum(-1) > 0)


def test_causal_all_masked_and_single_token_give_zero_loss_and_zero_grad():
    student = torch.randn(2, 5, 7, requires_grad=True)
    teacher = torch.randn(2, 5, 7)
    # kd_loss's rule for batches where no row counts: loss 0, gradient 0, never NaN.
    for labels in (torch.full((2, 5), -100), torch.tensor([[3, -100, -100, -100, -100]] * 2)):
        loss = causal_lm_kd_loss(student, teacher, labels, temperature=2.0, alpha=0.5)
        loss.backward()
        assert loss.item() == 0.0 and torch.all(student.grad == 0)
        student.grad = None
    one = torch.randn(2, 1, 7, requires_grad=True)  # a single token has no next token
    loss = causal_lm_kd_loss(one, torch.randn(2, 1, 7), torch.ones(2, 1, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(one.grad == 0)


def test_causal_vocab_mismatch_errors_unless_truncation_is_asked_for():
    student = torch.randn(2, 4, 10, dtype=torch.float64)
    teacher = torch.randn(2, 4, 16, dtype=torch.float64)
    labels = torch.randint(0, 10, (2, 4))
    with pytest.raises(ValueError, match=r"teacher has 16 classes .* student has 10.*truncate_teacher_vocab"):
        causal_lm_kd_loss(student, teacher, labels)
    truncated = causal_lm_kd_loss(student, teacher, labels, truncate_teacher_vocab=True, temperature=2.0)
    torch.testing.assert_close(truncated, causal_lm_kd_loss(student, teacher[..., :10].contiguous(), labels,
                                                            temperature=2.0))
    with pytest.raises(ValueError, match=r"teacher has 6 classes .* student has 10.*fewer"):
        causal_lm_kd_loss(student, teacher[..., :6], labels, truncate_teacher_vocab=True)
    with pytest.raises(TypeError, match="truncate_teacher_vocab"):
        match_teacher_classes(student, teacher, truncate_teacher_vocab="yes")


def test_causal_input_ids_with_loss_mask_equals_labels_and_ensembles_work():
    g = torch.Generator().manual_seed(2)
    student = torch.randn(2, 6, 8, generator=g)
    teachers = torch.randn(3, 2, 6, 8, generator=g)
    ids = torch.randint(0, 8, (2, 6), generator=g)
    keep = torch.rand(2, 6, generator=g) > 0.3
    labels = torch.where(keep, ids, torch.full_like(ids, -100))
    by_labels = causal_lm_kd_loss(student, teachers, labels, temperature=2.0, alpha=0.2)
    by_mask = causal_lm_kd_loss(student, teachers, input_ids=ids, loss_mask=keep, temperature=2.0, alpha=0.2)
    torch.testing.assert_close(by_mask, by_labels)
    ref = []  # the ensemble: tempered probabilities of the K teachers averaged, position by position
    for b in range(2):
        for t in range(5):
            if labels[b, t + 1] != -100:
                ref.append(reference_rows(student[b, t:t + 1], teachers[:, b, t:t + 1], labels[b, t + 1].view(1),
                                          2.0, 0.2)[0])
    torch.testing.assert_close(by_labels.double(), torch.stack(ref).mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="labels, input_ids: pass exactly one"):
        causal_lm_kd_loss(student, teachers, labels, input_ids=ids)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 6\)"):
        causal_lm_kd_loss(student, teachers, labels[:, :5])


def test_make_lm_labels_masks_padding_and_prompt_for_both_padding_sides():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0],  # right padding, prompt of 2
                        [0, 0, 5, 6, 7, 8, 9]])  # left padding, prompt of 3
    attention = (ids != 0).long()
    labels = make_lm_labels(ids, attention_mask=attention, prompt_lengths=[2, 3])
    assert labels.tolist() == [[-100, -100, 7, 8, 9, -100, -100],
                               [-100, -100, -100, -100, -100, 8, 9]]
    assert make_lm_labels(ids, prompt_lengths=1)[:, 0].tolist() == [-100, -100]
    with pytest.raises(ValueError, match="prompt_lengths"):
        make_lm_labels(ids, prompt_lengths=[1, 2, 3])


# ------------------------------------------------------------------------------------------ HF Trainer
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_TRAINER = HAS_TRANSFORMERS and importlib.util.find_spec("accelerate") is not None
needs_trainer = pytest.mark.skipif(not HAS_TRAINER, reason="transformers.Trainer needs transformers and accelerate>=1.1")
if HAS_TRAINER:
    from transformers import (BertConfig, BertForSequenceClassification, BertForTokenClassification, GPT2Config,
                              GPT2LMHeadModel, TrainingArguments)

    from mkd_fast.integrations import DistillationTrainer, SoftTargetCollator

VOCAB, SEQ = 40, 8


def bert_config(num_labels, hidden=16, layers=1):
    return BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=2 * hidden, max_position_embeddings=SEQ, num_labels=num_labels,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_classifier(num_labels=3, seed=0, hidden=16):
    torch.manual_seed(seed)
    return BertForSequenceClassification(bert_config(num_labels, hidden))


def tiny_gpt2(vocab=VOCAB, seed=0, width=16):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=1, n_embd=width, n_head=2, n_positions=SEQ,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                      eos_token_id=0))


def batch_of(n=6, num_labels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, VOCAB, (n, SEQ), generator=g),
            "attention_mask": torch.ones(n, SEQ, dtype=torch.long),
            "labels": torch.randint(0, num_labels, (n,), generator=g)}


def make_trainer(tmp_path, student, **kwargs):
    steps = kwargs.pop("max_steps", 1)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=8,
                             max_steps=steps, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                             disable_tqdm=True, seed=0)
    return DistillationTrainer(model=student, args=args, **kwargs)


@needs_trainer
@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_trainer_loss_equals_reference_for_live_and_cached_teachers(tmp_path, alpha):
    student, teacher = tiny_classifier(seed=1), tiny_classifier(seed=2, hidden=32)
    inputs = batch_of()
    with torch.no_grad():
        t_logits = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    s_logits = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    ref = reference_mean(s_logits, t_logits, inputs["labels"], 3.0, alpha)

    live = make_trainer(tmp_path, student, teacher_model=teacher, temperature=3.0, alpha=alpha)
    loss, outputs = live.compute_loss(student, dict(inputs), return_outputs=True)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs.logits, s_logits)
    assert getattr(outputs, "loss", None) is None  # the student was not asked for a loss of its own

    cached = make_trainer(tmp_path, student, temperature=3.0, alpha=alpha)
    loss = cached.compute_loss(student, dict(inputs, teacher_logits=t_logits))
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    # a batch-first ensemble column [B, K, C]: tempered probabilities averaged
    ensemble = torch.stack([t_logits, t_logits.flip(-1) * 2], dim=1)
    loss = cached.compute_loss(student, dict(inputs, teacher_logits=ensemble))
    torch.testing.assert_close(loss.double(), reference_mean(s_logits, ensemble.movedim(1, 0), inputs["labels"],
                                                             3.0, alpha), rtol=1e-5, atol=1e-6)
    # normalised by the Trainer's label count of the accumulated batch (gradient accumulation)
    loss = live.compute_loss(student, dict(inputs), num_items_in_batch=torch.tensor(20))
    rows = reference_rows(s_logits, t_logits, inputs["labels"], 3.0, alpha)
    torch.testing.assert_close(loss.double(), rows.sum() / 20, rtol=1e-5, atol=1e-6)
    # ... so that micro-batch losses sum to the mean of the whole accumulated batch
    halves = [live.compute_loss(student, {k: v[part] for k, v in inputs.items()}, num_items_in_batch=torch.tensor(6))
              for part in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(sum(halves).double(), ref, rtol=1e-5, atol=1e-6)


@needs_trainer
def test_trainer_token_and_causal_lm_logits(tmp_path):
    inputs = batch_of(n=4)
    g = torch.Generator().manual_seed(3)
    token_labels = torch.randint(0, 5, (4, SEQ), generator=g)
    token_labels[:, :2] = -100
    # token classification: [B, T, C] logits, no shift, -100 rows skipped
    torch.manual_seed(0)
    student = BertForTokenClassification(bert_config(5))
    teacher = BertForTokenClassification(bert_config(5, hidden=32))
    trainer = make_trainer(tmp_path, student, teacher_model=teacher, temperature=2.0, alpha=0.5)
    assert trainer.shift_labels is False
    model_in = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    loss = trainer.compute_loss(student, dict(model_in, labels=token_labels))
    with torch.no_grad():
        s, t = student(**model_in).logits, teacher(**model_in).logits
    torch.testing.assert_close(loss.double(), reference_mean(s.reshape(-1, 5), t.reshape(-1, 5),
                                                             token_labels.reshape(-1), 2.0, 0.5), rtol=1e-5, atol=1e-6)
    # causal LM: detected from the model class, scored against the next token
    student, teacher = tiny_gpt2(seed=1), tiny_gpt2(seed=2, width=32)
    trainer = make_trainer(tmp_path, student, teacher_model=teacher, temperature=2.0, alpha=0.5)
    assert trainer.shift_labels is True
    labels = inputs["input_ids"].clone()
    labels[:, :3] = -100
    loss = trainer.compute_loss(student, dict(model_in, labels=labels))
    with torch.no_grad():
        s, t = student(**model_in).logits, teacher(**model_in).logits
    torch.testing.assert_close(loss.double(), reference_causal(s, t, labels, 2.0, 0.5), rtol=1e-5, atol=1e-6)
    # without labels: the next tokens come from input_ids, padding (attention_mask 0) excluded
    padded = dict(model_in, attention_mask=model_in["attention_mask"].clone())
    padded["attention_mask"][:, -2:] = 0
    loss = trainer.compute_loss(student, padded)
    with torch.no_grad():
        s, t = student(**padded).logits, teacher(**padded).logits
    expected = padded["input_ids"].masked_fill(padded["attention_mask"] == 0, -100)
    torch.testing.assert_close(loss.double(), reference_causal(s, t, expected, 2.0, 0.5), rtol=1e-5, atol=1e-6)


@needs_trainer
def test_trainer_class_count_mismatch_is_a_clear_error(tmp_path):
    student, teacher = tiny_classifier(num_labels=3), tiny_classifier(num_labels=4, seed=1)
    trainer = make_trainer(tmp_path, student, teacher_model=teacher)
    with pytest.raises(ValueError, match=r"teacher has 4 classes .* student has 3"):
        trainer.compute_loss(student, batch_of())
    lm = make_trainer(tmp_path, tiny_gpt2(), teacher_model=tiny_gpt2(vocab=VOCAB + 8))
    ids = batch_of()["input_ids"]
    with pytest.raises(ValueError, match=rf"teacher has {VOCAB + 8} classes .* student has {VOCAB}"):
        lm.compute_loss(lm.model, {"input_ids": ids, "labels": ids})


@needs_trainer
def test_trainer_argument_errors(tmp_path):
    student = tiny_classifier()
    with pytest.raises(ValueError, match="divergence"):
        make_trainer(tmp_path, student, divergence="kld")
    with pytest.raises(ValueError, match="teacher_model: the teacher is .*part of.* the student"):
        make_trainer(tmp_path, student, teacher_model=student.bert)
    trainer = make_trainer(tmp_path, student)
    with pytest.raises(ValueError, match="needs cached teacher logits under 'teacher_logits'"):
        trainer.compute_loss(student, batch_of())
    both = make_trainer(tmp_path, student, teacher_model=tiny_classifier(seed=3))
    with pytest.raises(ValueError, match="live teacher_model was also given"):
        both.compute_loss(student, dict(batch_of(), teacher_logits=torch.zeros(6, 3)))


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@needs_trainer
def test_train_freezes_live_teacher_and_lowers_student_loss(tmp_path):
    student, teacher = tiny_classifier(seed=1), tiny_classifier(seed=2, hidden=32)
    torch.manual_seed(0)
    with torch.no_grad():
        teacher.classifier.weight.normal_(0, 3)  # a confident teacher (a random head is nearly uniform)
    data = batch_of(n=32, seed=4)
    with torch.no_grad():
        data["labels"] = teacher(input_ids=data["input_ids"]).logits.argmax(-1)
    teacher.train()  # the trainer must put it in eval mode itself
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    rows = ListDataset([{k: v[i] for k, v in data.items()} for i in range(32)])
    trainer = make_trainer(tmp_path, student, teacher_model=teacher, train_dataset=rows, max_steps=12,
                           temperature=2.0, alpha=0.5)
    with torch.no_grad():
        start = trainer.compute_loss(student.eval(), dict(data)).item()
    trainer.train()
    with torch.no_grad():
        end = trainer.compute_loss(student.eval(), dict(data)).item()
    assert end < 0.7 * start, (start, end)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p is q for p in trainer.optimizer.param_groups[0]["params"] for q in teacher.parameters())


@needs_trainer
def test_soft_target_store_collator_feeds_cached_teacher_through_train(tmp_path):
    from mkd_fast.soft_targets import SoftTargetWriter

    data = batch_of(n=16, seed=5)
    uids = [f"t/train/{i}" for i in range(16)]
    stored = torch.randn(2, 16, 3)  # K = 2 teachers
    writer = SoftTargetWriter(tmp_path / "store", {"teacher": "test"})
    writer.begin_task("t", uids, 2, 3, dtype="float32", shard_size=16)
    writer.write_shard("t", 0, stored.numpy())
    writer.finalize_task("t")
    store = writer.finalize(["t"])

    collator = SoftTargetCollator(store, "t")
    rows = ListDataset([dict({k: v[i] for k, v in data.items()}, uid=uids[i]) for i in range(16)])
    student = tiny_classifier(seed=1)
    trainer = make_trainer(tmp_path / "out", student, train_dataset=rows, data_collator=collator, max_steps=2,
                           temperature=2.0, alpha=0.5)
    batch = next(iter(trainer.get_train_dataloader()))  # through the Trainer's column filtering
    assert "uid" not in batch and batch["teacher_logits"].shape == (8, 2, 3)
    first = collator([rows[i] for i in (3, 0, 7)])
    torch.testing.assert_close(first["teacher_logits"], stored[:, [3, 0, 7]].transpose(0, 1))
    loss = trainer.compute_loss(student, {k: v for k, v in first.items()})
    with torch.no_grad():
        s = student(input_ids=first["input_ids"], attention_mask=first["attention_mask"]).logits
    torch.testing.assert_close(loss.double(), reference_mean(s, stored[:, [3, 0, 7]], first["labels"], 2.0, 0.5),
                               rtol=1e-5, atol=1e-6)
    trainer.train()
    assert trainer.state.global_step == 2
    assert torch.isfinite(torch.tensor(trainer.evaluate(rows)["eval_loss"]))
    unlabelled = ListDataset([{k: v for k, v in row.items() if k != "labels"} for row in rows.rows])
    assert trainer.predict(unlabelled).predictions.shape == (16, 3)  # the cached logits are not fed to the model


# ------------------------------------------------------------------------------------------ packaging, examples
SCRIPTS = {"import": ["-c", "import sys, mkd_fast.integrations as m; m.causal_lm_kd_loss; "
                            "assert 'transformers' not in sys.modules, 'transformers was imported'"],
           "hf_trainer_distill": ["examples/hf_trainer_distill.py"],
           "causal_lm_distill": ["examples/causal_lm_distill.py"]}


@pytest.fixture(scope="module")
def subprocess_runs():
    """Starts every subprocess at once (each pays the transformers import); tests wait for their own."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    runnable = {"import": True, "hf_trainer_distill": HAS_TRAINER, "causal_lm_distill": HAS_TRANSFORMERS}
    procs = {name: subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for name, argv in SCRIPTS.items() if runnable[name]}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _finished(proc):
    out, _ = proc.communicate(timeout=240)
    return proc.returncode, out


def test_importing_integrations_does_not_import_transformers(subprocess_runs):
    rc, out = _finished(subprocess_runs["import"])
    assert rc == 0, out[-3000:]


@pytest.mark.parametrize("script", [pytest.param("hf_trainer_distill", marks=needs_trainer),
                                    pytest.param("causal_lm_distill", marks=pytest.mark.skipif(
                                        not HAS_TRANSFORMERS, reason="the example builds a transformers GPT-2"))])
def test_examples_run_and_their_loss_goes_down(subprocess_runs, script):
    rc, out = _finished(subprocess_runs[script])
    assert rc == 0, f"{script} failed:\n{out[-3000:]}"
    assert "loss went down" in out, out[-3000:]
