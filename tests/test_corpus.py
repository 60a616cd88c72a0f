"""Corpus lines, narration readers (WebVTT, SubRip, JSON lines) and the tokens + narration join.

The expected cues are written out by hand from the subtitle texts below.
"""

import json

import pytest

from vbedge.corpus import (
    CorpusFormatError,
    build_corpus,
    parse_corpus_line,
    read_corpus,
    read_tokens,
    write_corpus,
)
from vbedge.errors import FormatError, InvalidInputError
from vbedge.narration import (
    Cue,
    NarrationFormatError,
    parse_srt,
    parse_timestamp,
    parse_vtt,
    read_narration_jsonl,
)

VTT = (
    "\ufeffWEBVTT - cooking show\r\n"
    "Kind: captions\r\n"
    "Language: en\r\n"
    "\r\n"
    "NOTE this block is a comment\r\n"
    "spanning two lines --> with an arrow-like text\r\n"
    "\r\n"
    "STYLE\r\n"
    "::cue { color: yellow }\r\n"
    "\r\n"
    "intro\r\n"
    "00:00:01.000 --> 00:00:03.500 align:start position:10%\r\n"
    "<v Chef>Now let me show you\r\n"
    "how to <i>cut</i> the onions</v>\r\n"
    "\r\n"
    "00:03.500 --> 00:05.250\r\n"
    "Tom &amp; Jerry's <c.red>sauce</c><00:00:04.000> recipe\r\n"
    "\r\n"
    "3\r\n"
    "01:02:03.4 --> 01:02:04,05\r\n"
    "the end\r\n"
    "\r\n"
    "00:00:06.000 --> 00:00:07.000\r\n"
    "<i></i>\r\n"
)
VTT_CUES = [
    Cue(1.0, 3.5, "Now let me show you how to cut the onions", 12),
    Cue(3.5, 5.25, "Tom & Jerry's sauce recipe", 16),
    Cue(3723.4, 3724.05, "the end", 20),
]

SRT = (
    "\ufeff1\r\n"
    "00:00:00,500 --> 00:00:02,000\r\n"
    "boil the water\r\n"
    "\r\n"
    "2\r\n"
    "00:00:02,000 --> 00:00:04,250 X1:100 X2:200 Y1:10 Y2:20\r\n"
    "{\\an8}add the <b>pasta</b>\r\n"
    "and stir\r\n"
    "\r\n"
    "\r\n"
    "3\r\n"
    "00:00:05.000 --> 00:00:06.000\r\n"
    "drain it\r\n"
)
SRT_CUES = [
    Cue(0.5, 2.0, "boil the water", 2),
    Cue(2.0, 4.25, "add the pasta and stir", 6),
    Cue(5.0, 6.0, "drain it", 12),
]


def _write(path, text, newline=""):
    with open(path, "w", encoding="utf-8", newline=newline) as handle:
        handle.write(text)
    return path


def test_timestamps():
    assert parse_timestamp("00:00:01.000") == 1.0
    assert parse_timestamp("01:02:03,456") == pytest.approx(3723.456)
    assert parse_timestamp("02:03.5") == pytest.approx(123.5)
    assert parse_timestamp("100:00:00.000") == 360000.0
    for bad in ("1.5", "00:61:00.000", "00:00:60.000", "aa:bb:cc", "00:00:01.0000", ""):
        with pytest.raises(NarrationFormatError, match="malformed timestamp"):
            parse_timestamp(bad, "x.vtt", 7)


def test_vtt_parsed_as_written_by_hand(tmp_path):
    assert parse_vtt(_write(tmp_path / "a.vtt", VTT)) == VTT_CUES
    # The same file with LF and with CR line ends gives the same cues.
    assert parse_vtt(_write(tmp_path / "b.vtt", VTT.replace("\r\n", "\n"))) == VTT_CUES
    assert parse_vtt(_write(tmp_path / "c.vtt", VTT.replace("\r\n", "\r"))) == VTT_CUES


def test_srt_parsed_as_written_by_hand(tmp_path):
    assert parse_srt(_write(tmp_path / "a.srt", SRT)) == SRT_CUES
    assert parse_srt(_write(tmp_path / "b.srt", SRT.replace("\r\n", "\n"))) == SRT_CUES


