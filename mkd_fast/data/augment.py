"""Transfer-set augmentation of Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks"): the teacher labels the new copies, so the student sees many more soft targets.

Per word, draw u ~ U(0,1): u < p_mask replaces it by ``<mask>``; u < p_mask + p_pos replaces it by a word of
the same part of speech; otherwise it is kept.  Then, with probability p_ng, only a random n-gram
(n in 1..5) of the text is kept.  Each text of a pair is augmented independently.

Same-POS replacement uses nltk's averaged-perceptron tagger when nltk and its data are installed; else it
samples from the corpus unigram distribution (``Augmenter.pos_method`` says which was used).

Deterministic: every example has its own RNG seeded from ``(seed, uid)``, so the output does not depend
on example order.  No copy equals the original or another copy (a bounded number of redraws; when they
run out the example simply gets fewer copies, counted in ``Augmenter.stats["short"]``).  Copies get
``uid = f"{uid}#aug{j}"`` and ``label = None``.
"""
from __future__ import annotations

import bisect
import logging
import random
from collections import Counter, defaultdict
from dataclasses import replace
from itertools import accumulate
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .examples import Example

__all__ = ["Augmenter", "augment_examples", "MASK_TOKEN"]

log = logging.getLogger(__name__)
MASK_TOKEN = "<mask>"


class _Sampler:
    """Draws words proportionally to their counts (cumulative weights + bisect, deterministic order)."""

    def __init__(self, counts: Counter):
        self.words = sorted(counts)
        self.cum = list(accumulate(counts[w] for w in self.words))

    def draw(self, rng: random.Random) -> str:
        return self.words[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


def _nltk_tagger():
    """nltk's ``pos_tag`` if nltk and its perceptron data are present (never downloads), else None."""
    try:
        import nltk
    except ImportError:
        return None
    for res in ("taggers/averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger"):
        try:
            nltk.data.find(res)
        except LookupError:
            continue
        try:
            nltk.pos_tag(["a", "test"])
        except Exception:  # data present but unusable (version mismatch)
            return None
        return nltk.pos_tag
    return None


class Augmenter:
    """Fit on a corpus (for the POS / unigram word pools), then ``augment`` examples."""

    def __init__(self, corpus: Iterable[Example], p_mask: float = 0.1, p_pos: float = 0.1, p_ng: float = 0.25,
                 max_ngram: int = 5, seed: int = 0, pos_tagger: str = "auto"):
        for name, p in (("p_mask", p_mask), ("p_pos", p_pos), ("p_ng", p_ng)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {p}")
        if p_mask + p_pos > 1.0:
            raise ValueError(f"p_mask + p_pos: must be <= 1, got {p_mask + p_pos}")
        if max_ngram < 1:
            raise ValueError(f"max_ngram: must be >= 1, got {max_ngram}")
        if pos_tagger not in ("auto", "nltk", "unigram"):
            raise ValueError(f"pos_tagger: expected 'auto', 'nltk' or 'unigram', got {pos_tagger!r}")
        self.p_mask, self.p_pos, self.p_ng, self.max_ngram, self.seed = p_mask, p_pos, p_ng, max_ngram, seed
        tagger = None if pos_tagger == "unigram" else _nltk_tagger()
        if pos_tagger == "nltk" and tagger is None:
            raise ImportError("pos_tagger='nltk': nltk or its averaged_perceptron_tagger data is not installed")
        self.pos_method = "nltk" if tagger is not None else "unigram"
        self.stats = {"examples": 0, "copies": 0, "short": 0}
        unigrams: Counter = Counter()
        by_pos: Dict[str, Counter] = defaultdict(Counter)
        self._word_pos: Dict[str, str] = {}
        for ex in corpus:
            for text in ex.texts:
                words = text.split()
                unigrams.update(words)
                if tagger is not None and words:
                    for w, tag in tagger(words):
                        by_pos[tag][w] += 1
                        self._word_pos.setdefault(w, tag)
        unigrams.pop(MASK_TOKEN, None)
        if not unigrams:
            raise ValueError("corpus: no words to sample replacements from")
        self._unigram = _Sampler(unigrams)
        self._pos = {tag: _Sampler(c) for tag, c in by_pos.items()}
        log.info("Augmenter: same-POS replacement uses %s", self.pos_method)

    def _replacement(self, word: str, rng: random.Random) -> str:
        tag = self._word_pos.get(word)
        sampler = self._pos.get(tag) if tag is not None else None
        return (sampler or self._unigram).draw(rng)

    def _text(self, text: str, rng: random.Random) -> str:
        out = []
        for w in text.split():
            u = rng.random()
            if u < self.p_mask:
                out.append(MASK_TOKEN)
            elif u < self.p_mask + self.p_pos:
                out.append(self._replacement(w, rng))
            else:
                out.append(w)
        if out and rng.random() < self.p_ng:
            n = rng.randint(1, min(self.max_ngram, len(out)))
            start = rng.randrange(len(out) - n + 1)
            out = out[start : start + n]
        return " ".join(out)

    def augment_one(self, ex: Example, n_copies: int, max_tries: Optional[int] = None) -> List[Example]:
        """Up to ``n_copies`` distinct copies of ``ex`` (never equal to ``ex``'s texts)."""
        rng = random.Random(f"mkd_fast.augment/{self.seed}/{ex.uid}")
        seen = {tuple(" ".join(t.split()) for t in ex.texts)}
        copies: List[Example] = []
        tries = max_tries if max_tries is not None else 10 * n_copies + 10
        while len(copies) < n_copies and tries > 0:
            tries -= 1
            texts = tuple(self._text(t, rng) for t in ex.texts)
            if texts in seen:
                continue
            seen.add(texts)
            copies.append(replace(ex, uid=f"{ex.uid}#aug{len(copies)}", texts=texts, label=None))
        self.stats["examples"] += 1
        self.stats["copies"] += len(copies)
        if len(copies) < n_copies:
            self.stats["short"] += 1
        return copies

    def augment(self, examples: Sequence[Example], n_copies: int = 20, include_original: bool = False) -> List[Example]:
        """Copies of every example (``include_original`` puts each original first, label kept)."""
        if n_copies < 0:
            raise ValueError(f"n_copies: must be >= 0, got {n_copies}")
        out: List[Example] = []
        for ex in examples:
            if include_original:
                out.append(ex)
            out.extend(self.augment_one(ex, n_copies))
        return out


def augment_examples(examples: Sequence[Example], n_copies: int = 20, p_mask: float = 0.1, p_pos: float = 0.1,
                     p_ng: float = 0.25, seed: int = 0, pos_tagger: str = "auto",
                     include_original: bool = False) -> Tuple[List[Example], dict]:
    """Augment ``examples`` (also used as the word pool).  Returns ``(copies, info)`` with
    ``info = {"pos_method": "nltk"|"unigram", "examples", "copies", "short"}``."""
    aug = Augmenter(examples, p_mask=p_mask, p_pos=p_pos, p_ng=p_ng, seed=seed, pos_tagger=pos_tagger)
    out = aug.augment(examples, n_copies, include_original=include_original)
    return out, {"pos_method": aug.pos_method, **aug.stats}
