"""What signature checking adds to Bundle.load on a paper-size bundle, side by side in one run.

Contenders, each timed ``--repeat`` times (median and best; the machine may be shared):

* ``hash only``: sha256 of every file the manifest lists, the pass Bundle.load has always made;
* ``load, no keys``: ``Bundle.load(path, trusted_keys=False)``: hashes, external-data scan of
  every ONNX file, codebook and vocabulary checks;
* ``load, trusted key``: the same with ``trusted_keys=[public key]`` (Ed25519 check of manifest.sig);
* the two new parts alone: the signature check and the external-data scan.

"Added by verification" is signature + scan: what a signed load costs beyond today's checks.

The default bundle is synthetic (say so wherever its figures are quoted): ONNX files with the sizes
and tensor/node counts of a real bundle built by ``vbedge build`` (S3D 32 MB fp32 + 16 MB fp16 with
155 initializers and ~180 nodes; VideoBERT on MiniLM 92 MB + 46 MB with 130 initializers and ~270
nodes), random weights, and a paper-size codebook (4 levels x 12 branches, 1024-d, 92 MB).
``--bundle PATH`` times a real bundle instead (copied to a temporary folder first, since it is
signed there). Needs ``onnx`` (synthetic bundle only) and ``cryptography``; no torch.

    python benchmarks/bench_bundle_verify.py
    python benchmarks/bench_bundle_verify.py --bundle /path/to/bundle --repeat 7
    python benchmarks/bench_bundle_verify.py --quick      # small files, smoke run
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout

from vbedge.bundle import MANIFEST_NAME, Bundle, sha256_file, sign_bundle, write_manifest  # noqa: E402
from vbedge.info import machine_summary  # noqa: E402
from vbedge.onnx_external import external_data_references  # noqa: E402
from vbedge.signing import SIGNATURE_NAME, generate_key_pair, resolve_trusted_keys, verify_manifest_bytes  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"word{i}" for i in range(995)]


def synthetic_onnx(path, total_bytes, initializers, nodes, dtype, seed):
    """An ONNX file of ~``total_bytes`` with ``initializers`` weight tensors and ``nodes`` nodes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize
    per = max(1, total_bytes // initializers // itemsize)
    weights = [numpy_helper.from_array(rng.standard_normal(per, dtype=np.float32).astype(dtype), f"w{i}")
               for i in range(initializers)]
    graph_nodes, previous = [], "x"
    for i in range(nodes):
        # A chain of cheap nodes touching the weights: the walker's cost grows with node count.
        graph_nodes.append(helper.make_node("Identity", [previous], [f"t{i}"], name=f"n{i}"))
        previous = f"t{i}"
    graph = helper.make_graph(graph_nodes, "synthetic",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["n"])], weights)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def make_synthetic_bundle(root, quick):
    from vbedge import HierarchicalCodebook, VideoBertVocab

    scale = 1 / 64 if quick else 1
    root.mkdir(parents=True)
    specs = [("s3d.onnx", 32e6, 155, 177, np.float32), ("s3d.fp16.onnx", 16e6, 155, 181, np.float16),
             ("videobert.onnx", 92e6, 130, 268, np.float32), ("videobert.fp16.onnx", 46e6, 130, 344, np.float16)]
    for seed, (name, size, inits, nodes, dtype) in enumerate(specs):
        synthetic_onnx(root / name, int(size * scale), inits, nodes, dtype, seed)
    levels, branching, dim = (2, 3, 64) if quick else (4, 12, 1024)
    rows = sum(branching ** (i + 1) for i in range(levels))
    codebook = HierarchicalCodebook(np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32),
                                    levels, branching)
    codebook.save(root / "codebook.npz")
    (root / "wordpiece.txt").write_text("\n".join(WORDS) + "\n")
    VideoBertVocab.from_wordpiece(root / "wordpiece.txt", levels=levels, branching=branching).save(root)
    (root / "wordpiece.txt").unlink()
    models = {
        "s3d": {"onnx": {"fp32": "s3d.onnx", "fp16": "s3d.fp16.onnx"}, "feature_dim": dim},
        "videobert": {"onnx": {"fp32": "videobert.onnx", "fp16": "videobert.fp16.onnx"},
                      "codebook_sha256": codebook.sha256},
    }
    write_manifest(root, models, "codebook.npz", {"vocab_file": "vocab.txt", "layout_file": "vocab_layout.json"},
                   {"fps": 20, "clip_frames": 30})


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="time this real bundle (copied to a temporary folder) instead")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per contender (default 5)")
    parser.add_argument("--quick", action="store_true", help="small synthetic files (smoke run)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        tmp = Path(tmp)
        root = tmp / "bundle"
        if args.bundle:
            shutil.copytree(args.bundle, root, ignore=shutil.ignore_patterns("engines", SIGNATURE_NAME))
            origin = f"real bundle {args.bundle}"
        else:
            print("writing the synthetic bundle ...", flush=True)
            make_synthetic_bundle(root, args.quick)
            origin = "synthetic bundle (random weights, real-bundle sizes and tensor counts)"
        generate_key_pair(tmp / "k.pem", tmp / "k.pub.pem")
        sign_bundle(root, tmp / "k.pem")
        keys = resolve_trusted_keys([tmp / "k.pub.pem"])
        manifest = Bundle.load(root, trusted_keys=False).manifest
        names = sorted(manifest["files"])
        onnx_files = [root / n for n in names if n.endswith(".onnx")]
        total = sum(manifest["files"][n]["size"] for n in names)
        manifest_bytes = (root / MANIFEST_NAME).read_bytes()
        references = sum(len(external_data_references(p)) for p in onnx_files)

        def hash_only():
            for name in names:
                sha256_file(root / name)

        def scan():
            for path in onnx_files:
                external_data_references(path)

        contenders = [
            ("hash only (today's pass)", hash_only),
            ("load, no keys", lambda: Bundle.load(root, trusted_keys=False)),
            ("load, trusted key", lambda: Bundle.load(root, trusted_keys=keys)),
            ("signature check alone", lambda: verify_manifest_bytes(manifest_bytes, root / SIGNATURE_NAME, keys)),
            ("external-data scan alone", scan),
        ]
        hash_only()  # warm the page cache: every contender then reads from memory alike
        results = {name: timed(fn, args.repeat) for name, fn in contenders}

    print(f"machine: {machine_summary()}")
    print(f"bundle:  {origin}: {len(names)} files, {total / 1e6:.1f} MB, {len(onnx_files)} ONNX files, "
          f"{references} external-data references; warm page cache; {args.repeat} runs each")
    base = results["load, no keys"][0]
    print(f"{'contender':<28} {'median ms':>10} {'best ms':>9} {'vs load, no keys':>17}")
    for name, (median, best) in results.items():
        print(f"{name:<28} {median * 1e3:10.2f} {best * 1e3:9.2f} {median / base:16.3f}x")
    added = results["signature check alone"][0] + results["external-data scan alone"][0]
    print(f"added by verification (signature + external-data scan, medians): {added * 1e3:.2f} ms "
          f"(goal: under 50 ms); signed load - unsigned load: "
          f"{(results['load, trusted key'][0] - base) * 1e3:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
