"""How long should S3D's window phase train, and on what? Contenders side by side, each with its seed.

Pretrains S3D as the demo does (``pretrain_s3d``: every layer on 8-frame windows, then the top 8
epochs on the cached stem) on a finished demo's training world, once per contender, and reads
the verb and the noun out of each S3D's features on a validation world that no choice was made
on before (default: ``W/world-val``, rendered here with seed 7000, 72 videos, split test):

- a ridge probe (alpha 10) fitted on the training clips: top-1, top-1 on seen pairs, top-5 on the
  unseen pairs (``HELD_OUT_PAIRS``);
- the leaf-majority accuracy of a 2 x 12 codebook fitted on the training clips (the demo's tree):
  what survives tokenization.

A contender is ``N[+copies|+allcopies][@SEED]``: N window epochs; ``+copies`` trains the window
phase on every clip and a zoomed-out copy of it (``pretrain_s3d(window_zoom_copies=True)``);
``+allcopies`` trains every phase so (``zoom_copies=True``, ``vbedge demo --size large``); the
seed (default 0) seeds the whole pretraining. The outcome moves with the seed by several points,
so compare contenders over the same seeds.

    python benchmarks/study_s3d_window.py W 2 2@1 4 4@1 2+copies 2+copies@1

Everything is measured on the SYNTHETIC world (vbedge synth), not real video.
"""

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np


def probe(f_train, train, f_val, val):
    from vbedge import HierarchicalCodebook
    from vbedge.synthetic.probe import leaf_majority_accuracy, ridge_probe_ranks
    from vbedge.synthetic.world import HELD_OUT_PAIRS, NOUNS, VERBS

    held = {(VERBS.index(v), NOUNS.index(n)) for v, n in HELD_OUT_PAIRS}
    unseen = np.array([(int(v), int(n)) in held for v, n in zip(val["verb"], val["noun"])])
    codebook = HierarchicalCodebook.fit(f_train, levels=2, branching=12, seed=0, progress=False)
    leaves_train, leaves_val = codebook.tokenize(f_train), codebook.tokenize(f_val)
    row = {}
    for label in ("verb", "noun"):
        rank = ridge_probe_ranks(f_train, train[label], f_val, val[label], alpha=10.0)
        row[label] = {"ridge_top1": 100 * float((rank < 1).mean()),
                      "ridge_top1_seen": 100 * float((rank[~unseen] < 1).mean()),
                      "ridge_top5_unseen": 100 * float((rank[unseen] < 5).mean()) if unseen.any() else None,
                      "leaf": 100 * leaf_majority_accuracy(leaves_train, train[label], leaves_val, val[label])}
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", help="a finished `vbedge demo --workdir W` folder (its world-train is trained on)")
    p.add_argument("contenders", nargs="+", help="N[+copies|+allcopies][@SEED], e.g. 2 4 2+copies 4@1")
    p.add_argument("--videos", default=None, help="the validation world (default: W/world-val, rendered if missing)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)

    from vbedge.demo import DEMO_SIZES
    from vbedge.info import machine_summary
    from vbedge.synthetic.pretrain import WORLD_SPEC, clip_features, pretrain_s3d, world_clips
    from vbedge.synthetic.world import render_world

    grammar = re.compile(r"^(\d+)(\+copies|\+allcopies)?(?:@(\d+))?$")
    contenders = []
    for text in args.contenders:
        match = grammar.match(text)
        if not match:
            p.error(f"contender {text!r} is not N[+copies|+allcopies][@SEED]")
        contenders.append((text, int(match.group(1)), match.group(2) or "", int(match.group(3) or 0)))
    work = Path(args.workdir)
    if not (work / "world-train" / "world.json").is_file():
        p.error(f"{work} has no world-train: run `vbedge demo --workdir {work}` first")
    videos = Path(args.videos) if args.videos else work / "world-val"
    if not args.videos and not (videos / "world.json").is_file():
        render_world(videos, 72, 7000, split="test", progress=False, workers=None)
    cfg = DEMO_SIZES["default"]
    print(f"machine: {machine_summary()}")
    print(f"SYNTHETIC world (vbedge synth); trained on {work / 'world-train'}; validated on {videos}")
    train = world_clips(work / "world-train", WORLD_SPEC, progress=False, workers=None)
    val = world_clips(videos, WORLD_SPEC, progress=False, workers=None)
    print(f"{len(train['clips'])} training clips, {len(val['clips'])} validation clips")
    print(f"{'contender':16s} {'seconds':>7s}  noun: ridge top-1 (seen) / unseen top-5 / leaf   "
          "verb: ridge top-1 / leaf")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vbedge-study-window-") as tmp:
        for text, window_epochs, copies, seed in contenders:
            started = time.perf_counter()
            result = pretrain_s3d(work / "world-train", Path(tmp) / "s3d.pth", spec=WORLD_SPEC,
                                  seconds=cfg["pretrain_seconds"], max_epochs=cfg["pretrain_epochs"], data=train,
                                  seed=seed, window_epochs=window_epochs, progress=False,
                                  window_zoom_copies=copies == "+copies", zoom_copies=copies == "+allcopies")
            seconds = time.perf_counter() - started
            row = {"contender": text, "seconds": round(seconds, 1),
                   **probe(clip_features(result.extractor, train["clips"]), train,
                           clip_features(result.extractor, val["clips"]), val)}
            rows.append(row)
            n, v = row["noun"], row["verb"]
            unseen = "-" if n["ridge_top5_unseen"] is None else f"{n['ridge_top5_unseen']:.1f}"
            print(f"{text:16s} {seconds:7.0f}  {n['ridge_top1']:5.1f} ({n['ridge_top1_seen']:.1f}) / {unseen} / "
                  f"{n['leaf']:.1f}   {v['ridge_top1']:5.1f} / {v['leaf']:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_summary(), "synthetic": True, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
