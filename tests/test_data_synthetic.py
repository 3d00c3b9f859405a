"""The embedded synthetic corpus: determinism, sizes, balance, and its learnability claims in miniature."""
import time
from collections import Counter

import numpy as np
import pytest
import torch

from mkd_fast.data import SYNTHETIC_TASKS, make_synthetic_corpus
from mkd_fast.tasks import get_task


def test_deterministic_and_sized():
    a = make_synthetic_corpus(seed=3, sizes={"synth_sentiment": (50, 20)})
    b = make_synthetic_corpus(seed=3, sizes={"synth_sentiment": (50, 20)})
    c = make_synthetic_corpus(seed=4, sizes={"synth_sentiment": (50, 20)})
    assert a == b and a["synth_sentiment"] != c["synth_sentiment"]
    assert len(a["synth_sentiment"]["train"]) == 50 and len(a["synth_sentiment"]["dev"]) == 20
    # a split does not depend on the other split's size
    d = make_synthetic_corpus(seed=3, sizes={"synth_sentiment": (10, 20)}, tasks=["synth_sentiment"])
    assert d["synth_sentiment"]["dev"] == a["synth_sentiment"]["dev"]
    for name, splits in a.items():
        for split, rows in splits.items():
            assert [e.uid for e in rows] == [f"{name}/{split}/{i}" for i in range(len(rows))]
            assert all(e.task == name and len(e.texts) == len(SYNTHETIC_TASKS[name].input_fields) for e in rows)
    with pytest.raises(ValueError, match="unknown synthetic task"):
        make_synthetic_corpus(sizes={"nope": (1, 1)})


def test_fast_and_balanced():
    t = time.perf_counter()
    corpus = make_synthetic_corpus(seed=0)
    assert time.perf_counter() - t < 1.0
    sent = Counter(e.label for e in corpus["synth_sentiment"]["train"])
    assert 0.4 < sent[1] / sum(sent.values()) < 0.6
    para = Counter(e.label for e in corpus["synth_paraphrase"]["train"])
    assert 0.3 < para[1] / sum(para.values()) < 0.6
    scores = np.array([e.label for e in corpus["synth_similarity"]["train"]])
    assert scores.min() >= 0.0 and scores.max() <= 5.0 and scores.std() > 0.8
    assert get_task("synth_similarity").kind == "regression" and get_task("synth_paraphrase").is_pair


def test_labels_are_noisy_samples_of_a_graded_probability():
    corpus, oracle = make_synthetic_corpus(seed=0, sizes={"synth_sentiment": (3000, 0)}, with_oracle=True,
                                           tasks=["synth_sentiment"])
    rows = corpus["synth_sentiment"]["train"]
    p = np.array([oracle[e.uid] for e in rows])
    y = np.array([e.label for e in rows])
    bayes = np.mean(np.maximum(p, 1 - p))
    assert 0.8 < bayes < 0.97  # learnable, but hard labels disagree with the best guess some of the time
    assert np.mean((p > 0.5) == (y == 1)) == pytest.approx(bayes, abs=0.03)
    assert len(np.unique(np.round(p, 3))) > 10  # graded: soft targets carry more than the argmax


def _fit_logreg(X, y, steps=300):
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, y) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda Z: ((torch.tensor(Z, dtype=torch.float32) @ w + b) > 0).numpy().astype(int)


def _featurize(rows, feats):
    names = sorted({f for e in rows for f in feats(e.texts[0])})
    return names, lambda rs: np.array([[f in set(feats(e.texts[0])) for f in names] for e in rs], dtype=np.float32)


def _bow(text):
    return text.split()


def _interactions(text):
    """What a sentence-level model can see: each clause's adjective with its negation, intensity, position."""
    clauses = text.split(" , but ")
    out = []
    for k, clause in enumerate(clauses):
        w = clause.split()
        neg = any(x in ("not", "never") for x in w)
        inten = any(x in ("very", "really", "extremely") for x in w)
        out.append(f"{'last' if k == len(clauses) - 1 else 'first'}:{neg}:{inten}:{w[-1]}")
    return out


def test_bag_of_words_is_clearly_worse_than_interactions():
    corpus = make_synthetic_corpus(seed=1, sizes={"synth_sentiment": (3000, 1000)}, tasks=["synth_sentiment"])
    train, dev = corpus["synth_sentiment"]["train"], corpus["synth_sentiment"]["dev"]
    acc = {}
    for name, feats in (("bow", _bow), ("interactions", _interactions)):
        _, to_x = _featurize(train, feats)
        predict = _fit_logreg(to_x(train), [e.label for e in train])
        acc[name] = float(np.mean(predict(to_x(dev)) == np.array([e.label for e in dev])))
    assert acc["interactions"] > 0.82, acc
    assert acc["interactions"] - acc["bow"] > 0.08, acc


def test_swapped_roles_share_a_bag_of_words_but_not_a_label():
    corpus, oracle = make_synthetic_corpus(seed=0, sizes={"synth_paraphrase": (2000, 0)}, with_oracle=True,
                                           tasks=["synth_paraphrase"])
    same_bag = [e for e in corpus["synth_paraphrase"]["train"]
                if sorted(e.texts[0].split()) == sorted(e.texts[1].split())]
    p = np.array([oracle[e.uid] for e in same_bag])
    # identical bags hold both exact paraphrases (p ~ 0.97) and role swaps (p = 0.03)
    assert (p > 0.9).sum() > 50 and (p < 0.1).sum() > 50
