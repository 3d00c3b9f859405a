"""The multi-task distiller: the loss it optimises, task sampling, exact resume, DDP equivalence, logs,
checkpoints, mixed precision, and that distillation moves the student toward the teacher."""
from __future__ import annotations

import json
import os
import socket
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mkd_fast.data.examples import Example
from mkd_fast.data.vocab import build_vocab
from mkd_fast.distill import (Callback, DistillConfig, DistillObjective, MultiTaskDistiller, TaskSampler,
                              recipe_config, task_probabilities)
from mkd_fast.soft_targets import SoftTargetWriter
from mkd_fast.students import BiLSTMStudent, BiLSTMStudentConfig
from mkd_fast.tasks.definition import TaskDef

POS, NEG = ["good", "great", "fine", "fun", "nice"], ["bad", "awful", "boring", "dull", "sad"]
NOUNS = ["movie", "film", "plot", "actor", "cat", "dog"]
SENT = TaskDef(name="senti", kind="classification", label_names=("neg", "pos"))
PAIR = TaskDef(name="para", kind="classification", label_names=("no", "yes", "maybe"), input_fields=("s1", "s2"))
SIM = TaskDef(name="sim", kind="regression", input_fields=("s1", "s2"), metrics=("pearson",))
TASKS = (SENT, PAIR, SIM)


def make_data(n=24, seed=0, split="train"):
    rng = np.random.default_rng(seed)
    out = {"senti": [], "para": [], "sim": []}
    for i in range(n):
        lab = int(rng.integers(0, 2))
        w = (POS if lab else NEG)[int(rng.integers(0, 5))]
        out["senti"].append(Example(f"senti/{split}/{i}", "senti", (f"the {NOUNS[i % 6]} {w}",), lab))
        a, b = NOUNS[i % 6], NOUNS[int(rng.integers(0, 6))]
        out["para"].append(Example(f"para/{split}/{i}", "para", (f"the {a}", f"a {b}"), int(a == b) + (i % 7 == 0)))
        out["sim"].append(Example(f"sim/{split}/{i}", "sim", (f"{a} sat", f"{b} sat"), float(i % 5)))
    return out


VOCAB = build_vocab([" ".join(POS + NEG + NOUNS + ["the", "a", "sat"])])


def tiny_student(seed=0, dropout=0.1, tasks=TASKS):
    torch.manual_seed(seed)
    return BiLSTMStudent(VOCAB, tasks, BiLSTMStudentConfig(embedding_dim=8, hidden_size=6, shared_dims=[10],
                                                           dropout=dropout))


def make_store(tmp_path, data, k=2, seed=0, tasks=TASKS, name="store", learnable=False):
    """A soft-target store with teacher logits for every example of ``data``: random per example, or
    (``learnable``) a sum of per-word vectors, which a student can fit from the text."""
    g = torch.Generator().manual_seed(seed)
    writer = SoftTargetWriter(tmp_path / name, {"test": seed, "k": k, "learnable": learnable})
    logits = {}
    for t in tasks:
        exs = data[t.name]
        if learnable:
            table = {w: torch.randn(k, t.num_labels, generator=g) for w in VOCAB.itos}
            z = torch.stack([sum(table[w] * (1 if j == 0 else -1) for j, text in enumerate(e.texts)
                                 for w in text.split()) for e in exs], 1)
        else:
            z = torch.randn(k, len(exs), t.num_labels, generator=g) * 2
        writer.begin_task(t.name, [e.uid for e in exs], k, t.num_labels, kind=t.kind, dtype="float32", shard_size=16)
        for i in range(0, len(exs), 16):
            writer.write_shard(t.name, i // 16, z[:, i:i + 16])
        writer.finalize_task(t.name)
        logits[t.name] = {e.uid: z[:, j] for j, e in enumerate(exs)}
    return writer.finalize([t.name for t in tasks]), logits


def cfg(tmp_path, name="run", **kw):
    base = dict(output_dir=str(tmp_path / name), steps=12, batch_size=4, lr=1e-2, checkpoint_every=5,
                log_every=2, progress=False, seed=3)
    base.update(kw)
    return DistillConfig(**base)


# ------------------------------------------------------------------------------------------------ the loss
def test_objective_fused_path_matches_the_formula(tmp_path):
    data = make_data(8)
    store, logits = make_store(tmp_path, data)
    exs = data["para"][:6]
    conf = cfg(tmp_path, divergence="kl", temperature=2.0, alpha=0.3, task_weights={"para": 0.5})
    obj = DistillObjective({t.name: t for t in TASKS}, conf, store)
    s = torch.randn(6, 3, dtype=torch.float32, requires_grad=True)
    t, present = obj.teacher_logits("para", exs)
    loss = obj("para", s, exs, t, present)
    # by hand: mean of the two teachers' tempered probabilities, KL * T^2, plus the hard CE
    z = torch.stack([logits["para"][e.uid] for e in exs], 1)
    p_t = torch.softmax(z / 2, -1).mean(0)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, -1))).sum(-1) * 4
    ce = F.cross_entropy(s, torch.tensor([e.label for e in exs]), reduction="none")
    want = 0.5 * (0.7 * kl + 0.3 * ce).mean()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)


