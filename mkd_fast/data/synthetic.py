"""The embedded default corpus: three small tasks generated from a built-in word list by latent rules.

Why synthetic: the package must demo and test distillation offline in seconds.  The rules are chosen so
that (1) a teacher that sees whole sentences (word order, negation scope, roles) can learn them, (2) a small
bag-of-words student trained on hard labels is clearly worse, and (3) labels are *sampled* from a graded
probability, so a teacher's soft targets carry information the hard labels lose (distillation can close
part of the gap).

``synth_sentiment`` (single sentence, classes negative/positive)
    One clause ``[filler] the NOUN VERB [not|never] [very|really|extremely] ADJ`` or two joined by
    ``, but``.  Each adjective has a signed strength (good +1, great +2, superb +3, dull -1, boring -2,
    awful -3, ...); an intensifier multiplies it by 1.5; a negator flips and halves it ("not great" is
    mildly negative).  With ``but`` the score is ``last + 0.2 * first`` (the contrast clause dominates).
    ``P(positive) = sigmoid(1.8 * score)`` and the label is sampled from it.  A bag of words cannot tell
    which clause a negator or an adjective belongs to.

``synth_paraphrase`` (sentence pair, classes not_paraphrase/paraphrase)
    ``s1`` describes an event AGENT-VERB-PATIENT (active "the big dog chased the cat" or passive "the cat
    was chased by the big dog"); ``s2`` is, at random: the same event with a verb from the same synonym
    group in either voice (P(paraphrase) = the verbs' graded similarity: 1.0 same, ~0.9 close, ~0.6 loose),
    roles swapped (0.03), another agent or patient (0.03), negated (0.03) or a different adjective (0.2).
    Swapped roles have exactly the same bag of words, so only an order/role-aware model can tell.

``synth_similarity`` (sentence pair, regression 0..5)
    ``s1`` = AGENT-VERB-PATIENT in PLACE; ``s2`` keeps or changes each slot, may swap the roles and may use
    the other voice.  ``score = 5 * (0.3 agent match + 0.3 verb similarity + 0.25 patient match + 0.15
    place match) + N(0, 0.25)``, clipped to [0, 5]; matches are by role, not by word overlap.

Generation uses ``random.Random`` seeded from ``(seed, task, split)`` strings, so it is deterministic across
runs and Python versions, and each split does not depend on the sizes of the others.  uids are
``f"{task}/{split}/{i}"``.  ``make_synthetic_corpus(..., with_oracle=True)`` also returns the latent
probability of the positive class (or the noise-free score) for each uid, to check teachers against.
"""
from __future__ import annotations

import math
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..tasks.definition import TaskDef
from ..tasks.glue import register_task
from .examples import Example

__all__ = ["SYNTHETIC_TASKS", "DEFAULT_SIZES", "make_synthetic_corpus", "SENTIMENT_LEXICON"]

SYNTHETIC_TASKS: Dict[str, TaskDef] = {
    t.name: t
    for t in [
        TaskDef("synth_sentiment", "classification", ("negative", "positive"), ("sentence",), "label",
                ("accuracy",), "synthetic sentiment with negation and contrast clauses"),
        TaskDef("synth_paraphrase", "classification", ("not_paraphrase", "paraphrase"), ("sentence1", "sentence2"),
                "label", ("f1", "accuracy"), "synthetic paraphrase of agent-verb-patient events (voice, roles)"),
        TaskDef("synth_similarity", "regression", (), ("sentence1", "sentence2"), "label", ("pearson", "spearman"),
                "synthetic role-aware similarity score 0..5"),
    ]
}
for _t in SYNTHETIC_TASKS.values():
    register_task(_t)

DEFAULT_SIZES: Dict[str, Dict[str, int]] = {name: {"train": 4000, "dev": 1000} for name in SYNTHETIC_TASKS}

# ---------------------------------------------------------------------------------------------- words
SENTIMENT_LEXICON: Dict[str, float] = {
    "good": 1, "nice": 1, "fine": 1, "great": 2, "clever": 2, "charming": 2, "superb": 3, "brilliant": 3,
    "wonderful": 3, "bad": -1, "dull": -1, "weak": -1, "boring": -2, "clumsy": -2, "messy": -2, "awful": -3,
    "terrible": -3, "dreadful": -3,
}
_ADJS = sorted(SENTIMENT_LEXICON)
_TOPICS = ["movie", "film", "plot", "story", "cast", "script", "ending", "music", "acting", "dialogue", "scene"]
_COPULAS = ["was", "is", "seemed", "felt"]
_NEGATORS = ["not", "never"]
_INTENSIFIERS = ["very", "really", "extremely"]
_FILLERS = ["honestly ,", "overall ,", "i think", "in the end ,", "to be fair ,"]

