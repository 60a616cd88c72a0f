"""Export VideoBERT to an edge-optimised ONNX graph, check it, and make its FP16 variant.

The exported graph answers what a captioning device asks, and nothing more::

    inputs   input_ids, attention_mask, token_type_ids   int64 (batch, seq), seq <= 512
             predict_positions                            int64 (batch, P), the positions to fill
    outputs  text_topk_ids, text_topk_scores              (batch, P, k) best WordPiece tokens
             visual_topk_ids, visual_topk_scores          (batch, P, k) best visual tokens
             alignment_logit                              (batch,) text/video alignment log-odds

The hidden states are gathered at ``predict_positions`` first; only then the masked-LM transform
and the two needed slices of the tied decoder run. A full BERT head would compute
``seq x 51,259`` logits per sequence; this graph computes ``P x 51,259``.

Ids are vocabulary ids (a visual id minus ``vocab.visual_offset`` is the codebook leaf). Scores
are the masked-LM logits (before softmax), equal to ``BertForPreTraining.prediction_logits`` at
those ids. ``alignment_logit = nsp[:, 0] - nsp[:, 1]`` from BERT's [CLS] (NSP) head, so
``sigmoid(alignment_logit)`` is the model's probability that text and video belong together.

Every export is checked against PyTorch (the unmodified ``BertForPreTraining`` forward) with ONNX
Runtime on fresh random inputs and by the TensorRT-readiness check; a failure raises
:class:`~vbedge.export.verify.ExportCheckError` / :class:`~vbedge.FormatError`. Tolerances are
:data:`FP32_TOLERANCES` and :data:`FP16_TOLERANCES`, documented in docs/export.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from vbedge.errors import FormatError, InvalidInputError

log = logging.getLogger(__name__)

__all__ = [
    "export_videobert",
    "check_videobert_onnx",
    "random_videobert_inputs",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "DEFAULT_TOP_K",
    "MAX_SEQUENCE",
    "FP32_TOLERANCES",
    "FP16_TOLERANCES",
]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "predict_positions")
OUTPUT_NAMES = ("text_topk_ids", "text_topk_scores", "visual_topk_ids", "visual_topk_scores", "alignment_logit")
DEFAULT_TOP_K = 10
MAX_SEQUENCE = 512
DEFAULT_OPSET = 18
METADATA_FORMAT = "vbedge.videobert_onnx"
METADATA_VERSION = 1

#: Agreement asked of the FP32 graph on random inputs: ids may differ only on near-ties of
#: float32 rounding (rare), scores and the alignment logit within float32 accumulation error.
FP32_TOLERANCES = {"min_top1": 0.97, "min_topk_overlap": 0.97, "max_score_abs": 2e-3, "max_alignment_abs": 2e-3}
#: FP16 keeps LayerNorm/Softmax in FP32 but rounds weights and matmul outputs to 11-bit mantissas;
#: logits of ~10 carry errors of ~1e-2, which reorders near-tied candidates.
FP16_TOLERANCES = {"min_top1": 0.85, "min_topk_overlap": 0.80, "max_score_abs": 0.25, "max_alignment_abs": 0.05}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def edge_module(model, vocab, top_k: int):
    """The torch module that is exported (see the module docstring)."""
    import torch

    class VideoBertEdge(torch.nn.Module):
        """Encoder + gather-first masked-LM top-k + alignment logit."""

        def __init__(self):
            super().__init__()
            self.bert = model.bert
            self.transform = model.cls.predictions.transform
            self.seq_relationship = model.cls.seq_relationship
            self.decoder_bias = model.cls.predictions.bias
            self.text_size = int(vocab.text_size)
            self.visual_offset = int(vocab.visual_offset)
            self.top_k = int(top_k)

        def forward(self, input_ids, attention_mask, token_type_ids, predict_positions):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            hidden = out.last_hidden_state  # (B, S, H)
            index = predict_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            picked = self.transform(torch.gather(hidden, 1, index))  # (B, P, H): P rows, not S
            # The decoder is tied to the word embeddings: slice the one weight, never copy it.
            weight = self.bert.embeddings.word_embeddings.weight
            text_logits = torch.matmul(picked, weight[: self.text_size].t()) + self.decoder_bias[: self.text_size]
            visual_logits = (torch.matmul(picked, weight[self.visual_offset:].t())
                             + self.decoder_bias[self.visual_offset:])
            text_scores, text_ids = torch.topk(text_logits, self.top_k, dim=-1)
            visual_scores, visual_idx = torch.topk(visual_logits, self.top_k, dim=-1)
            nsp = self.seq_relationship(out.pooler_output)  # (B, 2): [aligned, not aligned]
            alignment = nsp[:, 0] - nsp[:, 1]
            return text_ids, text_scores, visual_idx + self.visual_offset, visual_scores, alignment

    return VideoBertEdge().eval()


def random_videobert_inputs(vocab, batch: int, seq: int, positions: int, seed: int = 0) -> dict:
    """Fresh random int64 inputs over the whole vocabulary, with padded rows and random types."""
    if seq < 2 or seq > MAX_SEQUENCE or positions < 1 or batch < 1:
        raise InvalidInputError(f"need batch >= 1, 2 <= seq <= {MAX_SEQUENCE}, positions >= 1; "
                                f"got batch={batch}, seq={seq}, positions={positions}")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab.size, size=(batch, seq), dtype=np.int64)
    ids[:, 0] = vocab.cls_id
    mask = np.ones((batch, seq), dtype=np.int64)
    lengths = rng.integers(max(2, seq // 2), seq + 1, size=batch)
    lengths[0] = seq  # at least one unpadded row
    for b, n in enumerate(lengths):
        mask[b, n:] = 0
        ids[b, n:] = vocab.pad_id
    types = (rng.random((batch, seq)) < 0.5).astype(np.int64)
    pos = np.stack([rng.integers(0, n, size=positions) for n in lengths]).astype(np.int64)
    ids[np.arange(batch)[:, None], pos] = vocab.mask_id
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "predict_positions": pos}


def validate_inputs(feeds: dict, vocab_size: int, max_sequence: int = MAX_SEQUENCE) -> None:
    """Raise InvalidInputError unless ``feeds`` are valid inputs of the exported graph."""
    missing = [n for n in INPUT_NAMES if n not in feeds]
    if missing:
        raise InvalidInputError(f"missing VideoBERT input(s) {missing}; expected {list(INPUT_NAMES)}")
    arrays = {n: np.asarray(feeds[n]) for n in INPUT_NAMES}
    for n, a in arrays.items():
        if a.dtype != np.int64 or a.ndim != 2:
            raise InvalidInputError(f"{n} must be an int64 array of shape (batch, length); got {a.dtype} {a.shape}")
    shape = arrays["input_ids"].shape
    batch, seq = shape
    if batch < 1 or seq < 1 or seq > max_sequence:
        raise InvalidInputError(f"input_ids has shape {shape}; expected (batch >= 1, 1 <= seq <= {max_sequence})")
    for n in ("attention_mask", "token_type_ids"):
        if arrays[n].shape != shape:
            raise InvalidInputError(f"{n} has shape {arrays[n].shape}; expected {shape} like input_ids")
    ids = arrays["input_ids"]
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise InvalidInputError(f"input_ids must be in [0, {vocab_size}); got values {ids.min()}..{ids.max()}")
    if not np.isin(arrays["attention_mask"], (0, 1)).all() or not np.isin(arrays["token_type_ids"], (0, 1)).all():
        raise InvalidInputError("attention_mask and token_type_ids must contain only 0 and 1")
    pos = arrays["predict_positions"]
    if pos.shape[0] != batch or pos.shape[1] < 1:
        raise InvalidInputError(f"predict_positions has shape {pos.shape}; expected ({batch}, P >= 1)")
    if pos.min() < 0 or pos.max() >= seq:
        raise InvalidInputError(f"predict_positions must be in [0, {seq}); got values {pos.min()}..{pos.max()}")


def _reference_outputs(model, vocab, feeds: dict, top_k: int) -> dict:
    """Outputs computed from the unmodified BertForPreTraining forward (full logits)."""
    import torch

    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], token_type_ids=t["token_type_ids"])
    logits = out.prediction_logits  # (B, S, V)
    rows = torch.arange(logits.shape[0])[:, None]
    at = logits[rows, t["predict_positions"]]  # (B, P, V)
    ts, ti = torch.topk(at[..., : vocab.text_size], top_k, dim=-1)
    vs, vi = torch.topk(at[..., vocab.visual_offset:], top_k, dim=-1)
    nsp = out.seq_relationship_logits
    return {
        "text_topk_ids": ti.numpy(), "text_topk_scores": ts.numpy(),
        "visual_topk_ids": (vi + vocab.visual_offset).numpy(), "visual_topk_scores": vs.numpy(),
        "alignment_logit": (nsp[:, 0] - nsp[:, 1]).numpy(),
        # Every id's score, so a tied id the other runtime picked can be looked up.
        "text_logits": at[..., : vocab.text_size].numpy(), "visual_logits": at[..., vocab.visual_offset:].numpy(),
    }


def check_videobert_onnx(onnx_path, model, vocab, top_k: int, tolerances: dict, *, seed: int = 1234,
                         cases=((2, 37, 4), (3, 64, 3)), what="videobert.onnx") -> dict:
    """Run ``onnx_path`` with ONNX Runtime on fresh random inputs and compare with PyTorch.

    Each case is ``(batch, seq, positions)``. Returns the metrics; raises ExportCheckError when
    top-1 agreement, top-k overlap, score or alignment error miss ``tolerances``.
    """
    from vbedge.export.verify import ExportCheckError, make_session, tie_aware_topk

    session = make_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    ref_all, got_all = {n: [] for n in OUTPUT_NAMES}, {n: [] for n in OUTPUT_NAMES}
    ref_all.update(text_logits=[], visual_logits=[])
    for i, (batch, seq, positions) in enumerate(cases):
        feeds = random_videobert_inputs(vocab, batch, seq, positions, seed=seed + i)
        ref = _reference_outputs(model, vocab, feeds, top_k)
        got = dict(zip(names, session.run(names, feeds)))
        for n in ("text_logits", "visual_logits"):
            ref_all[n].append(ref[n].reshape(-1, ref[n].shape[-1]))
        for n in OUTPUT_NAMES:
            if got[n].shape != ref[n].shape:
                raise ExportCheckError(f"{what}: output {n} has shape {got[n].shape}; PyTorch gives {ref[n].shape}")
            ref_all[n].append(ref[n].reshape(-1, *ref[n].shape[2:]) if ref[n].ndim == 3 else ref[n])
            got_all[n].append(got[n].reshape(-1, *got[n].shape[2:]) if got[n].ndim == 3 else got[n])
    ref_all = {n: np.concatenate(v) for n, v in ref_all.items()}
    got_all = {n: np.concatenate(v) for n, v in got_all.items()}
    metrics, failures = {"cases": [list(c) for c in cases], "seed": seed, "tolerances": dict(tolerances)}, []
    for part in ("text", "visual"):
        # Tie-aware: ids whose PyTorch scores are within the score tolerance are interchangeable
        # (duplicate codebook leaves give exactly tied visual words; the runtimes order them
        # differently). The ids themselves are reported as top1_id_agreement.
        m = tie_aware_topk(ref_all[f"{part}_topk_ids"], ref_all[f"{part}_topk_scores"], got_all[f"{part}_topk_ids"],
                           tolerances["max_score_abs"], ref_lookup=ref_all[f"{part}_logits"],
                           id_offset=vocab.visual_offset if part == "visual" else 0)
        # Sorted scores are compared value by value: robust to near-tied ids swapping places.
        m["max_score_abs"] = float(np.max(np.abs(ref_all[f"{part}_topk_scores"].astype(np.float64)
                                                 - got_all[f"{part}_topk_scores"])))
        metrics[part] = m
        if not m["top1_agreement"] >= tolerances["min_top1"]:
            failures.append(f"{part} top-1 agreement {m['top1_agreement']:.3f} < {tolerances['min_top1']}")
        if not m["topk_overlap"] >= tolerances["min_topk_overlap"]:
            failures.append(f"{part} top-k overlap {m['topk_overlap']:.3f} < {tolerances['min_topk_overlap']}")
        if not m["max_score_abs"] <= tolerances["max_score_abs"]:
            failures.append(f"{part} max score error {m['max_score_abs']:.3g} > {tolerances['max_score_abs']}")
    align = float(np.max(np.abs(ref_all["alignment_logit"].astype(np.float64) - got_all["alignment_logit"])))
    metrics["alignment_max_abs"] = align
    if not align <= tolerances["max_alignment_abs"]:
        failures.append(f"alignment logit error {align:.3g} > {tolerances['max_alignment_abs']}")
    metrics["passed"] = not failures
    if failures:
        raise ExportCheckError(f"{what} disagrees with PyTorch: {'; '.join(failures)}")
    return metrics


def _torch_export(module, vocab, path: Path, opset: int):
    import torch

    example = random_videobert_inputs(vocab, batch=2, seq=17, positions=3, seed=0)
    args = tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=1, max=MAX_SEQUENCE)
    positions = torch.export.Dim("positions", min=1, max=MAX_SEQUENCE)
    dynamic_shapes = (
        {0: batch, 1: seq},
        {0: batch, 1: seq},
        {0: batch, 1: seq},
        {0: batch, 1: positions},
    )
    with torch.no_grad():
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic_shapes, external_data=False,
            verbose=False, optimize=True,
        )
    program.save(str(path), external_data=False)
    return path


def _prepare_for_export(model):
    """A copy-free switch of the attention to the plain (eager) implementation.

    Eager attention exports as MatMul/Softmax, which every ONNX Runtime and TensorRT version
    parses; SDPA exports as an opset-23 Attention op or a decomposition depending on versions.
    """
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        model.config._attn_implementation = "eager"
    model.eval()
    return model


def export_videobert(videobert, out_dir, *, top_k: int = DEFAULT_TOP_K, opset: int = DEFAULT_OPSET,
                     fp16: bool = True, check: bool = True, progress: bool = True) -> dict:
    """Export a :class:`~vbedge.models.videobert.VideoBert` to ``out_dir``.

    Writes ``videobert.onnx``, ``videobert.fp16.onnx`` (unless ``fp16=False``) and
    ``videobert.json`` (names, k, vocabulary layout, codebook reference, check results) and
    returns the metadata dict. With ``check`` (the default) each graph is compared with PyTorch on
    random inputs and passed through the TensorRT-readiness check; a failure raises.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidInputError(f"top_k must be a positive integer, got {top_k!r}")
    vocab = videobert.vocab
    if top_k > min(vocab.text_size, vocab.num_visual):
        raise InvalidInputError(f"top_k={top_k} exceeds the text ({vocab.text_size}) or visual "
                                f"({vocab.num_visual}) part of the vocabulary")
    if opset < 17:
        raise InvalidInputError(f"opset must be >= 17, got {opset}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = ["export ONNX (fp32)", "check fp32 vs PyTorch", "readiness fp32"]
    if fp16:
        steps += ["convert to fp16", "check fp16 vs PyTorch", "readiness fp16"]
    bar = _Progress(steps, enabled=progress)

    model = _prepare_for_export(videobert.model)
    # Files are written under a staging folder and moved to their final names only after every
    # check passed: a failed export never leaves a videobert.onnx that looks valid.
    staging = Path(tempfile.mkdtemp(prefix=".videobert-export-", dir=out_dir))
    try:
        meta = _export_staged(videobert, model, vocab, top_k, opset, fp16, check, bar, staging)
        for name in [f["path"] for f in meta["files"].values()] + ["videobert.json"]:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def _export_staged(videobert, model, vocab, top_k, opset, fp16, check, bar, out_dir):
    from vbedge.export.fp16 import convert_to_fp16
    from vbedge.export.readiness import require_tensorrt_ready

    module = edge_module(model, vocab, top_k)
    fp32_path, fp16_path = out_dir / "videobert.onnx", out_dir / "videobert.fp16.onnx"
    dynamic_axes = {"input_ids": [0, 1], "attention_mask": [0, 1], "token_type_ids": [0, 1],
                    "predict_positions": [0, 1]}
    files, checks, readiness = {}, {}, {}

    bar.step()
    _torch_export(module, vocab, fp32_path, opset)
    files["fp32"] = fp32_path
    bar.step()
    if check:
        checks["fp32"] = check_videobert_onnx(fp32_path, model, vocab, top_k, FP32_TOLERANCES, what=fp32_path.name)
    bar.step()
    readiness["fp32"] = require_tensorrt_ready(fp32_path, dynamic_axes=dynamic_axes).to_dict() if check else None
    if fp16:
        bar.step()
        convert_to_fp16(fp32_path, fp16_path)
        files["fp16"] = fp16_path
        bar.step()
        if check:
            checks["fp16"] = check_videobert_onnx(fp16_path, model, vocab, top_k, FP16_TOLERANCES,
                                                  what=fp16_path.name)
        bar.step()
        readiness["fp16"] = require_tensorrt_ready(fp16_path, dynamic_axes=dynamic_axes).to_dict() if check else None
    bar.close()

    meta = {
        "format": METADATA_FORMAT,
        "format_version": METADATA_VERSION,
        "model": "videobert",
        "opset": opset,
        "top_k": top_k,
        "max_sequence": MAX_SEQUENCE,
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "positions" if n == "predict_positions"
                                                            else "sequence"]} for n in INPUT_NAMES],
        "outputs": [
            {"name": "text_topk_ids", "dtype": "int64", "shape": ["batch", "positions", top_k]},
            {"name": "text_topk_scores", "dtype": "float32", "shape": ["batch", "positions", top_k]},
            {"name": "visual_topk_ids", "dtype": "int64", "shape": ["batch", "positions", top_k]},
            {"name": "visual_topk_scores", "dtype": "float32", "shape": ["batch", "positions", top_k]},
            {"name": "alignment_logit", "dtype": "float32", "shape": ["batch"]},
        ],
        "files": {p: {"path": f.name, "sha256": _sha256_file(f), "bytes": f.stat().st_size}
                  for p, f in files.items()},
        "vocab_layout": vocab.layout(),
        "codebook": dict(videobert.codebook_ref),
        "config": {k: videobert.config.to_dict()[k] for k in
                   ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "vocab_size")},
        "checks": checks,
        "checked": bool(check),
        "readiness": readiness,
    }
    with open(out_dir / "videobert.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return meta


class _Progress:
    """Step-by-step progress on stderr (tqdm when available)."""

    def __init__(self, steps, enabled=True):
        self.steps, self.enabled, self.i, self.t0 = list(steps), enabled, 0, time.time()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=len(self.steps), desc="export videobert", unit="step")
            except ImportError:
                self.bar = None

    def step(self):
        if not self.enabled:
            return
        if self.bar is not None:
            if self.i:
                self.bar.update(1)
            self.bar.set_postfix_str(self.steps[self.i])
        self.i += 1

    def close(self):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.close()


