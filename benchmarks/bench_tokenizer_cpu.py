"""CPU tokenizer benchmark: NumPy reference, C++ kernel (tree beam 1/4, exact) and faiss flat search.

One run tokenizes the same features with every contender in this process and prints features/s,
ratios against faiss-cpu ``IndexFlatL2`` (exact search over the leaves) and agreement rates.

The codebook is a synthetic full tree (default 4 x 12, D = 1024): level-0 centroids are Gaussian,
each child is its parent plus Gaussian noise whose scale halves per level, so tree descent is
meaningful; features are leaves plus noise (clustered, like real S3D features). Fitting a real
4 x 12 codebook needs far more than 20,736 points and minutes of k-means, which is the codebook's
own benchmark, not this one.

    python benchmarks/bench_tokenizer_cpu.py                # 20,000 features, all cores
    python benchmarks/bench_tokenizer_cpu.py --quick        # small, for a smoke run
    python benchmarks/bench_tokenizer_cpu.py --threads 1
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout with the in-place build

from vbedge.info import cpu_model  # noqa: E402
from vbedge.tokenize_reference import num_centroids, tokenize_reference  # noqa: E402


def blas_info():
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl not installed"
    libs = []
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas":
            libs.append(
                f"{os.path.basename(info.get('filepath', '?'))} {info.get('internal_api')} {info.get('version')} "
                f"arch={info.get('architecture')} threads={info.get('num_threads')}"
            )
    return "; ".join(libs) or "none found"


def synthetic_tree(rng, levels, branching, dim):
    """Stacked centroids of a tree whose children are their parent plus shrinking noise."""
    parts, parent, noise = [], np.zeros((1, dim), np.float32), 1.0
    for _ in range(levels):
        base = np.repeat(parent, branching, axis=0)
        parent = base + rng.standard_normal(base.shape, dtype=np.float32) * np.float32(noise)
        parts.append(parent)
        noise *= 0.5
    return np.ascontiguousarray(np.concatenate(parts)), noise * 2.0


def timed(fn, repeat):
    """Best wall time of `repeat` calls (the machine may be shared) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="features to tokenize (default 20000)")
    ap.add_argument("--threads", type=int, default=0, help="threads for the C++ kernel and faiss (0 = all)")
    ap.add_argument("--quick", action="store_true", help="2,000 features, one repeat: a smoke run")
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--branching", type=int, default=12)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--ref-n", type=int, default=None, help="features for the NumPy reference (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", choices=("clustered", "random"), default="clustered",
                    help="clustered: leaves plus noise (default); random: i.i.d. Gaussian features, the "
                    "worst case for exact mode's pruning")
    ap.add_argument("--noise", type=float, default=1.0,
                    help="clustered data: feature noise in units of the leaf-level noise (default 1)")
    args = ap.parse_args(argv)
    n = 2_000 if args.quick and args.n == 20_000 else args.n
    repeat = 1 if args.quick else 3
    if n < 1 or args.threads < 0:
        ap.error("--n must be >= 1 and --threads >= 0")

    from vbedge import _kernels

    try:
        import faiss
    except ImportError:
        faiss = None

    levels, branching, dim = args.levels, args.branching, args.dim
    rng = np.random.default_rng(args.seed)
    centroids, leaf_noise = synthetic_tree(rng, levels, branching, dim)
    leaf_lo = num_centroids(levels - 1, branching)
    leaves = np.ascontiguousarray(centroids[leaf_lo:])
    if args.data == "clustered":
        pick = rng.integers(0, leaves.shape[0], size=n)
        noise = np.float32(leaf_noise * args.noise)
        features = leaves[pick] + rng.standard_normal((n, dim), dtype=np.float32) * noise
    else:
        features = rng.standard_normal((n, dim), dtype=np.float32)
    features = np.ascontiguousarray(features, dtype=np.float32)

    threads = args.threads or _kernels.openmp_max_threads()
    print("machine")
    print(f"  cpu: {cpu_model()}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), "
          f"{platform.machine()}")
    print(f"  load average before the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"  python {platform.python_version()}, numpy {np.__version__}, "
          f"faiss {getattr(faiss, '__version__', 'not installed') if faiss else 'not installed'}")
    print(f"  numpy/faiss BLAS: {blas_info()}")
    print(f"  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"  vbedge._kernels {_kernels.version()}, SIMD path {_kernels.simd_path()}, threads {threads}")
    print(f"workload: {n} features, tree {levels} x {branching} ({branching ** levels} leaves), D={dim}, "
          f"{args.data} synthetic data"
          f"{f' (noise {args.noise} x leaf noise)' if args.data == 'clustered' else ''}, seed {args.seed}, "
          f"best of {repeat}")

    tok = _kernels.CpuTokenizer(centroids, levels, branching)
    rows = []  # (name, seconds, features timed, ids or None)

    def run_kernel(mode, beam):
        tok.tokenize(features[: min(n, 64)], mode, beam, args.threads)  # warm-up (threads, pages)
        return timed(lambda: tok.tokenize(features, mode, beam, args.threads), repeat)

    t, tree1 = run_kernel("tree", 1)
    rows.append(("C++ tree beam 1", t, n))
    t, tree4 = run_kernel("tree", 4)
    rows.append(("C++ tree beam 4", t, n))
    t, exact = run_kernel("exact", 1)
    rows.append(("C++ exact", t, n))

    faiss_ids = None
    if faiss is not None:
        if args.threads:
            faiss.omp_set_num_threads(args.threads)
        index = faiss.IndexFlatL2(dim)
        index.add(leaves)
        index.search(features[: min(n, 64)], 1)
        t, (_, found) = timed(lambda: index.search(features, 1), repeat)
        faiss_ids = found[:, 0].astype(np.int64)
        rows.append(("faiss IndexFlatL2 (exact)", t, n))

    ref_n = min(n, args.ref_n) if args.ref_n else n
    ref_feats = features[:ref_n]
    t, ref_ids = timed(lambda: tokenize_reference(centroids, levels, branching, ref_feats, "tree", 1), 1)
    rows.append((f"NumPy reference tree beam 1 ({ref_n} features)", t, ref_n))

    faiss_rate = None
    for name, secs, count in rows:
        if name.startswith("faiss"):
            faiss_rate = count / secs
    print()
    print(f"| {'contender':<44} | {'features/s':>12} | {'vs faiss':>9} |")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 11}|")
    for name, secs, count in rows:
        rate = count / secs
        ratio = f"{rate / faiss_rate:.2f}x" if faiss_rate else "n/a"
        print(f"| {name:<44} | {rate:>12,.0f} | {ratio:>9} |")
    print()
    print("agreement")
    print(f"  C++ tree beam 1 == NumPy reference: {np.mean(tree1[:ref_n] == ref_ids) * 100:.2f}% "
          f"({ref_n} features; the contract requires 100%)")
    print(f"  tree beam 1 vs exact ids: {np.mean(tree1 == exact) * 100:.2f}%")
    print(f"  tree beam 4 vs exact ids: {np.mean(tree4 == exact) * 100:.2f}%")
    if faiss_ids is not None:
        print(f"  faiss vs C++ exact ids:   {np.mean(faiss_ids == exact) * 100:.2f}% "
              "(faiss ranks by float32 |x|^2+|c|^2-2x.c, so near-ties may differ)")
    # The live case: one clip at a time.
    one = features[:1]
    lat = []
    for _ in range(20 if args.quick else 200):
        t0 = time.perf_counter()
        tok.tokenize(one, "tree", 1, args.threads)
        lat.append(time.perf_counter() - t0)
    print(f"N = 1 latency, C++ tree beam 1 (median of {len(lat)} calls, Python call included): "
          f"{np.median(lat) * 1e6:.1f} us")
    print(f"load average after the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if np.any(tree1[:ref_n] != ref_ids):
        print("ERROR: the C++ kernel disagrees with the NumPy reference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
