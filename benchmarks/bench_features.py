"""``vbedge features`` throughput on the CPU: clips per second at several S3D batch sizes, in one run.

The same synthetic videos (moving shapes written with OpenCV, 16:9) and the same exported S3D
(random init unless --weights; ONNX Runtime FP32, CPU) for every contender; only
``extract_features``'s ``batch_size`` differs. Contenders are timed round-robin (one run of each
per round) so load from other processes hits them alike. Prints the median clips/s per batch size,
the ratio to batch 1, and the machine.

Usage: python benchmarks/bench_features.py [--rounds 3] [--batches 1 4 8] [--frames 30 --crop 224]
                                           [--seconds 6] [--videos 2] [--weights W.pth]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vbedge.info import machine_summary


def _write_video(path, seconds, seed, size=(640, 360), fps=25.0):
    import cv2

    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(3)]
    for i in range(int(seconds * fps)):
        image = np.empty((size[1], size[0], 3), np.uint8)
        image[:] = colours[0]
        x = (i * 7) % size[0]
        cv2.circle(image, (x, size[1] // 2), size[1] // 6, colours[1], -1)
        cv2.rectangle(image, (size[0] - x - 40, 20), (size[0] - x, 80), colours[2], -1)
        writer.write(image)
    writer.release()
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each video")
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--weights", help="torchvision S3D state dict (default: random init)")
    args = parser.parse_args(argv)

    from vbedge.export.s3d import export_s3d, spec_for_weights
    from vbedge.features import extract_features, open_feature_model

    work = Path(tempfile.mkdtemp(prefix="bench_features_"))
    spec, why = spec_for_weights(args.weights, random_init=args.weights is None,
                                 clip_frames=args.frames, crop=args.crop,
                                 short_side=max(256, args.crop))
    print(f"exporting S3D ({args.weights or 'random init'}; {spec.describe_resize()}) ...",
          file=sys.stderr)
    export_s3d(work / "s3d", args.weights, random_init=args.weights is None, spec=spec,
               fp16=False, check_batches=(1,), progress=False)
    videos = [_write_video(work / f"v{k}.mp4", args.seconds, k) for k in range(args.videos)]
    times = {b: [] for b in args.batches}
    clips = None
    with open_feature_model(s3d_onnx=work / "s3d" / "s3d.onnx", backend="onnxruntime") as model:
        extract_features(videos[:1], work / "warmup", model, batch_size=1, progress=False)
        for round_ in range(args.rounds):
            for batch in args.batches:
                start = time.perf_counter()
                report = extract_features(videos, work / f"out_{batch}", model, batch_size=batch,
                                          progress=False, overwrite=True)
                times[batch].append(time.perf_counter() - start)
                clips = report.rows
    print(f"machine: {machine_summary()}")
    print(f"S3D {args.frames}x{args.crop}x{args.crop} ({args.weights or 'random init'}), ONNX "
          f"Runtime FP32 CPU; {args.videos} synthetic 640x360 videos of {args.seconds:g} s = "
          f"{clips} clips; {args.rounds} rounds, round-robin")
    base = statistics.median(times[args.batches[0]])
    print(f"{'batch':>5}  {'median s':>9}  {'clips/s':>8}  {'vs batch ' + str(args.batches[0]):>11}")
    for batch in args.batches:
        median = statistics.median(times[batch])
        print(f"{batch:>5}  {median:9.2f}  {clips / median:8.2f}  {base / median:10.2f}x")


if __name__ == "__main__":
    main()