def load_videobert_checkpoint(checkpoint, codebook=None, seed=0):
    """A :class:`~vbedge.models.videobert.VideoBert` from a saved VideoBERT folder or a plain BERT folder.

    A folder written by ``VideoBert.save`` (it has ``videobert.json``) is loaded and, when a
    ``codebook`` is given, checked against it; a plain Hugging Face BERT folder is extended to the
    joint vocabulary of ``codebook``, which is then required.
    """
    from vbedge.models.videobert import VideoBert

    checkpoint = Path(checkpoint)
    if (checkpoint / "videobert.json").is_file():
        return VideoBert.load(checkpoint, codebook=codebook)
    if codebook is None:
        raise InvalidInputError(
            f"{str(checkpoint)!r} is not a VideoBERT folder (no videobert.json); give a codebook (--codebook) "
            "to extend a plain BERT checkpoint"
        )
    return VideoBert.from_bert(checkpoint, codebook, seed=seed)


def format_summary(meta: dict, out_dir) -> str:
    """Human-readable summary of what an export wrote and checked."""
    lines = [f"VideoBERT exported to {out_dir} (opset {meta['opset']}, k={meta['top_k']}, "
             f"vocabulary {meta['vocab_layout']['size']} tokens)"]
    for precision, f in meta["files"].items():
        lines.append(f"  {f['path']:<22} {f['bytes'] / 1e6:8.1f} MB  sha256 {f['sha256'][:16]}")
    for precision, m in (meta.get("checks") or {}).items():
        lines.append(
            f"  check {precision}: text top-1 {m['text']['top1_agreement']:.3f} overlap {m['text']['topk_overlap']:.3f}, "
            f"visual top-1 {m['visual']['top1_agreement']:.3f} overlap {m['visual']['topk_overlap']:.3f}, "
            f"alignment err {m['alignment_max_abs']:.2g}: passed"
        )
    for precision, r in (meta.get("readiness") or {}).items():
        if r is not None:
            lines.append(f"  TensorRT readiness {precision}: ok ({sum(r['ops'].values())} nodes, opset {r['opset']})")
    if not meta.get("checked"):
        lines.append("  checks skipped (--no-check)")
    lines.append("  videobert.json")
    return "\n".join(lines)