def test_srt_without_blank_line_between_cues(tmp_path):
    text = ("1\n00:00:01,000 --> 00:00:02,000\nfirst\n2\n00:00:02,000 --> 00:00:03,000\n"
            "second line\n42\nthird\n")
    assert parse_srt(_write(tmp_path / "tight.srt", text)) == [
        Cue(1.0, 2.0, "first", 2), Cue(2.0, 3.0, "second line 42 third", 5)]


def test_subtitle_errors_name_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n\n"
                                       "00:00:03.000 --> 00:00:0x.000\nbroken\n")
    with pytest.raises(NarrationFormatError, match=r"bad.vtt:6: malformed timestamp '00:00:0x.000'"):
        parse_vtt(bad)
    with pytest.raises(NarrationFormatError, match=r"nohead.vtt:1: not a WebVTT file"):
        parse_vtt(_write(tmp_path / "nohead.vtt", "00:00:01.000 --> 00:00:02.000\nhi\n"))
    with pytest.raises(NarrationFormatError, match=r"back.srt:2: cue ends .* before it starts"):
        parse_srt(_write(tmp_path / "back.srt", "1\n00:00:05,000 --> 00:00:04,000\nhi\n"))
    with pytest.raises(NarrationFormatError, match=r"notime.srt:6: expected a cue number and a "
                                                   r"timing line"):
        parse_srt(_write(tmp_path / "notime.srt", "1\n00:00:01,000 --> 00:00:02,000\nhi\n\n2\n"
                                                  "just text\n"))
    latin = tmp_path / "latin.srt"
    latin.write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\ncr\xe8me\n")
    with pytest.raises(NarrationFormatError, match=r"latin.srt:3: not UTF-8"):
        parse_srt(latin)


def test_narration_jsonl(tmp_path):
    path = _write(tmp_path / "n.jsonl", '{"video": "a.mp4", "start": 0, "end": 1.5, "text": " cut  it "}\n'
                                        '\n'
                                        '{"video": "b.mp4", "start": 2, "end": 3, "text": "stir", "speaker": 1}\n')
    assert read_narration_jsonl(path) == {"a.mp4": [Cue(0.0, 1.5, "cut it", 1)],
                                          "b.mp4": [Cue(2.0, 3.0, "stir", 3)]}
    _write(path, '{"video": "a.mp4", "start": 0, "end": 1}\n')
    with pytest.raises(NarrationFormatError, match=r"n.jsonl:1: 'text' missing"):
        read_narration_jsonl(path)


GOOD = {"video": "v/pasta.mp4",
        "clips": [{"start": 0.0, "end": 1.5, "leaf": 3}, {"start": 1.5, "end": 3.0, "leaf": 8}],
        "narration": [{"start": 0.2, "end": 2.0, "text": "boil the water", "conf": 0.9}],
        "extra": {"anything": True}}


def test_corpus_round_trip_and_extra_fields(tmp_path):
    video = parse_corpus_line(json.dumps(GOOD), num_leaves=9)
    assert video.leaves == [3, 8] and video.narration[0].text == "boil the water"
    path = tmp_path / "corpus.jsonl"
    write_corpus(path, [video, {**GOOD, "video": "other.mp4"}])
    corpus = read_corpus(path, num_leaves=9)
    assert [v.video for v in corpus] == ["v/pasta.mp4", "other.mp4"] and corpus.skipped == 0
    assert corpus.videos[0].to_dict() == {k: v for k, v in video.to_dict().items()}
    assert [v.line for v in corpus] == [1, 2]


def _line(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data)


