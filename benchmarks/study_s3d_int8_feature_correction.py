"""Correcting the INT8 S3D feature itself: mean shift or per-dimension ratio fitted on calibration clips (a study, SYNTHETIC world)

Usage: python benchmarks/study_s3d_int8_feature_correction.py W CPU_FORM_DIR VARIANT...
(CPU_FORM_DIR: the folder study_s3d_int8_cpu_form.py printed, holding VARIANT.cpu.onnx files)
"""
import sys
from pathlib import Path
import numpy as np, onnxruntime as ort
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo_int8 import judge_world
from vbedge.bundle import Bundle
from vbedge.calib.readers import collect_clips
from vbedge.preprocess import PreprocessSpec
W = Path(sys.argv[1]); D = Path(sys.argv[2])
b = Bundle.load(W / "bundle", trusted_keys=False)
spec = PreprocessSpec.from_dict(b.preprocessing)
judge, n = judge_world(W, 36)
clips = collect_clips([judge], spec, max_clips=n, progress=False)
calib, held = clips.split(0.5, seed=0)
def feats(path, cl):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(["feature"], {"clip": c[None]})[0] for c in cl])
fp = b.onnx_path("s3d", "fp32")
fc, fh = feats(fp, calib.clips), feats(fp, held.clips)
ref = np.asarray(b.codebook.tokenize(fh))
def cos(a, b_): return np.sum(a*b_, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b_, axis=1)
for v in sys.argv[3:]:
    qc, qh = feats(D / f"{v}.cpu.onnx", calib.clips), feats(D / f"{v}.cpu.onnx", held.clips)
    shift = (qc - fc).mean(0)
    rel_bias = np.linalg.norm((qh - fh).mean(0)) / np.linalg.norm(qh - fh, axis=1).mean()
    scale = np.sum(qc * fc) / np.sum(qc * qc)
    for name, g in (("raw", qh), ("-shift", qh - shift), ("ratio", (qh) * (fc.mean(0) / np.maximum(qc.mean(0), 1e-6)))):
        t = np.asarray(b.codebook.tokenize(g.astype(np.float32)))
        print(f"{v:10s} {name:8s} tokens {np.mean(t == ref):.3f} cos {cos(g, fh).mean():.5f} worst {cos(g, fh).min():.5f}")
    print(f"   held-out mean error norm / mean per-clip error norm: {rel_bias:.2f}; global scale fit {scale:.4f}")
