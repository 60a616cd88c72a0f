"""Which groups of S3D convolutions kept in float lift the CPU form's token agreement? (a study, SYNTHETIC world)

One calibration per group (quantize_model(float_nodes=...)) on half of W/world-judge, the CPU form of
each (full range, weight bits for this CPU unless --bits, the float stem unless --no-float-stem) judged
on the other half. Usage: python benchmarks/study_s3d_int8_float_groups.py W [--groups a,b+c] [--bits 7|8]
[--no-float-stem] [--swap] [--concat shared|own|both] [--qdq]. Groups: the names below, '+' joins them
into one contender. --concat both calibrates each group twice, with each Concat's inputs on the concat
output's scale (quantize_model(share_concat=True), the default) and on their own; --qdq also judges the
Q/DQ graphs (run as they are, in float: TensorRT's arithmetic).
"""
import argparse
import sys, tempfile
from pathlib import Path
import numpy as np, onnx, onnxruntime as ort
from onnx import numpy_helper
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo_int8 import judge_world
from vbedge.bundle import Bundle
from vbedge.calib.quantize import make_cpu_form, quantize_model
from vbedge.calib.readers import S3DCalibrationReader, collect_clips
from vbedge.calib.report import evaluate_s3d
from vbedge.preprocess import PreprocessSpec
ort.set_default_logger_severity(3)
from vbedge.info import machine_summary
ap = argparse.ArgumentParser()
ap.add_argument("workdir")
ap.add_argument("--groups", default="none,conv0,stem5,3bc,4b-4f,5bc")
ap.add_argument("--bits", default="auto")
ap.add_argument("--no-float-stem", action="store_true")
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--concat", choices=("shared", "own", "both"), default="shared",
                help="Concat input scales: the output's (the default), their own, or both as two contenders")
ap.add_argument("--qdq", action="store_true", help="also judge each Q/DQ graph, emulated in float")
ap.add_argument("--swap", action="store_true", help="calibrate on the judged half and judge on the other (a check)")
args = ap.parse_args()
W = Path(args.workdir)
bits = args.bits if args.bits == "auto" else int(args.bits)
print(machine_summary())
bundle = Bundle.load(W / "bundle", trusted_keys=False)
spec = PreprocessSpec.from_dict(bundle.preprocessing)
fp32 = bundle.onnx_path("s3d", "fp32")
judge, n = judge_world(W, 36)
clips = collect_clips([judge], spec, max_clips=n, progress=False)
calib, held = clips.split(0.5, seed=0)
if args.swap:
    calib, held = held, calib
out = Path(tempfile.mkdtemp(prefix="sens-"))
fm = onnx.load(str(fp32))
fw = {i.name: numpy_helper.to_array(i) for i in fm.graph.initializer}
blocks = {"conv0": ["features.0.0."], "conv1": ["features.0.1."], "conv2": ["features.2."],
          "conv3": ["features.3."], "3b": ["features.5."], "3c": ["features.6."], "4b": ["features.8."],
          "4c": ["features.9."], "4d": ["features.10."], "4e": ["features.11."], "4f": ["features.12."],
          "5b": ["features.14."], "5c": ["features.15."]}
named = {"none": [], "stem5": ["features.0.", "features.2.", "features.3."], "3bc": blocks["3b"] + blocks["3c"],
         "4b-4f": sum((blocks[k] for k in ("4b", "4c", "4d", "4e", "4f")), []), "5bc": blocks["5b"] + blocks["5c"],
         **blocks}
groups = {g: sum((named[part] for part in g.split("+")), []) for g in args.groups.split(",")}
paths = {}
shares = {"shared": [True], "own": [False], "both": [True, False]}[args.concat]
for g, pre in groups.items():
    nodes = [nd.name for nd in fm.graph.node if nd.op_type == "Conv" and any(nd.input[1].startswith(p) for p in pre)]
    for share in shares:
        tag = f"{g} ({len(nodes)})" + ("" if len(shares) == 1 else (" shared" if share else " own"))
        stem = out / f"{g}-{int(share)}"
        quantize_model(fp32, stem.with_suffix(".onnx"), S3DCalibrationReader(calib), dynamic_axes={"clip": [0]},
                       progress=False, float_nodes=nodes, share_concat=share)
        cm = onnx.load(str(stem.with_suffix(".onnx"))); make_cpu_form(cm, u8_range="full", weight_bits=bits, float_weights=fw,
                                                                  float_stem=not args.no_float_stem)
        onnx.save(cm, str(stem.with_suffix(".cpu.onnx"))); paths[tag] = stem.with_suffix(".cpu.onnx")
        if args.qdq:
            paths[tag + " qdq"] = stem.with_suffix(".onnx")
rep = evaluate_s3d(fp32, paths, held.clips, bundle.codebook, repeats=args.repeats)
for k, v in rep["variants"].items():
    print(f"{k:24s} tokens {v['token_agreement']:.3f} cos {v['cosine_mean']:.5f} worst {v['cosine_worst']:.5f} {v['speedup']:.2f}x")