def test_objective_mixed_rows_missing_targets_and_unlabeled(tmp_path):
    data = make_data(8)
    store, logits = make_store(tmp_path, data)
    conf = cfg(tmp_path, divergence="mse", alpha=0.25, allow_missing_targets=True)
    obj = DistillObjective({t.name: t for t in TASKS}, conf, store)
    exs = list(data["senti"][:3]) + [Example("senti/extra/0", "senti", ("the good movie",), 1),
                                     Example("senti/aug/0", "senti", ("the movie",), None)]
    # the unlabeled row has no teacher either -> it would count for nothing; give it a teacher row by
    # reusing a stored uid with no label (an augmented copy)
    exs[-1] = Example(data["senti"][4].uid, "senti", ("the movie",), None)
    s = torch.randn(5, 2, requires_grad=True)
    t, present = obj.teacher_logits("senti", exs)
    assert present.tolist() == [True, True, True, False, True]
    loss = obj("senti", s, exs, t, present)
    rows = []
    for i, e in enumerate(exs):
        if present[i]:
            z = logits["senti"][e.uid].mean(0)
            soft = ((s[i] - z) ** 2).mean()
            hard = F.cross_entropy(s[i:i + 1], torch.tensor([e.label])) if e.label is not None else 0.0
            rows.append(0.75 * soft + (0.25 * hard if e.label is not None else 0.0))
        else:
            rows.append(F.cross_entropy(s[i:i + 1], torch.tensor([e.label])))
    torch.testing.assert_close(loss, torch.stack([torch.as_tensor(r) for r in rows]).mean(), rtol=1e-5, atol=1e-6)


def test_objective_regression_and_missing_targets_error(tmp_path):
    data = make_data(8)
    store, logits = make_store(tmp_path, data)
    obj = DistillObjective({t.name: t for t in TASKS}, cfg(tmp_path, regression_label_weight=0.4), store)
    exs = data["sim"][:5]
    s = torch.randn(5, 1)
    t, present = obj.teacher_logits("sim", exs)
    want = torch.stack([0.6 * (s[i, 0] - logits["sim"][e.uid].mean()) ** 2 + 0.4 * (s[i, 0] - e.label) ** 2
                        for i, e in enumerate(exs)]).mean()
    torch.testing.assert_close(obj("sim", s, exs, t, present), want, rtol=1e-5, atol=1e-6)
    strict = DistillObjective({t.name: t for t in TASKS}, cfg(tmp_path), store)
    with pytest.raises(KeyError, match="not in the soft-target store"):
        strict.teacher_logits("sim", [Example("sim/nope/1", "sim", ("a", "b"), 1.0)])


def test_class_count_mismatch_with_the_store_is_an_error(tmp_path):
    data = make_data(8)
    store, _ = make_store(tmp_path, data)
    wrong = TaskDef(name="para", kind="classification", label_names=("no", "yes"), input_fields=("s1", "s2"))
    with pytest.raises(ValueError, match="3 teacher outputs"):
        DistillObjective({"para": wrong}, cfg(tmp_path), store)


