"""Codebook fitting at the issue's scale: hierarchical k-means on 200,000 x 1024 features.

Prints the fit time and the process's peak memory (the issue asks that this fits in memory on a
24 GiB machine), with the machine. Features are synthetic and clustered: 300 random centres plus
Gaussian noise, float32.

    python benchmarks/bench_codebook_fit.py [--n 200000] [--dim 1024] [--levels 4] [--branching 12]
"""

import argparse
import os
import resource
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout

from vbedge import HierarchicalCodebook  # noqa: E402
from vbedge.info import machine_summary  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--branching", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((300, args.dim), dtype=np.float32)
    features = centres[rng.integers(0, len(centres), args.n)]
    features += np.float32(0.5) * rng.standard_normal(features.shape, dtype=np.float32)
    print(f"machine: {machine_summary()}; load average {os.getloadavg()[0]:.2f}")
    print(f"features: {args.n} x {args.dim} float32 ({features.nbytes / 2**30:.2f} GiB), "
          f"tree {args.levels} x {args.branching}")
    start = time.perf_counter()
    codebook = HierarchicalCodebook.fit(features, levels=args.levels, branching=args.branching, seed=args.seed)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    leaves = np.bincount(codebook.tokenize(features[:20_000]), minlength=codebook.num_leaves)
    print(f"fit: {seconds:.1f} s, peak resident memory {peak_gib:.2f} GiB, {codebook!r}")
    print(f"leaves used by the first 20,000 features: {(leaves > 0).sum()} of {codebook.num_leaves}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
