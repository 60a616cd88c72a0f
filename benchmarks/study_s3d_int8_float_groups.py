"""Which groups of S3D convolutions kept in float lift the CPU form's token agreement? (a study, SYNTHETIC world)

One calibration per group (quantize_model(float_nodes=...)) on half of W/world-judge, the full-range
7-bit CPU form of each judged on the other half. Usage: python benchmarks/study_s3d_int8_float_groups.py W
"""
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
W = Path(sys.argv[1])
bundle = Bundle.load(W / "bundle", trusted_keys=False)
spec = PreprocessSpec.from_dict(bundle.preprocessing)
fp32 = bundle.onnx_path("s3d", "fp32")
judge, n = judge_world(W, 36)
clips = collect_clips([judge], spec, max_clips=n, progress=False)
calib, held = clips.split(0.5, seed=0)
out = Path(tempfile.mkdtemp(prefix="sens-"))
fm = onnx.load(str(fp32))
fw = {i.name: numpy_helper.to_array(i) for i in fm.graph.initializer}
groups = {"none": [], "conv0": ["features.0.0."], "stem5": ["features.0.", "features.2.", "features.3."],
          "3bc": ["features.5.", "features.6."], "4b-4f": ["features.8.", "features.9.", "features.10.", "features.11.", "features.12."],
          "5bc": ["features.14.", "features.15."]}
paths = {}
for g, pre in groups.items():
    nodes = [nd.name for nd in fm.graph.node if nd.op_type == "Conv" and any(nd.input[1].startswith(p) for p in pre)]
    quantize_model(fp32, out / f"{g}.onnx", S3DCalibrationReader(calib), dynamic_axes={"clip": [0]}, progress=False, float_nodes=nodes)
    cm = onnx.load(str(out / f"{g}.onnx")); make_cpu_form(cm, u8_range="full", weight_bits=7, float_weights=fw)
    onnx.save(cm, str(out / f"{g}.cpu.onnx")); paths[f"{g} ({len(nodes)})"] = out / f"{g}.cpu.onnx"
rep = evaluate_s3d(fp32, paths, held.clips, bundle.codebook, repeats=5)
for k, v in rep["variants"].items():
    print(f"{k:16s} tokens {v['token_agreement']:.3f} cos {v['cosine_mean']:.5f} worst {v['cosine_worst']:.5f} {v['speedup']:.2f}x")
