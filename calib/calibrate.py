"""``vbedge calibrate``: calibrate S3D and VideoBERT on videos, write INT8 graphs and the report.

:func:`calibrate_models` is the whole flow, shared by the CLI and ``vbedge build --precision
...,int8``: clips from videos -> split calibration / held-out (by video) -> S3D Q/DQ -> FP32 tokens
of the calibration clips -> VideoBERT sequences (templates over those tokens, or a corpus) ->
VideoBERT Q/DQ -> report on the held-out clips and sequences.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from vbedge.errors import InvalidInputError

log = logging.getLogger(__name__)

#: VideoBERT's default calibration: percentile ranges survive BERT's activation outliers (the
#: measured comparison with minmax and entropy is in docs/int8.md).
VIDEOBERT_METHOD = "percentile"
VIDEOBERT_PERCENTILE = 99.99


def _visual_windows(tokens_by_video, max_len=6):
    """Consecutive-clip token windows (length 1..max_len) of each video: the captioner's inputs."""
    windows = []
    for tokens in tokens_by_video:
        for start in range(len(tokens)):
            for length in range(1, max_len + 1):
                if start + length <= len(tokens):
                    windows.append(tokens[start:start + length])
    return windows


def _tokens_by_video(session, clipset, codebook):
    feats = np.concatenate([session.run(["feature"], {"clip": c[None]})[0] for c in clipset.clips])
    tokens = np.asarray(codebook.tokenize(feats))
    by_video = {}
    for (video, _), token in zip(clipset.origins, tokens):
        by_video.setdefault(video, []).append(int(token))
    return list(by_video.values())


