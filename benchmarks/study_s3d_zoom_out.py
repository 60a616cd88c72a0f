"""Does zooming training clips out teach S3D the noun at other sizes (the unseen pairs' failure)?

In the synthetic world the stirring pot draws the ingredient at 0.65x and the shaking jar at 0.8x
its usual size, and the two held-out pairs S3D's feature reads worst are stir-egg and shake-carrot:
an egg is never seen that small. This pretrains S3D as the demo does (2 window epochs, the top 8,
seed 0) on a finished demo's training world with zoomed-out clips (``pretrain_s3d(zoom_out=)``),
and reads the verb and the noun out of its features with the ridge probe, seen and unseen pairs
apart, beside the demo's own S3D (the baseline, trained on the clips as decoded):

- ``--mode in-place``: a ``--fraction`` of the clips is replaced by zoomed-out copies (same cost);
- ``--mode copies``: every clip also gets a zoomed-out copy (twice the clips and the training steps;
  ``pretrain_s3d(zoom_copies=True)``, what ``vbedge demo --size large`` trains);
- ``--mode top-copies``: the window phase trains on the clips as decoded, the top blocks on the
  clips and a zoomed-out copy of each (``pretrain_s3d(top_zoom_copies=True)``).

``--top-epochs`` sets the top phase's epochs (default: the demo's 8).

    python benchmarks/study_s3d_zoom_out.py W [--videos W/world-judge] [--mode in-place|copies|top-copies]
        [--top-epochs N]

Everything is measured on the SYNTHETIC world (vbedge synth), not real video.
"""

import argparse
import time
from pathlib import Path

import numpy as np


def _probe_lines(name, f_train, train, f_test, test):
    from vbedge.synthetic.probe import ridge_probe_ranks
    from vbedge.synthetic.world import HELD_OUT_PAIRS, NOUNS, VERBS

    held = {(VERBS.index(v), NOUNS.index(n)) for v, n in HELD_OUT_PAIRS}
    unseen = np.array([(int(v), int(n)) in held for v, n in zip(test["verb"], test["noun"])])
    for label in ("verb", "noun"):
        rank = ridge_probe_ranks(f_train, train[label], f_test, test[label], alpha=10.0)
        cells = [f"top-{k} {100 * (rank[~unseen] < k).mean():5.1f} / {100 * (rank[unseen] < k).mean():5.1f}"
                 for k in (1, 5)]
        print(f"{name:34s} {label:5s} " + "   ".join(cells))
        if label == "noun":
            pairs = []
            for verb, noun in HELD_OUT_PAIRS:
                mask = (test["verb"] == VERBS.index(verb)) & (test["noun"] == NOUNS.index(noun))
                if mask.any():
                    pairs.append(f"{verb} {noun} {sorted(rank[mask].tolist())}")
            print(f"{'':34s} noun ranks per unseen pair: " + "; ".join(pairs))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", help="a finished `vbedge demo --workdir W` folder")
    p.add_argument("--videos", default=None, help="the held-out world (default: W/world-judge, else W/world-test)")
    p.add_argument("--mode", choices=("in-place", "copies", "top-copies"), default="in-place")
    p.add_argument("--top-epochs", type=int, default=None, help="the top phase's epochs (default: the demo's 8)")
    p.add_argument("--fraction", type=float, default=0.5, help="in-place: the fraction of clips zoomed out")
    p.add_argument("--out", default=None, help="where the trained S3D goes (default: W/study-zoom-out-MODE)")
    args = p.parse_args(argv)

    from vbedge.demo import DEMO_SIZES
    from vbedge.info import machine_summary
    from vbedge.models.s3d import build_s3d_feature_extractor
    from vbedge.synthetic.pretrain import WORLD_SPEC, clip_features, pretrain_s3d, world_clips

    work = Path(args.workdir)
    videos = Path(args.videos) if args.videos else (work / "world-judge" if (work / "world-judge").is_dir()
                                                    else work / "world-test")
    if not (work / "s3d-pretrained.pth").is_file():
        p.error(f"{work} has no s3d-pretrained.pth: run `vbedge demo --workdir {work}` first")
    out = Path(args.out) if args.out else work / (f"study-zoom-out-{args.mode}"
                                                  + (f"-{args.top_epochs}" if args.top_epochs else ""))
    cfg = DEMO_SIZES["default"]
    print(f"machine: {machine_summary()}")
    print(f"SYNTHETIC world (vbedge synth); {work}; held-out world {videos}; mode {args.mode}"
          + (f", fraction {args.fraction}" if args.mode == "in-place" else ""))
    train = world_clips(work / "world-train", WORLD_SPEC, progress=False, workers=None)
    test = world_clips(videos, WORLD_SPEC, progress=False, workers=None)
    started = time.perf_counter()
    zoom = {"in-place": {"zoom_out": args.fraction}, "copies": {"zoom_copies": True},
            "top-copies": {"top_zoom_copies": True}}[args.mode]
    result = pretrain_s3d(work / "world-train", out / "s3d.pth", spec=WORLD_SPEC, seconds=cfg["pretrain_seconds"],
                          max_epochs=args.top_epochs or cfg["pretrain_epochs"], data=train, progress=False,
                          window_epochs=cfg["pretrain_window_epochs"], **zoom)
    last = result.history[-1]
    print(f"pretrained in {time.perf_counter() - started:.0f} s on {result.clips} clips (train accuracy verb "
          f"{last['train_verb_acc']:.3f}, noun {last['train_noun_acc']:.3f})")
    print(f"{'S3D':34s} label seen / unseen, percent")
    baseline = build_s3d_feature_extractor(work / "s3d-pretrained.pth")
    for name, extractor in (("the demo's S3D (baseline)", baseline), (f"zoom-out, {args.mode}", result.extractor)):
        _probe_lines(name, clip_features(extractor, train["clips"]), train, clip_features(extractor, test["clips"]),
                     test)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
