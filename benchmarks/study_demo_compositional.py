"""Where the noun of an unseen verb-noun pair is lost: S3D feature, visual word, or VideoBERT.

On a finished demo (``vbedge demo --workdir W``) this computes, through the runtime's ONNX Runtime
backend and the demo's exported S3D, the features of the training world's clips and of a held-out
world's, and reads the verb and the noun out of three stages, separately for clips whose pair the
training world shows ("seen") and for the held-out pairs (``HELD_OUT_PAIRS``, "unseen"):

- **feature**: a ridge probe fitted on the training clips' features, top-1 / 3 / 5 of the 8 labels;
- **visual word**: the same probe on the centroid of the clip's codebook leaf (what a clip keeps
  after tokenization), and the leaf's majority training label (top-1);
- **VideoBERT**: the zero-shot top-1 / 5 of the steps (from a ``vbedge eval zero-shot --json``
  file of the same world), per step rather than per clip.

    python benchmarks/study_demo_compositional.py W [--videos W/world-judge --zero-shot judge.json]

Everything is measured on the SYNTHETIC world (vbedge synth), not real video.
"""

import argparse
import glob
import json
from collections import Counter
from pathlib import Path

import numpy as np


def _rates(hits, mask):
    return f"{100 * hits[mask].mean():5.1f}" if mask.any() else "    -"


