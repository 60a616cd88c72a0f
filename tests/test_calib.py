"""INT8 calibration: readers, Q/DQ quantization, the report, `vbedge calibrate`."""

import importlib.util
import json
import warnings

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
cv2 = pytest.importorskip("cv2")

from vbedge.errors import FormatError, InvalidInputError  # noqa: E402


HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None


def _write_video(path, seed, frames=40, size=(96, 128), fps=20):
    """A synthetic video: moving coloured shapes over a textured background (distinct per seed)."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    base = rng.integers(0, 255, size=(size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    color = tuple(int(c) for c in rng.integers(0, 255, 3))
    for t in range(frames):
        img = base.copy()
        x = int(10 + t * rng.uniform(1, 3)) % size[1]
        cv2.circle(img, (x, size[0] // 2), 18, color, -1)
        writer.write(img)
    writer.release()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib_videos")
    for i in range(6):
        _write_video(folder / f"v{i}.avi", seed=i)
    return folder


def test_reader_skips_corrupt_video_and_counts_it(videos, tmp_path):
    from bundle_factory import small_bundle_spec

    from vbedge.calib.readers import CalibrationWarning, collect_clips

    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.warns(CalibrationWarning, match="skipping calibration video .*bad.avi"):
        clipset = collect_clips([bad, videos / "v0.avi"], small_bundle_spec(), progress=False)
    assert [p for p, _ in clipset.skipped] == [str(bad)]
    assert clipset.summary()["videos_used"] == 1 and len(clipset) >= 1
    assert clipset.clips[0].shape == small_bundle_spec().clip_shape()
    # Same preprocessing as the runtime: the first clip equals make_clip of the first 16 frames
    # resampled by the assembler (the file is written at 20 fps, the spec's rate).
    from vbedge.preprocess import make_clip

    cap = cv2.VideoCapture(str(videos / "v0.avi"))
    frames = [cap.read()[1] for _ in range(16)]
    np.testing.assert_allclose(clipset.clips[0], make_clip(frames, small_bundle_spec()), atol=1e-6)


def test_small_set_warns_with_number(videos):
    from bundle_factory import small_bundle_spec

    from vbedge.calib.readers import CalibrationWarning, S3DCalibrationReader, collect_clips

    clipset = collect_clips(videos, small_bundle_spec(), max_clips=3, progress=False)
    with pytest.warns(CalibrationWarning, match="only 3 S3D clips"):
        reader = S3DCalibrationReader(clipset)
    assert len(reader) == 3 and reader.get_next()["clip"].shape[0] == 1


def test_bad_options_raise_clear_errors(tmp_path, small_bundle):
    from vbedge.calib.quantize import quantize_model
    from vbedge.calib.readers import (ArrayReader, collect_clips, corpus_sequences, sentence_sequences,
                                      template_sequences)

    fp32 = small_bundle.onnx_path("s3d", "fp32")
    with pytest.raises(InvalidInputError, match="calibration method"):
        quantize_model(fp32, tmp_path / "q.onnx", ArrayReader([{}]), method="kl")
    with pytest.raises(InvalidInputError, match="percentile"):
        quantize_model(fp32, tmp_path / "q.onnx", ArrayReader([{}]), method="percentile", percentile=120)
    with pytest.raises(InvalidInputError, match="keep_float"):
        quantize_model(fp32, tmp_path / "q.onnx", ArrayReader([{}]), keep_float=("attention",))
    with pytest.raises(InvalidInputError, match="must not overwrite"):
        quantize_model(fp32, fp32, ArrayReader([{}]))
    with pytest.raises(InvalidInputError, match="not found"):
        collect_clips([tmp_path / "nothing.mp4"], progress=False)
    with pytest.raises(InvalidInputError, match="max_clips"):
        collect_clips([tmp_path], max_clips=0, progress=False)
    with pytest.raises(InvalidInputError, match="no .MASK."):
        template_sequences(small_bundle.vocab, [[0, 1]], templates=["no slot here"])
    with pytest.raises(InvalidInputError, match="mask_fraction"):
        sentence_sequences(small_bundle.vocab, ["cut the onion."], [[0]], mask_fraction=0)
    with pytest.raises(InvalidInputError, match="visual_sequences"):
        sentence_sequences(small_bundle.vocab, ["cut the onion."], [])
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"input_ids": [101, 103, 102]}\n{"oops": 1}\n')
    with pytest.raises(FormatError, match="corpus.jsonl:2"):
        corpus_sequences(small_bundle.vocab, bad)


def test_calibrate_qdq_ready_and_agrees(videos, tmp_path, small_bundle):
    """End to end on the small bundle: TensorRT-ready Q/DQ graphs, report within bounds."""
    from bundle_factory import small_bundle_spec

    from vbedge.calib.calibrate import calibrate_models
    from vbedge.calib.report import format_report
    from vbedge.export.readiness import check_tensorrt_readiness
    import onnx

    from vbedge import HierarchicalCodebook
    from vbedge.calib.readers import collect_clips
    from vbedge.export.verify import make_session

    # The bundle's random test codebook puts every random-S3D clip on one leaf, which makes token
    # agreement trivially 1. Fit the codebook on these videos' FP32 features instead, so the held-out
    # clips spread over several leaves and an INT8 feature that moves changes its token.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clips = collect_clips([videos], small_bundle_spec(), progress=False)
    session = make_session(small_bundle.onnx_path("s3d", "fp32"))
    feats = np.concatenate([session.run(["feature"], {"clip": c[None]})[0] for c in clips.clips])
    codebook = HierarchicalCodebook.fit(feats, levels=2, branching=3, seed=0, progress=False)
    assert len(set(np.asarray(codebook.tokenize(feats)).tolist())) >= 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = calibrate_models(tmp_path / "int8", videos=videos, spec=small_bundle_spec(),
                                  codebook=codebook, vocab=small_bundle.vocab,
                                  s3d_fp32=small_bundle.onnx_path("s3d", "fp32"),
                                  videobert_fp32=small_bundle.onnx_path("videobert", "fp32"),
                                  max_clips=24, clips_per_video=4, max_sequences=24, repeats=1, progress=False,
                                  openvino=HAVE_OPENVINO)
    out = tmp_path / "int8"
    for name in ("s3d.int8.onnx", "videobert.int8.onnx"):
        assert check_tensorrt_readiness(out / name).ok
        model = onnx.load(str(out / name))
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        # TensorRT: int8 zero points, all 0
        zps = [i for i in model.graph.initializer if i.name.endswith("zero_point")]
        assert zps and all(i.data_type == onnx.TensorProto.INT8 and not any(onnx.numpy_helper.to_array(i).ravel())
                           for i in zps)
    cpu = onnx.load(str(out / "s3d.int8.cpu.onnx"))
    assert sum(n.op_type == "Relu" for n in cpu.graph.node) < 77
    # Held out by video: no held-out clip's video was calibrated on.
    assert report["held_out"]["clips"] >= 1
    s3d = report["s3d"]["variants"]
    # Bounds documented in docs/int8.md for this small random S3D (synthetic videos).
    for label in ("qdq", "cpu"):
        assert s3d[label]["cosine_worst"] > 0.99, s3d
        assert s3d[label]["token_agreement"] >= 0.8, s3d
    # The Q/DQ file (TensorRT's) is judged with its Q/DQ run in float; the CPU form as it deploys.
    assert s3d["qdq"].get("emulated") is True and not s3d["cpu"].get("emulated"), s3d
    assert report["s3d_quantization"]["cpu_rewrite"]["u8_range"] == "full", report["s3d_quantization"]
    # Each of the 9 Inception concats reads its inputs at the output's scale, in both files.
    assert report["s3d_quantization"]["cpu_rewrite"]["concats_sharing_scale"] == 9, report["s3d_quantization"]
    qdq_graph = onnx.load(str(out / "s3d.int8.onnx")).graph
    made_by = {o: n for n in qdq_graph.node for o in n.output}
    after_concat = {n.input[0]: n.input[1] for n in qdq_graph.node if n.op_type == "QuantizeLinear"}
    for concat in (n for n in qdq_graph.node if n.op_type == "Concat"):
        assert {made_by[i].input[1] for i in concat.input} == {after_concat[concat.output[0]]}, concat.name
    # Weight bits chosen for this CPU by default (8 only where its int8 products sum in int32).
    from vbedge.calib.quantize import resolve_weight_bits
    from vbedge.info import int8_dot_product

    for form in (report["s3d_quantization"]["cpu_rewrite"], report["videobert_quantization"]["cpu_form"]):
        assert form["weight_bits"] == (8 if int8_dot_product() else 7) == resolve_weight_bits()[0], form
        assert form["weight_bits_why"].startswith("auto: "), form
    # The FP32 S3D vbedge runs on ONNX Runtime's CPU (2D form) is timed beside them and matches FP32.
    assert s3d["fp32-2d"]["graph_form"] == "conv2d form" and s3d["fp32-2d"]["precision"] == "fp32", s3d
    assert s3d["fp32-2d"]["cosine_worst"] > 0.99999 and s3d["fp32-2d"]["token_agreement"] == 1.0, s3d
    # VideoBERT Q/DQ: the 30 encoder weight MatMuls outside the FFN outputs read a DequantizeLinear;
    # the 6 FFN output projections (intermediate x hidden weights) stay float by default.
    qdq = onnx.load(str(out / "videobert.int8.onnx")).graph
    dq_outputs = {o for n in qdq.node if n.op_type == "DequantizeLinear" for o in n.output}
    weights = {i.name: tuple(i.dims) for i in qdq.initializer}
    weight_of = {}
    for n in qdq.node:  # a quantized weight reaches its MatMul through DequantizeLinear(initializer)
        if n.op_type == "DequantizeLinear" and n.input[0] in weights:
            weight_of[n.output[0]] = weights[n.input[0]]
    shapes = [(weight_of.get(n.input[1]) or weights.get(n.input[1]), n.input[0] in dq_outputs)
              for n in qdq.node if n.op_type == "MatMul" and (n.input[1] in weights or n.input[1] in weight_of)]
    ffn_out = [quantized for shape, quantized in shapes if shape[0] > shape[1] and shape[1] > 16]
    others = [quantized for shape, quantized in shapes if shape[0] == shape[1] or shape[0] < shape[1] < 2000]
    assert len(ffn_out) == 6 and not any(ffn_out), shapes
    assert sum(others) == 30, shapes
    assert report["videobert_quantization"]["quantized_ops"].get("MatMul") == 30
    vb = report["videobert"]["variants"]["qdq"]
    # Floors under this run's figures (text top-3 0.93, text top-1 0.86 at the 7 decisive words,
    # visual top-3 0.89 over 9 masked visual tokens, all of them near ties of the untrained-head
    # MiniLM): a broken Q/DQ graph lands near 0 (near 3/9 at visual top-3).
    assert vb["text_top3_agreement"] >= 0.8 and vb["visual_top3_agreement"] >= 0.7, vb
    assert vb["text_decisive_top1_agreement"] is None or vb["text_decisive_top1_agreement"] >= 0.7, vb
    # The VideoBERT CPU form: dynamic INT8 MatMuls (no Q/DQ); the 30 encoder MatMuls outside the FFN outputs quantized.
    vb_cpu = onnx.load(str(out / "videobert.int8.cpu.onnx"))
    cpu_ops = [n.op_type for n in vb_cpu.graph.node]
    assert cpu_ops.count("MatMulInteger") + cpu_ops.count("MatMulIntegerToFloat") >= 30
    assert "DequantizeLinear" not in cpu_ops
    assert report["files"]["videobert"]["int8_cpu"] == "videobert.int8.cpu.onnx"
    # Default float parts: the masked-LM transform (one square MatMul) and the pooler/alignment Gemms
    # stay float MatMul/Gemm nodes in the written graph (the FFN output projections are quantized).
    kept = report["videobert_quantization"]["cpu_form"]["float_nodes"]
    assert {part: len(names) for part, names in kept.items()} == {"mlm_transform": 1, "pooler": 2}
    float_ops = {n.name: n.op_type for n in vb_cpu.graph.node}
    assert all(float_ops.get(name) in ("MatMul", "Gemm") for names in kept.values() for name in names)
    cpu = report["videobert"]["variants"]["cpu"]
    # Loose floor (docs/int8.md: ~0.6-0.7 text / ~0.9 visual top-1, ~0.99 top-3/5 on held-out text):
    # a broken CPU form (wrong weights, wrong layout) lands near 0.
    assert cpu["text_top3_agreement"] >= 0.8 and cpu["visual_top1_agreement"] >= 0.5, cpu
    # The bundle's CPU form has per-token scales on the FFN inputs and outputs (6 layers, one quantizer
    # each); per-tensor everywhere is written and judged beside it (not in the bundle).
    assert report["videobert_quantization"]["cpu_form"]["per_token"] == ["ffn_in", "ffn_out"]
    per_tensor = report["videobert"]["variants"]["cpu-per-tensor"]
    assert per_tensor["text_top3_agreement"] >= 0.8, per_tensor
    tensor_ops = [n.op_type for n in onnx.load(str(out / "videobert.int8.cpu.per-tensor.onnx")).graph.node]
    assert cpu_ops.count("QuantizeLinear") == 12 and "QuantizeLinear" not in tensor_ops
    assert cpu_ops.count("DynamicQuantizeLinear") + 12 == tensor_ops.count("DynamicQuantizeLinear")
    assert cpu_ops.count("MatMulIntegerToFloat") == 12 and "MatMulIntegerToFloat" not in tensor_ops
    assert cpu_ops.count("MatMulInteger") + 12 == tensor_ops.count("MatMulInteger"), (cpu_ops, tensor_ops)
    assert report["videobert"]["positions"] > report["videobert"]["sequences"]  # sentences mask several words
    # Words are scored at text positions, visual words at masked visual tokens (token type 1); the
    # held-out sentences mask one visual token in two, so both kinds are there.
    vbr = report["videobert"]
    assert vbr["text_positions"] + vbr["visual_positions"] == vbr["positions"] and vbr["visual_positions"] >= 1
    # The decisive / near-tie split partitions the positions: it recombines to the overall top-1.
    for variant in vbr["variants"].values():
        for part in ("text", "visual"):
            frac = variant[f"{part}_decisive_fraction"]
            assert 0.0 <= frac <= 1.0
            pieces = [(frac, variant[f"{part}_decisive_top1_agreement"]),
                      (1.0 - frac, variant[f"{part}_near_tie_top1_agreement"])]
            recombined = sum(w * a for w, a in pieces if a is not None)
            assert recombined == pytest.approx(variant[f"{part}_top1_agreement"], abs=1e-9)
    assert "FP32 is decisive" in format_report(report)
    # Speed: the per-round FP32/INT8 ratios' quartiles are recorded and printed.
    for variant in [*vbr["variants"].values(), *report["s3d"]["variants"].values()]:
        low, high = variant["speedup_quartiles"]
        assert 0 < low <= high
    assert "per-run IQR" in format_report(report)
    if HAVE_OPENVINO:  # the OpenVINO contenders, side by side (issue 17)
        ov32, ov8 = s3d["ov-fp32"], s3d["ov-int8"]
        assert (ov32["runtime"], ov32["precision"], ov8["precision"]) == ("openvino", "fp32", "int8"), s3d
        assert ov32["cosine_worst"] > 0.9999 and ov32["token_agreement"] == 1.0, ov32
        # OpenVINO's INT8 kernels round differently from ORT's: on these 3 held-out clips of a random
        # S3D, whose codebook leaves lie within ~1e-3 cosine of each other, that flips tokens (1/3
        # agree in one run at cosine 0.9994). Its features must be within the bound ORT's INT8 forms
        # are held to above (0.9985 on an AVX2 EPYC, where the emulated Q/DQ graph reached 0.99952).
        assert ov8["cosine_worst"] > 0.99, s3d
        vb32 = vbr["variants"]["ov-fp32"]
        assert vb32["text_top1_agreement"] >= 0.99 and vb32["visual_top1_agreement"] >= 0.99, vb32
        assert vbr["variants"]["ov-int8"]["text_top3_agreement"] >= 0.8, vbr["variants"]["ov-int8"]
        assert "openvino, ran int8" in format_report(report) and report["machine"]["openvino"]
        # OpenVINO runs the Q/DQ graph's arithmetic once each Concat output is also a model output
        # (vbedge.backends.openvino._expose_concat_outputs): without it the demo bundle's INT8
        # features fell to cosine 0.94 (worst 0.77) of the same graph run by ONNX Runtime, and this
        # small one's error on random clips was 3x larger (1 - cosine 4.9-6.9e-4 against 1.4-2.1e-4,
        # AVX-512 VNNI EPYC; on this fixture's rendered clips the two overlap, so random ones are used).
        from vbedge.backends.openvino import OpenVinoBackend
        from vbedge.info import int8_dot_product

        ov_int8 = OpenVinoBackend(out / "s3d.int8.onnx", precision="int8", intra_op_threads=2)
        assert ov_int8.concat_outputs_added == 9  # Mixed_3b ... Mixed_5c
        emulated = make_session(out / "s3d.int8.onnx", optimization="basic")
        gaps, rng = [], np.random.default_rng(0)
        for _ in range(6):
            clip = rng.uniform(-2, 2, size=(1, *clips.clips[0].shape)).astype(np.float32)
            got = ov_int8.run({"clip": clip})["feature"].ravel()
            want = emulated.run(["feature"], {"clip": clip})[0].ravel()
            gaps.append(1.0 - float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)))
        assert list(ov_int8.run({"clip": clips.clips[0][None]})) == ["feature"]  # only the model's outputs
        if int8_dot_product():  # without VNNI OpenVINO's int8 kernels saturate (docs/int8.md)
            assert max(gaps) < 3.5e-4, gaps
    saved = json.loads((out / "int8_report.json").read_text())
    assert saved["s3d"]["clips"] == report["s3d"]["clips"]
    assert "S3D" in format_report(report) and "VideoBERT" in format_report(report)


def test_top1_agreement_split_by_fp32_margin():
    """Decisive positions (FP32's best logit >= second + ln 2) and near ties are scored apart."""
    from vbedge.calib.report import DECISIVE_MARGIN, top1_agreement_by_margin

    ref_ids = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    gap = DECISIVE_MARGIN
    ref_scores = np.array([[3.0, 1.0], [2.0, 1.9], [5.0, 5.0 - gap], [1.0, 0.9], [0.0, -4.0]])
    got = np.array([1, 4, 5, 7, 10])  # decisive: rows 0, 2 (exactly ln 2), 4; near ties: rows 1, 3
    split = top1_agreement_by_margin(ref_ids, ref_scores, got)
    assert split["top1"] == pytest.approx(3 / 5)
    assert split["decisive_fraction"] == pytest.approx(3 / 5)
    assert split["decisive_top1"] == pytest.approx(2 / 3)
    assert split["near_tie_top1"] == pytest.approx(1 / 2)
    # Top-k ids of the other model: its column 0 is what counts.
    assert top1_agreement_by_margin(ref_ids, ref_scores, np.stack([got, got + 1], 1)) == split
    # A larger margin moves positions to the near ties; none decisive gives None, not 0.
    none_decisive = top1_agreement_by_margin(ref_ids, ref_scores, got, margin=10.0)
    assert none_decisive["decisive_top1"] is None and none_decisive["near_tie_top1"] == pytest.approx(3 / 5)
    with pytest.raises(InvalidInputError, match="k >= 2"):
        top1_agreement_by_margin(ref_ids[:, :1], ref_scores[:, :1], got)
    with pytest.raises(InvalidInputError, match="NaN"):
        top1_agreement_by_margin(ref_ids, np.where(ref_scores > 4, np.nan, ref_scores), got)


def test_cpu_form_float_parts(tmp_path, small_bundle):
    """The VideoBERT CPU form keeps the named parts in float, and refuses unknown ones."""
    import onnx

    from vbedge.cli.calibrate import parse_cpu_float as _parse_cpu_float
    from vbedge.calib.quantize import transformer_cpu_form

    fp32 = small_bundle.onnx_path("videobert", "fp32")
    out = tmp_path / "cpu.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = transformer_cpu_form(fp32, out, float_parts=("ffn_out",), per_token=())
        everything = transformer_cpu_form(fp32, tmp_path / "all.onnx", float_parts=(), per_token=())
    assert list(info["float_nodes"]) == ["ffn_out"] and len(info["float_nodes"]["ffn_out"]) == 6  # one per layer
    nodes = {n.name: n for n in onnx.load(str(out)).graph.node}
    assert all(nodes[name].op_type == "MatMul" for name in info["float_nodes"]["ffn_out"])
    assert info["MatMulInteger"] == everything["MatMulInteger"] - 6
    with pytest.raises(InvalidInputError, match="float_parts"):
        transformer_cpu_form(fp32, tmp_path / "x.onnx", float_parts=("attention",))
    with pytest.raises(InvalidInputError, match="float_parts"):
        transformer_cpu_form(fp32, tmp_path / "x.onnx", float_parts="ffn_out")
    with pytest.raises(FormatError, match="transformer optimizer"):
        transformer_cpu_form(fp32, tmp_path / "x.onnx", optimize=False, float_parts=("ffn_out",))
    assert not (tmp_path / "x.onnx").exists()
    # A node that was to stay float but came back quantized is refused, naming it; a Gemm is found
    # under the name ONNX Runtime's rewrite gives it.
    from onnx import helper

    from vbedge.calib.quantize import _written_float_nodes

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"], name="ffn"),
                               helper.make_node("MatMul", ["a", "b"], ["d"], name="pool_MatMul")], "g", [], [])
    assert _written_float_nodes(helper.make_model(graph), {"pooler": ["pool"]}) == {"pooler": ["pool_MatMul"]}
    with pytest.raises(FormatError, match="ffn_out nodes that were to stay float: \\['ffn'\\]"):
        _written_float_nodes(helper.make_model(graph), {"ffn_out": ["ffn"]})
    # The CLI's --cpu-float
    assert _parse_cpu_float(None) is None and _parse_cpu_float("none") == ()
    assert _parse_cpu_float("mlm_transform, ffn_out") == ("mlm_transform", "ffn_out")
    with pytest.raises(InvalidInputError, match="--cpu-float"):
        _parse_cpu_float("mlm_transform,softmax")
    with pytest.raises(InvalidInputError, match="--cpu-float"):
        _parse_cpu_float("all")
    # ... and --per-token
    from vbedge.calib.quantize import PER_TOKEN_PARTS
    from vbedge.cli.calibrate import parse_per_token

    assert parse_per_token(None) is None and parse_per_token("none") == () and parse_per_token(" All") == "all"
    assert parse_per_token("ffn_in,qkv") == ("ffn_in", "qkv") and parse_per_token("ffn_out") == ("ffn_out",)
    with pytest.raises(InvalidInputError, match="--per-token"):
        parse_per_token("ffn")
    # Which per-token parts apply: the default and 'all' leave out what is kept float; naming a
    # float part is refused before any work.
    from vbedge.calib.quantize import DEFAULT_PER_TOKEN, per_token_quantizer_parts, resolve_per_token

    assert resolve_per_token(None, ()) == DEFAULT_PER_TOKEN == ("ffn_in", "ffn_out")
    assert resolve_per_token(None, ("ffn_out",)) == ("ffn_in",)
    assert resolve_per_token("all", ("ffn_out",)) == tuple(p for p in PER_TOKEN_PARTS if p != "ffn_out")
    assert resolve_per_token("all", ()) == PER_TOKEN_PARTS and resolve_per_token((), ()) == ()
    with pytest.raises(InvalidInputError, match="drop 'ffn_out' from float_parts"):
        transformer_cpu_form(fp32, tmp_path / "x.onnx", float_parts=("ffn_out",), per_token=("ffn_out",))
    with pytest.raises(InvalidInputError, match="per_token"):
        resolve_per_token("ffn_in", ())
    assert not (tmp_path / "x.onnx").exists()
    # With the FFN outputs quantized, their quantizers (fed by the GELU) are the ffn_out part, one
    # per layer, apart from the FFN inputs'.
    found = per_token_quantizer_parts(onnx.load(str(tmp_path / "all.onnx")))
    assert len(found["ffn_out"]) == 6 and len(found["ffn_in"]) == 6 and not set(found["ffn_out"]) & set(found["ffn_in"])


