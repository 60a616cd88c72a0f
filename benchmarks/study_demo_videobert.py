"""VideoBERT's training options on a finished demo's tokens: retrain it and score the zero-shot table again.

The demo's zero-shot figures depend on VideoBERT's training as much as on S3D's tokens (a demo
whose codebook leaves named the noun for 88.5% of the held-out clips scored 79.2% noun top-1 after
200 VideoBERT steps). This study keeps a finished demo's worlds, S3D, codebook and corpus
(copied from ``SRC`` into ``DST``, never changed in ``SRC``), retrains VideoBERT with other
options through the demo's own stages 4-6 (:func:`vbedge.demo.run_demo`) and prints the table:

    python benchmarks/study_demo_videobert.py SRC DST --steps 300 [--lr 5e-4] [--mix 1,1,2] [--freeze-visual]
        [--label-smoothing 0.1] [--seed 1] [--precision fp32|bf16]

``--freeze-visual`` keeps the visual-token embeddings at their initialisation (the leaf centroids,
projected) for the whole run: their gradient is zeroed, so VideoBERT sees each visual word by its
look only (docs/synthetic.md, "Which stage loses the unseen pair's noun"). ``--label-smoothing``
sets :attr:`vbedge.training.TrainOptions.label_smoothing` (the masked-LM losses only). ``--seed``
sets the training seed (the new heads, dropout, sampling and masking; the demo's is 0), so the
spread of one setting over seeds can be read. ``--precision`` trains in ``fp32`` or ``bf16``
(autocast) instead of what :func:`vbedge.demo.videobert_precision` picks for this CPU.

A source demo made with ``vbedge demo --s3d weights.pth`` is retrained on the same weights.

Everything is measured on the SYNTHETIC world (vbedge synth), not real video.
"""

import argparse
import json
import shutil
import time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a finished `vbedge demo --workdir SRC` folder")
    p.add_argument("dst", help="a new folder for the retrained VideoBERT and its bundle")
    p.add_argument("--steps", type=int, required=True, help="VideoBERT training steps")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the demo size's)")
    p.add_argument("--mix", default=None,
                   help="text-only, video-only and joint rows per step, e.g. 1,1,2 (default: TrainOptions')")
    p.add_argument("--freeze-visual", action="store_true",
                   help="keep the visual-token embeddings at their leaf-centroid initialisation")
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="label smoothing of the masked-LM cross-entropy (default: the demo size's)")
    p.add_argument("--seed", type=int, default=None, help="VideoBERT's training seed (default: the demo's, 0)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="training precision (default: the demo's choice for this CPU)")
    args = p.parse_args(argv)
    if args.label_smoothing is not None and not 0.0 <= args.label_smoothing < 1.0:
        p.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")

    import vbedge.demo as demo
    import vbedge.training as training
    from vbedge.info import machine_summary

    src, dst = Path(args.src), Path(args.dst)
    if dst.exists():
        p.error(f"{dst} exists: give a new folder")
    if not (src / "demo.json").is_file():
        p.error(f"{src} is not a finished demo folder (no demo.json)")
    # A demo run with --s3d names the user's weights in demo.json and has no s3d-pretrained.pth.
    weights = () if json.loads((src / "demo.json").read_text()).get("s3d") else ("s3d-pretrained.pth",)
    for needed in ("codebook.npz", "corpus.jsonl", *weights, "s3d-onnx", "world-train", "world-test"):
        if not (src / needed).exists():
            p.error(f"{src} is not a finished demo folder (no {needed})")
    print(f"machine: {machine_summary()}")
    print("SYNTHETIC world (vbedge synth): the figures below are about rendered videos, not real ones")
    dst.mkdir(parents=True)
    for name in ("demo.json", "codebook.npz", "corpus.jsonl", "s3d-pretrained.pth", "s3d-pretrained.pth.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    for name in ("s3d-onnx", "world-train", "world-test"):
        shutil.copytree(src / name, dst / name)
    config = json.loads((dst / "demo.json").read_text())
    size = config["size"]
    overrides = {"train_steps": args.steps, **({"lr": args.lr} if args.lr is not None else {}),
                 **({"label_smoothing": args.label_smoothing} if args.label_smoothing is not None else {})}
    demo.DEMO_SIZES[size] = {**demo.DEMO_SIZES[size], **overrides}
    precision = args.precision or demo.videobert_precision()
    demo.videobert_precision = lambda flags=None: precision
    # (A source folder made before the demo recorded its VideoBERT precision trained in fp32.)
    (dst / "demo.json").write_text(json.dumps({**config, **overrides, "videobert_precision": precision}, indent=1))
    option_overrides = {**({"mix": tuple(float(x) for x in args.mix.split(","))} if args.mix is not None else {}),
                        **({"seed": args.seed} if args.seed is not None else {})}
    if option_overrides:
        options = training.TrainOptions

        def with_overrides(**kw):
            return options(**{**kw, **option_overrides})

        training.TrainOptions = with_overrides  # run_demo imports it from vbedge.training at call time
    if args.freeze_visual:
        _freeze_visual_embeddings(dst)
    started = time.perf_counter()
    result = demo.run_demo(dst, s3d=config.get("s3d"), size=size,
                           echo=lambda line: print(line) if "sequences/s" in line else None)
    keys = ("verb_top1", "verb_top5", "noun_top1", "noun_top5", "prior_verb_top1", "prior_noun_top1")
    print(f"size {size}, VideoBERT steps {args.steps}, lr {demo.DEMO_SIZES[size]['lr']}, mix {args.mix or 'default'}: "
          + ", ".join(f"{k} {100 * result[k]:.1f}" for k in keys) + f" ({result['steps']} steps; "
          f"{time.perf_counter() - started:.0f} s)" + (", visual embeddings frozen" if args.freeze_visual else "")
          + f", label smoothing {demo.DEMO_SIZES[size].get('label_smoothing', 0.0)}, seed "
          f"{0 if args.seed is None else args.seed}, precision {precision}")
    return 0


def _freeze_visual_embeddings(dst):
    """Make vbedge.training.train zero the gradient of the visual-token rows of the embedding matrix."""
    import vbedge.training.trainer as trainer
    from vbedge import HierarchicalCodebook

    visual = HierarchicalCodebook.load(dst / "codebook.npz").num_leaves
    make_optimizer = trainer._optimizer

    def optimizer_with_frozen_visual_rows(model, options):
        weight = model.get_input_embeddings().weight
        first = model.config.vocab_size - visual  # the visual tokens are the vocabulary's last rows

        def zero_visual_rows(grad):
            grad = grad.clone()
            grad[first:] = 0
            return grad

        weight.register_hook(zero_visual_rows)
        return make_optimizer(model, options)

    trainer._optimizer = optimizer_with_frozen_visual_rows


if __name__ == "__main__":
    raise SystemExit(main())
