"""The `mkd-fast` run commands (distill, finetune, eval, predict, task-agnostic), their YAML run files,
``--set`` overrides and the errors a user sees.  Tiny synthetic data (40 train / 20 dev per task) and tiny
students; everything runs in-process through ``mkd_fast.cli.main`` except one ``--help`` subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch
import yaml

from mkd_fast.cli import main
from mkd_fast.data.synthetic import make_synthetic_corpus
from mkd_fast.distill import evaluate_model
from mkd_fast.distill.run_config import load_run_config
from mkd_fast.soft_targets import SoftTargetWriter
from mkd_fast.students import load_student
from mkd_fast.tasks.glue import get_task

TASKS = ["synth_sentiment", "synth_paraphrase", "synth_similarity"]
SIZES = {t: [40, 20] for t in TASKS}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads on a shared machine; restored after this module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def corpus():
    return make_synthetic_corpus(0, SIZES, tasks=TASKS)


def make_store(path):
    """Random teacher logits (2 teachers) for every synthetic training example, keyed by its uid."""
    g = torch.Generator().manual_seed(0)
    writer = SoftTargetWriter(path, {"test": "cli"})
    for name in TASKS:
        exs, task = corpus()[name]["train"], get_task(name)
        z = torch.randn(2, len(exs), task.num_labels, generator=g)
        writer.begin_task(name, [e.uid for e in exs], 2, task.num_labels, kind=task.kind, dtype="float32",
                          shard_size=64)
        writer.write_shard(name, 0, z)
        writer.finalize_task(name)
    writer.finalize(TASKS)
    return str(path)


def write_config(tmp_path, name="run.yaml", **changes):
    cfg = {"output_dir": str(tmp_path / "run"), "recipe": "mkd", "tasks": TASKS, "data": "synthetic",
           "synthetic_sizes": SIZES, "seed": 0, "soft_targets": None,
           "student": {"type": "bilstm", "embedding_dim": 8, "hidden_size": 6, "shared_dims": [10]},
           "train": {"steps": 6, "batch_size": 8, "lr": 0.01, "checkpoint_every": 3, "progress": False,
                     "alpha": 0.5, "regression_label_weight": 0.5}}
    cfg.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def weights(folder):
    return load_student(folder).state_dict()


# ------------------------------------------------------------------------------------------------ commands
def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "mkd_fast.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("distill", "finetune", "eval", "predict", "task-agnostic", "demo", "loss-demo", "teacher"):
        assert command in out.stdout


def test_distill_with_a_store_and_finetune_then_eval_and_predict(tmp_path, capsys):
    config = write_config(tmp_path, soft_targets=make_store(tmp_path / "store"), finetune={"steps": 2})
    assert main(["distill", "--config", config]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "distilled student (dev): synth_sentiment" in out and f"student saved to {run / 'student'}" in out
    assert "distilled  fine-tuned" in out  # the per-task table
    for t in TASKS:
        assert (run / "finetune" / t / "student" / "student.json").is_file()
        assert f"{t}: fine-tuned student saved to {run / 'finetune' / t / 'student'}" in out
    resolved = yaml.safe_load((run / "run_config.yaml").read_text())
    assert resolved["train"]["divergence"] == "mse" and resolved["finetune"]["steps"] == 2

    # eval: the numbers evaluate_model gives on the saved student
    assert main(["eval", "--student", str(run / "student"), "--data", "synthetic",
                 "--synthetic-sizes", json.dumps(SIZES), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    student = load_student(run / "student")
    dev = {t: corpus()[t]["dev"] for t in TASKS}
    want = evaluate_model(student, student.tasks, dev)
    assert printed.keys() == want.keys()
    for task, metrics in want.items():
        assert printed[task] == pytest.approx(metrics, abs=1e-12, nan_ok=True)
    assert main(["eval", "--student", str(run / "student"), "--data", "synthetic", "--synthetic-sizes", "40",
                 "--tasks", "synth_sentiment"]) == 0
    assert "macro" in capsys.readouterr().out

    # predict: what student.predict says, for a text, a pair and a file
    assert main(["predict", "--student", str(run / "student"), "--task", "synth_sentiment",
                 "--text", "the plot was not great"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == student.predict("synth_sentiment", ["the plot was not great"])[0]
    assert main(["predict", "--student", str(run / "student"), "--task", "synth_similarity",
                 "--text", "the dog chased the cat", "--text-b", "the cat was chased by the dog"]) == 0
    score = float(capsys.readouterr().out.strip())
    want_score = student.predict("synth_similarity", [("the dog chased the cat", "the cat was chased by the dog")])[0]
    assert score == pytest.approx(want_score, abs=1e-4)
    rows = corpus()["synth_paraphrase"]["dev"][:5]
    table = tmp_path / "in.jsonl"
    table.write_text("".join(json.dumps({"sentence1": e.texts[0], "sentence2": e.texts[1]}) + "\n" for e in rows))
    assert main(["predict", "--student", str(run / "student"), "--task", "synth_paraphrase", "--input", str(table),
                 "--output", str(tmp_path / "pred.jsonl")]) == 0
    got = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in got] == student.predict("synth_paraphrase", [e.texts for e in rows])
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in got)


def test_resume_continues_a_stopped_run_then_finetune(tmp_path, capsys):
    config = write_config(tmp_path)  # hard labels only (soft_targets: null)
    assert main(["distill", "--config", config, "--stop-after", "2"]) == 0
    assert "stopped at step 2 of 6" in capsys.readouterr().out
    assert not (tmp_path / "run" / "student").exists()
    assert main(["distill", "--config", config, "--resume", "--set", "student.hidden_size=7"]) == 2
    assert "resume" in capsys.readouterr().err  # another student than the checkpoint's: refused, naming it
    assert main(["distill", "--config", config, "--resume"]) == 0
    assert "student saved to" in capsys.readouterr().out
    assert main(["distill", "--config", config, "--set", f"output_dir={tmp_path / 'straight'}"]) == 0
    capsys.readouterr()
    resumed, straight = weights(tmp_path / "run" / "student"), weights(tmp_path / "straight" / "student")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)

    # finetune alone: from output_dir/student, one copy per task
    assert main(["finetune", "--config", config, "--set", "finetune.steps=2",
                 "--set", "tasks=[synth_sentiment, synth_similarity]"]) == 0
    out = capsys.readouterr().out
    assert f"per-task fine-tuning of {tmp_path / 'run' / 'student'}" in out
    assert "synth_similarity" in out and "synth_paraphrase" not in out
    tuned = weights(tmp_path / "run" / "finetune" / "synth_sentiment" / "student")
    assert any(not torch.equal(tuned[k], resumed[k]) for k in resumed)  # trained further, from the distilled one

    # ... or from student_dir when nothing was distilled in output_dir (e.g. a task-agnostic student)
    assert main(["finetune", "--config", config, "--set", f"output_dir={tmp_path / 'ft'}", "--set", "student=null",
                 "--set", f"student_dir={tmp_path / 'straight' / 'student'}", "--set", "finetune.steps=1",
                 "--set", "tasks=[synth_sentiment]"]) == 0
    assert (tmp_path / "ft" / "finetune" / "synth_sentiment" / "student").is_dir()


def test_overrides_recipe_defaults_and_yaml_numbers(tmp_path):
    config = write_config(tmp_path, train={"lr": "1e-3", "steps": 5}, finetune={})
    raw = yaml.safe_load(open(config))
    assert raw["train"]["lr"] == "1e-3"  # how PyYAML reads it; the run file loader reads a number
    cfg = load_run_config(config, ["train.lr=2e-2", "student.hidden_size=7", "tasks=[synth_sentiment]",
                                   "train.task_weights.synth_sentiment=2", "seed=5", "max_train_examples=30"])
    assert cfg.train.lr == 0.02 and cfg.student.config.hidden_size == 7 and cfg.tasks == ["synth_sentiment"]
    assert cfg.train.task_weights == {"synth_sentiment": 2.0} and cfg.max_train_examples == 30
    assert cfg.train.seed == 5 and cfg.train.output_dir == str(tmp_path / "run")  # top-level seed and output_dir
    assert cfg.train.divergence == "mse" and cfg.finetune.epochs == 1.0  # the mkd recipe's settings
    assert cfg.finetune_after_distill and cfg.finetune.lr == 0.02  # finetune: inherits train:
    assert load_run_config(config).train.lr == 1e-3
    assert not load_run_config(config, ["finetune=null"]).finetune_after_distill
    cfg = load_run_config(config, ["student={type: transformer, num_layers: 1}", "student.tokenizer=minilm"])
    assert cfg.student.type == "transformer" and cfg.student.config.num_layers == 1


def test_errors_name_the_key_and_the_file(tmp_path, capsys):
    def error(*argv):
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    bad = write_config(tmp_path, "typo.yaml", train={"lrr": 0.01})
    msg = error("distill", "--config", bad)
    assert "train.lrr" in msg and "typo.yaml" in msg
    msg = error("distill", "--config", write_config(tmp_path, "type.yaml", train={"lr": "fast"}))
    assert "train.lr" in msg and "expected a number" in msg and "type.yaml" in msg
    msg = error("distill", "--config", write_config(tmp_path, "stype.yaml", student={"hidden_size": "big"}))
    assert "student.hidden_size" in msg and "stype.yaml" in msg
    msg = error("distill", "--config", write_config(tmp_path), "--set", "train.lrr=0.1")
    assert "--set train.lrr" in msg and "unknown key 'train.lrr'" in msg
    msg = error("distill", "--config", write_config(tmp_path), "--set", "student.hidden_sise=3")
    assert "student.hidden_sise" in msg
    msg = error("distill", "--config", write_config(tmp_path), "--set", "studnet_dir=x")
    assert "unknown key 'studnet_dir'" in msg
    msg = error("distill", "--config", write_config(tmp_path, "store.yaml", soft_targets=str(tmp_path / "nostore")))
    assert "soft_targets" in msg and "nostore" in msg and "store.yaml" in msg
    msg = error("distill", "--config", write_config(tmp_path, "both.yaml", student_dir=str(tmp_path)))
    assert "student_dir" in msg and "both.yaml" in msg
    msg = error("finetune", "--config", write_config(tmp_path, "none.yaml", output_dir=str(tmp_path / "empty")))
    assert "nothing to fine-tune" in msg
    assert not (tmp_path / "run").exists()  # every error came before any work
    with pytest.raises(ValueError, match="train.lrr"):
        main(["--traceback", "distill", "--config", bad])


def test_task_agnostic_command(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from mkd_fast.teachers import MultiTaskTeacher

    words = "the a cat dog sat on mat movie film good bad great plot was very".split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    tok = transformers.BertTokenizerFast(vocab=vocab, do_lower_case=True)
    torch.manual_seed(0)
    encoder = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32), add_pooling_layer=False)
    MultiTaskTeacher(encoder, [get_task("synth_sentiment")], tok).save(tmp_path / "teacher")
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat\na good movie\nthe plot was very bad\ngreat film\n")
    config = tmp_path / "ta.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "ta"), "teacher": str(tmp_path / "teacher"), "texts": str(texts),
        "student": {"num_layers": 1, "hidden_size": 8, "num_heads": 2, "intermediate_size": 16, "max_length": 32},
        "train": {"steps": 3, "batch_size": 2, "max_length": 16, "progress": False}}))
    assert main(["task-agnostic", "--config", str(config), "--set", "train.steps=2"]) == 0
    assert f"student saved to {tmp_path / 'ta' / 'student'}" in capsys.readouterr().out
    student = load_student(tmp_path / "ta" / "student")
    assert student.task_names == ["synth_sentiment"] and student.config.hidden_size == 8
    assert main(["task-agnostic", "--config", str(config), "--set", "train.stepz=2"]) == 2
    assert "train.stepz" in capsys.readouterr().err


def test_demo_commands_call_their_modules(monkeypatch):
    calls = {}
    for module in ("demo", "loss_demo"):
        fake = types.ModuleType(f"mkd_fast.{module}")
        fake.run_demo = lambda _m=module, **kw: calls.__setitem__(_m, kw)
        monkeypatch.setitem(sys.modules, f"mkd_fast.{module}", fake)
    assert main(["demo", "--quick", "--output-dir", "x", "--threads", "2"]) == 0
    assert calls["demo"] == {"output_dir": "x", "quick": True, "threads": 2}
    assert main(["demo"]) == 0 and calls["demo"] == {"output_dir": "runs/demo", "quick": False, "threads": 0}
    assert main(["loss-demo", "--repeats", "2", "--no-compile"]) == 0
    assert calls["loss_demo"] == {"repeats": 2, "use_compile": False, "threads": 0}
