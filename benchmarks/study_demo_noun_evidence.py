"""Does a step's noun have any evidence in its visual words? The demo's noun top-5 misses, explained.

VideoBERT sees a step only through its clips' visual words (codebook leaves). If no training clip
on those leaves was narrated with the step's noun, the model has never seen that noun beside them,
and its rank among such nouns is arbitrary. For each zero-shot JSON this counts the steps whose
noun is missing from the model's top 5, by:

- unseen / seen: whether the verb-noun pair is one the training world never shows;
- evidence / none: whether the noun occurs among the narrated nouns of the training clips that fall
  on the step's leaves (``W/corpus.jsonl``: each clip's leaf, and the step its midpoint lies in).

    python benchmarks/study_demo_noun_evidence.py W out.json [more.json ...]

``W`` is the finished demo folder whose bundle made the JSONs (``vbedge eval zero-shot --bundle
W/bundle ... --json out.json``, or ``W/zero_shot.json``). Everything is measured on the SYNTHETIC
world (vbedge synth), not real video.
"""

import argparse
import collections
import json
import sys
from pathlib import Path


def leaf_nouns(corpus_path):
    """``{leaf: Counter(noun)}`` over the training clips of a demo corpus."""
    nouns = collections.defaultdict(collections.Counter)
    with open(corpus_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                video = json.loads(line)
                for clip in video["clips"]:
                    middle = (clip["start"] + clip["end"]) / 2
                    for step in video["narration"]:
                        if step["start"] <= middle < step["end"] and "noun" in step:
                            nouns[clip["leaf"]][step["noun"]] += 1
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"{corpus_path}:{number}: not a demo corpus line ({exc})") from exc
    return nouns


def count_misses(result, nouns, k=5):
    """``Counter((unseen, evidence))`` of the steps whose noun is not among the first ``k``; the number of
    steps; and the mean number of distinct nouns the training narration gives a step's visual words."""
    held = {tuple(pair) for pair in result["compositional"]["held_out_pairs"]}
    misses = collections.Counter()
    named = [len(set().union(*(set(nouns.get(leaf, ())) for leaf in step["leaves"]))) for step in result["predictions"]]
    for step in result["predictions"]:
        if step["noun"] in step["nouns"][:k]:
            continue
        evidence = any(step["noun"] in nouns.get(leaf, ()) for leaf in step["leaves"])
        misses[((step["verb"], step["noun"]) in held, evidence)] += 1
    return misses, len(result["predictions"]), sum(named) / max(1, len(named))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", help="the finished demo folder (its corpus.jsonl)")
    p.add_argument("results", nargs="+", help="zero-shot JSONs of that demo's bundle")
    args = p.parse_args(argv)
    corpus = Path(args.workdir) / "corpus.jsonl"
    if not corpus.is_file():
        p.error(f"{args.workdir} is not a finished demo folder (no corpus.jsonl)")
    nouns = leaf_nouns(corpus)
    print("SYNTHETIC world (vbedge synth): noun top-5 misses by pair (unseen / seen) and by evidence "
          "(the noun among the training narration of the step's visual words)")
    total = collections.Counter()
    for path in args.results:
        try:
            result = json.loads(Path(path).read_text())
            misses, steps, named = count_misses(result, nouns)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{path}: not a zero-shot JSON with per-step predictions ({exc})", file=sys.stderr)
            return 2
        total += misses
        cells = ", ".join(f"{'unseen' if u else 'seen'} {'with' if e else 'without'} evidence {misses[(u, e)]}"
                          for u in (True, False) for e in (False, True))
        print(f"{path}: {sum(misses.values())} misses of {steps} steps: {cells}; the visual words of a step "
              f"have {named:.2f} nouns in their training narration on average")
    without = total[(True, False)] + total[(False, False)]
    print(f"all: {without} of {sum(total.values())} misses have no evidence in their visual words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