def test_masked_positions_are_words_or_visual_tokens_by_segment():
    from vbedge.calib.report import masked_position_kinds

    with_types = {"input_ids": np.zeros((1, 6), np.int64), "token_type_ids": np.array([[0, 1, 1, 1, 0, 0]]),
                  "predict_positions": np.array([[4, 2, 0]])}
    no_types = {"input_ids": np.zeros((1, 3), np.int64), "predict_positions": np.array([[1]])}
    kinds = masked_position_kinds([with_types, no_types])
    assert kinds["visual"].tolist() == [False, True, False, False]  # no token types: all words
    assert kinds["text"].tolist() == [True, False, True, True]


def test_speed_is_ratio_of_medians_with_per_round_quartiles():
    from vbedge.calib.report import _speed

    times = {"fp32": np.array([2.0, 4.0, 6.0]), "int8": np.array([1.0, 1.0, 2.0])}
    speed = _speed(times, "int8")
    assert speed["seconds"] == 1.0 and speed["speedup"] == 4.0
    assert speed["speedup_quartiles"] == pytest.approx([2.5, 3.5])  # per-round ratios 2, 4, 3


def test_report_detects_a_wrong_model(videos, tmp_path, small_bundle):
    """The metrics can fail: an INT8 graph of *another* S3D disagrees with this FP32 one."""
    from bundle_factory import small_bundle_spec

    from vbedge.calib.quantize import quantize_model
    from vbedge.calib.readers import S3DCalibrationReader, collect_clips
    from vbedge.calib.report import evaluate_s3d
    from vbedge.export.s3d import export_s3d

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clips = collect_clips(videos, small_bundle_spec(), max_clips=6, progress=False)
        other = export_s3d(tmp_path / "other", random_init=True, seed=11, spec=small_bundle_spec(), fp16=False,
                           check_batches=(1,), progress=False)
        quantize_model(other.onnx_path, tmp_path / "o.int8.onnx", S3DCalibrationReader(clips), progress=False)
    result = evaluate_s3d(small_bundle.onnx_path("s3d", "fp32"), {"qdq": tmp_path / "o.int8.onnx"}, clips.clips,
                          small_bundle.codebook, repeats=1)
    assert result["variants"]["qdq"]["cosine_mean"] < 0.99


