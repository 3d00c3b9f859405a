"""Student inference (token ids -> logits, one task): the BiLSTM student (FastBiLSTM and nn.LSTM) against
the 4x312 and 6x384 Transformer students, batch 1 and 512 of SST-2 dev sentences, one pytest-benchmark
group per batch size.  ``student_throughput.py`` writes the full JSON/PNG report (more batch sizes, ratios,
latency).  Run: ``pytest benchmarks/test_bench_students.py``."""
import functools

import pytest
import torch

from conftest import DEVICE
from student_throughput import ROOT, TASK, TRANSFORMERS, bilstm_student, sentences, transformer_student

MODELS = ["bilstm", "bilstm_nn_lstm", *TRANSFORMERS]


@functools.lru_cache(maxsize=None)
def _examples():
    return sentences(512, ROOT.parent / "shared" / "data" / "glue")[0]


@functools.lru_cache(maxsize=None)
def _model(name):
    torch.manual_seed(0)
    model = bilstm_student(_examples(), 20000) if name.startswith("bilstm") else transformer_student(TRANSFORMERS[name])
    model.to(DEVICE).eval()
    if name.startswith("bilstm"):
        model.use_fast_lstm = name == "bilstm"
    return model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 512])
def test_student_inference(benchmark, name, batch):
    model = _model(name)
    inputs = model.encode(_examples()[:batch], DEVICE)

    def run():
        with torch.inference_mode():
            model(TASK.name, **inputs)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"student inference batch {batch}"
    benchmark.pedantic(run, rounds=30 if batch == 1 else 3, iterations=1, warmup_rounds=1)
