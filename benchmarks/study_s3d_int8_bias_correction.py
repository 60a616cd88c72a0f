"""Analytical bias correction of the S3D CPU forms' weight error (Nagel et al. 2019; a study, SYNTHETIC world)

Each convolution's bias minus (W_q - W) x E[input], E over the calibration half of W/world-judge;
judged on the other half. Usage: python benchmarks/study_s3d_int8_bias_correction.py W
"""
import sys, time, tempfile
from pathlib import Path
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto
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
out = Path(tempfile.mkdtemp(prefix="bc2-"))
qdq = out / "q.onnx"
quantize_model(fp32, qdq, S3DCalibrationReader(calib), dynamic_axes={"clip": [0]}, progress=False)
fm = onnx.load(str(fp32))
fw = {i.name: numpy_helper.to_array(i) for i in fm.graph.initializer}
convs = [n for n in fm.graph.node if n.op_type == "Conv"]
names = sorted({c.input[0] for c in convs})
m = onnx.ModelProto(); m.CopyFrom(fm); del m.graph.output[:]
for nm in names: m.graph.output.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, None))
s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
acc = None
for c in calib.clips:
    o = s.run(names, {"clip": c[None]})
    mm = [x.mean(axis=(0, 2, 3, 4)).astype(np.float64) for x in o]
    acc = mm if acc is None else [a + b for a, b in zip(acc, mm)]
in_mean = {nm: a / len(calib.clips) for nm, a in zip(names, acc)}
w_input = {c.input[1]: c.input[0] for c in convs}

def base(name):
    for suf in ("_7bit", "_quantized"):
        if name.endswith(suf): name = name[: -len(suf)]
    return name

variants = {}
for label, opts in (("full-w7", dict(u8_range="full", weight_bits=7)), ("full-w8", dict(u8_range="full", weight_bits=8)), ("same-w8", dict(u8_range="same", weight_bits=8))):
    cm = onnx.load(str(qdq)); make_cpu_form(cm, float_weights=fw, **opts)
    p = out / f"{label}.onnx"; onnx.save(cm, str(p)); variants[label] = p
    inits = {i.name: i for i in cm.graph.initializer}
    prod = {o: nd for nd in cm.graph.node for o in nd.output}
    fixed = 0
    for nd in cm.graph.node:
        if nd.op_type != "Conv" or nd.input[1] not in prod: continue
        dq = prod[nd.input[1]]
        w = base(dq.input[0])
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        sc = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        wq = q * sc.reshape((-1,) + (1,) * (q.ndim - 1))
        eps = wq - fw[w]
        mu = in_mean[w_input[w]]
        delta = eps.sum(axis=(2, 3, 4)) @ mu  # (out,)
        bname = nd.input[2]
        b = numpy_helper.to_array(inits[bname]).astype(np.float64)
        inits[bname].CopyFrom(numpy_helper.from_array((b - delta).astype(np.float32), bname))
        fixed += 1
    p = out / f"{label}-bc.onnx"; onnx.save(cm, str(p)); variants[f"{label}-bc"] = p
    print(label, "corrected", fixed)
rep = evaluate_s3d(fp32, variants, held.clips, bundle.codebook, repeats=3)
for k, v in rep["variants"].items():
    print(f"{k:16s} tokens {v['token_agreement']:.3f} cos {v['cosine_mean']:.5f} worst {v['cosine_worst']:.5f} {v['speedup']:.2f}x")
