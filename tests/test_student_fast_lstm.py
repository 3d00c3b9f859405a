"""The BiLSTM student's eval path: FastBiLSTM (with and without the embedding table) gives the logits that
nn.LSTM gives, runs only when nothing needs gradients, and follows weight updates."""
from __future__ import annotations

import pytest
import torch

from mkd_fast import FastBiLSTM
from mkd_fast.backends import backends
from mkd_fast.data.examples import Example
from mkd_fast.data.vocab import build_vocab
from mkd_fast.students import BiLSTMStudent, BiLSTMStudentConfig
from mkd_fast.tasks.definition import TaskDef

pytestmark = pytest.mark.skipif(not backends()["cpu"].available, reason="the CPU extension is not built")

WORDS = "good bad great awful fine movie film plot actor boring fun dull nice sad happy cat dog sat on mat".split()
SENT = TaskDef(name="senti", kind="classification", label_names=("neg", "pos"))
PAIR = TaskDef(name="para", kind="classification", label_names=("no", "yes"), input_fields=("s1", "s2"))
SIM = TaskDef(name="sim", kind="regression", input_fields=("s1", "s2"), metrics=("pearson",))
VOCAB = build_vocab([" ".join(WORDS)])


def student(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(embedding_dim=8, hidden_size=6, shared_dims=[10], dropout=0.0, embedding_mode="frozen+trainable")
    cfg.update(overrides)
    return BiLSTMStudent(VOCAB, (SENT, PAIR, SIM), BiLSTMStudentConfig(**cfg))


def texts(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, 12, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=g)))
    return out


def batches(model):
    single = model.encode([Example(f"s{i}", "senti", (t,)) for i, t in enumerate(texts(9, 1))])
    pair = model.encode([Example(f"p{i}", "para", (a, b)) for i, (a, b) in enumerate(zip(texts(7, 2), texts(7, 3)))])
    return {"senti": single, "para": pair, "sim": pair}


def logits(model, fast: bool, table_bytes=None):
    model.eval()
    model.use_fast_lstm = fast
    if table_bytes is not None:
        model.fast_lstm_table_max_bytes = table_bytes
    with torch.no_grad():
        return {t: model(t, **b) for t, b in batches(model).items()}


def count_fast_calls(monkeypatch):
    calls = []
    original = FastBiLSTM.forward

    def spy(self, *args, **kwargs):
        calls.append(args[0].dtype)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FastBiLSTM, "forward", spy)
    return calls


@pytest.mark.parametrize("pooling", ["max", "mean", "last", "attention"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, True), (2, True), (1, False)])
@pytest.mark.parametrize("table", [True, False])
def test_fast_eval_path_matches_nn_lstm(pooling, num_layers, bidirectional, table):
    model = student(pooling=pooling, num_layers=num_layers, bidirectional=bidirectional)
    slow = logits(model, fast=False)
    fast = logits(model, fast=True, table_bytes=(1 << 30) if table else 0)
    for task in slow:
        torch.testing.assert_close(fast[task], slow[task], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["trainable", "frozen"])
def test_fast_eval_path_single_embedding_modes(mode):
    model = student(embedding_mode=mode)
    slow, fast = logits(model, fast=False), logits(model, fast=True)
    for task in slow:
        torch.testing.assert_close(fast[task], slow[task], rtol=1e-5, atol=1e-6)


def test_eval_path_equals_training_path_without_dropout():
    model = student()
    b = batches(model)
    model.train()
    trained = {t: model(t, **x).detach() for t, x in b.items()}
    fast = logits(model, fast=True)
    for task in trained:
        torch.testing.assert_close(fast[task], trained[task], rtol=1e-5, atol=1e-6)


def test_fast_path_runs_only_in_eval_without_grad(monkeypatch):
    calls = count_fast_calls(monkeypatch)
    model = student()
    b = batches(model)["senti"]
    model.train()
    with torch.no_grad():
        model("senti", **b)
    assert calls == []                         # training mode: nn.LSTM (dropout, packed sequences)
    model.eval()
    model("senti", **b).sum().backward()       # eval with autograd on: nn.LSTM, gradients flow
    assert calls == [] and model.lstm.weight_ih_l0.grad is not None
    with torch.no_grad():
        model("senti", **b)
    assert calls == [torch.int64]              # CPU with a small vocabulary: token ids through the table
    model.fast_lstm_table_max_bytes = 0
    with torch.inference_mode():
        model("senti", **b)
    assert calls == [torch.int64, torch.float32]  # table too large: embedded features
    model.use_fast_lstm = False
    with torch.no_grad():
        model("senti", **b)
    assert len(calls) == 2


def test_fast_path_with_frozen_parameters_and_grad_enabled(monkeypatch):
    calls = count_fast_calls(monkeypatch)
    model = student()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model("senti", **batches(model)["senti"])
    assert calls == [torch.int64]


def test_fast_path_follows_weight_updates():
    model = student()
    before = logits(model, fast=True)["senti"]
    with torch.no_grad():
        model.trainable_embedding.weight.mul_(1.5)       # in place: the table must be rebuilt
        model.lstm.weight_hh_l0.add_(0.1)
    after_fast, after_slow = logits(model, fast=True)["senti"], logits(model, fast=False)["senti"]
    assert not torch.allclose(before, after_fast)
    torch.testing.assert_close(after_fast, after_slow, rtol=1e-5, atol=1e-6)
    model.lstm.weight_ih_l0 = torch.nn.Parameter(model.lstm.weight_ih_l0.detach() * 0.5)  # replaced
    torch.testing.assert_close(logits(model, fast=True)["senti"], logits(model, fast=False)["senti"],
                               rtol=1e-5, atol=1e-6)


def test_predict_uses_fast_path_and_state_dict_is_unchanged(monkeypatch, tmp_path):
    model = student()
    keys = set(model.state_dict())
    calls = count_fast_calls(monkeypatch)
    got = model.predict_logits("para", [("good movie", "great film"), ("cat sat on mat", "dog")])
    assert calls and set(model.state_dict()) == keys     # the FastBiLSTM is not a registered submodule
    model.use_fast_lstm = False
    torch.testing.assert_close(got, model.predict_logits("para", [("good movie", "great film"),
                                                                  ("cat sat on mat", "dog")]), rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path / "s")                 # and saving/loading ignores it
    from mkd_fast.students import load_student

    torch.testing.assert_close(load_student(tmp_path / "s").predict_logits("para", [("good movie", "great film")]),
                               got[:1], rtol=1e-5, atol=1e-6)