def test_sentences_held_out_are_disjoint_and_masked(small_bundle):
    """Held-out sentences are never calibration sentences; masks land inside the text."""
    from vbedge.calib.readers import sentence_sequences, split_sentences

    calib, held = split_sentences(40, 20, seed=0)
    assert len(calib) == 40 and len(held) == 20 and not set(calib) & set(held)
    vocab = small_bundle.vocab
    feeds = sentence_sequences(vocab, held, [[0, 1, 2]], mask_fraction=0.15, mask_visual=0.0, seed=0)
    for feed in feeds:
        ids = feed["input_ids"][0]
        positions = feed["predict_positions"][0]
        assert positions.size >= 1 and (ids[positions] == vocab.mask_id).all()
        # Text first ([CLS] sentence [>] 3 visual tokens [SEP]): masks fall in the sentence only.
        assert positions.min() >= 1 and positions.max() < ids.size - 5


def _matmul_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class _UnsizedReader:
    """A reader without __len__ (a user's generator): calibrated in one piece."""

    def __init__(self, feeds):
        self._items = iter(feeds)

    def get_next(self):
        return next(self._items, None)


@pytest.mark.parametrize("sized", [True, False])
def test_chunked_calibration_keeps_every_input(tmp_path, sized):
    """Calibration runs in chunks of a few inputs (bounded memory), and the ranges still cover
    every input: the largest activation is in the FIRST input, so a chunked collector that
    dropped earlier chunks (ONNX Runtime's MinMax with CalibMaxIntermediateOutputs does) would
    give a scale ~50x too small."""
    import onnx
    from onnx import numpy_helper

    from vbedge.calib.quantize import calibration_stride, quantize_model
    from vbedge.calib.readers import ArrayReader

    rng = np.random.default_rng(1)
    feeds = [{"x": rng.uniform(-1, 1, size=(2, 8)).astype(np.float32)} for _ in range(9)]
    feeds[0]["x"][0, 3] = 50.0
    fp32 = _matmul_model(tmp_path / "mm.onnx")
    reader = ArrayReader(feeds) if sized else _UnsizedReader(feeds)
    result = quantize_model(fp32, tmp_path / "mm.int8.onnx", reader, method="minmax", progress=False)
    assert result.calibration_batches == 9
    model = onnx.load(str(tmp_path / "mm.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    (quant_x,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    assert float(inits[quant_x.input[1]]) == pytest.approx(50.0 / 127, rel=1e-3)
    assert calibration_stride(9) == 3 and calibration_stride(16) == 4 and calibration_stride(13) == 1



def test_report_agreement_is_tie_aware():
    """INT8 picking an id FP32 scores exactly as high as its best agrees with FP32 (duplicate leaves
    tie exactly); an id FP32 scores lower does not."""
    from vbedge.calib.report import top1_agreement_by_margin

    ref_ids = np.array([[4, 5, 6], [1, 2, 3]])
    ref_scores = np.array([[2.0, 2.0, 0.0], [3.0, 2.9, 0.0]])
    split = top1_agreement_by_margin(ref_ids, ref_scores, np.array([5, 2]))
    assert split["top1"] == pytest.approx(0.5) and split["near_tie_top1"] == pytest.approx(0.5)


def test_per_token_activation_scales_rewrite(tmp_path):
    """Per-token int8 scales: an integer MatMul with one input scale per row; an outlier row no longer
    costs the other rows their precision; a quantizer used otherwise is refused, the graph untouched."""
    pytest.importorskip("onnxruntime.quantization")
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vbedge.calib.quantize import per_token_activation_scales

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 48)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 48])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "f.onnx"))
    # 7-bit weights, as transformer_cpu_form writes them: with 8, MLAS's U8S8 kernels on x86 without
    # VNNI saturate int16 pair sums (per-token error 0.043 on an AVX2 EPYC; under 0.02 on the VNNI Xeons).
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "tensor.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True)
    per_token = onnx.load(str(tmp_path / "tensor.onnx"))
    assert per_token_activation_scales(per_token) == 1
    ops = [n.op_type for n in per_token.graph.node]
    assert "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops and "ReduceMax" in ops
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("QuantizeLinear") == 1
    onnx.save(per_token, str(tmp_path / "token.onnx"))

    x = rng.normal(size=(2, 10, 64)).astype(np.float32)
    x[0, 0] *= 300.0  # one outlier token, like BERT's [SEP]
    exact = x @ weight
    errors = {}
    outputs = {}
    for name, level in (("tensor", "all"), ("token", "all"), ("token", "none")):
        options = ort.SessionOptions()
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all"
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        out = outputs[name, level] = session.run(None, {"x": x})[0]
        ordinary = np.abs(out - exact)[:, 1:] / np.abs(exact[:, 1:]).mean()
        errors[name, level] = float(ordinary.mean())
    # int8 per row: the ordinary rows' error is about 1% of their magnitude, however large the outlier
    # (per tensor, the outlier's range leaves them a few levels); the same with ONNX Runtime's graph
    # optimizations on and off (a fusion must not read the row scale as a per-tensor one).
    assert errors["token", "all"] < 0.02 and errors["token", "all"] * 10 < errors["tensor", "all"], errors
    np.testing.assert_allclose(outputs["token", "all"], outputs["token", "none"], rtol=1e-4, atol=1e-3)

    # A quantizer whose uint8 output feeds something else: refused, nothing written.
    reused = onnx.load(str(tmp_path / "tensor.onnx"))
    quantized = next(n for n in reused.graph.node if n.op_type == "DynamicQuantizeLinear").output[0]
    reused.graph.node.append(helper.make_node("Identity", [quantized], ["leak"], name="leak"))
    before = [n.op_type for n in reused.graph.node]
    with pytest.raises(FormatError, match="per-token scales cannot be applied"):
        per_token_activation_scales(reused)
    assert [n.op_type for n in reused.graph.node] == before