_NOUNS = ["cat", "dog", "fox", "bird", "horse", "mouse", "boy", "girl", "man", "woman", "teacher", "doctor"]
_NOUN_ADJS = ["big", "small", "old", "young", "happy", "angry"]
_PLACES = ["park", "kitchen", "garden", "street", "school", "office"]
# synonym groups: (base, past, participle, similarity to the group's head)
_VERB_GROUPS = [
    [("chase", "chased", "chased", 1.0), ("pursue", "pursued", "pursued", 0.9), ("follow", "followed", "followed", 0.6)],
    [("help", "helped", "helped", 1.0), ("assist", "assisted", "assisted", 0.9), ("support", "supported", "supported", 0.6)],
    [("see", "saw", "seen", 1.0), ("notice", "noticed", "noticed", 0.85), ("watch", "watched", "watched", 0.6)],
    [("push", "pushed", "pushed", 1.0), ("shove", "shoved", "shoved", 0.9), ("move", "moved", "moved", 0.5)],
    [("call", "called", "called", 1.0), ("phone", "phoned", "phoned", 0.9), ("contact", "contacted", "contacted", 0.6)],
]


def _verb_sim(g: int, a: int, b: int) -> float:
    """Similarity of two members of group ``g``: 1 if equal, else the product of their head similarities
    (so two loose synonyms are further apart than a loose synonym and the head)."""
    if a == b:
        return 1.0
    return _VERB_GROUPS[g][a][3] * _VERB_GROUPS[g][b][3]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------ sentiment
def _clause(rng: random.Random) -> Tuple[str, float]:
    adj = rng.choice(_ADJS)
    score = float(SENTIMENT_LEXICON[adj])
    words = ["the", rng.choice(_TOPICS), rng.choice(_COPULAS)]
    if rng.random() < 0.4:
        words.append(rng.choice(_NEGATORS))
        neg = True
    else:
        neg = False
    if rng.random() < 0.3:
        words.append(rng.choice(_INTENSIFIERS))
        score *= 1.5
    if neg:
        score *= -0.5
    words.append(adj)
    return " ".join(words), score


def _sentiment(rng: random.Random) -> Tuple[Tuple[str, ...], float]:
    """(texts, P(positive))."""
    first, s1 = _clause(rng)
    if rng.random() < 0.5:
        second, s2 = _clause(rng)
        text, score = f"{first} , but {second}", s2 + 0.2 * s1
    else:
        text, score = first, s1
    if rng.random() < 0.3:
        text = f"{rng.choice(_FILLERS)} {text}"
    return (text,), _sigmoid(1.8 * score)


# ----------------------------------------------------------------------------------------- event pairs
def _np(noun: str, adj: Optional[str]) -> str:
    return f"the {adj} {noun}" if adj else f"the {noun}"


def _render(agent: str, agent_adj: Optional[str], g: int, v: int, patient: str, passive: bool,
            negated: bool = False, place: Optional[str] = None, patient_adj: Optional[str] = None) -> str:
    base, past, part, _ = _VERB_GROUPS[g][v]
    a, p = _np(agent, agent_adj), _np(patient, patient_adj)
    if passive:
        s = f"{p} was {'not ' if negated else ''}{part} by {a}"
    else:
        s = f"{a} did not {base} {p}" if negated else f"{a} {past} {p}"
    if place:
        s += f" in the {place}"
    return s


def _paraphrase(rng: random.Random) -> Tuple[Tuple[str, ...], float]:
    agent, patient = rng.sample(_NOUNS, 2)
    adj = rng.choice(_NOUN_ADJS) if rng.random() < 0.5 else None
    g = rng.randrange(len(_VERB_GROUPS))
    v1 = rng.randrange(3)
    s1 = _render(agent, adj, g, v1, patient, rng.random() < 0.5)
    r = rng.random()
    v2 = rng.randrange(3)
    passive2 = rng.random() < 0.5
    if r < 0.5:  # same event, maybe a synonym, maybe the other voice
        s2, p = _render(agent, adj, g, v2, patient, passive2), 0.97 * _verb_sim(g, v1, v2)
    elif r < 0.7:  # roles swapped: the same bag of words
        s2, p = _render(patient, None, g, v1, agent, passive2, patient_adj=adj), 0.03
    elif r < 0.85:  # a different participant
        other = rng.choice([n for n in _NOUNS if n not in (agent, patient)])
        if rng.random() < 0.5:
            s2 = _render(other, adj, g, v2, patient, passive2)
        else:
            s2 = _render(agent, adj, g, v2, other, passive2)
        p = 0.03
    elif r < 0.95:  # negated
        s2, p = _render(agent, adj, g, v2, patient, passive2, negated=True), 0.03
    else:  # a different adjective on the agent
        other_adj = rng.choice([a for a in _NOUN_ADJS if a != adj])
        s2, p = _render(agent, other_adj, g, v2, patient, passive2), 0.2
    return (s1, s2), p


