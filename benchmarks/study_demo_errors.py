"""Where a finished demo's noun (and verb) answers go wrong, on the SYNTHETIC held-out world.

Reads ``W/corpus.jsonl`` (the training clips' leaves and labels) and ``W/zero_shot.json`` (the
held-out steps' leaves and VideoBERT's answers) of a ``vbedge demo --workdir W`` and prints:

- the training world's step count per noun;
- the codebook's own read-out: each held-out clip's leaf mapped to its majority training label
  (clip accuracy) and the summed leaf votes of a step's clips (step accuracy), beside VideoBERT's
  zero-shot top-1, so the tokens' cap and what VideoBERT loses on top are side by side;
- VideoBERT's confusions (true -> answered, counts).

    python benchmarks/study_demo_errors.py W [--label noun|verb]
"""

import argparse
import collections
import json
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("--label", choices=("noun", "verb"), default="noun")
    args = p.parse_args(argv)
    work, label = Path(args.workdir), args.label
    corpus = [json.loads(line) for line in (work / "corpus.jsonl").read_text().splitlines() if line.strip()]
    predictions = json.loads((work / "zero_shot.json").read_text())["predictions"]

    leaf_labels = collections.defaultdict(collections.Counter)
    steps = collections.Counter()
    for record in corpus:
        steps.update(s[label] for s in record["narration"])
        for clip in record["clips"]:
            mid = 0.5 * (clip["start"] + clip["end"])
            step = next((s for s in record["narration"] if s["start"] <= mid < s["end"]), None)
            if step is not None:
                leaf_labels[clip["leaf"]][step[label]] += 1
    print(f"SYNTHETIC world; {work}; {label}")
    print("training steps per " + label + ": " + ", ".join(f"{k} {v}" for k, v in steps.most_common()))

    clip_hits = clips = step_hits = model_hits = 0
    confusions = collections.Counter()
    for step in predictions:
        votes = collections.Counter()
        for leaf in step["leaves"]:
            if leaf_labels[leaf]:
                clips += 1
                clip_hits += leaf_labels[leaf].most_common(1)[0][0] == step[label]
                votes.update(leaf_labels[leaf])
        step_hits += bool(votes) and votes.most_common(1)[0][0] == step[label]
        answer = step[label + "s"][0] if step[label + "s"] else None
        model_hits += answer == step[label]
        if answer != step[label]:
            confusions[(step[label], answer)] += 1
    n = len(predictions)
    print(f"leaf majority: {100 * clip_hits / max(clips, 1):.1f}% of {clips} held-out clips; step vote "
          f"{100 * step_hits / n:.1f}% of {n} steps; VideoBERT top-1 {100 * model_hits / n:.1f}%")
    print(f"VideoBERT's {sum(confusions.values())} errors (true -> answered): "
          + ", ".join(f"{a} -> {b} {c}" for (a, b), c in confusions.most_common()))


if __name__ == "__main__":
    main()
