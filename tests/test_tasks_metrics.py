"""Metrics against scipy references and hand-computed cases; the task registry and YAML task files."""
import math

import numpy as np
import pytest
import torch

from mkd_fast.tasks import (
    GLUE_TASKS, TaskDef, accuracy, compute_metrics, f1, get_task, load_task_yaml, matthews_corrcoef, pearson,
    rankdata, register_task, spearman, task_extra,
)

scipy_stats = pytest.importorskip("scipy.stats")


def test_hand_computed_small_cases():
    p, y = [1, 0, 1, 1], [1, 0, 0, 1]
    assert accuracy(p, y) == 0.75
    assert f1(p, y) == pytest.approx(2 * 2 / (3 + 2))  # tp=2, 3 predicted, 2 true
    # tp=2 tn=1 fp=1 fn=0 -> (2*1 - 1*0) / sqrt(3*2*1*2)
    assert matthews_corrcoef(p, y) == pytest.approx(2 / math.sqrt(12))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert list(rankdata([10, 20, 10, 30])) == [1.5, 3.0, 1.5, 4.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    assert pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-12)
    # heavy ties: rounded values
    xt, yt = np.round(x), np.round(y * 2) / 2
    assert spearman(xt, yt) == pytest.approx(scipy_stats.spearmanr(xt, yt)[0], abs=1e-12)
    assert np.allclose(rankdata(xt), scipy_stats.rankdata(xt))
    a, b = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    tp = np.sum((a == 1) & (b == 1))
    assert f1(a, b) == pytest.approx(2 * tp / (np.sum(a == 1) + np.sum(b == 1)))
    # matthews == phi coefficient == pearson on binary vectors
    assert matthews_corrcoef(a, b) == pytest.approx(scipy_stats.pearsonr(a, b)[0], abs=1e-12)
    # multi-class matthews against the explicit formula
    c, d = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    cm = np.zeros((3, 3))
    np.add.at(cm, (d, c), 1)
    t, pk, n, s = cm.sum(1), cm.sum(0), np.trace(cm), cm.sum()
    ref = (n * s - t @ pk) / math.sqrt((s * s - pk @ pk) * (s * s - t @ t))
    assert matthews_corrcoef(c, d) == pytest.approx(ref)


def test_degenerate_inputs_are_defined():
    for fn in (accuracy, f1, matthews_corrcoef, pearson, spearman):
        assert math.isnan(fn([], []))
    assert f1([0, 0], [0, 0]) == 0.0
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([2, 2], [1, 2]))
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([1], [1, 0])


def test_compute_metrics_and_combined():
    r = compute_metrics("mrpc", torch.tensor([[0.1, 0.9], [2.0, 0.0], [0.0, 1.0]]), [1, 0, 0])
    assert set(r) == {"f1", "accuracy", "combined"}
    assert r["combined"] == pytest.approx((r["f1"] + r["accuracy"]) / 2)
    assert compute_metrics("sst2", [1, 0], [1, 1]) == {"accuracy": 0.5, "combined": 0.5}
    s = compute_metrics("stsb", np.array([[1.0], [2.0], [3.5]]), [1.0, 2.5, 3.0])
    assert set(s) == {"pearson", "spearman", "combined"} and s["spearman"] == pytest.approx(1.0)
    assert compute_metrics("cola", [1, 0, 1], [1, 0, 0])["matthews"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="3 classes"):
        compute_metrics("mnli", np.zeros((2, 2)), [0, 1])


def test_glue_tasks_definitions():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert get_task("SST-2") is get_task("sst2")
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("wnli").label_names == ("not_entailment", "entailment")
    assert get_task("cola").metrics == ("matthews",)
    assert get_task("qqp").metrics == ("f1", "accuracy")
    assert get_task("stsb").kind == "regression" and get_task("stsb").num_labels == 1
    assert task_extra(get_task("mnli"), "glue_dev_splits") == "dev_matched,dev_mismatched"
    assert task_extra(get_task("mrpc"), "glue_text_columns") == "#1 String,#2 String"
    with pytest.raises(KeyError, match="unknown task"):
        get_task("nope")


def test_register_task_refuses_silent_shadowing():
    t = TaskDef("my_unit_task", label_names=("a", "b"))
    register_task(t)
    register_task(t)  # identical: fine
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskDef("my_unit_task", label_names=("a", "b", "c")))
    register_task(TaskDef("my_unit_task", label_names=("a", "b", "c")), overwrite=True)
    assert get_task("my_unit_task").num_labels == 3


def test_load_task_yaml(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: yaml_pair\nkind: classification\nlabel_names: [no, yes_]\n"
                 "input_fields: [q, a]\nmetrics: [f1, accuracy]\ndescription: from yaml\n")
    # YAML 1.1 reads bare `no` as False: that must be a clear type error naming key and file
    with pytest.raises(ValueError, match=r"t\.yaml.*'label_names'"):
        load_task_yaml(p)
    p.write_text("name: yaml_pair\nkind: classification\nlabel_names: ['no', 'yes']\n"
                 "input_fields: [q, a]\nmetrics: [f1, accuracy]\ndescription: from yaml\n")
    t = load_task_yaml(p)
    assert get_task("yaml_pair") == t and t.is_pair and t.metrics == ("f1", "accuracy")
    p.write_text("name: bad\nlabels: [a, b]\n")
    with pytest.raises(ValueError, match=r"t\.yaml.*unknown key 'labels'"):
        load_task_yaml(p)
    p.write_text("name: bad\nmetrics: accuracy\n")
    with pytest.raises(ValueError, match=r"t\.yaml.*'metrics' must be a list"):
        load_task_yaml(p)
    p.write_text("name: bad\nlabel_names: [a, b]\nmetrics: [bleu]\n")
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        load_task_yaml(p)
    p.write_text("name: reg\nkind: regression\ninput_fields: [x]\n")
    assert load_task_yaml(p).metrics == ("pearson", "spearman")