# ------------------------------------------------------------------------------------------------ sampling
def test_sampler_strategies():
    sizes = {"a": 900, "b": 100}
    p = task_probabilities(sizes, "temperature", 0.5)
    assert p["a"] == pytest.approx(30 / 40)
    assert task_probabilities(sizes, "uniform")["b"] == pytest.approx(0.5)
    s = TaskSampler(sizes, 10, "proportional", seed=1)
    counts = Counter(s.next()[0] for _ in range(2000))
    assert 0.86 < counts["a"] / 2000 < 0.94
    rr = TaskSampler(sizes, 10, "round_robin")
    assert [rr.next()[0] for _ in range(4)] == ["a", "b", "a", "b"]
    # each task epoch visits every example once; batches are task-homogeneous
    s = TaskSampler({"x": 10}, 4)
    seen = [i for _ in range(3) for i in s.next()[1]]
    assert sorted(seen) == list(range(10))


def test_sampler_state_round_trip_and_ranks():
    s = TaskSampler({"a": 7, "b": 5}, 2, "proportional", seed=4)
    for _ in range(5):
        s.next()
    state = json.loads(json.dumps(s.state_dict()))
    rest = [s.next() for _ in range(9)]
    s2 = TaskSampler({"a": 7, "b": 5}, 2, "proportional", seed=4)
    s2.load_state_dict(state)
    assert [s2.next() for _ in range(9)] == rest
    with pytest.raises(ValueError, match="batch_size"):
        TaskSampler({"a": 7, "b": 5}, 3, "proportional", seed=4).load_state_dict(state)
    r0 = TaskSampler({"a": 8}, 2, world_size=2, rank=0)
    r1 = TaskSampler({"a": 8}, 2, world_size=2, rank=1)
    single = TaskSampler({"a": 8}, 4)
    for _ in range(3):
        (_, i0), (_, i1), (_, i) = r0.next(), r1.next(), single.next()
        assert sorted(i0 + i1) == sorted(i) and not set(i0) & set(i1)


# ------------------------------------------------------------------------------------------------ training
def test_distillation_pulls_the_student_toward_the_teacher(tmp_path):
    data = make_data(16)
    store, logits = make_store(tmp_path, data, k=1, learnable=True)
    student = tiny_student(0, dropout=0.0)

    def gap():
        return float(np.mean([((student.predict_logits(t, data[t]) -
                                torch.stack([logits[t][e.uid][0] for e in data[t]])) ** 2).mean() for t in logits]))
    before = gap()
    d = MultiTaskDistiller(student, TASKS, store, cfg(tmp_path, steps=200, lr=2e-2, divergence="mse", eval_every=0))
    d.train(data)
    assert gap() < 0.5 * before


def test_hard_labels_only_learns_and_writes_outputs(tmp_path):
    data, dev = make_data(40), make_data(20, seed=1, split="dev")
    calls = []

    class Spy(Callback):
        def on_step(self, distiller, step, logs):
            calls.append(("step", step, logs["task"]))

        def on_train_end(self, distiller, summary):
            calls.append(("end", summary["steps"]))

    student = tiny_student(1)
    conf = cfg(tmp_path, steps=120, lr=2e-2, eval_every=40, best_metric="senti.accuracy")
    s = MultiTaskDistiller(student, TASKS, None, conf).train(
        {"senti": data["senti"]}, {"senti": dev["senti"]},
        callbacks=[Spy(), lambda d, step, res: calls.append(("eval", step, res["senti"]["accuracy"]))])
    assert s["finished"] and s["history"][-1]["dev"]["senti"]["accuracy"] >= 0.9
    assert [c[1] for c in calls if c[0] == "eval"] == [40, 80, 120]
    assert len([c for c in calls if c[0] == "step"]) == 120 and calls[-1] == ("end", 120)
    out = tmp_path / "run"
    for name in ("checkpoint.pt", "metrics.jsonl", "evaluations.csv", "summary.json", "best/student.json",
                 "student/student.json"):
        assert (out / name).exists(), name
    assert s["best"]["metric"] == "senti.accuracy" and s["best"]["step"] in (40, 80, 120)


