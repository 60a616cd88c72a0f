"""VideoBERT: a Hugging Face ``BertForPreTraining`` over the joint text + visual vocabulary.

:class:`VideoBert` holds three things that only make sense together: the torch model (masked-LM
head + the [CLS] alignment head, i.e. BERT's NSP head), the :class:`~vbedge.VideoBertVocab` whose
ids it was trained on, and a reference (sha256 + shape) to the codebook whose leaves are its
visual tokens. ``save``/``load`` keep them in one folder::

    config.json           BertConfig (vocab_size = vocab.size)
    model.safetensors     weights (the decoder weight is tied to the word embeddings, not stored)
    vocab.txt             the WordPiece vocabulary, byte for byte
    vocab_layout.json     VideoBertVocab.layout()
    videobert.json        format version, codebook reference, how the new embeddings were made

Initialisation by :meth:`VideoBert.from_bert` (documented in docs/export.md, "VideoBERT"):

- WordPiece rows of the word embeddings (and of the tied decoder / its bias): copied.
- ``[>]``: a copy of the ``[SEP]`` embedding (both separate segments); decoder bias 0.
- visual tokens: the leaf centroids when ``hidden_size == codebook.dim`` (as in the paper);
  otherwise ``(centroid - mean centroid) @ P`` with ``P`` a fixed random orthogonal D x H matrix
  (numpy ``default_rng(seed)``, QR of a Gaussian), scaled so the mean row norm equals the mean
  norm of the WordPiece embeddings. Decoder bias 0.
- a checkpoint without a masked-LM head (``BertModel``, e.g. MiniLM): transform dense = identity,
  bias 0, LayerNorm weight 1 / bias 0, so the head starts as a read-out of the final hidden
  state against the (tied) embeddings; decoder bias 0.
- a checkpoint without the alignment (NSP) head or pooler: normal(0, initializer_range) weights
  from ``torch.manual_seed(seed)``, zero biases (BERT's own initialisation).

This module needs torch and transformers (the ``export`` extra); it is never imported by
``import vbedge``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from vbedge.errors import FormatError, InvalidInputError, MissingDependencyError
from vbedge.jsonfile import read_json_object
from vbedge.sequence_layout import layout_row
from vbedge.vocab import VOCAB_FILENAME, VideoBertVocab

log = logging.getLogger(__name__)

__all__ = ["VideoBert", "caption_inputs", "codebook_reference", "MODEL_SIZES", "VIDEOBERT_FORMAT_VERSION"]

VIDEOBERT_FORMAT_VERSION = 1
_META_FILENAME = "videobert.json"
_WEIGHTS_FILENAME = "model.safetensors"
_CONFIG_FILENAME = "config.json"
_FORMAT_NAME = "vbedge.videobert"
#: Named sizes for training from scratch (:meth:`VideoBert.from_config`): BERT-Tiny and BERT-Small
#: of Turc et al. 2019 ("Well-Read Students Learn Better") and BERT-base of Devlin et al.
MODEL_SIZES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
# Decoder weight/bias are tied to the word embeddings / cls.predictions.bias: stored once.
_TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
# Buffers some checkpoints carry that are recomputed by the module, never learned.
_IGNORED_KEYS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


def _require_torch():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"VideoBERT models need torch and transformers; install vbedge[export] ({exc})"
        ) from exc


def codebook_reference(codebook) -> dict:
    """The part of a codebook a model depends on: its content hash and tree shape."""
    try:
        return {
            "sha256": str(codebook.sha256),
            "levels": int(codebook.levels),
            "branching": int(codebook.branching),
            "num_leaves": int(codebook.num_leaves),
            "dim": int(codebook.dim),
        }
    except AttributeError as exc:
        raise InvalidInputError(f"expected a HierarchicalCodebook, got {type(codebook).__name__} ({exc})") from None


def _read_config(bert_dir: Path):
    from transformers import BertConfig

    path = bert_dir / _CONFIG_FILENAME
    if not path.is_file():
        raise FormatError(f"{str(bert_dir)!r} has no config.json; expected a Hugging Face BERT folder "
                          "(config.json, model.safetensors, vocab.txt)")
    raw = read_json_object(path)
    model_type = raw.get("model_type")
    if model_type != "bert":
        raise FormatError(
            f"{str(path)!r} describes a {model_type!r} model (architectures {raw.get('architectures')}); "
            "expected model_type 'bert'"
        )
    archs = raw.get("architectures") or []
    bad = [a for a in archs if not str(a).startswith("Bert")]
    if bad:
        raise FormatError(f"{str(path)!r} lists architectures {archs}; expected a Bert* architecture")
    try:
        config = BertConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{str(path)!r} is not a valid BertConfig ({exc})") from None
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise FormatError(f"{str(path)!r}: position_embedding_type {config.position_embedding_type!r} is not "
                          "supported; expected 'absolute'")
    return config


def _read_safetensors(path: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        raise FormatError(f"{str(path)!r} does not exist; expected the checkpoint's weights as model.safetensors")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise FormatError(
            f"{str(path)!r} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
            "it may be truncated or corrupt"
        ) from None
    out = {}
    for key, value in tensors.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()
        out[key] = value
    return out


def _normalise_keys(state: dict) -> dict:
    """Map BertModel-style keys ('embeddings.*') to BertForPreTraining ones ('bert.embeddings.*')."""
    out = {}
    for key, value in state.items():
        if key.startswith(("bert.", "cls.")):
            out[key] = value
        else:
            out["bert." + key] = value
    return out


def _orthogonal(rows: int, cols: int, seed: int) -> np.ndarray:
    """A fixed random matrix with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))  # makes the factorisation unique, so the seed fixes the matrix
    return q if rows >= cols else q.T