def videobert_feeds(s3d_fp32, calib_set, held_set, codebook, vocab, *, max_sequences=256, seed=0, corpus=None):
    """(calibration feeds, held-out feeds) for VideoBERT, as ``vbedge calibrate`` makes them.

    Caption templates over the FP32 S3D's visual words of each clip set, plus masked kitchen
    sentences (disjoint between the two sets); ``corpus`` replaces the calibration side.
    """
    from vbedge.calib.readers import corpus_sequences, sentence_sequences, split_sentences, template_sequences
    from vbedge.export.verify import make_session

    fp32_s3d = make_session(s3d_fp32)
    windows = _visual_windows(_tokens_by_video(fp32_s3d, calib_set, codebook))
    held_windows = _visual_windows(_tokens_by_video(fp32_s3d, held_set, codebook))
    # Real text besides the templates: templates alone repeat ~20 words, so their ranges miss
    # what captions and transcripts look like. Held-out sentences are disjoint from these.
    calib_sentences, held_sentences = split_sentences(max_sequences // 2, max(16, max_sequences // 4), seed=seed)
    if corpus is not None:
        calib_feeds = corpus_sequences(vocab, corpus, max_sequences=max_sequences)
    else:
        calib_feeds = (template_sequences(vocab, windows[:max_sequences - len(calib_sentences)])
                       + sentence_sequences(vocab, calib_sentences, windows, seed=seed))
    # Held-out feeds are not padded: each runs at its own length, as in the captioner.
    held_feeds = (template_sequences(vocab, held_windows[:max_sequences])
                  + sentence_sequences(vocab, held_sentences, held_windows, seed=seed + 1))
    return calib_feeds, held_feeds


def calibrate_models(out_dir, *, videos, spec, codebook, vocab, s3d_fp32, videobert_fp32=None,
                     method="minmax", holdout=0.25, max_clips=64, clips_per_video=None, corpus=None,
                     max_sequences=256, repeats=5, seed=0, progress=True, videobert_method=None,
                     videobert_percentile=VIDEOBERT_PERCENTILE, videobert_cpu_float=None,
                     videobert_per_token=None, openvino=False, s3d_cpu_u8_range=None,
                     cpu_weight_bits=None) -> dict:
    """Calibrate and evaluate; write ``s3d.int8.onnx`` (+ ``.cpu.onnx``), ``videobert.int8.onnx`` (+
    ``.cpu.onnx``) and ``int8_report.json`` into ``out_dir``; return the report dict (with ``files``).

    VideoBERT is calibrated with ``videobert_method`` (default :data:`VIDEOBERT_METHOD`: BERT's
    activation outliers make min/max ranges far too wide, docs/int8.md) on caption templates over
    the calibration clips' tokens plus masked kitchen sentences (or ``corpus``); the report uses the
    held-out clips' tokens and a disjoint set of sentences. ``videobert_cpu_float``: the parts the
    VideoBERT CPU form keeps in float (default ``quantize.DEFAULT_CPU_FORM_FLOAT``).
    ``openvino``: also report OpenVINO on the FP32 and the Q/DQ graphs (``ov-fp32``, ``ov-int8``),
    timed interleaved with ONNX Runtime's variants in the same process. ``s3d_cpu_u8_range``: the
    S3D CPU form's uint8 range (default ``quantize.DEFAULT_U8_RANGE``, :func:`quantize.make_cpu_form`);
    ``cpu_weight_bits``: both CPU forms' weight bits, 7, 8 or ``"auto"`` (the default,
    ``quantize.DEFAULT_WEIGHT_BITS``: 8 where this CPU has VNNI or an int8 dot product, else 7;
    :func:`quantize.resolve_weight_bits`).
    """
    from vbedge.calib.quantize import DEFAULT_U8_RANGE, DEFAULT_WEIGHT_BITS, check_options, quantize_model
    from vbedge.calib.readers import S3DCalibrationReader, VideoBertCalibrationReader, collect_clips
    from vbedge.calib.report import (Contender, evaluate_s3d, evaluate_videobert, goals_met, machine_description,
                                     openvino_contenders, write_report)

    check_options(method)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    caught = []
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        clipset = collect_clips(videos, spec, max_clips=max_clips, clips_per_video=clips_per_video, progress=progress)
        calib_set, held_set = clipset.split(holdout, seed=seed)
        s3d_int8, s3d_cpu = out / "s3d.int8.onnx", out / "s3d.int8.cpu.onnx"
        s3d_q = quantize_model(s3d_fp32, s3d_int8, S3DCalibrationReader(calib_set), method=method,
                               cpu_path=s3d_cpu, dynamic_axes={"clip": [0]}, progress=progress,
                               expected_batches=len(calib_set),
                               cpu_u8_range=s3d_cpu_u8_range or DEFAULT_U8_RANGE,
                               cpu_weight_bits=cpu_weight_bits or DEFAULT_WEIGHT_BITS)
        report = {"machine": machine_description(), "method": method, "calibration": calib_set.summary(),
                  "held_out": held_set.summary(), "s3d_quantization": s3d_q.to_dict(),
                  "files": {"s3d": {"int8": s3d_int8.name, "int8_cpu": s3d_cpu.name}}}
        extra = openvino_contenders(s3d_fp32, s3d_int8) if openvino else {}
        # The FP32 S3D vbedge runs on ONNX Runtime's CPU (separable 3D convolutions as 2D ones), so
        # INT8's speedup is also judged against it (goals_met).
        fp32_2d = {"fp32-2d": Contender(Path(s3d_fp32), "onnxruntime", "fp32", conv2d_form=True)}
        # "qdq": the TensorRT file's arithmetic, its Q/DQ run in float by ONNX Runtime (Contender.emulated).
        qdq = {"qdq": Contender(s3d_int8, emulated=True)}
        report["s3d"] = evaluate_s3d(s3d_fp32, {**qdq, "cpu": s3d_cpu, **fp32_2d, **extra}, held_set.clips,
                                     codebook, repeats=repeats)
        if videobert_fp32 is not None:
            from vbedge.calib.quantize import DEFAULT_CPU_FORM_FLOAT, resolve_per_token, transformer_cpu_form

            vb_method = videobert_method or VIDEOBERT_METHOD
            check_options(vb_method, videobert_percentile)
            calib_feeds, held_feeds = videobert_feeds(s3d_fp32, calib_set, held_set, codebook, vocab,
                                                      max_sequences=max_sequences, seed=seed, corpus=corpus)
            vb_int8, vb_cpu = out / "videobert.int8.onnx", out / "videobert.int8.cpu.onnx"
            dyn = {n: [0, 1] for n in ("input_ids", "attention_mask", "token_type_ids", "predict_positions")}
            vb_q = quantize_model(videobert_fp32, vb_int8, VideoBertCalibrationReader(calib_feeds, vocab.pad_id),
                                  method=vb_method, percentile=videobert_percentile, dynamic_axes=dyn,
                                  progress=progress, expected_batches=len(calib_feeds))
            report["videobert_quantization"] = vb_q.to_dict()
            report["videobert_quantization"]["percentile"] = videobert_percentile if vb_method == "percentile" else None
            cpu_float = DEFAULT_CPU_FORM_FLOAT if videobert_cpu_float is None else tuple(videobert_cpu_float)
            per_token = resolve_per_token(videobert_per_token if videobert_per_token in (None, "all")
                                          else tuple(videobert_per_token), cpu_float)
            report["videobert_quantization"]["cpu_form"] = transformer_cpu_form(
                videobert_fp32, vb_cpu, float_parts=cpu_float, per_token=per_token,
                weight_bits=cpu_weight_bits or DEFAULT_WEIGHT_BITS)
            report["files"]["videobert"] = {"int8": vb_int8.name, "int8_cpu": vb_cpu.name}
            # The other way of scaling the CPU form's activations, side by side (not in the bundle):
            # per-tensor everywhere, or (when that is what the bundle gets) the default per-token parts.
            other_name, other = ("per-tensor", ()) if per_token else ("per-token", resolve_per_token(None, cpu_float))
            vb_other = out / f"videobert.int8.cpu.{other_name}.onnx"
            transformer_cpu_form(videobert_fp32, vb_other, float_parts=cpu_float, per_token=other,
                                 weight_bits=cpu_weight_bits or DEFAULT_WEIGHT_BITS)
            extra = openvino_contenders(videobert_fp32, vb_int8) if openvino else {}
            extra[f"cpu-{other_name}"] = vb_other
            report["videobert"] = evaluate_videobert(videobert_fp32, {"qdq": Contender(vb_int8, emulated=True),
                                                                      "cpu": vb_cpu, **extra},
                                                     held_feeds, repeats=max(repeats, 10))
    for w in recorded:
        caught.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    report["warnings"] = caught
    report["goals_met"] = goals_met(report)
    write_report(report, out / "int8_report.json")
    return report
