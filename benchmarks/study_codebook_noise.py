"""How many visual tokens survive random feature noise of a given cosine? (a study, SYNTHETIC world)

FP32 features of W/world-judge's held-out half plus isotropic noise, 20 draws per cosine, through
the bundle's codebook. Usage: python benchmarks/study_codebook_noise.py W
"""
import sys
from pathlib import Path
import numpy as np, onnxruntime as ort
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo_int8 import judge_world
from vbedge.bundle import Bundle
from vbedge.calib.readers import collect_clips
from vbedge.preprocess import PreprocessSpec
W = Path(sys.argv[1])
b = Bundle.load(W / "bundle", trusted_keys=False)
spec = PreprocessSpec.from_dict(b.preprocessing)
judge, n = judge_world(W, 36)
clips = collect_clips([judge], spec, max_clips=n, progress=False)
calib, held = clips.split(0.5, seed=0)
s = ort.InferenceSession(str(b.onnx_path("s3d", "fp32")), providers=["CPUExecutionProvider"])
f = np.concatenate([s.run(["feature"], {"clip": c[None]})[0] for c in held.clips])
ref = np.asarray(b.codebook.tokenize(f))
rng = np.random.default_rng(0)
for cos in (0.9999, 0.9995, 0.999, 0.998, 0.997):
    rel = np.sqrt(2 * (1 - cos))
    ag = []
    for r in range(20):
        noise = rng.normal(size=f.shape); noise *= (rel * np.linalg.norm(f, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True))
        ag.append(np.mean(np.asarray(b.codebook.tokenize((f + noise).astype(np.float32))) == ref))
    print(f"random noise at cosine ~{cos}: token agreement {np.mean(ag):.3f} (min {np.min(ag):.3f})")