def _per_pair(f_train, train, f_test, test, leaves_train, leaves_test, alpha, zero_shot):
    """One line per held-out pair: where the feature probe ranks the true noun, what the clip's leaf
    stands for in training (its majority verb and noun), and VideoBERT's rank of the noun per step."""
    from vbedge.synthetic.probe import label_ranks, leaf_majority_labels, ridge_probe_scores
    from vbedge.synthetic.world import HELD_OUT_PAIRS, NOUNS, VERBS

    scores, classes = ridge_probe_scores(f_train, train["noun"], f_test, alpha=alpha)
    rank = label_ranks(scores, classes, test["noun"])  # 0: named first
    verb_of, noun_of = (leaf_majority_labels(leaves_train, train[k]) for k in ("verb", "noun"))
    step_nouns = {(r["video"], int(r["step"])): r["nouns"] for r in (zero_shot or {}).get("predictions", [])}
    print("per unseen pair (clips): the feature probe's rank of the true noun (0 = first), its first answers;"
          " the leaf's training majority keeps the verb / the noun; VideoBERT's rank of the noun per step"
          " ('-': not in its top-k words)")
    for verb, noun in HELD_OUT_PAIRS:
        mask = (test["verb"] == VERBS.index(verb)) & (test["noun"] == NOUNS.index(noun))
        if not mask.any():
            continue
        first = Counter(NOUNS[int(classes[i])] for i in scores[mask].argmax(1)).most_common()
        leaves = leaves_test[mask]
        keeps_verb = np.mean([verb_of.get(int(leaf)) == VERBS.index(verb) for leaf in leaves])
        keeps_noun = np.mean([noun_of.get(int(leaf)) == NOUNS.index(noun) for leaf in leaves])
        keys = sorted({(str(v), int(s)) for v, s in zip(test["video"][mask], test["step"][mask])})
        vb = [step_nouns[key].index(noun) if noun in step_nouns[key] else "-" for key in keys if key in step_nouns]
        answers = ", ".join(f"{word} {count}" for word, count in first)
        print(f"  {verb} {noun} ({int(mask.sum())}): feature ranks {sorted(rank[mask].tolist())}, first answers "
              f"{answers}; leaf keeps verb {100 * keeps_verb:.0f}% / noun {100 * keeps_noun:.0f}%"
              + (f"; VideoBERT ranks {vb}" if vb else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", help="a finished `vbedge demo --workdir W` folder")
    p.add_argument("--videos", default=None, help="the held-out world (default: W/world-test)")
    p.add_argument("--zero-shot", default=None,
                   help="that world's `vbedge eval zero-shot --json` file (default: W/zero_shot.json for W/world-test)")
    p.add_argument("--alpha", type=float, default=10.0, help="the ridge penalty")
    args = p.parse_args(argv)

    from vbedge import HierarchicalCodebook
    from vbedge.demo import _runtime_features
    from vbedge.info import machine_summary
    from vbedge.synthetic.probe import leaf_majority_labels, ridge_probe_ranks
    from vbedge.synthetic.pretrain import WORLD_SPEC, world_clips
    from vbedge.synthetic.world import HELD_OUT_PAIRS, NOUNS, VERBS

    work = Path(args.workdir)
    videos = Path(args.videos) if args.videos else work / "world-test"
    zero_shot = Path(args.zero_shot) if args.zero_shot else (work / "zero_shot.json" if not args.videos else None)
    onnx = sorted(glob.glob(str(work / "s3d-onnx" / "*.onnx")))
    if not onnx or not (work / "codebook.npz").is_file():
        p.error(f"{work} is not a finished demo folder (no s3d-onnx/*.onnx or codebook.npz)")
    print(f"machine: {machine_summary()}")
    print(f"SYNTHETIC world (vbedge synth); {work}; held-out world {videos}")
    train = world_clips(work / "world-train", WORLD_SPEC, progress=False, workers=None)
    test = world_clips(videos, WORLD_SPEC, progress=False, workers=None)
    f_train, f_test = (_runtime_features(onnx[0], d["clips"]) for d in (train, test))
    codebook = HierarchicalCodebook.load(work / "codebook.npz")
    leaves_train, leaves_test = codebook.tokenize(f_train), codebook.tokenize(f_test)
    centroids = np.asarray(codebook.leaf_centroids())[leaves_test]
    held = {(VERBS.index(v), NOUNS.index(n)) for v, n in HELD_OUT_PAIRS}
    unseen = np.array([(int(v), int(n)) in held for v, n in zip(test["verb"], test["noun"])])
    print(f"{len(f_train)} training clips; {len(f_test)} held-out clips, {int(unseen.sum())} of an unseen pair; "
          f"codebook {codebook.levels} x {codebook.branching}")
    print(f"{'stage (per clip)':44s} {'label':5s} {'seen':>5s} {'unseen':>6s}")
    for label in ("verb", "noun"):
        y_train, y_test = train[label], test[label]
        for name, x in (("feature, ridge", f_test), ("visual word: its centroid, ridge", centroids)):
            ranks = ridge_probe_ranks(f_train, y_train, x, y_test, alpha=args.alpha)  # one fit for every k
            for k in (1, 3, 5):
                hits = ranks < k
                print(f"{name + f' top-{k}':44s} {label:5s} {_rates(hits, ~unseen)} {_rates(hits, unseen):>6s}")
        table = leaf_majority_labels(leaves_train, y_train)
        hits = np.array([table.get(int(leaf)) == int(y) for leaf, y in zip(leaves_test, y_test)])
        print(f"{'visual word: its leaf majority top-1':44s} {label:5s} {_rates(hits, ~unseen)} {_rates(hits, unseen):>6s}")
    report = json.loads(zero_shot.read_text()) if zero_shot is not None and zero_shot.is_file() else None
    _per_pair(f_train, train, f_test, test, leaves_train, leaves_test, args.alpha, report)
    if report is not None:
        split = report["compositional"]  # score_steps' seen / unseen figures
        seen, unseen_steps = split["seen_pairs"], split["unseen_pairs"]
        print(f"VideoBERT zero-shot ({zero_shot}, {seen['steps']} + {unseen_steps['steps']} steps, seen + unseen):")
        for label in ("verb", "noun"):
            for k in (1, 5):
                key = f"{label}_top{k}"
                print(f"{f'VideoBERT per step, top-{k}':44s} {label:5s} {100 * seen[key]:5.1f} "
                      f"{100 * unseen_steps[key]:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
