"""Which S3D convolutions kept in float lift INT8 token agreement on a trained bundle? (a study)

Calibrates the bundle's FP32 S3D on half of the clips of VIDEOS (whole videos, seed 0, as
``vbedge calibrate --holdout 0.5`` splits them) once per variant, each variant keeping one group of
convolutions in float (``quantize_model(float_nodes=...)``), and reports the ONNX Runtime CPU form
of each on the other half: feature cosine, visual-token agreement with FP32 through the bundle's
codebook, and speed against the FP32 file (interleaved, one process).

Usage: python benchmarks/study_s3d_int8_float_blocks.py W   (W: a ``vbedge demo --workdir`` folder;
uses W/bundle and W/world-test) [--method minmax]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from vbedge.info import machine_summary

#: variant -> prefixes of the weight names of the convolutions kept in float (torchvision S3D:
#: features.0 the 7 x 7 stem, 2-3 the second stage, 12 Mixed_4f, 14-15 Mixed_5b/5c).
VARIANTS = {
    "none": [],
    "conv0": ["features.0.0."],
    "stem": ["features.0.", "features.2.", "features.3."],
    "5c": ["features.15."],
    "5b5c": ["features.14.", "features.15."],
    "4f5b5c": ["features.12.", "features.14.", "features.15."],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--max-clips", type=int, default=96)
    args = parser.parse_args(argv)

    import onnx

    from vbedge.bundle import Bundle
    from vbedge.calib.quantize import quantize_model
    from vbedge.calib.readers import S3DCalibrationReader, collect_clips
    from vbedge.calib.report import evaluate_s3d
    from vbedge.preprocess import PreprocessSpec

    bundle = Bundle.load(args.workdir / "bundle", trusted_keys=False)
    spec = PreprocessSpec.from_dict(bundle.preprocessing)
    fp32 = bundle.onnx_path("s3d", "fp32")
    clips = collect_clips([args.workdir / "world-test"], spec, max_clips=args.max_clips, progress=False)
    calib, held = clips.split(0.5, seed=0)
    graph = onnx.load(str(fp32), load_external_data=False).graph
    out = Path(tempfile.mkdtemp(prefix="s3d-float-study-"))
    paths, counts = {}, {}
    for name, prefixes in VARIANTS.items():
        nodes = [n.name for n in graph.node if n.op_type == "Conv" and any(n.input[1].startswith(p) for p in prefixes)]
        counts[name] = len(nodes)
        quantize_model(fp32, out / f"{name}.onnx", S3DCalibrationReader(calib), method=args.method,
                       cpu_path=out / f"{name}.cpu.onnx", dynamic_axes={"clip": [0]}, progress=False,
                       float_nodes=nodes)
        paths[name] = out / f"{name}.cpu.onnx"
    report = evaluate_s3d(fp32, paths, held.clips, bundle.codebook, repeats=7)
    print(f"machine: {machine_summary()}; {report['clips']} held-out clips, input "
          f"{tuple(report['timing']['input_shape'])}, method {args.method}, FP32 file "
          f"{report['fp32_seconds'] * 1e3:.1f} ms")
    print(f"| {'float convs':<16} | tokens | cos mean | cos worst |    ms | vs FP32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, v in report["variants"].items():
        print(f"| {name} ({counts[name]}) | {v['token_agreement']:.3f} | {v['cosine_mean']:.5f} | "
              f"{v['cosine_worst']:.5f} | {v['seconds'] * 1e3:.1f} | {v['speedup']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
