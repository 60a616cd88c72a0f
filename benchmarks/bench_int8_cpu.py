"""INT8 vs FP32 on this CPU: full-size S3D (1x3x30x224x224) and MiniLM-size VideoBERT.

Exports a seeded random S3D and the MiniLM VideoBERT (2x3 codebook), writes synthetic videos with
OpenCV, runs :func:`vbedge.calib.calibrate.calibrate_models` (calibration on some videos, the
report on held-out ones, FP32 and INT8 timed interleaved in this process) and prints the table.

``--videobert trained`` (the default) first trains the MiniLM VideoBERT with ``vbedge train``
(:func:`vbedge.training.train`, all four objectives) for ``--train-steps`` steps on a synthetic
corpus of kitchen sentences the report never sees, each over a few clips of a Markov chain of
visual words (:func:`trained_videobert`): all-MiniLM-L6-v2 ships no masked-LM head, and an
untrained head's word ranking has near-ties everywhere. ``--videobert minilm`` measures the
untrained one.

    .venv/bin/python benchmarks/bench_int8_cpu.py [--work /tmp/vbedge-int8] [--videos 12] [--method minmax]
                                                  [--videobert trained|minilm] [--train-steps 150]
    .venv/bin/python benchmarks/bench_int8_cpu.py --study [--videobert ...]   # after one normal run

Where OpenVINO is installed (the ``openvino`` extra) the report also runs it as a contender, in the
same process and interleaved: ``ov-fp32`` (the FP32 graphs) and ``ov-int8`` (the Q/DQ graphs);
``--no-openvino`` leaves them out.

``--study`` reuses the exported VideoBERT and asks where INT8 accuracy is lost: each row quantizes a
subset of the 36 encoder weight MatMuls (one role in all layers, or one layer) and reports held-out
text/visual top-1 agreement, for the static Q/DQ placement (percentile 99.99) and for the dynamic
CPU form, plus weight-only INT8 (per-channel weights rounded, activations float) and FP16 as
references for how sensitive the masked-word ranking is.
"""

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/vbedge-int8-bench")
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--study", action="store_true", help="layer-subset accuracy study (VideoBERT)")
    parser.add_argument("--study-calib", type=int, default=32, help="calibration sequences for --study")
    parser.add_argument("--study-quick", action="store_true",
                        help="--study with only the all-36 row and the references (~5 min instead of ~45)")
    parser.add_argument("--videobert", choices=("trained", "minilm"), default="trained",
                        help="MLM-trained MiniLM VideoBERT (default) or the untrained head")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--no-openvino", action="store_true",
                        help="leave out the OpenVINO contenders (ov-fp32, ov-int8); they run when openvino imports")
    args = parser.parse_args()
    vb_dir = Path(args.work) / ("vb" if args.videobert == "minilm" else f"vb_trained{args.train_steps}")
    if args.study:
        return study(vb_dir, args.study_calib, args.study_quick)

    from bundle_factory import BERT_DIR, small_codebook
    from test_calib import _write_video

    from vbedge.calib.calibrate import calibrate_models
    from vbedge.calib.report import format_report
    from vbedge.export.s3d import export_s3d
    from vbedge.export.videobert import export_videobert
    from vbedge.models.videobert import VideoBert
    from vbedge.preprocess import PreprocessSpec

    work = Path(args.work)
    spec = PreprocessSpec()
    if not (work / "s3d" / "s3d.onnx").exists():
        export_s3d(work / "s3d", random_init=True, seed=0, fp16=False, check_batches=(1,), spec=spec)
    codebook = small_codebook()
    videobert = VideoBert.from_bert(BERT_DIR, codebook)
    if not (vb_dir / "videobert.onnx").exists():
        if args.videobert == "trained":
            print(f"training the MiniLM VideoBERT with vbedge train for {args.train_steps} steps")
            videobert = trained_videobert(work / f"train{args.train_steps}", codebook, args.train_steps)
        export_videobert(videobert, vb_dir, top_k=5, fp16=False)  # the 2x3 codebook has 9 visual words
    vids = work / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    for i in range(args.videos):
        if not (vids / f"v{i}.avi").exists():
            _write_video(vids / f"v{i}.avi", seed=i, frames=64, size=(240, 320))
    report = calibrate_models(work / "int8", videos=vids, spec=spec, codebook=codebook, vocab=videobert.vocab,
                              s3d_fp32=work / "s3d" / "s3d.onnx", videobert_fp32=vb_dir / "videobert.onnx",
                              method=args.method, max_clips=36, clips_per_video=3, max_sequences=128,
                              repeats=args.repeats, openvino=not args.no_openvino and _have_openvino())
    print(f"VideoBERT: {args.videobert}" + (f" ({args.train_steps} MLM steps)" if args.videobert == "trained" else ""))
    print(format_report(report))
    print(f"report: {work / 'int8' / 'int8_report.json'}")


