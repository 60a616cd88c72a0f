"""Zero-shot scoring arithmetic (vbedge.synthetic.evaluate) and the feature probes, against hand-computed cases."""

import math

import numpy as np
import pytest

from vbedge.errors import InvalidInputError
from vbedge.synthetic.evaluate import (StepPrediction, format_zero_shot_table, most_frequent_accuracy,
                                       score_steps, topk_accuracy)
from vbedge.synthetic.probe import (label_ranks, leaf_majority_accuracy, leaf_majority_labels, ridge_probe_accuracy,
                                    ridge_probe_ranks, ridge_probe_scores, ridge_probe_topk)


def test_topk_accuracy_by_hand():
    candidates = [["cut", "stir"], ["pour", "cut", "roll", "wash", "peel", "flip"], [], ["wash"]]
    truths = ["cut", "flip", "cut", "peel"]
    assert topk_accuracy(candidates, truths, 1) == 1 / 4          # only the first
    assert topk_accuracy(candidates, truths, 5) == 1 / 4          # flip is 6th
    assert topk_accuracy(candidates, truths, 6) == 2 / 4
    assert math.isnan(topk_accuracy([], [], 1))
    with pytest.raises(InvalidInputError):
        topk_accuracy([["a"]], ["a", "b"], 1)
    with pytest.raises(InvalidInputError):
        topk_accuracy([["a"]], ["a"], 0)


def test_most_frequent_baseline_by_hand():
    assert most_frequent_accuracy(["cut", "cut", "stir", "wash"]) == ("cut", 0.5)
    # from a reference: 'wash' is most frequent there, and is 1 of 4 truths
    assert most_frequent_accuracy(["cut", "cut", "stir", "wash"], ["wash", "wash", "cut"]) == ("wash", 0.25)
    # ties go to the label that sorts first
    assert most_frequent_accuracy(["b", "a"]) == ("a", 0.5)


def _step(verb, noun, verbs, nouns, leaves=(1,), forecast=(), next_leaf=None, step=0):
    return StepPrediction("v.mp4", step, verb, noun, list(verbs), list(nouns), ["wash"], ["tomato", "egg"],
                          list(leaves), list(forecast), next_leaf)


def test_score_steps_by_hand():
    steps = [
        _step("cut", "fish", ["cut"], ["egg", "fish"], leaves=[3, 3], forecast=[5, 7, 9], next_leaf=7),
        _step("wash", "tomato", ["stir", "wash"], ["tomato"], leaves=[5], forecast=[1, 2, 3], next_leaf=4, step=1),
        _step("stir", "egg", ["stir"], ["egg"], leaves=[7], step=2),
        _step("wash", "egg", ["a", "b", "c", "d", "e", "wash"], ["egg"], leaves=[3]),
    ]
    r = score_steps(steps, held_out_pairs=[("cut", "fish"), ("stir", "egg")])
    assert r["steps"] == 4
    assert r["verb_top1"] == 2 / 4 and r["verb_top5"] == 3 / 4
    assert r["noun_top1"] == 3 / 4 and r["noun_top5"] == 4 / 4
    # prior always says wash / (tomato, egg): verbs wash 2 of 4; nouns top-1 tomato 1 of 4, top-5 3 of 4
    assert r["prior_verb_top1"] == 2 / 4 and r["prior_noun_top1"] == 1 / 4 and r["prior_noun_top5"] == 3 / 4
    assert (r["most_frequent_verb"], r["most_frequent_verb_top1"]) == ("wash", 0.5)
    assert (r["most_frequent_noun"], r["most_frequent_noun_top1"]) == ("egg", 0.5)
    unseen = r["compositional"]["unseen_pairs"]
    assert unseen["steps"] == 2 and unseen["verb_top1"] == 1.0 and unseen["noun_top1"] == 0.5
    assert r["compositional"]["seen_pairs"]["steps"] == 2
    # The table prints both splits: the seen steps (wash tomato, wash egg) have verb top-1 0 of 2, verb
    # top-5 1 of 2 (wash is sixth for wash egg), noun top-1 2 of 2.
    rows = {line[:28].strip(): line[28:].split() for line in format_zero_shot_table(
        {**r, "synthetic": True, "videos": 1, "template": "t"}).splitlines()}
    assert rows["seen verb-noun pairs"][:4] == ["0.0", "50.0", "100.0", "100.0"], rows
    assert rows["unseen verb-noun pairs"][:4] == ["100.0", "100.0", "50.0", "100.0"], rows
    # forecast: 2 targets; [5, 7, 9] holds 7 (hit), [1, 2, 3] lacks 4 (miss)
    fc = r["forecast"]
    assert fc["targets"] == 2 and fc["top3"] == 0.5
    # unigram over the evaluated leaves [3, 3, 5, 7, 3]: top-3 = 3, 5, 7 -> holds 7, not 4
    assert fc["unigram_leaves"] == [3, 5, 7] and fc["unigram_top3"] == 0.5
    # with training references
    r = score_steps(steps, reference_steps=[("stir", "fish")] * 3, reference_leaves=[4, 4, 1])
    assert r["most_frequent_verb_top1"] == 1 / 4 and r["most_frequent_noun_top1"] == 1 / 4
    assert r["forecast"]["unigram_top3"] == 0.5  # [4, 1] holds 4, not 7
    text = format_zero_shot_table({**r, "synthetic": True, "videos": 1, "template": "t"})
    assert "SYNTHETIC" in text and " 50.0" in text
    with pytest.raises(InvalidInputError):
        score_steps([])


