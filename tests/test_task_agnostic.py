"""Task-agnostic distillation (MITKD stage 2): loss terms, padding invariance, frozen teacher, vocabulary
check, exact resume, text reading.  Tiny BERTs only (1-2 layers, hidden 16-32, ~25-token vocabulary)."""
from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from mkd_fast.data.examples import Example  # noqa: E402
from mkd_fast.distill.task_agnostic import (TaskAgnosticConfig, default_layer_map, load_task_agnostic_config,  # noqa: E402
                                            read_text_file, task_agnostic_distill)
from mkd_fast.distill.task_agnostic_data import TokenizedCorpus, mask_tokens, unlabeled_inputs  # noqa: E402
from mkd_fast.distill.task_agnostic_losses import (LOSS_TERMS, LayerProjections, TaskAgnosticObjective,  # noqa: E402
                                                   attention_kl_loss, hidden_mse_loss)
from mkd_fast.distill.task_agnostic_models import FrozenTeacher, eager_attention  # noqa: E402
from mkd_fast.students import TransformerStudent, TransformerStudentConfig  # noqa: E402
from mkd_fast.tasks.definition import TaskDef  # noqa: E402
from mkd_fast.teachers import MultiTaskTeacher  # noqa: E402

WORDS = "the a cat dog sat on mat movie film good bad great plot actor fun dull was very".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TASK = TaskDef(name="senti", kind="classification", label_names=("neg", "pos"))
TEXTS = ["the cat sat on the mat", "a dog", "the movie was very good", "bad plot", "the actor was fun",
         "a dull film", "great movie", "the dog sat", "the film was bad", "fun plot very fun", "cat", "the mat"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, loaded machine two threads made every
    op wait for a descheduled worker (100x slower); restored after this module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_tokenizer(words=WORDS):
    vocab = {w: i for i, w in enumerate(SPECIALS + list(words))}
    return transformers.BertTokenizerFast(vocab=vocab, do_lower_case=True)


def tiny_teacher(tok, seed=0, layers=2, hidden=32, heads=4):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=32)
    enc = transformers.BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():  # peaked MLM and attention distributions (random BERTs are near uniform): something to learn
        enc.embeddings.word_embeddings.weight.mul_(25.0)
        for layer in enc.encoder.layer:
            layer.attention.self.query.weight.mul_(15.0)
            layer.attention.self.key.weight.mul_(15.0)
    return MultiTaskTeacher(enc, [TASK], tok)


def tiny_student(tok, seed=1, layers=1, hidden=16, heads=2):
    torch.manual_seed(seed)
    cfg = TransformerStudentConfig(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=32,
                                   max_length=32, dropout=0.1)
    return TransformerStudent(tok, [TASK], cfg)


def fixed_batch(tok, texts=TEXTS[:8], seed=0):
    batch = TokenizedCorpus(unlabeled_inputs(texts), tok, 16).batch(list(range(len(texts))))
    ids, masked = mask_tokens(batch["input_ids"], batch["attention_mask"], mask_token_id=tok.mask_token_id,
                              special_ids=tok.all_special_ids, vocab_size=len(tok), mask_prob=0.3,
                              generator=torch.Generator().manual_seed(seed))
    assert masked.any() and (batch["attention_mask"] == 0).any()  # something to predict, and some padding
    return {**batch, "input_ids": ids}, masked


def objective_for(teacher, student, weights, temperature=1.0):
    view = FrozenTeacher(teacher)
    layer_map = default_layer_map(student.encoder.config.num_hidden_layers, view.num_layers)
    torch.manual_seed(2)
    proj = LayerProjections(list(layer_map), student.encoder.config.hidden_size, view.hidden_size)
    return TaskAgnosticObjective(view, student, proj, layer_map, weights, temperature=temperature), proj


def config(tmp_path, name, **kw):
    base = dict(output_dir=str(tmp_path / name), steps=8, batch_size=4, max_length=16, lr=5e-3, warmup_ratio=0.25,
                checkpoint_every=3, progress=False, seed=3)
    return TaskAgnosticConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------------- loss terms