def _similarity(rng: random.Random) -> Tuple[Tuple[str, ...], float]:
    agent, patient = rng.sample(_NOUNS, 2)
    g = rng.randrange(len(_VERB_GROUPS))
    v1 = rng.randrange(3)
    place = rng.choice(_PLACES)
    s1 = _render(agent, None, g, v1, patient, rng.random() < 0.5, place=place)
    a2, p2, g2, v2, pl2 = agent, patient, g, rng.randrange(3), place
    if rng.random() < 0.2:
        a2, p2 = patient, agent
    if rng.random() < 0.3:
        a2 = rng.choice([n for n in _NOUNS if n not in (a2, p2)])
    if rng.random() < 0.3:
        p2 = rng.choice([n for n in _NOUNS if n not in (a2, p2)])
    if rng.random() < 0.3:
        g2 = rng.choice([k for k in range(len(_VERB_GROUPS)) if k != g])
    if rng.random() < 0.4:
        pl2 = rng.choice([x for x in _PLACES if x != place])
    s2 = _render(a2, None, g2, v2, p2, rng.random() < 0.5, place=pl2)
    verb_sim = _verb_sim(g, v1, v2) if g2 == g else 0.0
    score = 5.0 * (0.3 * (a2 == agent) + 0.3 * verb_sim + 0.25 * (p2 == patient) + 0.15 * (pl2 == place))
    return (s1, s2), score


_GENERATORS = {"synth_sentiment": _sentiment, "synth_paraphrase": _paraphrase, "synth_similarity": _similarity}


def _sizes(sizes) -> Dict[str, Dict[str, int]]:
    out = {k: dict(v) for k, v in DEFAULT_SIZES.items()}
    if sizes is None:
        return out
    if isinstance(sizes, int):
        return {k: {"train": sizes, "dev": max(1, sizes // 4)} for k in out}
    if not isinstance(sizes, Mapping):
        raise ValueError(f"sizes: expected None, an int or a mapping task -> (n_train, n_dev), got {sizes!r}")
    for task, spec in sizes.items():
        if task not in _GENERATORS:
            raise ValueError(f"sizes: unknown synthetic task {task!r}; known: {sorted(_GENERATORS)}")
        if isinstance(spec, Mapping):
            out[task].update({str(k): int(v) for k, v in spec.items()})
        elif isinstance(spec, Sequence) and len(spec) == 2:
            out[task] = {"train": int(spec[0]), "dev": int(spec[1])}
        else:
            raise ValueError(f"sizes[{task!r}]: expected (n_train, n_dev) or {{'train': n, 'dev': m}}, got {spec!r}")
        if any(n < 0 for n in out[task].values()):
            raise ValueError(f"sizes[{task!r}]: sizes must be >= 0, got {out[task]}")
    return out


def make_synthetic_corpus(seed: int = 0, sizes=None, tasks: Optional[Sequence[str]] = None,
                          with_oracle: bool = False):
    """``{task: {split: [Example, ...]}}`` for the synthetic tasks (all, or ``tasks``).

    ``sizes``: None (``DEFAULT_SIZES``), an int (train size, dev = a quarter), or a mapping
    ``task -> (n_train, n_dev)`` / ``{"train": n, "dev": m}``.  With ``with_oracle=True`` returns
    ``(corpus, oracle)`` where ``oracle[uid]`` is P(class 1) (classification) or the noise-free score."""
    plan = _sizes(sizes)
    names = list(tasks) if tasks is not None else list(_GENERATORS)
    corpus: Dict[str, Dict[str, List[Example]]] = {}
    oracle: Dict[str, float] = {}
    for name in names:
        if name not in _GENERATORS:
            raise ValueError(f"tasks: unknown synthetic task {name!r}; known: {sorted(_GENERATORS)}")
        gen, task = _GENERATORS[name], SYNTHETIC_TASKS[name]
        corpus[name] = {}
        for split, n in plan[name].items():
            rng = random.Random(f"mkd_fast.synthetic/{seed}/{name}/{split}")
            rows = []
            for i in range(n):
                texts, latent = gen(rng)
                uid = f"{name}/{split}/{i}"
                if task.kind == "classification":
                    label = int(rng.random() < latent)
                else:
                    label = round(min(5.0, max(0.0, latent + rng.gauss(0.0, 0.25))), 3)
                rows.append(Example(uid=uid, task=name, texts=texts, label=label))
                oracle[uid] = latent
            corpus[name][split] = rows
    return (corpus, oracle) if with_oracle else corpus
