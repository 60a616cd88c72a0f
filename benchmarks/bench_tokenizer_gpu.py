"""GPU tokenizer benchmark: the CUDA kernel beside a torch reference on the same GPU, one run.

For N = 1, 1,000 and 1,000,000 features (full 4 x 12 tree, D = 1024, the synthetic tree-structured
codebook of benchmarks/bench_tokenizer_cpu.py: children = parent + noise halving per level;
features = leaf + noise) it prints:

* CUDA kernel device time (CUDA events around the raw-pointer call on a preallocated output, no
  finiteness check), as features/s, median of repeats after a warm-up;
* for N = 1, end-to-end host latency (median us, stream synchronised) of
  ``CudaTokenizer.tokenize(torch_tensor, check_finite=False)``, of the raw binding call, and of
  ``tokenize_host`` (NumPy in and out through pinned buffers);
* the torch reference: a straightforward batched tree descent (per level: gather the children's
  centroids, distances |c|^2 - 2 x.c with bmm in float32 (TF32 off), argmin), chunked to bound the
  gather's memory, timed the same way;
* at N >= 1,000,000: the tiled sorted level kernel (default) beside the original one
  (``_sorted_impl = 0``), their exact agreement, and a per-phase breakdown (``_phase_timing``);
* ratios, and agreement: CUDA vs the NumPy reference (exact, on a subsample) and CUDA vs torch
  (float32 argmin, so rare near-tie differences are expected and reported, not failed).

Input sets rotate between repeats for small N so the timing is not of one cached row.

    python3 benchmarks/bench_tokenizer_gpu.py [--sizes 1,1000,1000000] [--json out.json]
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout with the in-place build

from vbedge.tokenize_reference import num_centroids, tokenize_reference  # noqa: E402

# The same synthetic codebook as the CPU benchmark (this folder is on sys.path when run as a script).
from bench_tokenizer_cpu import synthetic_tree  # noqa: E402


def torch_tree_reference(torch, cent_levels, norms_levels, x, branching, chunk):
    """Batched greedy tree descent in torch: gather children, bmm distances, argmin per level."""
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.int64, device=x.device)
    ar = torch.arange(branching, device=x.device)
    for s in range(0, n, chunk):
        xc = x[s:s + chunk]
        node = torch.zeros(xc.shape[0], dtype=torch.int64, device=x.device)
        for level, (cent, norms) in enumerate(zip(cent_levels, norms_levels)):
            children = node[:, None] * branching + ar[None, :] if level else ar[None, :].expand(xc.shape[0], -1)
            c = cent[children]                                   # (b, k, D) gather
            dots = torch.bmm(c, xc[:, :, None])[:, :, 0]         # (b, k)
            best = torch.argmin(norms[children] - 2.0 * dots, dim=1)
            node = children.gather(1, best[:, None])[:, 0]
        out[s:s + chunk] = node
    return out


def event_median_ms(torch, fn, repeat, warmup=2):
    """Median device time (ms) of fn() between CUDA events on the current stream."""
    for _ in range(warmup):
        fn(0)
    torch.cuda.synchronize()
    times = []
    for r in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(r)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), min(times), max(times)


def host_median_us(torch, fn, repeat, warmup=20):
    """Median wall time (us) of fn() followed by a device synchronisation."""
    for r in range(warmup):
        fn(r)
    torch.cuda.synchronize()
    times = []
    for r in range(repeat):
        t0 = time.perf_counter()
        fn(r)
        torch.cuda.current_stream().synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,1000,1000000")
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--branching", type=int, default=12)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from vbedge.cuda_tokenizer import CudaTokenizer, cuda_extension_status

    ok, reason = cuda_extension_status()
    print(f"CUDA tokenizer: {reason}", flush=True)
    if not ok or not torch.cuda.is_available():
        print("no GPU benchmark: " + (reason if not ok else "torch sees no CUDA device"))
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(dev)
    print(f"GPU: {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB; "
          f"torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)

    L, k, D = args.levels, args.branching, args.dim
    rng = np.random.default_rng(args.seed)
    cent, leaf_noise = synthetic_tree(rng, L, k, D)
    t0 = time.perf_counter()
    tok = CudaTokenizer(cent, L, k, device=0)
    print(f"codebook {L} x {k}, D = {D}: {len(cent)} centroids, upload {time.perf_counter() - t0:.2f} s", flush=True)
    impl = tok._impl

    cent_t = torch.from_numpy(cent).to(dev)
    offs = [num_centroids(level, k) for level in range(L + 1)]
    cent_levels = [cent_t[offs[level]:offs[level + 1]] for level in range(L)]
    norms_levels = [(c * c).sum(dim=1) for c in cent_levels]
    leaves_t = cent_levels[-1]

    def make_features(n, seed):
        g = torch.Generator(device=dev)
        g.manual_seed(seed)
        pick = torch.randint(0, leaves_t.shape[0], (n,), device=dev, generator=g)
        return leaves_t[pick] + torch.randn((n, D), device=dev, generator=g) * float(leaf_noise)

    rows, results = [], []
    stream_ptr = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        sets = 16 if n <= 1000 else 1
        xs = [make_features(n, args.seed * 1000 + i) for i in range(sets)]
        outs = [torch.empty(n, dtype=torch.int64, device=dev) for _ in range(sets)]
        repeat = 200 if n <= 1000 else 10
        chunk = 65536

        def run_cuda(r):
            x, o = xs[r % sets], outs[r % sets]
            impl.tokenize_ptr(x.data_ptr(), n, D, "float32", D, o.data_ptr(), stream_ptr(), "tree", 1, 0)

        def run_torch(r):
            torch_tree_reference(torch, cent_levels, norms_levels, xs[r % sets], k, chunk)

        cuda_ms, cuda_min, cuda_max = event_median_ms(torch, run_cuda, repeat)
        torch_ms, torch_min, torch_max = event_median_ms(torch, run_torch, max(3, repeat // 10 if n > 1000 else 50))
        rec = {
            "n": n, "cuda_ms": cuda_ms, "cuda_ms_min": cuda_min, "cuda_ms_max": cuda_max,
            "torch_ms": torch_ms, "torch_ms_min": torch_min, "torch_ms_max": torch_max,
            "cuda_feat_per_s": n / (cuda_ms / 1e3), "torch_feat_per_s": n / (torch_ms / 1e3),
        }
        # Agreement: exact vs the NumPy reference on a subsample; vs torch (float32 argmin) in full.
        run_cuda(0)
        torch.cuda.synchronize()
        ids = outs[0].cpu().numpy()
        sub = np.random.default_rng(1).choice(n, size=min(n, 2000), replace=False)
        ref = tokenize_reference(cent, L, k, xs[0][sub].cpu().numpy(), "tree", 1)
        rec["agree_numpy_ref"] = float(np.mean(ids[sub] == ref))
        rec["agree_numpy_ref_n"] = int(len(sub))
        tids = torch_tree_reference(torch, cent_levels, norms_levels, xs[0], k, chunk).cpu().numpy()
        rec["agree_torch"] = float(np.mean(ids == tids))
        if n >= 1_000_000 and hasattr(impl, "_sorted_impl"):
            # Sorted path: the tiled level kernel (default, timed above) beside the original one, on the
            # same inputs, their agreement (exact), and a per-phase breakdown (CUDA events, debug aid).
            impl._sorted_impl = 0
            orig_ms, orig_min, orig_max = event_median_ms(torch, run_cuda, repeat)
            run_cuda(0)
            torch.cuda.synchronize()
            orig_ids = outs[0].cpu().numpy()
            phases = {}
            for name, val in (("orig", 0), ("tiled", 1)):
                impl._sorted_impl = val
                impl._phase_timing = True
                run_cuda(0)
                phases[name] = list(impl._phase_ms)
                impl._phase_timing = False
            impl._sorted_impl = 1
            rec.update({"orig_sorted_ms": orig_ms, "orig_sorted_ms_min": orig_min, "orig_sorted_ms_max": orig_max,
                        "orig_sorted_feat_per_s": n / (orig_ms / 1e3),
                        "tiled_vs_orig_agree": float(np.mean(orig_ids == ids)), "phase_ms": phases})
            names = ["level 0"] + [f"{kind} {lv}" for lv in range(1, L) for kind in ("sort", "level")]
            print(f"N={n:,} sorted path: tiled {n / (cuda_ms / 1e3):,.0f}/s ({cuda_ms:.2f} ms, min {cuda_min:.2f}) "
                  f"vs original {n / (orig_ms / 1e3):,.0f}/s ({orig_ms:.2f} ms, min {orig_min:.2f}): "
                  f"x{orig_ms / cuda_ms:.2f}; ids identical: {rec['tiled_vs_orig_agree']:.6f}", flush=True)
            for name, vals in phases.items():
                print(f"  phases {name:5s} (ms): " + ", ".join(f"{a} {b:.3f}" for a, b in zip(names, vals))
                      + f"; sum {sum(vals):.3f}", flush=True)
        if n == 1:
            x_np = xs[0].cpu().numpy()
            rec["latency_tokenize_us"] = host_median_us(
                torch, lambda r: tok.tokenize(xs[r % sets], check_finite=False), 500)
            rec["latency_tokenize_checked_us"] = host_median_us(
                torch, lambda r: tok.tokenize(xs[r % sets], check_finite=True), 500)
            rec["latency_raw_binding_us"] = host_median_us(torch, run_cuda, 500)
            rec["latency_tokenize_host_us"] = host_median_us(torch, lambda r: impl.tokenize_host(x_np, "tree", 1), 500)
        results.append(rec)
        rows.append(rec)
        print(f"N={n:>9,}: CUDA {rec['cuda_feat_per_s']:>14,.0f}/s ({cuda_ms * 1e3:9.1f} us)   "
              f"torch {rec['torch_feat_per_s']:>14,.0f}/s ({torch_ms * 1e3:10.1f} us)   "
              f"x{rec['cuda_feat_per_s'] / rec['torch_feat_per_s']:.1f}   "
              f"agree ref {rec['agree_numpy_ref']:.4f}, torch {rec['agree_torch']:.4f}", flush=True)
        del xs, outs
        torch.cuda.empty_cache()

    # Beam and exact (generic kernel) for the record, at a modest N.
    extra = {}
    x = make_features(10000, 777)
    o = torch.empty(10000, dtype=torch.int64, device=dev)
    for mode, beam, n in (("tree", 4, 10000), ("exact", 1, 2000)):
        ms, _, _ = event_median_ms(
            torch, lambda r: impl.tokenize_ptr(x.data_ptr(), n, D, "float32", D, o.data_ptr(), stream_ptr(), mode,
                                               beam, 0), 3, warmup=1)
        extra[f"{mode}_beam{beam}_feat_per_s"] = n / (ms / 1e3)
        extra[f"{mode}_beam{beam}_n"] = n

    print()
    print(f"| N | CUDA features/s | torch ref features/s | CUDA / torch | agree (NumPy ref, subsample) |")
    print(f"|---|---|---|---|---|")
    for rec in rows:
        print(f"| {rec['n']:,} | {rec['cuda_feat_per_s']:,.0f} | {rec['torch_feat_per_s']:,.0f} | "
              f"{rec['cuda_feat_per_s'] / rec['torch_feat_per_s']:.1f}x | {rec['agree_numpy_ref']:.4f} "
              f"(n={rec['agree_numpy_ref_n']}) |")
    for rec in rows:
        if "latency_tokenize_us" in rec:
            print(f"N=1 end to end (median): tokenize(torch, check_finite=False) {rec['latency_tokenize_us']:.1f} us; "
                  f"check_finite=True {rec['latency_tokenize_checked_us']:.1f} us; raw binding "
                  f"{rec['latency_raw_binding_us']:.1f} us; tokenize_host(numpy) {rec['latency_tokenize_host_us']:.1f} us")
    for key in ("tree_beam4", "exact_beam1"):
        print(f"{key} (generic kernel): {extra[key + '_feat_per_s']:,.0f} features/s at N={extra[key + '_n']:,}")
    for rec in rows:
        if "orig_sorted_feat_per_s" in rec:
            print(f"N={rec['n']:,} sorted path: tiled {rec['cuda_feat_per_s']:,.0f}/s vs original "
                  f"{rec['orig_sorted_feat_per_s']:,.0f}/s (x{rec['cuda_feat_per_s'] / rec['orig_sorted_feat_per_s']:.2f}),"
                  f" identical ids {rec['tiled_vs_orig_agree']:.6f}")
            for name, vals in rec["phase_ms"].items():
                print(f"  phases {name} (ms): {', '.join(f'{v:.3f}' for v in vals)} (level 0, sort 1, level 1, ...)")
    big = [r for r in rows if r["n"] >= 1_000_000]
    if big:
        r = big[-1]
        print(f"goals at N={r['n']:,}: >= 50 M/s: {'MET' if r['cuda_feat_per_s'] >= 50e6 else 'NOT MET'}; "
              f">= 5x torch: {'MET' if r['cuda_feat_per_s'] >= 5 * r['torch_feat_per_s'] else 'NOT MET'}")
    lat = [r for r in rows if "latency_tokenize_us" in r]
    if lat:
        print(f"goal N=1 latency < 50 us: {'MET' if lat[0]['latency_tokenize_us'] < 50 else 'NOT MET'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"gpu": props.name, "torch": torch.__version__, "results": results, "extra": extra}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
