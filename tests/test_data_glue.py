"""GLUE files (real ones from ../shared/data/glue), local tables, and the Hub loader's offline error."""
import json
from pathlib import Path

import pytest

from mkd_fast.data import HubUnavailableError, load_glue_split, load_hub, load_table

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2" / "train.tsv").is_file(),
                                reason=f"real GLUE data not found at {GLUE}")

COUNTS = {"sst2": (67349, 872), "mrpc": (3668, 408), "rte": (2490, 277), "stsb": (5749, 1500)}


@needs_glue
@pytest.mark.parametrize("task", sorted(COUNTS))
def test_real_glue_row_counts_and_labels(task):
    for split, n in zip(("train", "dev"), COUNTS[task]):
        ex = load_glue_split(GLUE, task, split)
        assert len(ex) == n and ex.skipped == 0
        assert ex[0].uid == f"{task}/{split}/0" and ex[-1].uid == f"{task}/{split}/{n - 1}"
        assert len({e.uid for e in ex}) == n
        if task == "stsb":
            assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in ex)
        else:
            assert {e.label for e in ex} == {0, 1}
        assert all(len(e.texts) == (1 if task == "sst2" else 2) and all(e.texts) for e in ex)


@needs_glue
def test_real_glue_known_rows():
    sst = load_glue_split(GLUE, "sst2", "train")
    assert sst[0].texts == ("hide new secretions from the parental units",) and sst[0].label == 0
    mrpc = load_glue_split(GLUE, "mrpc", "train")
    assert mrpc[0].label == 1 and mrpc[0].texts[0].startswith("Amrozi accused his brother , whom he called \" the")
    assert mrpc[1].label == 0 and mrpc[1].texts[0].startswith("Yucaipa owned")
    rte = load_glue_split(GLUE, "rte", "train")
    assert rte[0].texts == ("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.")
    assert rte[0].label == 1 and rte[1].label == 0  # not_entailment, entailment
    stsb = load_glue_split(GLUE, "stsb", "train")
    assert stsb[1].texts == ("A man is playing a large flute.", "A man is playing a flute.") and stsb[1].label == 3.8


def _write(root, folder, name, text):
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text, encoding="utf-8")
    return d / name


def test_quirks_on_small_files(tmp_path):
    _write(tmp_path, "MRPC", "dev.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                       '1\t1\t2\tHe said " hi\tShe said " hello\n\n')
    ex = load_glue_split(tmp_path, "mrpc", "dev")
    assert ex[0].texts == ('He said " hi', 'She said " hello') and ex[0].label == 1 and len(ex) == 1
    _write(tmp_path, "CoLA", "train.tsv", "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tBreeze rode.\n")
    cola = load_glue_split(tmp_path, "cola", "train")
    assert [(e.texts[0], e.label) for e in cola] == [("The sailors rode the breeze.", 1), ("Breeze rode.", 0)]
    _write(tmp_path, "MNLI", "dev_mismatched.tsv", "index\tsentence1\tsentence2\tlabel1\tgold_label\n"
                                                 "0\tA b.\tC d.\tneutral\tcontradiction\n")
    m = load_glue_split(tmp_path, "mnli", "dev_mismatched")
    assert m[0].uid == "mnli/dev_mismatched/0" and m[0].label == 2
    _write(tmp_path, "SST-2", "test.tsv", "index\tsentence\n0\tfine .\n")
    assert load_glue_split(tmp_path, "sst2", "test")[0].label is None
    with pytest.raises(ValueError, match="split"):
        load_glue_split(tmp_path, "sst2", "dev_matched")
    with pytest.raises(FileNotFoundError, match="QNLI"):
        load_glue_split(tmp_path, "qnli", "train")


def test_malformed_rows_name_file_and_line(tmp_path):
    p = _write(tmp_path, "RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
                                             "1\ta\tb\tmaybe\n2\ta\tb\n3\ta\tb\tnot_entailment\n")
    with pytest.raises(ValueError, match=rf"{p}:3: unknown label 'maybe'"):
        load_glue_split(tmp_path, "rte", "train")
    ex = load_glue_split(tmp_path, "rte", "train", on_error="skip")
    assert ex.skipped == 2 and ex.skipped_lines == [3, 4]
    assert [e.uid for e in ex] == ["rte/train/0", "rte/train/3"]  # uids do not shift
    _write(tmp_path, "STS-B", "dev.tsv", "a\tsentence1\tsentence2\tscore\n0\tx\ty\t4.5\n1\tx\ty\tfive\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:3: label 'five' is not a number"):
        load_glue_split(tmp_path, "stsb", "dev")
    _write(tmp_path, "SST-2", "dev.tsv", "sentence\tlabel\nok\t1\nbad\t2\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:3: label index 2 out of range"):
        load_glue_split(tmp_path, "sst2", "dev")
    _write(tmp_path, "QQP", "dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tq?\ta\tb\t1\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:2: expected 6 tab-separated columns, got 7"):
        load_glue_split(tmp_path, "qqp", "dev")


def test_load_table_formats_and_errors(tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text('text,y\n"a, quoted ""one""",positive\nplain,0\n', encoding="utf-8")
    ex = load_table(csv_path, "sst2", text_columns=["text"], label_column="y")
    assert [(e.uid, e.texts, e.label) for e in ex] == [("sst2/data/0", ('a, quoted "one"',), 1), ("sst2/data/1", ("plain",), 0)]
    tsv = tmp_path / "u.tsv"
    tsv.write_text('sentence1\tsentence2\nsay " hi\tok\n', encoding="utf-8")
    assert load_table(tsv, "rte")[0].texts == ('say " hi', "ok") and load_table(tsv, "rte")[0].label is None
    jl = tmp_path / "s.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [{"sentence1": "a", "sentence2": "b", "label": 3.5},
                                                      {"sentence1": "c", "sentence2": "d", "label": "x"}]) + "\n")
    with pytest.raises(ValueError, match=rf"{jl}:2: label 'x' is not a number"):
        load_table(jl, "stsb")
    bad = tmp_path / "b.tsv"
    bad.write_text("sentence\tlabel\nfine\t1\nextra\t1\t2\n")
    with pytest.raises(ValueError, match=rf"{bad}:3: expected 2 columns"):
        load_table(bad, "sst2")
    with pytest.raises(ValueError, match="missing text column 'txt'"):
        load_table(bad, "sst2", text_columns=["txt"])
    with pytest.raises(ValueError, match="fmt"):
        load_table(tmp_path / "x.parquet", "sst2")


