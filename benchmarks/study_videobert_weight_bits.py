"""VideoBERT CPU form with 8- and 7-bit weights, per-token and per-tensor (a study, SYNTHETIC world)

Usage: python benchmarks/study_videobert_weight_bits.py W
"""
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo_int8 import judge_world
from vbedge.bundle import Bundle
from vbedge.calib.calibrate import videobert_feeds
from vbedge.calib.quantize import transformer_cpu_form
from vbedge.calib.readers import collect_clips
from vbedge.calib.report import evaluate_videobert
from vbedge.preprocess import PreprocessSpec
from vbedge.info import machine_summary
W = Path(sys.argv[1])
b = Bundle.load(W / "bundle", trusted_keys=False)
spec = PreprocessSpec.from_dict(b.preprocessing)
judge, n = judge_world(W, 36)
clips = collect_clips([judge], spec, max_clips=n, progress=False)
calib, held = clips.split(0.5, seed=0)
vb = b.onnx_path("videobert", "fp32")
_, held_feeds = videobert_feeds(b.onnx_path("s3d", "fp32"), calib, held, b.codebook, b.vocab, max_sequences=256, seed=0)
out = Path(tempfile.mkdtemp(prefix="vb7-"))
paths = {}
for bits in (8, 7):
    for pt, name in ((("ffn_in",), "token"), ((), "tensor")):
        p = out / f"w{bits}-{name}.onnx"
        transformer_cpu_form(vb, p, per_token=pt, weight_bits=bits)
        paths[f"w{bits}-{name}"] = p
rep = evaluate_videobert(vb, paths, held_feeds, repeats=10)
print(machine_summary())
for k, v in rep["variants"].items():
    print(f"{k:12s} text top1 {v['text_top1_agreement']:.3f} visual {v['visual_top1_agreement']:.3f} {v['speedup']:.2f}x")