def test_videobert_goal_is_judged_on_masked_words():
    """The INT8 goal is text top-1 at the template's masked words; visual top-1 does not decide it."""
    from vbedge.calib.report import goals_met

    def report(text, visual):
        cpu = {"text_top1_agreement": text, "visual_top1_agreement": visual,
               "top1_agreement": min(text, visual), "speedup": 2.0}
        return {"videobert": {"variants": {"cpu": cpu, "qdq": dict(cpu)}}}

    assert goals_met(report(0.991, 0.903))["videobert_top1"] is True
    assert goals_met(report(0.969, 1.0))["videobert_top1"] is False
    assert goals_met(report(0.97, 0.5)) == {"videobert_top1": True, "videobert_speedup": True}


def _tiny_s3d_like(path, rng):
    """clip (N, 3, 4, 8, 8) -> spatial Conv -> Relu -> temporal Conv -> Relu -> pooled feature."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = rng.normal(scale=0.3, size=(16, 3, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(scale=0.1, size=(16, 16, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["clip", "w1", "b1"], ["c1"], name="conv1", pads=[0, 1, 1, 0, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 0, 0, 1, 0, 0]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["feature"], name="flat")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(rng.normal(scale=0.1, size=16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(scale=0.1, size=16).astype(np.float32), "b2")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("clip", TensorProto.FLOAT, ["clip", 3, 4, 8, 8])],
                              [helper.make_tensor_value_info("feature", TensorProto.FLOAT, ["clip", 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return {"w1": w1, "w2": w2}


def test_cpu_form_full_uint8_range_and_7bit_weights(tmp_path):
    """make_cpu_form: "full" spreads the calibrated range over 0..255 (scale x 127/255, the Q and
    every DQ of a tensor alike), weight_bits=7 requantizes Conv weights to [-63, 63] from the float
    weights; each form still computes the FP32 function, and bad options are refused."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from vbedge.calib.quantize import make_cpu_form, quantize_model

    rng = np.random.default_rng(3)
    weights = _tiny_s3d_like(tmp_path / "f.onnx", rng)
    clips = [rng.normal(size=(1, 3, 4, 8, 8)).astype(np.float32) for _ in range(24)]

    class Reader:
        def __init__(self):
            self.items = iter(clips)

        def get_next(self):
            clip = next(self.items, None)
            return None if clip is None else {"clip": clip}

    quantize_model(tmp_path / "f.onnx", tmp_path / "q.onnx", Reader(), dynamic_axes={"clip": [0]}, progress=False)
    session = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"])
    exact = np.concatenate([session.run(None, {"clip": c})[0] for c in clips])

    def scales_of(model, op):
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return {n.input[0]: (inits[n.input[1]], inits[n.input[2]]) for n in model.graph.node if n.op_type == op}

    forms, errors = {}, {}
    for u8_range, bits in (("same", 8), ("full", 8), ("full", 7)):
        model = onnx.load(str(tmp_path / "q.onnx"))
        # float_stem=False: every convolution in integers here (the float stem is checked below).
        info = make_cpu_form(model, u8_range=u8_range, weight_bits=bits, float_weights=weights, float_stem=False)
        onnx.checker.check_model(model)
        assert info["uint8_q"] >= 1 and info["relu_dropped"] >= 1 and info["weights_requantized"] == (2 if bits == 7 else 0)
        assert info["float_convs"] == 0
        forms[u8_range, bits] = model
        path = tmp_path / f"{u8_range}{bits}.onnx"
        onnx.save(model, str(path))
        cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = np.concatenate([cpu.run(None, {"clip": c})[0] for c in clips])
        errors[u8_range, bits] = float(np.abs(got - exact).mean() / np.abs(exact).mean())
    assert all(e < 0.05 for e in errors.values()), errors

    # uint8 activations: the "full" scale is the "same" scale x 127/255; a uint8 tensor's Q and its
    # DQs read one scale (else the dequantized value would be wrong).
    same_q, full_q = scales_of(forms["same", 8], "QuantizeLinear"), scales_of(forms["full", 8], "QuantizeLinear")
    uint8 = [t for t, (_, zp) in full_q.items() if zp.dtype == np.uint8]
    assert uint8
    for tensor in uint8:
        np.testing.assert_allclose(full_q[tensor][0], same_q[tensor][0] * 127 / 255, rtol=1e-6)
    model = forms["full", 8]
    q_scale = {n.output[0]: n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in q_scale:
            assert node.input[1] == q_scale[node.input[0]]
    # The signed clip input stays int8 with its scale.
    assert full_q["clip"][1].dtype == np.int8 and full_q["clip"][0] == same_q["clip"][0]

    # 7-bit weights: within [-63, 63], each channel's largest weight at +-63, dequantized within
    # half a step of the float weight.
    model = forms["full", 7]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] in conv_weights:
            q, scale = inits[node.input[0]], inits[node.input[1]]
            assert q.dtype == np.int8 and np.abs(q).max() == 63
            assert np.all(np.abs(q).reshape(q.shape[0], -1).max(axis=1) == 63)
            name = "w1" if q.shape[1] == 3 else "w2"
            step = scale.reshape((-1,) + (1,) * (q.ndim - 1))
            assert np.all(np.abs(q * step - weights[name]) <= step / 2 + 1e-7)
            checked += 1
    assert checked == 2

    # Unnamed nodes (the 2D form's reshapes have none) listed readers first: the rewrite orders the
    # graph and drops only the Relus, not every node that shares the Relu's empty name.
    shuffled = onnx.load(str(tmp_path / "q.onnx"))
    nodes = list(shuffled.graph.node)
    for node in nodes:
        node.name = ""
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))
    info = make_cpu_form(shuffled, float_stem=False)
    onnx.checker.check_model(shuffled)
    assert len(shuffled.graph.node) == len(forms["full", 7].graph.node) and info["relu_dropped"] >= 1

    # The float stem (the default): the convolution reading the clip takes the clip itself and the
    # FP32 weight; the clip's Q/DQ and that weight's DQ are gone, the next Q (uint8) stays, and the
    # form still computes the FP32 function, closer than with the stem in integers.
    for bits in (8, 7):
        model = onnx.load(str(tmp_path / "q.onnx"))
        info = make_cpu_form(model, weight_bits=bits, float_weights=weights)
        onnx.checker.check_model(model)
        assert info["float_convs"] == 1 and info["weights_requantized"] == (1 if bits == 7 else 0), info
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        stem = [n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == "clip"]
        assert len(stem) == 1 and np.array_equal(inits[stem[0].input[1]], weights["w1"])
        assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "clip" for n in model.graph.node)
        readers = [n for n in model.graph.node if stem[0].output[0] in n.input]
        assert [n.op_type for n in readers] == ["QuantizeLinear"]
        assert inits[readers[0].input[2]].dtype == np.uint8
        path = tmp_path / f"stem{bits}.onnx"
        onnx.save(model, str(path))
        cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = np.concatenate([cpu.run(None, {"clip": c})[0] for c in clips])
        error = float(np.abs(got - exact).mean() / np.abs(exact).mean())
        assert error < errors["full", bits], (error, errors)
    # Without the FP32 weights, the stem's float weight is the dequantized int8 one.
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert make_cpu_form(model, weight_bits=8)["float_convs"] == 1
    onnx.checker.check_model(model)

    with pytest.raises(InvalidInputError, match="u8_range"):
        make_cpu_form(onnx.load(str(tmp_path / "q.onnx")), u8_range="half")
    with pytest.raises(InvalidInputError, match="cpu_weight_bits"):
        quantize_model(tmp_path / "f.onnx", tmp_path / "x.onnx", Reader(), cpu_path=tmp_path / "x.cpu.onnx",
                       cpu_weight_bits=6)
    with pytest.raises(InvalidInputError, match="weight_bits"):
        make_cpu_form(onnx.load(str(tmp_path / "q.onnx")), weight_bits=4)


