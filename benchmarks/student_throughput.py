"""Student inference throughput: the BiLSTM student against Transformer students, token ids -> logits.

Models (random weights; speed does not depend on training):
  * ``bilstm``: Tang et al.'s shape: 300-d word embeddings (20,000-word vocabulary), 1 x BiLSTM 150 per
    direction, max pooling, a 400-unit shared layer, one head.  In eval mode it runs mkd_fast.FastBiLSTM
    (on CPU with the embedding folded into the first layer's input projection).
  * ``bilstm_nn_lstm``: the same student with ``use_fast_lstm = False`` (stock nn.LSTM on packed input).
  * ``transformer_4x312`` (TinyBERT-4 shape) and ``transformer_6x384`` (MiniLM-L6 shape): BERT students
    built with transformers (SDPA attention), WordPiece vocabulary of the MiniLM tokenizer, [CLS] pooling.

Inputs: SST-2 dev sentences in their real length distribution (``../shared/data/glue``; the synthetic
demo corpus when that folder is missing), encoded beforehand by each model's own tokenizer, in
batches in the file's order (padding to each batch's longest, as a server would).  One task (sentiment).

Reported per model and batch size: sequences per second (best of ``--repeats`` passes over all inputs,
under ``torch.inference_mode``), the median latency of one batch-1 call, and each model's throughput as a
multiple of the 4-layer Transformer's.  Results: JSON under benchmarks/results/ and a PNG (throughput vs
batch size, log-log).

    python benchmarks/student_throughput.py [--device cpu|cuda] [--batch-sizes 1 8 64 512] [--sentences 4096]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_info import cpu_name, git_commit  # noqa: E402
from mkd_fast.data.examples import Example  # noqa: E402
from mkd_fast.data.vocab import Vocab, build_vocab  # noqa: E402
from mkd_fast.students import (BiLSTMStudent, BiLSTMStudentConfig, TransformerStudent,  # noqa: E402
                               TransformerStudentConfig)
from mkd_fast.tasks.definition import TaskDef  # noqa: E402

TASK = TaskDef(name="sst2", kind="classification", label_names=("negative", "positive"))
TRANSFORMERS = {"transformer_4x312": dict(num_layers=4, hidden_size=312, num_heads=12, intermediate_size=1200),
                "transformer_6x384": dict(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536)}


def sentences(n: int, data_dir: Path):
    """(examples, source): n SST-2 dev sentences (the 872 full sentences, cycled), else the synthetic corpus."""
    if (data_dir / "SST-2" / "dev.tsv").is_file():
        from mkd_fast.data.glue_files import load_glue_split

        texts = [e.texts for e in load_glue_split(data_dir, "sst2", "dev")]
        source = f"SST-2 dev ({len(texts)} sentences, cycled to {n})"
    else:
        from mkd_fast.data.synthetic import make_synthetic_corpus

        texts = [e.texts for e in make_synthetic_corpus(seed=0)["sentiment"]["train"]]
        source = f"synthetic sentiment ({len(texts)} sentences, cycled to {n})"
    return [Example(str(i), "sst2", texts[i % len(texts)]) for i in range(n)], source


def bilstm_student(examples, vocab_size: int) -> BiLSTMStudent:
    vocab = build_vocab(examples, max_size=vocab_size)
    filler = vocab_size - len(vocab)
    if filler > 0:  # a real student's vocabulary size (only the size matters here: the embedding table)
        vocab = Vocab(vocab.itos + [f"<w{i}>" for i in range(filler)])
    cfg = BiLSTMStudentConfig(embedding_dim=300, hidden_size=150, num_layers=1, pooling="max", shared_dims=[400],
                              dropout=0.1, max_length=128)
    return BiLSTMStudent(vocab, [TASK], cfg)


def transformer_student(shape: dict) -> TransformerStudent:
    from mkd_fast.teachers.loading import load_tokenizer

    return TransformerStudent(load_tokenizer("minilm"), [TASK], TransformerStudentConfig(**shape, max_length=128))


def measure(model, batches, repeats: int, device) -> float:
    """Sequences per second over all batches, best of ``repeats`` passes (after one warm-up pass)."""
    n = sum(int(b["input_ids"].shape[0]) for b in batches)
    best = float("inf")
    with torch.inference_mode():
        for rep in range(repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            for b in batches:
                model(TASK.name, **b)
            sync(device)
            if rep:
                best = min(best, time.perf_counter() - t0)
    return n / best


def latency_ms(model, examples, device, calls: int) -> float:
    """Median milliseconds of one batch-1 call (encoded beforehand), over ``calls`` different sentences."""
    batches = [model.encode([e], device) for e in examples[:calls]]
    times = []
    with torch.inference_mode():
        for b in batches[:10]:
            model(TASK.name, **b)
        for b in batches:
            sync(device)
            t0 = time.perf_counter()
            model(TASK.name, **b)
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64, 512])
    p.add_argument("--sentences", type=int, default=2048, help="inputs per pass (batch 1 uses the first 256)")
    p.add_argument("--vocab-size", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    p.add_argument("--output", default=None, help="default benchmarks/results/student_throughput_<device>.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    examples, source = sentences(args.sentences, Path(args.data_dir))
    torch.manual_seed(0)
    models = {"bilstm": bilstm_student(examples, args.vocab_size)}
    models["bilstm_nn_lstm"] = models["bilstm"]
    for name, shape in TRANSFORMERS.items():
        models[name] = transformer_student(shape)
    info = {}
    for name, m in models.items():
        m.to(device).eval()
        info[name] = {"parameters": m.num_parameters(),
                      "parameters_without_embeddings": m.num_parameters(exclude_embeddings=True)}

    results = {name: {} for name in models}
    for name, m in models.items():
        if isinstance(m, BiLSTMStudent):
            m.use_fast_lstm = name != "bilstm_nn_lstm"   # the same model, with and without FastBiLSTM
        for bs in args.batch_sizes:
            exs = examples[:256] if bs == 1 else examples
            batches = [m.encode(exs[i:i + bs], device) for i in range(0, len(exs), bs)]
            results[name][str(bs)] = round(measure(m, batches, args.repeats, device), 1)
            print(f"{name:20s} batch {bs:5d}: {results[name][str(bs)]:12,.1f} seq/s", flush=True)
        info[name]["latency_ms_batch1"] = round(latency_ms(m, examples, device, 200), 3)
        print(f"{name:20s} latency at batch 1: {info[name]['latency_ms_batch1']:.3f} ms", flush=True)
    models["bilstm"].use_fast_lstm = True

    ref = results["transformer_4x312"]
    ratios = {name: {bs: round(v / ref[bs], 2) for bs, v in r.items()} for name, r in results.items()}
    fast_vs_nn = {bs: round(results["bilstm"][bs] / results["bilstm_nn_lstm"][bs], 2) for bs in results["bilstm"]}
    lengths = [len(e.texts[0].split()) for e in examples]
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "sequences_per_second": results, "vs_transformer_4x312": ratios, "bilstm_fast_vs_nn_lstm": fast_vs_nn,
        "models": info, "inputs": {"source": source, "mean_words": round(sum(lengths) / len(lengths), 1),
                                   "max_words": max(lengths)},
        "goal": "BiLSTM student >= 10x the 4-layer Transformer student's throughput at batch 512",
        "goal_met_batch512": (ratios["bilstm"].get("512", 0) >= 10) if "512" in ratios["bilstm"] else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "commit": git_commit(),
    }
    path = Path(args.output) if args.output else ROOT / "benchmarks" / "results" / f"student_throughput_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    plot(results, out["device"], path.with_suffix(".png"))
    print(json.dumps({"vs_transformer_4x312": ratios, "bilstm_fast_vs_nn_lstm": fast_vs_nn}, indent=1))
    print(f"wrote {path}")
    return 0


def plot(results, device_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, r in results.items():
        xs = [int(b) for b in r]
        ax.plot(xs, [r[b] for b in r], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("sequences / second (token ids -> logits)")
    ax.set_title(f"Student inference throughput, {device_name}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
