"""INT8 vs FP32 on this CPU: full-size S3D (1x3x30x224x224) and MiniLM-size VideoBERT.

Exports a seeded random S3D and the MiniLM VideoBERT (2x3 codebook), writes synthetic videos with
OpenCV, runs :func:`vbedge.calib.calibrate.calibrate_models` (calibration on some videos, the
report on held-out ones, FP32 and INT8 timed interleaved in this process) and prints the table.

    .venv/bin/python benchmarks/bench_int8_cpu.py [--work /tmp/vbedge-int8] [--videos 12] [--method minmax]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/vbedge-int8-bench")
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from bundle_factory import BERT_DIR, small_codebook
    from test_calib import _write_video

    from vbedge.calib.calibrate import calibrate_models
    from vbedge.calib.report import format_report
    from vbedge.export.s3d import export_s3d
    from vbedge.export.videobert import export_videobert
    from vbedge.models.videobert import VideoBert
    from vbedge.preprocess import PreprocessSpec

    work = Path(args.work)
    spec = PreprocessSpec()
    if not (work / "s3d" / "s3d.onnx").exists():
        export_s3d(work / "s3d", random_init=True, seed=0, fp16=False, check_batches=(1,), spec=spec)
    codebook = small_codebook()
    videobert = VideoBert.from_bert(BERT_DIR, codebook)
    if not (work / "vb" / "videobert.onnx").exists():
        export_videobert(videobert, work / "vb", top_k=5, fp16=False)  # the 2x3 codebook has 9 visual words
    vids = work / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    for i in range(args.videos):
        if not (vids / f"v{i}.avi").exists():
            _write_video(vids / f"v{i}.avi", seed=i, frames=64, size=(240, 320))
    report = calibrate_models(work / "int8", videos=vids, spec=spec, codebook=codebook, vocab=videobert.vocab,
                              s3d_fp32=work / "s3d" / "s3d.onnx", videobert_fp32=work / "vb" / "videobert.onnx",
                              method=args.method, max_clips=36, clips_per_video=3, max_sequences=128,
                              repeats=args.repeats)
    print(format_report(report))
    print(f"report: {work / 'int8' / 'int8_report.json'}")


if __name__ == "__main__":
    main()