def test_weight_bits_follow_the_cpus_int8_dot_product(caplog):
    """'auto' weight bits: 8 where the CPU's int8 products sum in int32 (x86 VNNI or AMX, ARM's dot
    product), 7 where MLAS's int16 pair sums would saturate (AVX2, AVX-512 without VNNI); a bundle's
    8-bit CPU form warns on a CPU without them, and 7-bit forms or unknown bits never do."""
    from vbedge.backends.select import check_cpu_form_bits
    from vbedge.calib.quantize import resolve_weight_bits
    from vbedge.info import cpu_flags, int8_dot_product

    avx2 = {"sse4_2", "avx", "avx2", "fma"}
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512vl"}
    assert int8_dot_product(avx2) is None and int8_dot_product(avx512) is None
    assert int8_dot_product(avx512 | {"avx512_vnni"}) == "avx512_vnni"
    assert int8_dot_product(avx2 | {"avx_vnni"}) == "avx_vnni"
    assert int8_dot_product({"fp", "asimd", "asimddp"}) == "asimddp"  # ARM's Features line
    assert int8_dot_product({"fp", "asimd"}) is None  # e.g. a Cortex-A57 (Jetson Nano, TX2)
    assert resolve_weight_bits("auto", flags=avx2)[0] == 7 and "saturate" in resolve_weight_bits("auto", flags=avx2)[1]
    assert resolve_weight_bits(None, flags=avx512 | {"avx512_vnni"}) == (
        8, "auto: this CPU has avx512_vnni, whose int8 products sum in int32")
    assert resolve_weight_bits(7, flags=avx512 | {"avx512_vnni"}) == (7, "given")
    assert resolve_weight_bits(8, flags=avx2) == (8, "given")
    for bad in (6, "8", "fast"):
        with pytest.raises(InvalidInputError, match="weight_bits"):
            resolve_weight_bits(bad)
    # This machine's own flags are read (the CI machines are x86 Linux).
    assert resolve_weight_bits()[0] == (8 if int8_dot_product(cpu_flags()) else 7)

    with caplog.at_level("WARNING", logger="vbedge"):
        message = check_cpu_form_bits("s3d", 8, flags=avx2)
    assert "8-bit weights" in message and "--cpu-weight-bits 7" in message and message in caplog.text
    assert check_cpu_form_bits("s3d", 8, flags=avx2 | {"avx_vnni"}) is None
    assert check_cpu_form_bits("s3d", 7, flags=avx2) is None
    assert check_cpu_form_bits("s3d", None, flags=avx2) is None  # a bundle from before the bits were recorded


