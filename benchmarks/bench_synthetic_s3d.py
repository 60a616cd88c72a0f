"""Do S3D features carry the synthetic world's labels? Random vs pretrained S3D, side by side.

Renders a training world and a held-out world (another seed, split test), pretrains S3D on the
training world (vbedge.synthetic.pretrain) and measures, on the held-out clips, for the random
S3D and the pretrained one (the same seeded stem, so both share one stem pass):

- a ridge probe (linear read-out fitted on the training clips);
- leaf-majority accuracy of a hierarchical k-means codebook fitted on the training clips
  (2 x 8, 3 x 6 and the demo's 2 x 12 leaves): what survives tokenization.

``--window-epochs 0,2`` adds contenders in the same run: S3D pretrained with every layer first
trained that many epochs on short windows (``pretrain_s3d(window_epochs=...)``; 0 is the frozen
random stem), each with its own pretraining time.

Synthetic data: these figures are about the rendered world, not real video.

    python benchmarks/bench_synthetic_s3d.py --train-videos 48 --test-videos 16 --seconds 120
    python benchmarks/bench_synthetic_s3d.py --train-videos 160 --test-videos 36 --epochs 6 --seconds 900 \
        --window-epochs 0,2          # the demo's world and pretraining, frozen vs trained stem
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-videos", type=int, default=48)
    p.add_argument("--test-videos", type=int, default=16)
    p.add_argument("--seconds", type=float, default=120.0, help="S3D pretraining budget")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--trainable-from", type=int, default=None)
    p.add_argument("--window-epochs", default="0",
                   help="comma-separated contenders, each window_epochs (0: the frozen random stem) with optional "
                        "+augment, +balance, +cropN (pretrain_s3d's options) and +topN (N epochs of the top instead "
                        "of --epochs), e.g. 0,2,2+augment+balance,3+top0+crop56")
    p.add_argument("--window-frames", type=int, default=8)
    p.add_argument("--workdir", default=None, help="keep the worlds here (default: a temporary folder)")
    args = p.parse_args(argv)

    import torch

    from vbedge import HierarchicalCodebook
    from vbedge.info import machine_summary
    from vbedge.models.s3d import build_s3d_feature_extractor
    from vbedge.synthetic.pretrain import (DEFAULT_TRAINABLE_FROM, pretrain_s3d, stem_activations, top_features,
                                           world_clips)
    from vbedge.synthetic.probe import leaf_majority_accuracy, ridge_probe_accuracy
    from vbedge.synthetic.world import render_world

    start = time.perf_counter()
    k = DEFAULT_TRAINABLE_FROM if args.trainable_from is None else args.trainable_from
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vbedge-synth-bench-"))
    print(f"machine: {machine_summary()}; torch threads {torch.get_num_threads()}")
    print("SYNTHETIC world (vbedge.synthetic): figures are about rendered videos, not real ones")
    for name, n, seed, split in (("train", args.train_videos, 0, "train"), ("test", args.test_videos, 1000, "test")):
        if not (work / name / "world.json").is_file():
            render_world(work / name, n, seed, split=split, progress=False, workers=None)
    train, test = (world_clips(work / name, progress=False, workers=None) for name in ("train", "test"))
    print(f"{len(train['clips'])} training clips, {len(test['clips'])} held-out clips "
          f"({time.perf_counter() - start:.0f} s)")
    random = build_s3d_feature_extractor(random_init=True, seed=0)
    stem_started = time.perf_counter()
    stem_train = stem_activations(random, train["clips"], k)
    stem_pass = time.perf_counter() - stem_started
    stem_test = stem_activations(random, test["clips"], k)
    trees = ((2, 8), (3, 6), (2, 12))

    def scores(name, model, stem_a, stem_b):
        a, b = top_features(model, stem_a, k), top_features(model, stem_b, k)
        row = [name]
        for label in ("verb", "noun"):
            row.append(ridge_probe_accuracy(a, train[label], b, test[label], alpha=10.0))
            for levels, branching in trees:
                cb = HierarchicalCodebook.fit(a, levels=levels, branching=branching, seed=0, progress=False)
                row.append(leaf_majority_accuracy(cb.tokenize(a), train[label], cb.tokenize(b), test[label]))
        return row

    rows = [scores("random S3D", random, stem_train, stem_test)]
    for contender in args.window_epochs.split(","):
        window_epochs, *flags = contender.strip().split("+")
        window_epochs = int(window_epochs)
        top_epochs = [int(f[3:]) for f in flags if f.startswith("top") and f[3:].isdigit()]
        crops = [int(f[4:]) for f in flags if f.startswith("crop") and f[4:].isdigit()]
        unknown = set(flags) - {"augment", "balance"} - {f"top{n}" for n in top_epochs} - {f"crop{n}" for n in crops}
        if unknown:
            p.error(f"unknown contender option(s) {sorted(unknown)} in {contender!r}")
        shared = window_epochs == 0  # the frozen stem is the random one: reuse its pass
        result = pretrain_s3d(work / "train", work / f"s3d-{contender}.pth", seconds=args.seconds,
                              max_epochs=top_epochs[-1] if top_epochs else args.epochs, trainable_from=k, data=train,
                              stem_cache=stem_train if shared else None, window_epochs=window_epochs,
                              window_frames=args.window_frames, window_crop=crops[-1] if crops else None,
                              augment="augment" in flags,
                              balance="balance" in flags, progress=False)
        model = result.extractor
        own = (stem_train, stem_test) if shared else (stem_activations(model, train["clips"], k),
                                                     stem_activations(model, test["clips"], k))
        name = ("pretrained" if shared else f"+{window_epochs} window ep.") + "".join(f" +{f}" for f in flags)
        print(f"{name}: {result.seconds:.0f} s of pretraining "
              f"({f'+ {stem_pass:.0f} s of the random stem pass' if shared else 'the stem trained, its pass included'}),"
              f" {result.epochs} epochs of the top, last {result.history[-1]}")
        rows.append(scores(name, model, *own))
    head = ["", "verb ridge"] + [f"verb {a}x{b}" for a, b in trees] + ["noun ridge"] + [f"noun {a}x{b}" for a, b in trees]
    print(" | ".join(f"{h:>28s}" if i == 0 else f"{h:>11s}" for i, h in enumerate(head)))
    for row in rows:
        print(" | ".join([f"{row[0]:>28s}"] + [f"{100 * v:10.1f}%" for v in row[1:]]))
    for row in rows[1:]:
        ratio = np.asarray(row[1:]) / np.maximum(np.asarray(rows[0][1:]), 1e-9)
        print(f"{row[0]} / random: " + ", ".join(f"{h} {r:.2f}x" for h, r in zip(head[1:], ratio)))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
