"""Soft-target store: round trip, fingerprints, atomic shards, aggregation math, resumable computation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from mkd_fast.soft_targets import (IncompleteStoreError, SoftTargetConfig, SoftTargetStore,  # noqa: E402
                                   SoftTargetWriter, StaleStoreError, compute_soft_targets, load_soft_target_config)
from mkd_fast.teachers import TeacherEnsemble  # noqa: E402
from test_teachers import SENT, SIM, tiny_data, tiny_teacher  # noqa: E402

FP = {"teacher_weights": {"t": ["aaa", "bbb"]}, "tokenizers": {"t": ["tok"]}, "max_length": 64,
      "data": {"t": "d1"}, "augmentation": {}}


def _write_store(path, logits, uids, kind="classification", dtype="float32", shard_size=4, fp=FP):
    w = SoftTargetWriter(path, fp)
    k, n, c = logits.shape
    w.begin_task("t", uids, k, c, kind=kind, dtype=dtype, shard_size=shard_size)
    for i in range((n + shard_size - 1) // shard_size):
        w.write_shard("t", i, logits[:, i * shard_size:(i + 1) * shard_size])
    w.finalize_task("t")
    return w.finalize(["t"])


def test_round_trip_and_raw_logits(tmp_path):
    z = torch.randn(3, 10, 4)
    uids = [f"t/train/{i}" for i in range(10)]
    store = _write_store(tmp_path / "s", z, uids)
    again = SoftTargetStore(tmp_path / "s", fingerprint=FP)
    pick = ["t/train/7", "t/train/0", "t/train/3"]
    assert torch.equal(again.logits("t", pick), z[:, [7, 0, 3]])
    assert torch.equal(again.logits("t", pick, teachers=[2, 0]), z[[2, 0]][:, [7, 0, 3]])
    assert again.uids("t") == uids and store.tasks == ["t"]
    assert isinstance(again._view("t").logits, np.memmap)
    assert not (tmp_path / "s" / "t" / "shards").exists()
    with pytest.raises(KeyError, match="nope"):
        again.logits("t", ["nope"])


def test_float16_storage(tmp_path):
    z = torch.randn(2, 5, 3) * 4
    store = _write_store(tmp_path / "s", z, [str(i) for i in range(5)], dtype="float16")
    got = store.logits("t", [str(i) for i in range(5)])
    assert got.dtype == torch.float32 and torch.allclose(got, z.half().float())


def test_stale_fingerprint_is_refused_with_what_differs(tmp_path):
    _write_store(tmp_path / "s", torch.randn(2, 3, 2), ["a", "b", "c"])
    other = json.loads(json.dumps(FP))
    other["max_length"] = 128
    other["teacher_weights"]["t"][1] = "ccc"
    with pytest.raises(StaleStoreError) as e:
        SoftTargetStore(tmp_path / "s", fingerprint=other)
    msg = str(e.value)
    assert "max_length: stored 64, requested 128" in msg and "teacher_weights.t" in msg and "data" not in msg
    with pytest.raises(StaleStoreError, match="max_length"):
        SoftTargetWriter(tmp_path / "s", other)
    SoftTargetWriter(tmp_path / "s", other, overwrite=True)  # explicit overwrite starts afresh
    with pytest.raises(IncompleteStoreError):
        SoftTargetStore(tmp_path / "s")


def test_partial_store_and_partial_shard_never_read_as_complete(tmp_path):
    z = torch.randn(2, 10, 3)
    w = SoftTargetWriter(tmp_path / "s", FP)
    w.begin_task("t", [str(i) for i in range(10)], 2, 3, shard_size=4)
    w.write_shard("t", 0, z[:, :4])
    # a crash mid-write leaves only a temporary file, never a shard under its final name
    (tmp_path / "s" / "t" / "shards" / ".00001.tmp-xyz.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        SoftTargetStore(tmp_path / "s")
    w2 = SoftTargetWriter(tmp_path / "s", FP)  # a restart sees shard 0 done, shard 1 not
    assert w2.has_shard("t", 0) and not w2.has_shard("t", 1) and not w2.task_complete("t")
    with pytest.raises(IncompleteStoreError, match=r"\[1, 2\]"):
        w2.finalize_task("t")
    with pytest.raises(IncompleteStoreError):
        w2.finalize(["t"])
    # a crash in the middle of writing a shard file (simulated: np.save raises) leaves nothing behind
    import mkd_fast.soft_targets.store as store_mod

    orig = store_mod.np.save

    def exploding_save(fh, arr):
        fh.write(b"partial")
        raise KeyboardInterrupt

    store_mod.np.save = exploding_save
    try:
        with pytest.raises(KeyboardInterrupt):
            w2.write_shard("t", 1, z[:, 4:8])
    finally:
        store_mod.np.save = orig
    assert not w2.has_shard("t", 1)
    assert sorted(p.name for p in (tmp_path / "s" / "t" / "shards").iterdir() if not p.name.startswith(".")) == ["00000.npy"]
    w2.write_shard("t", 1, z[:, 4:8])
    w2.write_shard("t", 2, z[:, 8:])
    w2.finalize_task("t")
    store = w2.finalize(["t"])
    assert torch.equal(store.logits("t", [str(i) for i in range(10)]), z.half().float())  # float16 default
    with pytest.raises(ValueError, match="shape"):
        w2.write_shard("t", 0, z[:, :3])


def test_aggregation_matches_plain_torch(tmp_path):
    torch.manual_seed(0)
    z = torch.randn(3, 6, 5) * 3
    uids = [f"u{i}" for i in range(6)]
    store = _write_store(tmp_path / "s", z, uids)
    pick = ["u5", "u1", "u2"]
    zz = z[:, [5, 1, 2]]
    T = 2.5
    ref = torch.softmax(zz / T, -1).mean(0)
    assert torch.allclose(store.soft_targets("t", pick, temperature=T), ref, atol=1e-6)
    ref = torch.softmax(zz.mean(0) / T, -1)
    assert torch.allclose(store.soft_targets("t", pick, temperature=T, aggregate="mean_logits"), ref, atol=1e-6)
    w = [0.5, 0.0, 2.0]
    ref = (0.5 * torch.softmax(zz[0] / T, -1) + 2.0 * torch.softmax(zz[2] / T, -1)) / 2.5
    assert torch.allclose(store.soft_targets("t", pick, temperature=T, aggregate="weights", weights=w), ref, atol=1e-6)
    ref = torch.softmax(zz[[0, 2]], -1).mean(0)
    assert torch.allclose(store.soft_targets("t", pick, teachers=[0, 2]), ref, atol=1e-6)
    ref = torch.softmax(zz[1], -1)
    assert torch.allclose(store.soft_targets("t", pick, teachers=[1], aggregate="mean_logits"), ref, atol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        store.soft_targets("t", pick, aggregate="weights", weights=[1.0])
    with pytest.raises(ValueError, match="aggregate"):
        store.soft_targets("t", pick, aggregate="median")
    with pytest.raises(ValueError, match="teachers"):
        store.soft_targets("t", pick, teachers=[3])


def test_regression_aggregation(tmp_path):
    z = torch.randn(2, 4, 1)
    store = _write_store(tmp_path / "s", z, list("abcd"), kind="regression")
    assert torch.allclose(store.soft_targets("t", list("dc"), temperature=3.0), z[:, [3, 2]].mean(0))
    got = store.soft_targets("t", list("ab"), aggregate="weights", weights=[1.0, 3.0])
    assert torch.allclose(got, 0.25 * z[0, :2] + 0.75 * z[1, :2])


class Counting(torch.nn.Module):
    """Wraps a teacher, counts forward calls, can raise after a number of calls (a simulated kill)."""

    def __init__(self, inner, fail_after=None):
        super().__init__()
        self.inner, self.tokenizer, self.calls, self.fail_after = inner, inner.tokenizer, 0, fail_after

    def weights_fingerprint(self):
        return self.inner.weights_fingerprint()

    def forward(self, task, **tok):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated kill")
        self.calls += 1
        return self.inner(task, **tok)


def test_compute_resumes_without_recomputing(tmp_path):
    data = tiny_data(23)["train"]
    examples = {"senti": data["senti"], "sim": data["sim"]}
    tasks = {"senti": SENT, "sim": SIM}
    t1, t2 = tiny_teacher(tmp_path, seed=1), tiny_teacher(tmp_path, seed=2)
    kw = dict(max_length=16, batch_size=2, shard_size=4, dtype="float32", progress=False)

    ref = compute_soft_targets(TeacherEnsemble({"senti": [t1, t2], "sim": [t2]}), examples, tasks, tmp_path / "ref", **kw)

    c1, c2 = Counting(t1, fail_after=7), Counting(t2)
    ens = TeacherEnsemble({"senti": [c1, c2], "sim": [c2]})
    with pytest.raises(RuntimeError, match="simulated kill"):
        compute_soft_targets(ens, examples, tasks, tmp_path / "run", **kw)
    # 7 batches of 2 done by teacher 1: shards 0-2 finished (6 batches), shard 3 half-done and lost
    assert c1.calls == 7
    with pytest.raises(IncompleteStoreError):
        SoftTargetStore(tmp_path / "run")
    c1.calls = c2.calls = 0
    c1.fail_after = None
    store = compute_soft_targets(ens, examples, tasks, tmp_path / "run", **kw)
    # senti: 6 shards (23 rows), 3 finished before the kill -> 3 shards = 6 batches remain; sim: 6 shards = 12
    assert c1.calls == 6 and c2.calls == 6 + 12
    for task in ("senti", "sim"):
        uids = [e.uid for e in examples[task]]
        assert torch.equal(store.logits(task, uids), ref.logits(task, uids))
    assert store.fingerprint == ref.fingerprint
    # a finished store is not recomputed at all
    c1.calls = c2.calls = 0
    compute_soft_targets(ens, examples, tasks, tmp_path / "run", **kw)
    assert c1.calls == 0 and c2.calls == 0
    # changing a setting that the logits depend on is refused
    with pytest.raises(StaleStoreError, match="max_length"):
        compute_soft_targets(ens, examples, tasks, tmp_path / "run", **{**kw, "max_length": 12})


def test_fingerprint_tracks_teacher_weights_and_data(tmp_path):
    data = tiny_data(5)["train"]
    t = tiny_teacher(tmp_path, seed=1)
    kw = dict(max_length=16, batch_size=4, shard_size=4, progress=False)
    store = compute_soft_targets(TeacherEnsemble({"senti": [t]}), {"senti": data["senti"]}, {"senti": SENT},
                                 tmp_path / "s", **kw)
    with torch.no_grad():
        t.heads["senti"][1].bias.add_(1.0)
    with pytest.raises(StaleStoreError, match="teacher_weights"):
        compute_soft_targets(TeacherEnsemble({"senti": [t]}), {"senti": data["senti"]}, {"senti": SENT},
                             tmp_path / "s", **kw)
    with pytest.raises(StaleStoreError, match="data.senti"):
        SoftTargetStore(tmp_path / "s", fingerprint={**store.fingerprint, "data": {"senti": "other"}})


def test_soft_target_config(tmp_path):
    p = tmp_path / "st.yaml"
    p.write_text("output_dir: out\ntasks: [sst2]\nteachers: [t1, t2]\ndtype: float32\naugmentation: {n: 2}\n")
    cfg = load_soft_target_config(p)
    assert isinstance(cfg, SoftTargetConfig) and cfg.teachers == ["t1", "t2"] and cfg.augmentation == {"n": 2}
    p.write_text("output_dir: out\ntasks: [sst2]\nteachers: [t1]\nshard: 3\n")
    with pytest.raises(ValueError) as e:
        load_soft_target_config(p)
    assert "shard" in str(e.value) and str(p) in str(e.value)
    p.write_text("output_dir: out\ntasks: [sst2]\nteachers: t1\n")
    with pytest.raises(ValueError, match="teachers"):
        load_soft_target_config(p)


def test_cli_teacher_train_then_soft_targets_on_synthetic_data(tmp_path, capsys):
    from mkd_fast.cli import main

    base = tiny_teacher(tmp_path, seed=0, tasks=(SENT,))
    base.encoder.save_pretrained(tmp_path / "enc")
    base.tokenizer.save_pretrained(tmp_path / "enc")
    tcfg = tmp_path / "teacher.yaml"
    tcfg.write_text(f"output_dir: {tmp_path / 'run'}\ntasks: [synth_sentiment, synth_similarity]\n"
                    f"model: {tmp_path / 'enc'}\ndata: synthetic\nsynthetic_sizes: 12\nepochs: 1\nbatch_size: 8\n"
                    "max_length: 16\nprogress: false\n")
    assert main(["teacher", "train", "--config", str(tcfg)]) == 0
    assert "teacher saved to" in capsys.readouterr().out
    scfg = tmp_path / "st.yaml"
    scfg.write_text(f"output_dir: {tmp_path / 'store'}\ntasks: [synth_sentiment, synth_similarity]\n"
                    f"teachers: [{tmp_path / 'run' / 'teacher'}]\ndata: synthetic\nsynthetic_sizes: 12\n"
                    "splits: [train, dev]\nmax_length: 16\nshard_size: 5\nprogress: false\n")
    assert main(["soft-targets", "--config", str(scfg)]) == 0
    store = SoftTargetStore(tmp_path / "store")
    assert store.tasks == ["synth_sentiment", "synth_similarity"]
    assert store.task_info("synth_sentiment")["num_examples"] == 15 and store.task_info("synth_similarity")["kind"] == "regression"
    uids = store.uids("synth_sentiment")[:4]
    assert store.soft_targets("synth_sentiment", uids).shape == (4, 2)


def test_leftover_folder_without_store_json_is_refused(tmp_path):
    """Task folders whose store.json is gone (e.g. an overwrite killed half-way) must not be trusted."""
    import numpy as np

    from mkd_fast.soft_targets import SoftTargetWriter

    w = SoftTargetWriter(tmp_path / "s", {"teacher": "A"})
    w.begin_task("t", ["a", "b"], 1, 2, dtype="float32", shard_size=2)
    w.write_shard("t", 0, np.zeros((1, 2, 2), dtype=np.float32))
    w.finalize_task("t")
    w.finalize(["t"])
    (tmp_path / "s" / "store.json").unlink()
    with pytest.raises(StaleStoreError, match="store.json"):
        SoftTargetWriter(tmp_path / "s", {"teacher": "B"})
    fresh = SoftTargetWriter(tmp_path / "s", {"teacher": "B"}, overwrite=True)
    fresh.begin_task("t", ["a", "b"], 1, 2, dtype="float32", shard_size=2)
    assert not fresh.has_shard("t", 0)


def test_float16_overflow_and_nan_are_refused(tmp_path):
    import numpy as np

    from mkd_fast.soft_targets import SoftTargetWriter

    w = SoftTargetWriter(tmp_path / "s", {"teacher": "A"})
    w.begin_task("t", ["a"], 1, 2, dtype="float16", shard_size=1)
    with pytest.raises(ValueError, match="float16"):
        w.write_shard("t", 0, np.array([[[1e6, 0.0]]], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        w.write_shard("t", 0, np.array([[[np.nan, 0.0]]], dtype=np.float32))
    w.write_shard("t", 0, np.array([[[-np.inf, 3.0]]], dtype=np.float32))  # padded classes are fine


def test_overwrite_removes_only_what_a_store_wrote(tmp_path):
    # a folder that is not a store (e.g. output_dir pointed at a home folder) is refused and left untouched
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "cat.jpg").write_bytes(b"jpg")
    (home / "notes.txt").write_text("keep me")
    (home / "t").mkdir()
    (home / "t" / "meta.json").write_text('{"mine": true}')  # looks like a task folder by name only
    with pytest.raises(StaleStoreError, match="not a soft-target store") as e:
        SoftTargetWriter(home, FP, overwrite=True)
    assert "notes.txt" in str(e.value) and "photos/" in str(e.value)
    assert (home / "notes.txt").read_text() == "keep me" and (home / "photos" / "cat.jpg").is_file()
    assert (home / "t" / "meta.json").is_file() and not (home / "store.json").exists()

    # a real store with another fingerprint: its files go, a user's file next to them stays
    _write_store(tmp_path / "s", torch.randn(2, 6, 3), [str(i) for i in range(6)])
    (tmp_path / "s" / "README.md").write_text("my notes")
    other = {**FP, "max_length": 128}
    w = SoftTargetWriter(tmp_path / "s", other, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["README.md", "store.json"]
    assert json.loads((tmp_path / "s" / "store.json").read_text())["fingerprint"]["max_length"] == 128
    w.begin_task("t", ["a"], 1, 2, dtype="float32", shard_size=1)
    assert not w.has_shard("t", 0)


def test_killed_write_leftovers_are_removed_on_resume(tmp_path, monkeypatch):
    import mkd_fast.soft_targets.store as store_mod

    z = torch.randn(2, 8, 3)
    uids = [str(i) for i in range(8)]
    w = SoftTargetWriter(tmp_path / "s", FP)
    w.begin_task("t", uids, 2, 3, dtype="float32", shard_size=4)
    w.write_shard("t", 0, z[:, :4])
    task_dir, shards = tmp_path / "s" / "t", tmp_path / "s" / "t" / "shards"

    def hidden(d):
        return sorted(p.name for p in d.iterdir() if p.name.startswith("."))

    # an exception in the middle of a write removes the temporary file at once
    def exploding_save(fh, arr):
        fh.write(b"partial" * 1000)
        raise RuntimeError("disk full")

    monkeypatch.setattr(store_mod.np, "save", exploding_save)
    with pytest.raises(RuntimeError, match="disk full"):
        w.write_shard("t", 1, z[:, 4:])
    monkeypatch.undo()
    assert hidden(shards) == [] and not w.has_shard("t", 1)
    w.write_shard("t", 1, z[:, 4:])
    real_load = store_mod.np.load

    def failing_load(path, *a, **k):
        if "shards" in str(path) and str(path).endswith("00001.npy"):
            raise RuntimeError("read error")
        return real_load(path, *a, **k)

    monkeypatch.setattr(store_mod.np, "load", failing_load)
    with pytest.raises(RuntimeError, match="read error"):
        w.finalize_task("t")  # the logits.npy-sized temporary file goes too
    monkeypatch.undo()
    assert hidden(task_dir) == [] and not (task_dir / "logits.npy").exists()

    # a SIGKILL runs no handler: simulate the full-size temporary files it leaves behind
    (shards / ".00001.npy.tmp-k1ll3d").write_bytes(b"\0" * 50_000)
    (task_dir / ".logits.tmp-k1ll3d.npy").write_bytes(b"\0" * 100_000)
    (task_dir / ".meta.json.tmp-k1ll3d").write_text("{")
    (tmp_path / "s" / ".store.json.tmp-k1ll3d").write_text("{")
    w2 = SoftTargetWriter(tmp_path / "s", FP)  # the resumed run
    assert hidden(tmp_path / "s") == []
    w2.begin_task("t", uids, 2, 3, dtype="float32", shard_size=4)
    assert hidden(task_dir) == [] and hidden(shards) == []
    assert w2.has_shard("t", 0) and w2.has_shard("t", 1)
    w2.finalize_task("t", keep_shards=True)
    # killed after COMPLETE but before the shards were removed: the next finalize removes the copy
    assert shards.is_dir()
    w2.finalize_task("t")
    assert not shards.exists()
    assert torch.equal(w2.finalize(["t"]).logits("t", uids), z)


def test_rows_take_uids_as_the_writer_stores_them(tmp_path):
    z = torch.randn(1, 4, 2)
    store = _write_store(tmp_path / "s", z, [10, 11, 12, 13])  # the writer stores str(uid)
    assert store.uids("t") == ["10", "11", "12", "13"]
    assert store.rows("t", [12, "10", np.int64(13), np.str_("11")]).tolist() == [2, 0, 3, 1]
    assert store.rows("t", np.array([13, 10])).tolist() == [3, 0]
    assert torch.equal(store.logits("t", [11]), z[:, [1]])
    assert torch.equal(store.soft_targets("t", np.array([12])), torch.softmax(z[0, [2]], -1))
    with pytest.raises(KeyError, match="14"):
        store.rows("t", [14])
    with pytest.raises(TypeError, match="uids"):
        store.rows("t", "10")