def _visual_embeddings(codebook, hidden: int, text_embeddings: np.ndarray, seed: int):
    """Initial embeddings of the visual tokens and a description of how they were made."""
    leaves = np.asarray(codebook.leaf_centroids(), dtype=np.float64)
    if leaves.shape[1] == hidden:
        return leaves.astype(np.float32), {"visual": "leaf_centroids"}
    centred = leaves - leaves.mean(axis=0, keepdims=True)
    proj = centred @ _orthogonal(leaves.shape[1], hidden, seed)
    target = float(np.linalg.norm(text_embeddings, axis=1).mean())
    current = float(np.linalg.norm(proj, axis=1).mean())
    # Identical centroids project to zero; leave them at zero rather than divide by zero.
    scale = target / current if current > 0 else 0.0
    return (proj * scale).astype(np.float32), {
        "visual": "orthogonal_projection",
        "projection_seed": int(seed),
        "projection_scale": scale,
        "text_embedding_mean_norm": target,
    }


class VideoBert:
    """A VideoBERT model: ``BertForPreTraining`` + its vocabulary + its codebook reference.

    Attributes:
        model: the ``transformers.BertForPreTraining`` (in eval mode after load/from_bert).
        vocab: the :class:`~vbedge.VideoBertVocab` (``model.config.vocab_size == vocab.size``).
        codebook_ref: ``{"sha256", "levels", "branching", "num_leaves", "dim"}``.
        init_info: how the extended embeddings and missing heads were initialised.
    """

    def __init__(self, model, vocab: VideoBertVocab, codebook_ref: dict, init_info=None):
        if int(model.config.vocab_size) != vocab.size:
            raise FormatError(f"model vocab_size {model.config.vocab_size} != vocabulary size {vocab.size}")
        self.model = model
        self.vocab = vocab
        self.codebook_ref = dict(codebook_ref)
        self.init_info = dict(init_info or {})

    @property
    def config(self):
        """The model's ``BertConfig``."""
        return self.model.config

    # ------------------------------------------------------------------ building

    @classmethod
    def from_bert(cls, bert_dir, codebook, *, seed: int = 0) -> "VideoBert":
        """Extend a local Hugging Face BERT folder to the VideoBERT vocabulary of ``codebook``.

        ``bert_dir`` holds config.json, model.safetensors and vocab.txt (a ``BertModel``,
        ``BertForMaskedLM`` or ``BertForPreTraining`` checkpoint). Raises FormatError for a
        missing folder or file, a corrupt or truncated checkpoint, or a non-BERT config.
        """
        _require_torch()
        import torch
        from transformers import BertForPreTraining

        bert_dir = Path(bert_dir)
        if not bert_dir.is_dir():
            raise FormatError(f"BERT folder {str(bert_dir)!r} does not exist; expected a Hugging Face BERT folder")
        if not (bert_dir / VOCAB_FILENAME).is_file():
            raise FormatError(f"{str(bert_dir)!r} has no vocab.txt; expected the checkpoint's WordPiece vocabulary")
        config = _read_config(bert_dir)
        state = _normalise_keys(_read_safetensors(bert_dir / _WEIGHTS_FILENAME))
        vocab = VideoBertVocab.for_codebook(bert_dir / VOCAB_FILENAME, codebook)
        ref = codebook_reference(codebook)

        text_size = vocab.text_size
        if int(config.vocab_size) != text_size:
            raise FormatError(
                f"config.json has vocab_size {config.vocab_size} but vocab.txt has {text_size} tokens; "
                "expected them to match"
            )
        word_key = "bert.embeddings.word_embeddings.weight"
        if word_key not in state:
            raise FormatError(
                f"{str(bert_dir / _WEIGHTS_FILENAME)!r} has no {word_key.split('bert.', 1)[1]!r}; "
                f"expected a BERT state dict, got keys like {sorted(state)[:3]}"
            )
        text_emb = state[word_key]
        if tuple(text_emb.shape) != (text_size, config.hidden_size):
            raise FormatError(
                f"word embeddings have shape {tuple(text_emb.shape)}; expected ({text_size}, {config.hidden_size}) "
                "from config.json and vocab.txt"
            )

        config.vocab_size = vocab.size
        config.tie_word_embeddings = True
        torch.manual_seed(seed)
        model = BertForPreTraining(config)
        model_state = model.state_dict()

        # Everything of the encoder must come from the checkpoint; only heads may be new.
        skip = {word_key, "cls.predictions.bias", *_TIED_KEYS, *_IGNORED_KEYS}
        missing = [k for k in model_state if k not in state and k not in skip
                   and not k.startswith(("cls.", "bert.pooler."))]
        if missing:
            raise FormatError(
                f"{str(bert_dir / _WEIGHTS_FILENAME)!r} lacks {len(missing)} BERT weights such as {missing[:3]}; "
                "expected a checkpoint of the architecture config.json describes"
            )
        for key, value in state.items():
            if key in skip or key not in model_state:
                continue
            if tuple(model_state[key].shape) != tuple(value.shape):
                raise FormatError(f"weight {key!r} has shape {tuple(value.shape)}; config.json implies "
                                  f"{tuple(model_state[key].shape)}")
        init_info = {"seed": int(seed), "separator": "copy of [SEP] embedding"}
        has_mlm = "cls.predictions.transform.dense.weight" in state
        has_nsp = "cls.seq_relationship.weight" in state
        has_pooler = "bert.pooler.dense.weight" in state

        with torch.no_grad():
            for key, param in model.named_parameters():
                if key in state and key not in skip:
                    param.copy_(state[key])
            emb = model.bert.embeddings.word_embeddings.weight
            emb[:text_size] = text_emb
            emb[vocab.separator_id] = text_emb[vocab.sep_id]
            visual, visual_info = _visual_embeddings(codebook, config.hidden_size, text_emb.numpy(), seed)
            emb[vocab.visual_offset:] = torch.from_numpy(visual)
            init_info.update(visual_info)
            bias = model.cls.predictions.bias
            bias.zero_()
            if "cls.predictions.bias" in state:
                bias[:text_size] = state["cls.predictions.bias"][:text_size]
            if not has_mlm:
                t = model.cls.predictions.transform
                t.dense.weight.copy_(torch.eye(config.hidden_size))
                t.dense.bias.zero_()
                t.LayerNorm.weight.fill_(1.0)
                t.LayerNorm.bias.zero_()
            init_info["mlm_head"] = "checkpoint" if has_mlm else "identity transform (checkpoint has none)"
            if not has_nsp:
                g = torch.Generator().manual_seed(seed)
                w = model.cls.seq_relationship.weight
                w.copy_(torch.randn(w.shape, generator=g) * config.initializer_range)
                model.cls.seq_relationship.bias.zero_()
            init_info["alignment_head"] = "checkpoint" if has_nsp else f"normal(0, {config.initializer_range})"
            if not has_pooler:
                g = torch.Generator().manual_seed(seed + 1)
                w = model.bert.pooler.dense.weight
                w.copy_(torch.randn(w.shape, generator=g) * config.initializer_range)
                model.bert.pooler.dense.bias.zero_()
            init_info["pooler"] = "checkpoint" if has_pooler else f"normal(0, {config.initializer_range})"
        _check_tied(model)
        model.eval()
        log.info("extended %s to %d tokens (%s)", bert_dir, vocab.size, init_info)
        return cls(model, vocab, ref, init_info)

    @classmethod
    def from_config(cls, size, vocab_file, codebook, *, seed: int = 0) -> "VideoBert":
        """A randomly initialised VideoBERT of a named size (:data:`MODEL_SIZES`) for training from scratch.

        ``vocab_file`` is a WordPiece vocab.txt (e.g. the one of any BERT folder). Every weight
        is BERT's own initialisation (``BertForPreTraining(config)`` after
        ``torch.manual_seed(seed)``) except the visual-token embeddings, which are made from the
        codebook as in :meth:`from_bert` (centroids, or their fixed orthogonal projection scaled
        to the mean norm of the random word embeddings).
        """
        _require_torch()
        import torch
        from transformers import BertConfig, BertForPreTraining

        if size not in MODEL_SIZES:
            raise InvalidInputError(f"unknown model size {size!r}; expected one of {sorted(MODEL_SIZES)}")
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FormatError(f"vocabulary {str(vocab_file)!r} does not exist; expected a WordPiece vocab.txt")
        vocab = VideoBertVocab.for_codebook(vocab_file, codebook)
        config = BertConfig(vocab_size=vocab.size, pad_token_id=vocab.pad_id, tie_word_embeddings=True,
                            **MODEL_SIZES[size])
        torch.manual_seed(seed)
        model = BertForPreTraining(config)
        with torch.no_grad():
            emb = model.bert.embeddings.word_embeddings.weight
            text_emb = emb[: vocab.text_size].detach().numpy()
            visual, visual_info = _visual_embeddings(codebook, config.hidden_size, text_emb, seed)
            emb[vocab.visual_offset:] = torch.from_numpy(visual)
            emb[vocab.separator_id] = emb[vocab.sep_id]
        _check_tied(model)
        model.eval()
        init_info = {"seed": int(seed), "from_scratch": size, "separator": "copy of [SEP] embedding",
                     **visual_info}
        return cls(model, vocab, codebook_reference(codebook), init_info)

    # ------------------------------------------------------------------ files

    def save(self, directory) -> Path:
        """Write config, weights (safetensors), vocabulary + layout and the codebook reference."""
        import torch
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _check_tied(self.model)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
                   for k, v in self.model.state_dict().items() if k not in _TIED_KEYS}
        save_file(tensors, str(directory / _WEIGHTS_FILENAME), metadata={"format": "pt"})
        config = self.model.config.to_dict()
        config["architectures"] = ["BertForPreTraining"]
        with open(directory / _CONFIG_FILENAME, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        self.vocab.save(directory)
        meta = {
            "format": _FORMAT_NAME,
            "format_version": VIDEOBERT_FORMAT_VERSION,
            "codebook": self.codebook_ref,
            "vocab_size": self.vocab.size,
            "init": self.init_info,
        }
        with open(directory / _META_FILENAME, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        return directory

    @classmethod
    def load(cls, directory, codebook=None) -> "VideoBert":
        """Load what :meth:`save` wrote. With ``codebook``, it must be the one the model was built
        for (same sha256 and shape), else FormatError."""
        _require_torch()
        from transformers import BertForPreTraining

        directory = Path(directory)
        if not directory.is_dir():
            raise FormatError(f"VideoBERT folder {str(directory)!r} does not exist")
        meta_path = directory / _META_FILENAME
        if not meta_path.is_file():
            raise FormatError(f"{str(directory)!r} has no {_META_FILENAME}; expected a folder written by VideoBert.save "
                              "(use VideoBert.from_bert for a plain Hugging Face BERT folder)")
        meta = read_json_object(meta_path)
        if meta.get("format") != _FORMAT_NAME:
            raise FormatError(f"{str(meta_path)!r} is not a {_FORMAT_NAME} file")
        if meta.get("format_version") != VIDEOBERT_FORMAT_VERSION:
            raise FormatError(f"{str(meta_path)!r} has format_version {meta.get('format_version')!r}; "
                              f"expected {VIDEOBERT_FORMAT_VERSION}")
        ref = meta.get("codebook")
        if not isinstance(ref, dict) or not {"sha256", "levels", "branching", "num_leaves", "dim"} <= set(ref):
            raise FormatError(f"{str(meta_path)!r} lacks a complete codebook reference")
        if codebook is not None:
            got = codebook_reference(codebook)
            if got != ref:
                diff = ", ".join(f"{k}: model {ref.get(k)!r}, given {got.get(k)!r}" for k in got if got[k] != ref.get(k))
                raise FormatError(f"the codebook does not match the one this VideoBERT was built for ({diff})")
        vocab = VideoBertVocab.load(directory)
        if (vocab.levels, vocab.branching) != (ref["levels"], ref["branching"]):
            raise FormatError(f"vocabulary tree {vocab.levels}x{vocab.branching} does not match the codebook "
                              f"reference {ref['levels']}x{ref['branching']}")
        config = _read_config(directory)
        if int(config.vocab_size) != vocab.size:
            raise FormatError(f"config.json vocab_size {config.vocab_size} != vocabulary size {vocab.size}")
        state = _read_safetensors(directory / _WEIGHTS_FILENAME)
        model = BertForPreTraining(config)
        expected = set(model.state_dict()) - set(_TIED_KEYS)
        missing = sorted(expected - set(state) - set(_IGNORED_KEYS))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise FormatError(f"{str(directory / _WEIGHTS_FILENAME)!r} does not match config.json: missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}")
        own = model.state_dict()
        for key, value in state.items():
            if tuple(own[key].shape) != tuple(value.shape):
                raise FormatError(f"weight {key!r} has shape {tuple(value.shape)}; expected {tuple(own[key].shape)}")
        model.load_state_dict(state, strict=False)
        _check_tied(model)
        model.eval()
        return cls(model, vocab, ref, meta.get("init"))

    # ------------------------------------------------------------------ inference helpers

    def forward_full(self, input_ids, attention_mask=None, token_type_ids=None):
        """Reference forward pass: full MLM logits (batch, seq, vocab) and NSP logits (batch, 2)."""
        import torch

        with torch.no_grad():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.prediction_logits, out.seq_relationship_logits

    def caption_inputs(self, leaves, text: str, max_length: int = 512):
        """The captioning input in vbedge's one layout: ``[CLS] <text> [>] <visual tokens> [SEP]``.

        ``leaves`` are codebook leaf ids of consecutive clips, ``text`` a template with
        ``[MASK]`` slots (e.g. "now let me show you how to [MASK] the [MASK]."). Token types are 0
        for ``[CLS]`` and the text, 1 from ``[>]`` to the end (:mod:`vbedge.sequence_layout`).
        Returns int64 arrays with a batch axis of 1: ``input_ids``, ``attention_mask``,
        ``token_type_ids`` and ``predict_positions`` (the positions of the ``[MASK]`` tokens).
        """
        return caption_inputs(self.vocab, leaves, text, max_length=max_length)


def caption_inputs(vocab: VideoBertVocab, leaves, text: str, max_length: int = 512) -> dict:
    """See :meth:`VideoBert.caption_inputs`; works from the vocabulary alone (no torch)."""
    leaves = np.atleast_1d(np.asarray(leaves))
    visual = np.asarray(vocab.visual_token_id(leaves), dtype=np.int64).reshape(-1)
    text_ids = np.asarray(vocab.encode_text(text), dtype=np.int64)
    row = layout_row(vocab, text_ids, visual, max_length=max_length)
    ids = row.input_ids
    positions = np.flatnonzero(ids == vocab.mask_id).astype(np.int64)
    if positions.size == 0:
        raise InvalidInputError(f"text {text!r} has no [MASK] to predict")
    return {
        "input_ids": ids[None],
        "attention_mask": np.ones_like(ids)[None],
        "token_type_ids": row.token_type_ids[None],
        "predict_positions": positions[None],
    }


def _check_tied(model):
    dec = model.cls.predictions.decoder
    emb = model.bert.embeddings.word_embeddings
    if dec.weight.data_ptr() != emb.weight.data_ptr():
        # Re-tie: a decoder that silently diverged from the embeddings would break the export.
        model.tie_weights()
        if dec.weight.data_ptr() != emb.weight.data_ptr():  # pragma: no cover
            raise FormatError("the masked-LM decoder is not tied to the word embeddings")
