"""The synthetic kitchen (vbedge.synthetic.world): vocabulary, grammar, held-out pairs, rendering."""

import collections
import json

import numpy as np
import pytest

from tests.bundle_factory import BERT_DIR
from vbedge.errors import InvalidInputError
from vbedge.synthetic import world
from vbedge.synthetic.world import (HELD_OUT_PAIRS, NOUNS, VERB_TRANSITIONS, VERBS, render_world,
                                    sample_recipe, step_sentence)


def _vocab_lines():
    path = BERT_DIR / "vocab.txt" if BERT_DIR is not None else None
    if path is None or not path.is_file():
        pytest.skip("the MiniLM package (bert-base-uncased vocab.txt) is not installed")
    return path.read_text(encoding="utf-8").splitlines()


def test_verbs_and_nouns_are_single_wordpieces():
    vocab = set(_vocab_lines())
    assert len(VERBS) >= 8 and len(NOUNS) >= 8
    for word in VERBS + NOUNS:
        assert word in vocab, f"{word!r} is not one bert-base-uncased WordPiece"
    # The tokenizer agrees (a word in vocab.txt could still split if it were cased).
    from vbedge.vocab import VideoBertVocab

    vocab = VideoBertVocab.from_wordpiece(BERT_DIR / "vocab.txt", levels=1, branching=2)
    for word in VERBS + NOUNS:
        assert len(vocab.encode_text(word)) == 1, word


def test_grammar_is_a_distribution_and_recipes_follow_it():
    for verb, nexts in VERB_TRANSITIONS.items():
        assert verb in VERBS and set(nexts) <= set(VERBS)
        assert abs(sum(nexts.values()) - 1.0) < 1e-9
    rng = np.random.default_rng(0)
    for _ in range(200):
        recipe = sample_recipe(rng, steps=5)
        for (a, _), (b, _) in zip(recipe, recipe[1:]):
            assert b in VERB_TRANSITIONS[a]


def test_train_split_never_shows_held_out_pairs_and_labels_mix():
    rng = np.random.default_rng(1)
    train = [p for _ in range(600) for p in sample_recipe(rng, 4, "train")]
    test = [p for _ in range(600) for p in sample_recipe(rng, 4, "test")]
    assert not set(HELD_OUT_PAIRS) & set(train)
    assert set(HELD_OUT_PAIRS) <= set(test)
    verbs_of = collections.defaultdict(set)
    nouns_of = collections.defaultdict(set)
    for verb, noun in train:
        verbs_of[noun].add(verb)
        nouns_of[verb].add(noun)
    assert all(len(verbs_of[n]) >= 4 for n in NOUNS)
    assert all(len(nouns_of[v]) >= 4 for v in VERBS)


def test_several_phrasings_name_the_verb_and_noun():
    rng = np.random.default_rng(2)
    texts = {step_sentence(rng, "cut", "tomato") for _ in range(200)}
    assert len(texts) >= 5
    assert all(" cut the tomato" in f" {t}" for t in texts)


def test_render_world_writes_videos_and_narration(tmp_path):
    cv2 = pytest.importorskip("cv2")
    made = render_world(tmp_path / "w", 2, seed=5, steps=2, step_seconds=1.5, size=64, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "w" / "narration.jsonl").read_text().splitlines()]
    assert [line["video"] for line in lines] == [v.name for v in made]
    for line in lines:
        steps = line["narration"]
        assert [(s["start"], s["end"]) for s in steps] == [(0.0, 1.5), (1.5, 3.0)]
        for s in steps:
            assert s["verb"] in VERBS and s["noun"] in NOUNS
            assert f"{s['verb']} the {s['noun']}" in s["text"]
        capture = cv2.VideoCapture(str(tmp_path / "w" / line["video"]))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
        assert len(frames) == 60 and frames[0].shape == (64, 64, 3)
        assert np.std(np.stack(frames).astype(np.float32), axis=0).mean() > 1.0  # things move
    meta = json.loads((tmp_path / "w" / "world.json").read_text())
    assert meta["synthetic"] is True and meta["seed"] == 5 and meta["split"] == "train"
    assert [tuple(p) for p in meta["held_out_pairs"]] == list(HELD_OUT_PAIRS)


def test_two_seeds_give_disjoint_videos(tmp_path):
    pytest.importorskip("cv2")
    a = render_world(tmp_path / "a", 3, seed=0, steps=1, step_seconds=0.5, size=48, progress=False)
    b = render_world(tmp_path / "b", 3, seed=1, steps=1, step_seconds=0.5, size=48, progress=False)
    assert not {v.name for v in a} & {v.name for v in b}
    files_a = {(tmp_path / "a" / v.name).read_bytes() for v in a}
    files_b = {(tmp_path / "b" / v.name).read_bytes() for v in b}
    assert not files_a & files_b
    # Same seed, same world (deterministic).
    c = render_world(tmp_path / "c", 3, seed=0, steps=1, step_seconds=0.5, size=48, progress=False)
    assert [v.steps for v in c] == [v.steps for v in a]


def test_rendering_on_two_processes_writes_the_same_world(tmp_path):
    pytest.importorskip("cv2")
    one = render_world(tmp_path / "one", 3, seed=2, steps=2, step_seconds=0.5, size=48, progress=False)
    two = render_world(tmp_path / "two", 3, seed=2, steps=2, step_seconds=0.5, size=48, progress=False, workers=2)
    assert [(v.name, v.steps) for v in two] == [(v.name, v.steps) for v in one]
    for video in one:  # every video has its own random stream, whichever process draws it
        assert (tmp_path / "two" / video.name).read_bytes() == (tmp_path / "one" / video.name).read_bytes()
    assert (tmp_path / "two" / "narration.jsonl").read_text() == (tmp_path / "one" / "narration.jsonl").read_text()
    with pytest.raises(InvalidInputError, match="workers"):
        render_world(tmp_path / "bad", 1, seed=0, progress=False, workers=0)


def test_nuisances_vary_independently_of_labels():
    rng = np.random.default_rng(3)
    looks = collections.defaultdict(list)
    for _ in range(400):
        noun = NOUNS[int(rng.integers(len(NOUNS)))]
        looks[noun].append(world._step_look(rng, noun, 96))
    for noun, items in looks.items():
        radii = [x.radius for x in items]
        assert max(radii) / min(radii) > 1.2          # size varies within a noun
        assert np.ptp([x.cx for x in items]) > 10     # so does position
        assert np.ptp([x.speed for x in items]) > 0.4  # and motion speed


@pytest.mark.parametrize("kwargs", [{"videos": 0}, {"videos": 1, "seed": -1}, {"videos": 1, "split": "dev"},
                                    {"videos": 1, "fps": 0}, {"videos": 1, "size": 16}])
def test_bad_options_are_refused(tmp_path, kwargs):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(InvalidInputError):
        render_world(tmp_path, progress=False, **kwargs)


def test_cli_synth(tmp_path, capsys):
    pytest.importorskip("cv2")
    from vbedge.cli import main

    code = main(["synth", "-o", str(tmp_path / "w"), "--videos", "2", "--seed", "4", "--steps", "1",
                 "--step-seconds", "0.5", "--size", "48", "--split", "test"])
    assert code == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    lines = (tmp_path / "w" / "narration.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["video"] == "synth-s4-0000.mp4"
    assert json.loads((tmp_path / "w" / "world.json").read_text())["split"] == "test"
    assert main(["synth", "-o", str(tmp_path / "x"), "--videos", "0"]) == 2  # a clear error, exit 2
