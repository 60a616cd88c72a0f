"""How the S3D CPU form spends its uint8 codes and weight bits (a study, on a SYNTHETIC world).

The CPU form (calib/quantize.py, ``make_cpu_form``) turns every non-negative int8 activation into
uint8. With ``u8_range="same"`` the calibrated range keeps codes 0..127 (half of uint8 unused);
``"full"`` spreads it over 0..255. On x86 CPUs without VNNI, MLAS's U8S8 kernels add pairs of
u8 x s8 products in int16 (``vpmaddubsw``), which saturates once activations reach 255 and weights
127, so ``weight_bits=7`` requantizes the convolution weights to [-63, 63] to keep the sum in range
(on a CPU with VNNI nothing saturates and 8 bits are the default). ``float_stem`` runs the
convolution that reads the clip in float (MLAS's int8 kernels are slow on its 3 input channels).

One calibration (``quantize_model``) on half of the videos of ``W/world-judge`` (rendered as
``benchmarks/bench_demo_int8.py`` does), then each CPU-form variant of that one Q/DQ graph is judged
on the clips of the other half against FP32 through the bundle's codebook: visual-token
agreement, feature cosine, and speed against the FP32 file and ONNX Runtime's FP32 2D form
(timed interleaved in one process).

Usage: python benchmarks/study_s3d_int8_cpu_form.py W [--method minmax] [--judge-videos 36]
(W: a finished ``vbedge demo --workdir`` folder)
"""

import argparse
import sys
import tempfile
from pathlib import Path

#: variant -> make_cpu_form options
VARIANTS = {
    "same-w8": {"u8_range": "same", "weight_bits": 8, "float_stem": False},
    "full-w8": {"u8_range": "full", "weight_bits": 8, "float_stem": False},
    "full-w7": {"u8_range": "full", "weight_bits": 7, "float_stem": False},
    "same-w7": {"u8_range": "same", "weight_bits": 7, "float_stem": False},
    # The convolution that reads the clip in float (make_cpu_form's default since 2026-12-06).
    "full-w7-stem": {"u8_range": "full", "weight_bits": 7, "float_stem": True},
    "full-w8-stem": {"u8_range": "full", "weight_bits": 8, "float_stem": True},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--judge-videos", type=int, default=36)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--two-d", default="full-w7",
                        help="also quantize ONNX Runtime's FP32 2D form of the graph and make this variant of it "
                             "(a name from --variants' list, or 'none')")
    args = parser.parse_args(argv)

    import onnx
    from onnx import numpy_helper

    from bench_demo_int8 import judge_world
    from vbedge.bundle import Bundle
    from vbedge.calib.quantize import make_cpu_form, quantize_model
    from vbedge.calib.readers import S3DCalibrationReader, collect_clips
    from vbedge.backends.conv2d_form import write_conv2d_form
    from vbedge.calib.report import Contender, evaluate_s3d
    from vbedge.info import machine_summary
    from vbedge.preprocess import PreprocessSpec

    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    bundle = Bundle.load(args.workdir / "bundle", trusted_keys=False)
    spec = PreprocessSpec.from_dict(bundle.preprocessing)
    fp32 = bundle.onnx_path("s3d", "fp32")
    judge, clip_count = judge_world(args.workdir, args.judge_videos)
    clips = collect_clips([judge], spec, max_clips=clip_count, progress=False)
    calib, held = clips.split(0.5, seed=0)  # as `vbedge calibrate --holdout 0.5`
    out = Path(tempfile.mkdtemp(prefix="s3d-cpu-form-study-"))
    qdq = out / "s3d.int8.onnx"
    quantize_model(fp32, qdq, S3DCalibrationReader(calib), method=args.method, dynamic_axes={"clip": [0]},
                   progress=False)
    sources = {name: (qdq, fp32, options) for name, options in variants.items()}
    if args.two_d != "none":
        # The same calibration clips through the 2D form: its Q/DQ graph is quantized on its own.
        fp32_2d, qdq_2d = out / "s3d.2d.onnx", out / "s3d.2d.int8.onnx"
        write_conv2d_form(fp32, fp32_2d)
        quantize_model(fp32_2d, qdq_2d, S3DCalibrationReader(calib), method=args.method,
                       dynamic_axes={"clip": [0]}, progress=False)
        sources[f"2d-{args.two_d}"] = (qdq_2d, fp32_2d, VARIANTS[args.two_d])
    paths, rewrites = {}, {}
    for name, (source, float_source, options) in sources.items():
        float_weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(float_source)).graph.initializer}
        model = onnx.load(str(source))
        rewrites[name] = make_cpu_form(model, float_weights=float_weights, **options)
        onnx.checker.check_model(model)
        paths[name] = out / f"{name}.cpu.onnx"
        onnx.save(model, str(paths[name]))
    contenders = {"fp32-2d": Contender(Path(fp32), "onnxruntime", "fp32", conv2d_form=True), **paths}
    report = evaluate_s3d(fp32, contenders, held.clips, bundle.codebook, repeats=args.repeats)
    two_d = report["variants"]["fp32-2d"]["seconds"]
    print(f"machine: {machine_summary()}")
    print(f"SYNTHETIC world; {len(calib.clips)} calibration clips, {report['clips']} held-out clips, input "
          f"{tuple(report['timing']['input_shape'])}, method {args.method}, {args.repeats} interleaved repeats; "
          f"FP32 file {report['fp32_seconds'] * 1e3:.1f} ms, FP32 2D form {two_d * 1e3:.1f} ms; "
          f"load {report['timing']['load_average_before'][0]:.1f} -> {report['timing']['load_average_after'][0]:.1f}")
    print("| CPU form | tokens | cos mean | cos worst | ms | vs FP32 file | vs FP32 2D form |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, v in report["variants"].items():
        if name == "fp32-2d":
            continue
        print(f"| {name} | {v['token_agreement']:.3f} | {v['cosine_mean']:.5f} | {v['cosine_worst']:.5f} | "
              f"{v['seconds'] * 1e3:.1f} | {v['speedup']:.2f}x | {two_d / v['seconds']:.2f}x |")
    print(f"rewrites: {rewrites}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