BAD_LINES = [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    (_line(video=None), "'video' missing"),
    (_line(video=""), "'video' missing"),
    (_line(clips=None), "missing 'clips'"),
    (_line(narration={"text": "x"}), "'narration' must be a list"),
    (_line(clips=[{"start": 0, "end": 1}]), r"clips\[0\] 'leaf' missing"),
    (_line(clips=[{"start": 0, "end": 1, "leaf": 2.0}]), r"clips\[0\] 'leaf' missing or not an integer"),
    (_line(clips=[{"start": 0, "end": 1, "leaf": True}]), "not an integer"),
    (_line(clips=[{"start": 0, "end": 1, "leaf": 9}]), r"leaf 9 is outside 0..8"),
    (_line(clips=[{"start": 0, "end": 1, "leaf": -1}]), r"leaf -1 is outside"),
    (_line(clips=[{"start": "0", "end": 1, "leaf": 1}]), r"'start' must be a finite number"),
    (_line(clips=[{"start": 2, "end": 1, "leaf": 1}]), r"clips\[0\] ends \(1\) before it starts"),
    (_line(clips=[{"start": 2, "end": 3, "leaf": 1}, {"start": 1, "end": 2, "leaf": 1}]),
     r"clips\[1\] starts at 1.0 before the previous one"),
    (_line(narration=[{"start": 0, "end": 1}]), r"narration\[0\] 'text' missing"),
    (_line(narration=[{"end": 1, "text": "x"}]), r"narration\[0\] lacks 'start'"),
    (_line(narration=[{"start": 1, "end": 2, "text": "a"}, {"start": 0, "end": 3, "text": "b"}]),
     "narration must be in time order"),
]


@pytest.mark.parametrize("text, message", BAD_LINES)
def test_each_bad_line_is_named(text, message):
    with pytest.raises(FormatError, match=message):
        parse_corpus_line(text, num_leaves=9)


def test_bad_lines_reported_with_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [_line(video="a.mp4"), BAD_LINES[0][0], "", _line(video="b.mp4"), BAD_LINES[9][0],
             _line(video="a.mp4")]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusFormatError) as info:
        read_corpus(path, num_leaves=9)
    assert info.value.problems == [
        f"{path}:2: not JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:5: clips[0] leaf 9 is outside 0..8 (the codebook's leaves)",
        f"{path}:6: video 'a.mp4' already on line 1 (one line per video)",
    ]
    assert "3 bad corpus line(s)" in str(info.value)
    corpus = read_corpus(path, num_leaves=9, strict=False)
    assert [v.video for v in corpus] == ["a.mp4", "b.mp4"] and corpus.skipped == 3
    assert [v.line for v in corpus] == [1, 4]
    # Without a codebook only leaf >= 0 is checked: line 5 is then fine.
    assert read_corpus(path, strict=False).skipped == 2


def _tokens(path, rows):
    with open(path, "w") as out:
        for video, start, leaf in rows:
            out.write(json.dumps({"video": video, "start": start, "end": start + 1.5, "leaf": leaf,
                                  "token": f"[V:{leaf}]"}) + "\n")
    return path


def test_join_tokens_with_vtt_srt_and_jsonl(tmp_path):
    tokens = _tokens(tmp_path / "tokens.jsonl", [
        ("videos/pasta.mp4", 0.0, 1), ("videos/pasta.mp4", 1.5, 2), ("videos/onion.mp4", 0.0, 5),
        ("clips/soup.avi", 1.5, 7), ("clips/soup.avi", 0.0, 6), ("videos/quiet.mp4", 0.0, 0)])
    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs / "pasta.srt", SRT)
    _write(subs / "onion.en.vtt", VTT)
    _write(subs / "unrelated.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nnobody\n")
    narration = _write(tmp_path / "asr.jsonl",
                       '{"video": "soup.avi", "start": 2.0, "end": 3.0, "text": "season it"}\n'
                       '{"video": "soup.avi", "start": 0.0, "end": 1.0, "text": "chop carrots"}\n'
                       '{"video": "gone.mp4", "start": 0.0, "end": 1.0, "text": "lost"}\n')
    out = tmp_path / "corpus.jsonl"
    report = build_corpus(tokens, [subs, narration], out, num_leaves=9)
    corpus = read_corpus(out, num_leaves=9)
    got = {v.video: v for v in corpus}
    assert [v.video for v in corpus] == ["videos/pasta.mp4", "videos/onion.mp4", "clips/soup.avi",
                                         "videos/quiet.mp4"]
    assert [(s.start, s.end, s.text) for s in got["videos/pasta.mp4"].narration] == \
        [(c.start, c.end, c.text) for c in SRT_CUES]
    assert [s.text for s in got["videos/onion.mp4"].narration] == [c.text for c in VTT_CUES]
    # Clips sorted by start; the JSONL narration matched by file name and sorted by start.
    assert got["clips/soup.avi"].leaves == [6, 7]
    assert [s.text for s in got["clips/soup.avi"].narration] == ["chop carrots", "season it"]
    assert got["videos/quiet.mp4"].narration == ()
    assert report.videos == 4 and report.clips == 6 and report.sentences == 3 + 3 + 2
    assert report.without_narration == ["videos/quiet.mp4"]
    assert sorted(report.unmatched) == sorted([str(subs / "unrelated.vtt"),
                                               f"{narration}: gone.mp4"])