def test_leaf_majority_by_hand():
    train_leaves = [0, 0, 0, 1, 1, 2]
    train_labels = [5, 5, 6, 7, 6, 9]
    assert leaf_majority_labels(train_leaves, train_labels) == {0: 5, 1: 6, 2: 9}  # 1: tie 6/7 -> 6
    # test: leaf 0 label 5 (hit), leaf 1 label 7 (miss), leaf 3 unseen (miss), leaf 2 label 9 (hit)
    assert leaf_majority_accuracy(train_leaves, train_labels, [0, 1, 3, 2], [5, 7, 5, 9]) == 0.5


def test_ridge_probe_separates_separable_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=120)
    centres = rng.normal(size=(3, 20)) * 3
    x = centres[labels] + rng.normal(size=(120, 20))
    assert ridge_probe_accuracy(x[:80], labels[:80], x[80:], labels[80:]) > 0.9
    noise = rng.normal(size=(120, 20))
    assert ridge_probe_accuracy(noise[:80], labels[:80], noise[80:], labels[80:]) < 0.6


def test_ridge_probe_topk_ranks_the_classes():
    # Three classes on three axes; a test point between classes 0 and 1 (closer to 1) ranks 1, 0, 2.
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 30)
    x = np.eye(3)[labels] * 4 + 0.1 * rng.normal(size=(90, 3))
    test = np.array([[1.5, 2.5, 0.0]] * 3)
    scores, classes = ridge_probe_scores(x, labels, test)
    assert list(classes) == [0, 1, 2] and scores.shape == (3, 3)
    assert list(np.argsort(-scores[0])) == [1, 0, 2]
    assert list(ridge_probe_topk(x, labels, test, [1, 0, 2], k=1)) == [True, False, False]
    assert list(ridge_probe_topk(x, labels, test, [1, 0, 2], k=2)) == [True, True, False]
    assert list(ridge_probe_topk(x, labels, test, [1, 0, 2], k=3)) == [True, True, True]
    assert list(ridge_probe_ranks(x, labels, test, [1, 0, 2])) == [0, 1, 2]
    # a label training never saw is never among the k best: it ranks after every class
    assert not ridge_probe_topk(x, labels, test[:1], [7], k=3)[0]
    assert list(ridge_probe_ranks(x, labels, test[:1], [7])) == [3]
    # equal scores keep the classes' order
    assert list(label_ranks([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]], [3, 5, 9], [5, 9])) == [1, 1]
    with pytest.raises(InvalidInputError):
        ridge_probe_topk(x, labels, test, [1, 0, 2], k=0)
    with pytest.raises(InvalidInputError):
        ridge_probe_scores(x, labels, test[:, :2])


@pytest.mark.slow
def test_zero_shot_runs_through_the_runtime(small_bundle, tmp_path):
    """Plumbing on the shared random-S3D test bundle: every narrated step is scored, the prior is one answer."""
    pytest.importorskip("cv2")
    from vbedge.synthetic.evaluate import zero_shot
    from vbedge.synthetic.world import render_world

    render_world(tmp_path / "w", 2, seed=3, steps=2, step_seconds=1.6, size=64, split="test", progress=False)
    result, steps = zero_shot(small_bundle, tmp_path / "w", progress=False)
    assert result["steps"] == 4 == len(steps) and result["videos"] == 2 and result["synthetic"] is True
    for key in ("verb_top1", "verb_top5", "noun_top1", "noun_top5", "prior_verb_top1", "prior_noun_top1"):
        assert 0.0 <= result[key] <= 1.0
    assert len({tuple(s.prior_verbs) for s in steps}) == 1  # the prior sees no video
    assert all(len(s.leaves) == 2 for s in steps)  # 1.6 s steps hold two 0.8 s clips of the bundle's spec
    assert [s.next_leaf for s in steps] == [steps[1].leaves[0], None, steps[3].leaves[0], None]
    assert result["verb_top1"] == topk_accuracy([s.verbs for s in steps], [s.verb for s in steps], 1)


def test_cli_eval_zero_shot_reports_a_missing_narration(tmp_path, capsys):
    from vbedge.cli import main

    (tmp_path / "videos").mkdir()
    code = main(["eval", "zero-shot", "--bundle", str(tmp_path / "no-bundle"), "--videos", str(tmp_path / "videos")])
    assert code == 2
    assert "narration.jsonl" in capsys.readouterr().err