def test_resume_equals_uninterrupted(tmp_path):
    data, dev = make_data(20), make_data(8, seed=1, split="dev")
    store, _ = make_store(tmp_path, data)
    full = tiny_student(5)
    conf = dict(steps=23, divergence="kl", temperature=2.0, alpha=0.2, eval_every=7, sampling="temperature")
    s_full = MultiTaskDistiller(full, TASKS, store, cfg(tmp_path, "full", **conf)).train(data, dev)

    part = tiny_student(5)
    s1 = MultiTaskDistiller(part, TASKS, store, cfg(tmp_path, "split", **conf)).train(data, dev, stop_after_steps=9)
    assert not s1["finished"] and s1["steps"] == 9
    resumed = tiny_student(77)  # another init: everything must come from the checkpoint
    s2 = MultiTaskDistiller(resumed, TASKS, store, cfg(tmp_path, "split", **conf, progress=True)).train(
        data, dev, resume=True)
    assert s2["finished"] and s2["steps"] == 23
    for (k, v), (k2, v2) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert json.dumps(s2["history"]) == json.dumps(s_full["history"])
    logs = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    full_logs = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert logs == full_logs  # no duplicated or missing records

    with pytest.raises(ValueError, match="lr: 0.01 -> 0.02"):
        MultiTaskDistiller(tiny_student(5), TASKS, store, cfg(tmp_path, "split", **{**conf, "steps": 30}, lr=0.02)
                           ).train(data, dev, resume=True)


def test_bf16_autocast_runs_and_learns(tmp_path):
    data = make_data(24)
    student = tiny_student(2)
    s = MultiTaskDistiller(student, TASKS, None, cfg(tmp_path, steps=120, lr=2e-2, amp="bf16")).train(
        {"senti": data["senti"]}, {"senti": data["senti"]})
    assert s["history"][-1]["dev"]["senti"]["accuracy"] >= 0.8


def test_recipes_and_config_errors():
    mkd = recipe_config("mkd")
    assert mkd.divergence == "mse" and mkd.alpha == 0.0
    mt = recipe_config("mtdnn-kd")
    assert (mt.divergence, mt.alpha, mt.temperature, mt.aggregate) == ("ce", 0.5, 1.0, "mean_probs")
    assert recipe_config("tang").optimizer == "adadelta"
    assert recipe_config("mitkd", "finetune").alpha == 1.0
    with pytest.raises(ValueError, match="recipe: unknown"):
        recipe_config("nope")
    with pytest.raises(ValueError, match="sampling"):
        DistillConfig(sampling="sometimes")
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)


def test_student_without_the_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no head"):
        MultiTaskDistiller(tiny_student(tasks=(SENT,)), TASKS, None, cfg(tmp_path))


# ------------------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_WORKER = r"""
import os, sys, json, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import test_distill as T
dist.init_process_group("gloo")
tmp = {tmp!r}
data = T.make_data(16)
from mkd_fast.soft_targets import open_store
store = open_store(os.path.join(tmp, "store"))
student = T.tiny_student(9, dropout=0.0)
conf = T.DistillConfig(output_dir=os.path.join(tmp, "ddp"), steps=10, batch_size=2, lr=1e-2, progress=False,
                       divergence="kl", alpha=0.5, seed=3, checkpoint_every=100, sampling="round_robin")
T.MultiTaskDistiller(student, T.TASKS, store, conf).train(data)
if dist.get_rank() == 0:
    torch.save(student.state_dict(), os.path.join(tmp, "ddp_state.pt"))
dist.destroy_process_group()
"""


def test_ddp_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    import subprocess

    data = make_data(16)
    store, _ = make_store(tmp_path, data)
    single = tiny_student(9, dropout=0.0)
    conf = DistillConfig(output_dir=str(tmp_path / "single"), steps=10, batch_size=4, lr=1e-2, progress=False,
                         divergence="kl", alpha=0.5, seed=3, checkpoint_every=100, sampling="round_robin")
    MultiTaskDistiller(single, TASKS, store, conf).train(data)

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(tests=os.path.dirname(__file__), tmp=str(tmp_path)))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ddp_state = torch.load(tmp_path / "ddp_state.pt")
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-4, atol=1e-5, msg=k)