@pytest.mark.parametrize("term", LOSS_TERMS)
def test_each_term_alone_trains_toward_the_teacher(term):
    tok = tiny_tokenizer()
    teacher, student = tiny_teacher(tok).eval(), tiny_student(tok).eval()
    objective, proj = objective_for(teacher, student, {term: 1.0})
    batch, masked = fixed_batch(tok)
    params = list(student.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(30):
        out = objective(batch, masked)
        assert set(out) == {"loss", *LOSS_TERMS} and torch.equal(out["loss"], out[term])
        opt.zero_grad()
        out["loss"].backward()
        grads = [p.grad for p in params if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)  # incl. log of clamped attention probs
        opt.step()
        losses.append(out[term].item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())


def test_mlm_kl_equals_hand_computed_kl():
    tok = tiny_tokenizer()
    teacher, student = tiny_teacher(tok).eval(), tiny_student(tok).eval()
    T = 2.0
    objective, _ = objective_for(teacher, student, {"mlm_kl": 1.0}, temperature=T)
    batch, masked = fixed_batch(tok)
    got = objective(batch, masked)["mlm_kl"]
    with torch.no_grad():
        t_hidden = teacher.encoder(**batch).last_hidden_state[masked]
        t_logits = t_hidden @ teacher.encoder.embeddings.word_embeddings.weight.t()
        s_hidden = student.encoder(**batch).last_hidden_state[masked]
        s_logits = s_hidden @ student.encoder.embeddings.word_embeddings.weight.t() + student.mlm_bias
        want = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                        reduction="batchmean") * T * T
    assert want > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_the_loss():
    tok = tiny_tokenizer()
    teacher, student = tiny_teacher(tok).eval(), tiny_student(tok).eval()
    objective, _ = objective_for(teacher, student, {t: 1.0 for t in LOSS_TERMS})
    batch, masked = fixed_batch(tok)
    pad = batch["attention_mask"] == 0
    before = objective(batch, masked)
    garbage = dict(batch)
    garbage["input_ids"] = torch.where(pad, torch.randint(5, len(tok), pad.shape), batch["input_ids"])
    garbage["token_type_ids"] = torch.where(pad, torch.ones_like(pad, dtype=torch.long), batch["token_type_ids"])
    after = objective(garbage, masked)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=1e-5, atol=1e-6, msg=k)

    # the same, directly on hidden states and attention maps with garbage in the padded positions / rows
    view = FrozenTeacher(teacher)
    with torch.no_grad(), eager_attention(view.model):
        t_out = view.outputs(batch, masked)
        s_hidden, s_attn = student.features(**batch)
    layer_map, att = objective.layer_map, batch["attention_mask"]
    noisy = lambda hs: tuple(torch.where(pad[..., None], torch.randn_like(h) * 100, h) for h in hs)  # noqa: E731
    noisy_rows = lambda ats: tuple(torch.where(pad[:, None, :, None], torch.rand_like(a), a) for a in ats)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(hidden_mse_loss(noisy(s_hidden), noisy(t_out.hidden_states), objective.projections,
                                                   layer_map, att),
                                   hidden_mse_loss(s_hidden, t_out.hidden_states, objective.projections, layer_map, att))
        torch.testing.assert_close(attention_kl_loss(noisy_rows(s_attn), noisy_rows(t_out.attentions), layer_map, att),
                                   attention_kl_loss(s_attn, t_out.attentions, layer_map, att))


# ------------------------------------------------------------------------------------------ the training run
def test_teacher_is_frozen_and_run_writes_log_and_student(tmp_path):
    tok = tiny_tokenizer()
    teacher, student = tiny_teacher(tok), tiny_student(tok)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s = task_agnostic_distill(teacher, student, TEXTS, config(tmp_path, "run", steps=5))
    assert s["steps"] == 5 and s["finished"] and s["mlm_source"] == "tied_embeddings"
    assert s["layer_map"] == {0: 0, 1: 2}
    assert set(s["losses"]["first"]) == {"loss", *LOSS_TERMS} and s["losses"]["last"]["loss"] > 0
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    # the teacher's and the student's own settings come back as they were
    assert teacher.training and teacher.encoder.config._attn_implementation == "sdpa"
    assert student.encoder.encoder.layer[0].attention.self.dropout.p == 0.1
    rows = [json.loads(line) for line in open(s["log"])]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(set(LOSS_TERMS) <= set(r) for r in rows)
    saved = torch.load(f"{s['student_dir']}/weights.pt", weights_only=True)
    assert saved.keys() == student.state_dict().keys() and not any("projection" in k or "maps." in k for k in saved)
    ckpt = torch.load(s["checkpoint"], weights_only=False)
    assert set(ckpt["projections"]) == {"maps.0.weight", "maps.0.bias", "maps.1.weight", "maps.1.bias"}


def test_teacher_with_mlm_head_and_pair_examples(tmp_path):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    teacher = transformers.BertForMaskedLM(cfg)
    pairs = [Example(f"p/{i}", "para", (TEXTS[i], TEXTS[i + 1]), 1) for i in range(6)]
    s = task_agnostic_distill(teacher, tiny_student(tok), pairs + TEXTS[:4], config(tmp_path, "mlm", steps=3),
                              tokenizer=tok)
    assert s["mlm_source"] == "mlm_head" and s["steps"] == 3 and s["texts"] == 10


def test_vocabulary_mismatch_raises(tmp_path):
    tok = tiny_tokenizer()
    bigger = tiny_tokenizer(WORDS + ["extra", "words"])
    with pytest.raises(ValueError, match=rf"vocabulary: .*{len(tok)}.*{len(bigger)}"):
        task_agnostic_distill(tiny_teacher(tok), tiny_student(bigger), TEXTS, config(tmp_path, "v1"))
    shuffled = tiny_tokenizer(list(reversed(WORDS)))  # same size, different ids
    with pytest.raises(ValueError, match="map them differently"):
        task_agnostic_distill(tiny_teacher(tok), tiny_student(shuffled), TEXTS, config(tmp_path, "v2"))


