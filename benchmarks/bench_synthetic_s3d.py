"""Do S3D features carry the synthetic world's labels? Random vs pretrained S3D, side by side.

Renders a training world and a held-out world (another seed, split test), pretrains S3D on the
training world (vbedge.synthetic.pretrain) and measures, on the held-out clips, for the random
S3D and the pretrained one (the same seeded stem, so both share one stem pass):

- a ridge probe (linear read-out fitted on the training clips);
- leaf-majority accuracy of a hierarchical k-means codebook fitted on the training clips
  (2 x 8 and 3 x 6 leaves): what survives tokenization.

Synthetic data: these figures are about the rendered world, not real video.

    python benchmarks/bench_synthetic_s3d.py --train-videos 48 --test-videos 16 --seconds 120
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
            render_world(work / name, n, seed, split=split, progress=False)
    train, test = world_clips(work / "train", progress=False), world_clips(work / "test", progress=False)
    print(f"{len(train['clips'])} training clips, {len(test['clips'])} held-out clips "
          f"({time.perf_counter() - start:.0f} s)")
    random = build_s3d_feature_extractor(random_init=True, seed=0)
    stem_train = stem_activations(random, train["clips"], k)
    stem_test = stem_activations(random, test["clips"], k)
    result = pretrain_s3d(work / "train", work / "s3d.pth", seconds=args.seconds, max_epochs=args.epochs,
                          trainable_from=k, data=train, stem_cache=stem_train, progress=False)
    print(f"pretraining: {result.epochs} epochs in {result.seconds:.0f} s, last {result.history[-1]}")
    rows = []
    for name, model in (("random S3D", random), ("pretrained S3D", result.extractor)):
        a, b = top_features(model, stem_train, k), top_features(model, stem_test, k)
        row = [name]
        for label in ("verb", "noun"):
            row.append(ridge_probe_accuracy(a, train[label], b, test[label], alpha=10.0))
            for levels, branching in ((2, 8), (3, 6)):
                cb = HierarchicalCodebook.fit(a, levels=levels, branching=branching, seed=0, progress=False)
                row.append(leaf_majority_accuracy(cb.tokenize(a), train[label], cb.tokenize(b), test[label]))
        rows.append(row)
    head = ["", "verb ridge", "verb 2x8", "verb 3x6", "noun ridge", "noun 2x8", "noun 3x6"]
    print(" | ".join(f"{h:>14s}" for h in head))
    for row in rows:
        print(" | ".join([f"{row[0]:>14s}"] + [f"{100 * v:13.1f}%" for v in row[1:]]))
    ratio = np.asarray(rows[1][1:]) / np.maximum(np.asarray(rows[0][1:]), 1e-9)
    print("pretrained / random: " + ", ".join(f"{h} {r:.2f}x" for h, r in zip(head[1:], ratio)))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