def test_timing_sessions_do_not_spin_and_emulation_is_basic(tmp_path):
    """make_session: spinning=False sets ONNX Runtime's allow_spinning to 0 (the report's sessions
    are timed in turn in one process); optimization='basic' keeps a Q/DQ graph's nodes as they are;
    anything else is refused."""
    import onnx
    from onnx import TensorProto, helper

    from vbedge.export.verify import make_session

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    from ort_sessions import session_spins

    assert not session_spins(make_session(path, spinning=False)) and session_spins(make_session(path))
    basic = make_session(path, optimization="basic").get_session_options()
    assert basic.graph_optimization_level.name == "ORT_ENABLE_BASIC"
    with pytest.raises(InvalidInputError, match="optimization"):
        make_session(path, optimization="extended")


def test_share_concat_scales_by_hand():
    """A concat whose inputs were quantized at their own scales reads them at its output's; an input
    whose Q feeds something else, or a concat followed by Qs of two scales, is left alone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vbedge.calib.quantize import share_concat_scales

    def scalar(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.array(value, dtype), name)

    def graph(extra_consumer=False, second_scale=0.4):
        nodes, inits = [], [scalar("zp", 0, np.int8), scalar("sa", 0.1), scalar("sb", 0.3), scalar("so", 0.4),
                            scalar("so2", second_scale)]
        for x, sc in (("a", "sa"), ("b", "sb")):
            nodes += [helper.make_node("QuantizeLinear", [x, sc, "zp"], [f"{x}_q"]),
                      helper.make_node("DequantizeLinear", [f"{x}_q", sc, "zp"], [f"{x}_dq"])]
        nodes.append(helper.make_node("Concat", ["a_dq", "b_dq"], ["c"], axis=1))
        nodes += [helper.make_node("QuantizeLinear", ["c", "so", "zp"], ["c_q"]),
                  helper.make_node("DequantizeLinear", ["c_q", "so", "zp"], ["y"]),
                  helper.make_node("QuantizeLinear", ["c", "so2", "zp"], ["c_q2"]),
                  helper.make_node("DequantizeLinear", ["c_q2", "so2", "zp"], ["y2"])]
        outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("y", "y2")]
        if extra_consumer:
            nodes.append(helper.make_node("DequantizeLinear", ["a_q", "sa", "zp"], ["a_again"]))
            outputs.append(helper.make_tensor_value_info("a_again", TensorProto.FLOAT, [1, 2]))
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("a", "b")]
        return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits))

    model = graph()
    assert share_concat_scales(model) == 1
    scales = {n.output[0]: n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert scales["a_q"] == scales["a_dq"] == scales["b_q"] == scales["b_dq"] == "so"
    assert {i.name for i in model.graph.initializer} == {"zp", "so", "so2"}  # the branch scales are gone
    onnx.checker.check_model(model)
    for untouched in (graph(extra_consumer=True), graph(second_scale=0.5)):
        assert share_concat_scales(untouched) == 0
        assert {n.input[1] for n in untouched.graph.node if n.output[0] == "a_q"} == {"sa"}