def test_resume_equals_uninterrupted(tmp_path):
    tok = tiny_tokenizer()
    teacher = tiny_teacher(tok)
    texts = TEXTS + [Example("p/0", "para", ("a cat", "a dog"), 0)]  # 13 inputs: 4 batches an epoch, 8 steps
    full = tiny_student(tok, seed=1)
    s_full = task_agnostic_distill(teacher, full, texts, config(tmp_path, "full"))
    assert s_full["steps"] == 8 and s_full["data_position"]["epoch"] == 1

    s1 = task_agnostic_distill(teacher, tiny_student(tok, seed=1), texts, config(tmp_path, "split"), stop_after_steps=5)
    assert s1["steps"] == 5 and not s1["finished"]
    with pytest.raises(ValueError, match="lr"):
        task_agnostic_distill(teacher, tiny_student(tok), texts, config(tmp_path, "split", lr=1e-3), resume=True)
    resumed = tiny_student(tok, seed=7)  # other init: everything must come from the checkpoint
    s2 = task_agnostic_distill(teacher, resumed, texts, config(tmp_path, "split", checkpoint_every=50), resume=True)
    assert s2["steps"] == 8 and s2["finished"]
    for (k, v), (k2, v2) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    p_full = torch.load(s_full["checkpoint"], weights_only=False)["projections"]
    p_split = torch.load(s2["checkpoint"], weights_only=False)["projections"]
    assert all(torch.equal(p_full[k], p_split[k]) for k in p_full)
    assert open(s2["log"]).read() == open(s_full["log"]).read()
    assert s2["losses"] == s_full["losses"]


# ------------------------------------------------------------------------------------------ inputs and config
def test_read_text_file_and_unlabeled_inputs(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\n   \n  second line  \nthird\n", encoding="utf-8")
    assert read_text_file(path) == ["first line", "second line", "third"]
    with pytest.raises(FileNotFoundError, match="path"):
        read_text_file(tmp_path / "missing.txt")
    exs = [Example("a", "t", ("one",), 1), Example("b", "t", ("left", "right"), None)]
    assert unlabeled_inputs(exs + ["plain", "  "]) == [("one",), ("left", "right"), ("plain",)]
    with pytest.raises(ValueError, match="texts"):
        unlabeled_inputs(str(path))  # a path is not a list of texts
    with pytest.raises(ValueError, match=re.escape("texts[1]")):
        unlabeled_inputs(["ok", 3])


def test_masking_picks_real_ordinary_tokens_bert_style():
    tok = tiny_tokenizer()
    ids = torch.randint(5, len(tok), (64, 40))
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    att = torch.ones_like(ids)
    att[:32, 30:] = 0
    ids[:32, 30:] = tok.pad_token_id
    kw = dict(mask_token_id=tok.mask_token_id, special_ids=tok.all_special_ids, vocab_size=len(tok), mask_prob=0.15)
    out, chosen = mask_tokens(ids, att, generator=torch.Generator().manual_seed(0), **kw)
    again, chosen2 = mask_tokens(ids, att, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(out, again) and torch.equal(chosen, chosen2)  # a function of the generator's seed
    assert not chosen[att == 0].any() and not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(out[~chosen], ids[~chosen])
    assert 0.12 < chosen.sum() / ((att == 1).sum() - 128) < 0.18
    to_mask = (out[chosen] == tok.mask_token_id).float().mean()
    assert 0.72 < to_mask < 0.88 and not torch.isin(out[chosen & (out != tok.mask_token_id)],
                                                  torch.tensor(tok.all_special_ids)).any()


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="amp"):
        TaskAgnosticConfig(amp="fp8")
    with pytest.raises(ValueError, match="mask_prob"):
        TaskAgnosticConfig(mask_prob=0.0)
    with pytest.raises(ValueError, match="weight"):
        TaskAgnosticConfig(mlm_kl_weight=0, hidden_mse_weight=0, attention_kl_weight=0)
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="layer_map: student layer 3"):
        task_agnostic_distill(tiny_teacher(tok), tiny_student(tok), TEXTS, config(tmp_path, "lm", layer_map={3: 2}))
    with pytest.raises(ValueError, match="layer_map: 0 -> 1"):
        task_agnostic_distill(tiny_teacher(tok), tiny_student(tok), TEXTS, config(tmp_path, "lm", layer_map={0: 1}))
    yaml_path = tmp_path / "ta.yaml"
    yaml_path.write_text("steps: 10\nlayer_map: {0: 0, 1: 2}\nlr: 1\n")
    cfg = load_task_agnostic_config(yaml_path)
    assert cfg.steps == 10 and cfg.layer_map == {0: 0, 1: 2} and cfg.lr == 1.0
    yaml_path.write_text("stepz: 10\n")
    with pytest.raises(ValueError, match="stepz"):
        load_task_agnostic_config(yaml_path)