def test_join_errors(tmp_path):
    tokens = _tokens(tmp_path / "tokens.jsonl", [("a/pasta.mp4", 0.0, 1), ("b/pasta.mp4", 0.0, 2)])
    sub = _write(tmp_path / "pasta.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nhi\n")
    with pytest.raises(InvalidInputError, match="matches several videos"):
        build_corpus(tokens, [sub], tmp_path / "c.jsonl")
    one = _tokens(tmp_path / "one.jsonl", [("a/pasta.mp4", 0.0, 1)])
    srt = _write(tmp_path / "pasta.srt", "1\n00:00:01,000 --> 00:00:02,000\nhi\n")
    with pytest.raises(InvalidInputError, match="given narration twice"):
        build_corpus(one, [sub, srt], tmp_path / "c.jsonl")
    bad = _write(tmp_path / "bad.jsonl", '{"video": "a.mp4", "start": 0, "end": 1.5, "leaf": 1}\n'
                                         '{"video": "a.mp4", "start": 0, "end": 1.5, "leaf": 12}\n')
    with pytest.raises(CorpusFormatError, match=r"bad.jsonl:2: clip leaf 12 is outside 0..8"):
        read_tokens(bad, num_leaves=9)
    by_video, problems = read_tokens(bad, num_leaves=9, strict=False)
    assert len(by_video["a.mp4"]) == 1 and len(problems) == 1
    broken = _write(tmp_path / "broken.srt", "1\n00:00:01,000 -> 00:00:02,000\nhi\n")
    with pytest.raises(NarrationFormatError, match=r"broken.srt:2: expected a cue number"):
        build_corpus(one, [broken], tmp_path / "c.jsonl")
    assert not (tmp_path / "c.jsonl").exists()


def test_cli_corpus(tmp_path, capsys):
    from vbedge import HierarchicalCodebook
    from vbedge.cli import main

    import numpy as np

    codebook = HierarchicalCodebook(np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32),
                                    levels=2, branching=3)
    codebook.save(tmp_path / "cb.npz")
    tokens = _tokens(tmp_path / "tokens.jsonl", [("videos/pasta.mp4", 0.0, 1),
                                                 ("videos/quiet.mp4", 0.0, 8)])
    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs / "pasta.srt", SRT)
    out = tmp_path / "corpus.jsonl"
    assert main(["corpus", str(tokens), "--narration", str(subs), "--codebook",
                 str(tmp_path / "cb.npz"), "-o", str(out)]) == 0
    assert "wrote 2 video(s), 2 clip(s), 3 sentence(s)" in capsys.readouterr().out
    library = tmp_path / "library.jsonl"
    build_corpus(tokens, [subs], library, num_leaves=codebook)
    assert out.read_text() == library.read_text()
    bad = _tokens(tmp_path / "bad.jsonl", [("a.mp4", 0.0, 1), ("a.mp4", 1.5, 9)])
    args = ["corpus", str(bad), "--codebook", str(tmp_path / "cb.npz"), "-o", str(out)]
    assert main(args) == 2
    assert f"{bad}:2: clip leaf 9 is outside 0..8" in capsys.readouterr().err
    assert main(args + ["--lenient"]) == 0
    assert f"skipped {bad}:2: clip leaf 9" in capsys.readouterr().err


def test_data_modules_import_nothing_heavy():
    """vbedge.features / corpus / narration load without torch, cv2 or onnx (devices lack them)."""
    import subprocess
    import sys

    heavy = ["torch", "torchvision", "tensorrt", "onnx", "transformers", "cv2"]
    probe = ("import sys, json, vbedge.features, vbedge.corpus, vbedge.narration\n"
             f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