def test_hub_offline_gives_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")  # a dependency; absent on some GPU images

    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubUnavailableError, match="load_glue_split"):
        load_hub("mnli", "dev_matched")
    assert calls[0][0] == ("nyu-mll/glue", "mnli") and calls[0][1]["split"] == "validation_matched"


def test_hub_rows_are_converted(monkeypatch):
    datasets = pytest.importorskip("datasets")  # a dependency; absent on some GPU images

    class FakeDS(list):
        column_names = ["sentence", "label", "idx"]

    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: FakeDS([{"sentence": "good ", "label": 1, "idx": 0},
                                                {"sentence": "meh", "label": -1, "idx": 1}]))
    ex = load_hub("sst2", "validation")
    assert [(e.uid, e.texts, e.label) for e in ex] == [("sst2/dev/0", ("good",), 1), ("sst2/dev/1", ("meh",), None)]


def test_mnli_test_splits_and_clear_errors_for_plain_test_or_dev(tmp_path):
    from mkd_fast.data import glue_splits

    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2\n")
    for split, text in (("test_matched", "A man runs."), ("test_mismatched", "A cat naps.")):
        row = f"0\t1\t1n\tfiction\t( A )\t( B )\t(A)\t(B)\t{text}\tIt moves.\n"
        _write(tmp_path, "MNLI", f"{split}.tsv", header + row)
        ex = load_glue_split(tmp_path, "mnli", split)
        assert [(e.uid, e.texts, e.label) for e in ex] == [(f"mnli/{split}/0", (text, "It moves."), None)]
    assert glue_splits("mnli") == ["train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"]
    assert glue_splits("sst2") == ["train", "dev", "test"]
    _write(tmp_path, "MNLI", "test.tsv", header)
    _write(tmp_path, "MNLI", "dev.tsv", header)
    for split in ("test", "dev"):
        with pytest.raises(ValueError, match=rf"split: '{split}'.*'test_matched', 'test_mismatched'"):
            load_glue_split(tmp_path, "mnli", split)


def test_cola_test_file_has_a_header(tmp_path):
    # unlike CoLA's train/dev files, glue_data's CoLA/test.tsv has an "index, sentence" header
    _write(tmp_path, "CoLA", "test.tsv", "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked .\n")
    ex = load_glue_split(tmp_path, "cola", "test")
    assert [(e.uid, e.texts, e.label) for e in ex] == [("cola/test/0", ("Bill whistled past the house.",), None),
                                                       ("cola/test/1", ("The car honked .",), None)]


def test_hub_test_split_labels_become_none(monkeypatch):
    datasets = pytest.importorskip("datasets")  # a dependency; absent on some GPU images

    class FakeDS(list):
        column_names = ["sentence1", "sentence2", "label", "idx"]

    rows = {"train": [{"sentence1": "a", "sentence2": "b", "label": 3.8, "idx": 0},
                      {"sentence1": "c", "sentence2": "d", "label": 0.0, "idx": 1}],
            "test": [{"sentence1": "a", "sentence2": "b", "label": -1.0, "idx": 0}]}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: FakeDS(rows[split]))
    assert [e.label for e in load_hub("stsb", "train")] == [3.8, 0.0]
    assert [(e.uid, e.label) for e in load_hub("stsb", "test")] == [("stsb/test/0", None)]  # STS-B test: -1.0

    class FakeNLI(list):
        column_names = ["premise", "hypothesis", "label", "idx"]

    calls = []

    def nli(name, config, split):
        calls.append(split)
        return FakeNLI([{"premise": "p", "hypothesis": "h", "label": -1, "idx": 0}])

    monkeypatch.setattr(datasets, "load_dataset", nli)
    ex = load_hub("mnli", "test_mismatched")
    assert calls == ["test_mismatched"] and [(e.uid, e.label) for e in ex] == [("mnli/test_mismatched/0", None)]
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: FakeNLI([{"premise": "p", "hypothesis": "h", "label": 7, "idx": 0}]))
    with pytest.raises(ValueError, match="label index 7"):  # a classification label out of range is still an error
        load_hub("mnli", "train")
