"""The paper's zero-shot evaluation on narrated videos, through the runtime (no torch).

For every narrated step of every video (``narration.jsonl`` with ``verb`` and ``noun`` per step,
as :func:`vbedge.synthetic.render_world` writes it):

1. the video is tokenized by :meth:`vbedge.Pipeline.tokenize_video`, the same S3D backend,
   preprocessing and codebook a camera stream goes through; the step's visual tokens are those
   of the clips whose midpoint lies in the step;
2. the bundle's VideoBERT fills the paper's template "now let me show you how to [MASK] the
   [MASK]" over those tokens (the :class:`~vbedge.captioner.Captioner`'s caption row, so the
   sequence layout is the runtime's); its best *words* (top-k WordPieces that are whole words,
   the captioner's rule, no restriction to the world's vocabulary) are scored against the
   step's verb and noun at top-1 and top-5;
3. beside it, the text-only prior: the same template with no visual tokens
   (``[CLS] template [SEP]``), and the most-frequent-word baseline (always answer the most
   frequent verb / noun of the reference steps: the training world's when given, else the
   evaluated set's own, which flatters the baseline);
4. the compositional split: the steps whose verb-noun pair was never shown in training (the
   training world's ``held_out_pairs``);
5. next-step forecasting: the video-only row ``[CLS] step tokens [MASK] [SEP]`` predicts the
   next clip's token; a step's forecast is a hit when the next step's first clip token is among
   the top 3, beside a unigram baseline (the 3 most frequent tokens of the reference).

The arithmetic is in small pure functions (:func:`topk_accuracy`, :func:`most_frequent_accuracy`,
:func:`score_steps`) so it can be checked by hand.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FormatError, InvalidInputError

__all__ = ["StepPrediction", "format_zero_shot_table", "most_frequent_accuracy", "score_steps",
           "topk_accuracy", "zero_shot"]

#: The paper's zero-shot template (the captioner's "howto").
TEMPLATE = "howto"


@dataclass
class StepPrediction:
    """One narrated step, its truth and what the model and the prior answered (best first)."""

    video: str
    step: int
    verb: str
    noun: str
    verbs: list = field(default_factory=list)
    nouns: list = field(default_factory=list)
    prior_verbs: list = field(default_factory=list)
    prior_nouns: list = field(default_factory=list)
    leaves: list = field(default_factory=list)
    forecast: list = field(default_factory=list)
    next_leaf: int | None = None

    def to_dict(self) -> dict:
        """JSON form."""
        return {k: getattr(self, k) for k in ("video", "step", "verb", "noun", "verbs", "nouns", "leaves",
                                               "forecast", "next_leaf")}


def topk_accuracy(candidates, truths, k):
    """Share of items whose truth is among the first ``k`` of its candidate list.

    ``candidates``: one ranked list per item (may be shorter than ``k``); ``truths``: one label per
    item. Empty input gives ``nan``.
    """
    candidates, truths = list(candidates), list(truths)
    if len(candidates) != len(truths):
        raise InvalidInputError(f"{len(candidates)} candidate lists for {len(truths)} truths")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    if not truths:
        return float("nan")
    return sum(t in list(c)[:k] for c, t in zip(candidates, truths)) / len(truths)


def most_frequent_accuracy(truths, reference=None):
    """``(word, accuracy)`` of always answering the most frequent label of ``reference``.

    ``reference`` defaults to ``truths`` itself; ties go to the label that sorts first.
    """
    truths = list(truths)
    reference = truths if reference is None else list(reference)
    if not truths or not reference:
        return None, float("nan")
    counts = collections.Counter(reference)
    best = max(sorted(counts), key=lambda w: counts[w])
    return best, sum(t == best for t in truths) / len(truths)


def _rates(items, prior=True):
    out = {"steps": len(items),
           "verb_top1": topk_accuracy([s.verbs for s in items], [s.verb for s in items], 1),
           "verb_top5": topk_accuracy([s.verbs for s in items], [s.verb for s in items], 5),
           "noun_top1": topk_accuracy([s.nouns for s in items], [s.noun for s in items], 1),
           "noun_top5": topk_accuracy([s.nouns for s in items], [s.noun for s in items], 5)}
    if prior:
        out.update({
            "prior_verb_top1": topk_accuracy([s.prior_verbs for s in items], [s.verb for s in items], 1),
            "prior_verb_top5": topk_accuracy([s.prior_verbs for s in items], [s.verb for s in items], 5),
            "prior_noun_top1": topk_accuracy([s.prior_nouns for s in items], [s.noun for s in items], 1),
            "prior_noun_top5": topk_accuracy([s.prior_nouns for s in items], [s.noun for s in items], 5)})
    return out


def score_steps(steps, held_out_pairs=(), reference_steps=None, reference_leaves=None):
    """The zero-shot figures of a list of :class:`StepPrediction`.

    Args:
        steps: the predictions.
        held_out_pairs: (verb, noun) pairs never shown in training: the compositional split.
        reference_steps: ``(verb, noun)`` of the training steps, for the most-frequent baseline
            (None: the evaluated steps themselves).
        reference_leaves: training visual tokens for the unigram forecast baseline (None: the
            evaluated steps' own tokens).
    """
    steps = list(steps)
    if not steps:
        raise InvalidInputError("no narrated step to score")
    result = _rates(steps)
    ref_verbs = None if reference_steps is None else [v for v, _ in reference_steps]
    ref_nouns = None if reference_steps is None else [n for _, n in reference_steps]
    word, acc = most_frequent_accuracy([s.verb for s in steps], ref_verbs)
    result["most_frequent_verb"], result["most_frequent_verb_top1"] = word, acc
    word, acc = most_frequent_accuracy([s.noun for s in steps], ref_nouns)
    result["most_frequent_noun"], result["most_frequent_noun_top1"] = word, acc
    result["baseline_reference"] = "training steps" if reference_steps is not None else "evaluated steps"
    held = {tuple(p) for p in held_out_pairs}
    unseen = [s for s in steps if (s.verb, s.noun) in held]
    seen = [s for s in steps if (s.verb, s.noun) not in held]
    result["compositional"] = {"held_out_pairs": sorted(list(p) for p in held),
                               "unseen_pairs": _rates(unseen, prior=False),
                               "seen_pairs": _rates(seen, prior=False)}
    targets = [s for s in steps if s.next_leaf is not None]
    leaves = [leaf for s in steps for leaf in s.leaves] if reference_leaves is None else list(reference_leaves)
    counts = collections.Counter(leaves)
    unigram = sorted(counts, key=lambda leaf: (-counts[leaf], leaf))[:3]
    result["forecast"] = {
        "targets": len(targets),
        "top3": topk_accuracy([s.forecast for s in targets], [s.next_leaf for s in targets], 3),
        "unigram_top3": topk_accuracy([unigram] * len(targets), [s.next_leaf for s in targets], 3),
        "unigram_leaves": unigram,
        "reference": "training tokens" if reference_leaves is not None else "evaluated tokens"}
    return result


def _load_world_meta(folder):
    path = Path(folder) / "world.json"
    if not path.is_file():
        return {}
    from ..jsonfile import read_json_object

    return read_json_object(path)


def _prior_row(vocab, captioner):
    """``[CLS] template [SEP]``: the text-only prior (no visual tokens)."""
    text = np.asarray(vocab.encode_text(captioner.template.model_text), dtype=np.int64)
    ids = np.concatenate([[vocab.cls_id], text, [vocab.sep_id]]).astype(np.int64)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
            "predict_positions": (1 + np.flatnonzero(text == vocab.mask_id)).astype(np.int64)}


def zero_shot(bundle, videos, *, backend="onnxruntime", precision="fp32", train_world=None, batch=16,
              progress=True, pipeline_options=None):
    """Run the zero-shot evaluation of ``bundle`` on the narrated videos in folder ``videos``.

    Args:
        bundle: bundle folder or :class:`~vbedge.bundle.Bundle`.
        videos: a folder with ``narration.jsonl`` (``verb``/``noun`` per step) and the videos.
        backend, precision: the runtime backend and precision (as :meth:`vbedge.Pipeline.load`).
        train_world: the training world's folder: its ``world.json`` names the held-out pairs and
            its ``narration.jsonl`` the reference for the most-frequent baseline (None: the
            evaluated folder's own ``world.json`` and steps).
        batch: VideoBERT rows per run.
        progress: show a progress bar.
        pipeline_options: extra :meth:`vbedge.Pipeline.load` options (e.g. ``backend_options``).

    Returns:
        ``(result dict, list of StepPrediction)``; the dict holds ``verb_top1``, ``verb_top5``,
        ``noun_top1``, ``noun_top5``, ``prior_*``, ``most_frequent_*``, ``steps``,
        ``compositional``, ``forecast``, ``synthetic`` and ``top_k``.
    """
    from tqdm.auto import tqdm

    from ..backends.select import create_bundle_backend
    from ..captioner import Captioner, pad_rows
    from ..pipeline import Pipeline
    from .pretrain import read_world_narration, step_of

    folder = Path(videos)
    records = read_world_narration(folder)
    meta = _load_world_meta(folder)
    train_meta = _load_world_meta(train_world) if train_world is not None else meta
    held_out = [tuple(p) for p in train_meta.get("held_out_pairs", [])]
    reference_steps = None
    if train_world is not None:
        reference_steps = [(s["verb"], s["noun"]) for r in read_world_narration(train_world) for s in r["narration"]]
    pipe = Pipeline.load(bundle, backend=backend, precision=precision, captions=False, **(pipeline_options or {}))
    try:
        vocab = pipe.vocab
        steps = []
        for record in tqdm(records, desc="tokenizing videos", unit="video", disable=not progress):
            path = folder / record["video"]
            if not path.is_file():
                raise FormatError(f"{folder / 'narration.jsonl'} names {record['video']!r}, which is not in {folder}")
            tokens = pipe.tokenize_video(str(path))
            per_step = collections.defaultdict(list)
            for start, end, leaf in tokens:
                index = step_of(record["narration"], start, end)
                if index is not None:
                    per_step[index].append(int(leaf))
            mine = [StepPrediction(record["video"], index, step["verb"], step["noun"], leaves=per_step[index])
                    for index, step in enumerate(record["narration"]) if per_step.get(index)]
            for a, b in zip(mine, mine[1:]):
                if b.step == a.step + 1:
                    a.next_leaf = b.leaves[0]
            steps.extend(mine)
        if not steps:
            raise InvalidInputError(f"no narrated step of {folder} has a clip")
        longest = max(len(s.leaves) for s in steps)
        captioner = Captioner(vocab, template=TEMPLATE, context_clips=longest - 1, forecast_step=1)
        if captioner.template.roles != ("verb", "noun"):  # pragma: no cover - TEMPLATES is fixed
            raise InvalidInputError("the zero-shot template must have a verb slot then a noun slot")
        videobert = create_bundle_backend(pipe.bundle, "videobert", backend=backend, precision=precision)
        try:
            # Decoded without forecast rows: the prior batch has only the text-only row.
            text_only = Captioner(vocab, template=TEMPLATE, context_clips=0, forecast_step=0)
            prior = text_only.decode(videobert.run(pad_rows([_prior_row(vocab, text_only)], vocab.pad_id)), 1)[0]
            top_k = None
            for i in tqdm(range(0, len(steps), batch), desc="VideoBERT", disable=not progress):
                chunk = steps[i:i + batch]
                rows = [captioner.caption_row(s.leaves) for s in chunk] + \
                       [captioner.forecast_row(s.leaves) for s in chunk]
                outputs = videobert.run(pad_rows(rows, vocab.pad_id))
                top_k = int(outputs["text_topk_ids"].shape[-1])
                for s, result in zip(chunk, captioner.decode(outputs, len(chunk))):
                    s.verbs = [w for w, _ in result.slots[0].candidates]
                    s.nouns = [w for w, _ in result.slots[1].candidates]
                    s.forecast = [f.leaf for f in result.forecast]
                    s.prior_verbs = [w for w, _ in prior.slots[0].candidates]
                    s.prior_nouns = [w for w, _ in prior.slots[1].candidates]
        finally:
            videobert.close()
    finally:
        pipe.close()
    result = score_steps(steps, held_out, reference_steps)
    result.update({"videos": len(records), "synthetic": bool(meta.get("synthetic", False)), "top_k": top_k,
                   "template": captioner.template.text, "backend": backend, "precision": precision,
                   "prior_verbs": steps[0].prior_verbs[:5], "prior_nouns": steps[0].prior_nouns[:5]})
    return result, steps


def format_zero_shot_table(result) -> str:
    """The paper's table (verb / noun, top-1 / top-5, model vs baselines) as text."""
    def pct(x):
        return "  n/a" if x is None or x != x else f"{100 * x:5.1f}"

    lines = []
    if result.get("synthetic"):
        lines.append("zero-shot on a SYNTHETIC world (rendered by vbedge synth; not real cooking videos)")
    lines.append(f"{result['steps']} narrated steps in {result.get('videos', '?')} videos; template "
                 f"\"{result.get('template', '')}\"")
    lines.append(f"{'':28s} {'verb top-1':>10s} {'verb top-5':>10s} {'noun top-1':>10s} {'noun top-5':>10s}")
    lines.append(f"{'VideoBERT (video + text)':28s} {pct(result['verb_top1']):>10s} {pct(result['verb_top5']):>10s} "
                 f"{pct(result['noun_top1']):>10s} {pct(result['noun_top5']):>10s}")
    lines.append(f"{'text-only prior':28s} {pct(result['prior_verb_top1']):>10s} {pct(result['prior_verb_top5']):>10s} "
                 f"{pct(result['prior_noun_top1']):>10s} {pct(result['prior_noun_top5']):>10s}")
    lines.append(f"{'most frequent word':28s} {pct(result['most_frequent_verb_top1']):>10s} {'':>10s} "
                 f"{pct(result['most_frequent_noun_top1']):>10s} {'':>10s}   "
                 f"({result['most_frequent_verb']!r}, {result['most_frequent_noun']!r}; "
                 f"from the {result['baseline_reference']})")
    comp = result["compositional"]["unseen_pairs"]
    if comp["steps"]:
        lines.append(f"{'unseen verb-noun pairs':28s} {pct(comp['verb_top1']):>10s} {pct(comp['verb_top5']):>10s} "
                     f"{pct(comp['noun_top1']):>10s} {pct(comp['noun_top5']):>10s}   ({comp['steps']} steps)")
        seen = result["compositional"].get("seen_pairs")
        if seen and seen["steps"]:
            lines.append(f"{'seen verb-noun pairs':28s} {pct(seen['verb_top1']):>10s} {pct(seen['verb_top5']):>10s} "
                         f"{pct(seen['noun_top1']):>10s} {pct(seen['noun_top5']):>10s}   ({seen['steps']} steps)")
    fc = result["forecast"]
    lines.append(f"next-step forecast: top-3 {pct(fc['top3'])}% vs unigram {pct(fc['unigram_top3'])}% "
                 f"({fc['targets']} step changes; unigram from the {fc['reference']})")
    return "\n".join(lines)


def write_json(path, result):
    """Write the result dict as JSON."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