def _have_openvino():
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


ROLES = ("q", "k", "v", "attn_out", "ffn1", "ffn2")

#: Sentences ``kitchen_sentences(..., seed=0)`` hands out first are kept for calibration and
#: held-out evaluation (``calibrate_models`` and the study take at most 200 of them); training
#: uses only the ones after them.
RESERVED_SENTENCES = 200


def markov_leaves(num_leaves, count, rng, stay=0.7):
    """``count`` leaves where consecutive clips keep their visual word with probability ``stay``.

    Consecutive clips of a video often fall into the same visual word; a masked visual token is
    then predictable from its neighbours, as in real video.
    """
    current, out = int(rng.integers(num_leaves)), []
    for _ in range(count):
        out.append(current)
        if rng.random() > stay:
            current = int(rng.integers(num_leaves))
    return out


def trained_videobert(work, codebook, steps, sentences=1600, seed=0):
    """The MiniLM VideoBERT after ``steps`` of ``vbedge train`` on a synthetic kitchen corpus.

    Videos of 8 sentences each; each sentence spans 1-6 clips (1.5 s) of a Markov chain of visual
    words. Synthetic: the text is real WordPiece text, the video pairing carries no meaning.
    """
    import json

    import numpy as np

    from bundle_factory import BERT_DIR
    from vbedge.calib.readers import kitchen_sentences
    from vbedge.models.videobert import VideoBert
    from vbedge.training import TrainOptions, train

    work = Path(work)
    if not (work / "model" / "videobert.json").is_file():
        texts = kitchen_sentences(RESERVED_SENTENCES + sentences, seed=0)[RESERVED_SENTENCES:]
        rng = np.random.default_rng(seed)
        work.mkdir(parents=True, exist_ok=True)
        with open(work / "corpus.jsonl", "w") as f:
            for v in range(0, len(texts), 8):
                clips, narration, t = [], [], 0.0
                for text in texts[v:v + 8]:
                    start = t
                    for leaf in markov_leaves(codebook.num_leaves, int(rng.integers(1, 7)), rng):
                        clips.append({"start": t, "end": t + 1.5, "leaf": leaf})
                        t += 1.5
                    narration.append({"start": start, "end": t, "text": text})
                f.write(json.dumps({"video": f"kitchen{v // 8}", "clips": clips, "narration": narration}) + "\n")
        shutil.rmtree(work / "run", ignore_errors=True)
        options = TrainOptions(steps=steps, batch_size=32, lr=1e-4, max_length=64, held_out=0.05,
                               eval_every=max(1, steps // 3), log_every=10, save_every=steps, seed=seed)
        result = train(work / "corpus.jsonl", codebook, work / "run", options, bert=BERT_DIR)
        print(f"  trained: {result.losses} ({result.sequences_per_second:.1f} sequences/s); held out "
              f"{result.held_out}")
        shutil.copytree(result.model_dir, work / "model", dirs_exist_ok=True)
    return VideoBert.load(work / "model", codebook=codebook)


def study(vb_dir, n_calib, quick=False):
    """Layer-subset study: which encoder MatMuls cost VideoBERT's masked-word agreement."""
    import logging
    import os
    import tempfile
    import warnings

    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bundle_factory import BERT_DIR, small_codebook
    from vbedge.calib.quantize import _downstream_nodes, quantize_model
    from vbedge.calib.readers import VideoBertCalibrationReader, sentence_sequences, split_sentences
    from vbedge.calib.quantize import transformer_cpu_form
    from vbedge.calib.report import _interleaved_medians, masked_position_kinds, top1_agreement_by_margin
    from vbedge.export.verify import make_session
    from vbedge.vocab import VideoBertVocab

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    fp32 = vb_dir / "videobert.onnx"
    if not fp32.exists():
        raise SystemExit(f"{fp32} missing: run the benchmark once without --study")
    codebook = small_codebook()
    vocab = VideoBertVocab.for_codebook(BERT_DIR / "vocab.txt", codebook)
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, codebook.num_leaves, rng.integers(1, 7)).tolist() for _ in range(64)]
    calib_s, held_s = split_sentences(n_calib, 120, seed=0)
    calib = sentence_sequences(vocab, calib_s, windows, seed=0)
    held = sentence_sequences(vocab, held_s, windows[::-1], seed=1)
    names = ["text_topk_ids", "visual_topk_ids", "text_topk_scores"]
    ref = make_session(fp32, spinning=False)
    ref_out = [ref.run(names, f) for f in held]
    # As the report does: words scored at masked words, visual words at masked visual tokens.
    kinds = masked_position_kinds(held)
    at_text, at_visual = kinds["text"], kinds["visual"]

    def stacked(outs, index):
        return np.concatenate([o[index].reshape(-1, o[index].shape[-1]) for o in outs])

    def agreement(path):
        """(text top-1, visual top-1, text top-1 where FP32 is decisive) agreement with FP32."""
        got = [make_session(path).run(names, f) for f in held]
        text = top1_agreement_by_margin(stacked(ref_out, 0)[at_text], stacked(ref_out, 2)[at_text],
                                        stacked(got, 0)[at_text, 0])
        visual = float(np.mean(stacked(ref_out, 1)[at_visual, 0] == stacked(got, 1)[at_visual, 0]))
        return text["top1"], visual, text["decisive_top1"]

    model = onnx.load(str(fp32))
    inits = {i.name for i in model.graph.initializer}
    head = _downstream_nodes(model.graph, ["predict_positions"])
    encoder = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits and n.name not in head]
    if len(encoder) != 36:
        raise SystemExit(f"expected 36 encoder MatMuls (6 layers x 6), found {len(encoder)}")
    role = {name: (i // 6, ROLES[i % 6]) for i, name in enumerate(encoder)}  # export order: q k v out ffn1 ffn2
    other = sorted(head | {n.name for n in model.graph.node if n.op_type == "Gemm"})
    rows = [("all 36", lambda layer, r: True)]
    if not quick:
        rows += [(f"only {r}", lambda layer, rr, r=r: rr == r) for r in ROLES]
        rows += [(f"only layer {k}", lambda layer, r, k=k: layer == k) for k in range(6)]
        rows += [("all but ffn2", lambda layer, r: r != "ffn2"), ("all but layer 5", lambda layer, r: layer != 5)]
    print(f"model: {fp32}; decisive: FP32's best logit >= second + ln 2")
    print(f"held-out: {len(held)} sentences, {int(at_text.sum())} masked words, {int(at_visual.sum())} masked "
          f"visual tokens; "
          f"static calibration on {len(calib)} other sentences; load {os.getloadavg()[0]:.2f}")
    print(f"{'quantized MatMuls':<18} {'static text':>11} {'static vis':>10} {'dyn text':>9} {'dyn vis':>8} "
          f"{'dyn text decisive':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, quantized in rows:
            keep = sorted(set(other) | {n for n in encoder if not quantized(*role[n])})
            static_path, dyn_path = Path(tmp) / "s.onnx", Path(tmp) / "d.onnx"
            # Static: the Q/DQ file's method and placement, the other MatMuls kept in float.
            quantize_model(fp32, static_path, VideoBertCalibrationReader(calib, vocab.pad_id, warn_minimum=0),
                           method="percentile", percentile=99.99, progress=False, float_nodes=keep,
                           keep_float=("embeddings", "layernorm", "softmax", "head"))
            quantize_dynamic(str(fp32), str(dyn_path), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=keep)
            st, dy = agreement(static_path), agreement(dyn_path)
            print(f"{label:<18} {st[0]:11.3f} {st[1]:10.3f} {dy[0]:9.3f} {dy[1]:8.3f} {dy[2]:17.3f}", flush=True)
        # The Q/DQ (TensorRT) file as vbedge writes it: default float parts, FFN outputs included.
        quantize_model(fp32, Path(tmp) / "q.onnx", VideoBertCalibrationReader(calib, vocab.pad_id, warn_minimum=0),
                       method="percentile", percentile=99.99, progress=False)
        print("Q/DQ file as written (FFN outputs float): text %.3f vis %.3f text decisive %.3f"
              % agreement(Path(tmp) / "q.onnx"))
        # References: weight rounding alone, and FP16.
        wonly = onnx.load(str(fp32))
        arrays = {i.name: i for i in wonly.graph.initializer}
        for node in wonly.graph.node:
            if node.name in encoder:
                w = numpy_helper.to_array(arrays[node.input[1]])
                scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
                arrays[node.input[1]].CopyFrom(numpy_helper.from_array(
                    (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32), node.input[1]))
        onnx.save(wonly, str(Path(tmp) / "w.onnx"))
        print("weight-only INT8 (36 MatMuls, activations float): text %.3f vis %.3f text decisive %.3f"
              % agreement(Path(tmp) / "w.onnx"))
        from onnxruntime.transformers.optimizer import optimize_model

        half = optimize_model(str(fp32), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
        half.convert_float_to_float16(keep_io_types=True)
        half.save_model_to_file(str(Path(tmp) / "h.onnx"))
        print("FP16 (whole graph): text %.3f vis %.3f text decisive %.3f" % agreement(Path(tmp) / "h.onnx"))
        # The CPU form as vbedge writes it (transformer_cpu_form), by what it keeps in float; timed
        # interleaved with FP32 (median of 40).
        print(f"{'CPU form, float parts':<32} {'text':>6} {'vis':>6} {'text decisive':>13}")
        choices = {"none": (), "mlm_transform,pooler": ("mlm_transform", "pooler"),
                   "mlm_transform,pooler,ffn_out": ("mlm_transform", "pooler", "ffn_out")}
        sessions, rows_out = {"fp32": ref}, {}
        for label, parts in choices.items():
            path = Path(tmp) / f"cpu_{len(sessions)}.onnx"
            transformer_cpu_form(fp32, path, float_parts=parts)
            sessions[label] = make_session(path, spinning=False)
            rows_out[label] = agreement(path)
        for label, (text, visual, decisive) in rows_out.items():
            print(f"{label:<32} {text:6.3f} {visual:6.3f} {decisive:13.3f}")
        # Speed at the shortest, median and longest held-out sequence (FP32's time grows faster
        # than linearly with the length here, so one length would tell half the story).
        by_length = sorted(held, key=lambda f: f["input_ids"].shape[1])
        for feed in (by_length[0], by_length[len(by_length) // 2], by_length[-1]):
            speed = _interleaved_medians({k: (lambda s=s: s.run(names, feed)) for k, s in sessions.items()}, 40)
            print(f"  seq {feed['input_ids'].shape[1]:3d}: fp32 {speed['fp32'] * 1e3:6.2f} ms; " + "; ".join(
                f"{label} {speed[label] * 1e3:.2f} ms = {speed['fp32'] / speed[label]:.2f}x"
                for label in choices), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
