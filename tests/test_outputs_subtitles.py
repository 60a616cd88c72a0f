"""vbedge.outputs.subtitles: SRT / WebVTT cues of the shown caption, read back through vbedge.narration
and FFmpeg, a real full disk (/dev/full) in the middle of a run, and `vbedge caption` writing both."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest

from vbedge.errors import InvalidInputError
from vbedge.narration import parse_srt, parse_vtt
from vbedge.outputs import OutputContext, OutputSet, open_output
from vbedge.outputs.files import JsonlOutput
from vbedge.outputs.subtitles import SubtitleOutput, format_timestamp
from vbedge.pipeline import ClipEvent

CLIP = 1.5


def event(i, caption, source="cam0"):
    return ClipEvent(source_id=source, clip_index=i, start=CLIP * i, end=CLIP * (i + 1), leaf=i,
                     token_id=100 + i, token=f"[V:{i}]", caption=caption, clip_caption=caption)


def run(out, captions, sources=("cam0",), close=True):
    out.open(OutputContext(fps=20, sources=sources))
    for i, caption in enumerate(captions):
        out.write(event(i, caption))
    if close:
        out.close()


def cues(path):
    parse = parse_vtt if str(path).endswith(".vtt") else parse_srt
    return [(c.start, c.end, c.text) for c in parse(path)]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_timestamps():
    assert format_timestamp(0) == "00:00:00,000"
    assert format_timestamp(3661.0015, ".") == "01:01:01.002"
    assert format_timestamp(360000.25) == "100:00:00,250"


@pytest.mark.parametrize("suffix", [".srt", ".vtt"])
def test_one_cue_per_shown_caption_read_back_by_the_narration_parser(tmp_path, suffix):
    path = tmp_path / f"captions{suffix}"
    run(SubtitleOutput(path, max_cue_seconds=None),
        [None, "cut the onion", "cut the onion", "stir the pot", "stir the pot", "stir the pot", None,
         "add salt & pepper <now>"])
    # SubRip has no escapes: a <...> there is a tag to players (and to the narration reader).
    last = "add salt & pepper <now>" if suffix == ".vtt" else "add salt & pepper"
    assert cues(path) == [(1.5, 4.5, "cut the onion"), (4.5, 9.0, "stir the pot"), (10.5, 12.0, last)]
    text = path.read_text(encoding="utf-8")
    blocks = text.split("\n\n")
    if suffix == ".vtt":
        assert blocks[0] == "WEBVTT" and text.count("WEBVTT") == 1
        assert "salt &amp; pepper &lt;now&gt;" in text
        blocks = blocks[1:]
        timing = r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}"
    else:
        timing = r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}"
    blocks = [b for b in blocks if b]
    assert [b.split("\n")[0] for b in blocks] == ["1", "2", "3"]
    assert all(re.fullmatch(timing, b.split("\n")[1]) for b in blocks)
    assert blocks[0].split("\n")[1] in ("00:00:01,500 --> 00:00:04,500", "00:00:01.500 --> 00:00:04.500")


def test_a_long_caption_is_written_in_pieces_while_it_is_shown(tmp_path):
    path = tmp_path / "live.srt"
    out = SubtitleOutput(path, max_cue_seconds=6.0)
    run(out, ["stir"] * 5, close=False)             # 0 .. 7.5 s: the first 6 s are on disk already
    assert cues(path) == [(0.0, 6.0, "stir")]
    for i in range(5, 9):                           # .. 13.5 s
        out.write(event(i, "stir"))
    assert cues(path) == [(0.0, 6.0, "stir"), (6.0, 12.0, "stir")]
    out.close()                                     # the open cue is written at the end
    assert cues(path) == [(0.0, 6.0, "stir"), (6.0, 12.0, "stir"), (12.0, 13.5, "stir")]


def test_clips_dropped_under_a_caption_do_not_split_its_cue(tmp_path):
    path = tmp_path / "live.srt"
    out = SubtitleOutput(path, max_cue_seconds=None)
    out.open(OutputContext(fps=20, sources=("cam0",)))
    for i, caption in ((0, "cut"), (1, "cut"), (4, "cut"), (5, "stir")):   # clips 2 and 3 dropped
        out.write(event(i, caption))
    out.close()
    assert cues(path) == [(0.0, 7.5, "cut"), (7.5, 9.0, "stir")]


def test_several_sources_prefix_the_source(tmp_path):
    path = tmp_path / "both.vtt"
    out = SubtitleOutput(path)
    out.open(OutputContext(fps=20, sources=("left", "right")))
    for i in range(3):
        out.write(event(i, "cut", "left"))
        out.write(event(i, "cut" if i < 1 else "stir", "right"))
    out.close()
    assert sorted(cues(path)) == [(0.0, 1.5, "right: cut"), (0.0, 4.5, "left: cut"), (1.5, 4.5, "right: stir")]


def test_ffmpeg_reads_what_we_write(tmp_path):
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed (.ci/system-deps.sh installs it)")
    captions = ["cut the onion"] * 3 + ["stir the pot"] * 2 + [None, "fry the egg"]
    for suffix, other in ((".srt", ".vtt"), (".vtt", ".srt")):
        path = tmp_path / f"ours{suffix}"
        run(SubtitleOutput(path, max_cue_seconds=None), captions)
        converted = tmp_path / f"ffmpeg_from_{suffix[1:]}{other}"
        result = subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(path), str(converted)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert cues(converted) == [(0.0, 4.5, "cut the onion"), (4.5, 7.5, "stir the pot"),
                                   (9.0, 10.5, "fry the egg")]


def test_bad_targets_are_refused(tmp_path):
    assert isinstance(open_output(tmp_path / "a.SRT"), SubtitleOutput)
    assert isinstance(open_output("captions.vtt"), SubtitleOutput)
    with pytest.raises(InvalidInputError, match="does not exist"):
        SubtitleOutput(tmp_path / "missing" / "a.srt").open(OutputContext(fps=20))
    with pytest.raises(InvalidInputError, match="max_cue_seconds"):
        SubtitleOutput(tmp_path / "a.srt", max_cue_seconds=0)


def test_a_deleted_file_comes_back_with_its_header(tmp_path):
    path = tmp_path / "c.vtt"
    out = SubtitleOutput(path, max_cue_seconds=None)
    run(out, ["a", "b"], close=False)
    path.unlink()                                    # e.g. log rotation
    out.write(event(2, "c"))
    out.close()
    assert path.read_text().startswith("WEBVTT\n\n2\n") and cues(path) == [(1.5, 3.0, "b"), (3.0, 4.5, "c")]


@pytest.mark.parametrize("suffix", [".srt", ".vtt"])
def test_a_full_disk_is_counted_logged_once_and_the_cues_go_on_after_it(tmp_path, suffix, caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    real = tmp_path / f"real{suffix}"
    link = tmp_path / f"captions{suffix}"
    link.symlink_to(real)
    clock = Clock()
    outputs = OutputSet(retry_delay=1.0, retry_max_delay=4.0, clock=clock)
    subs = outputs.add(SubtitleOutput(link, max_cue_seconds=None))
    outputs.add(JsonlOutput(tmp_path / "events.jsonl"))
    outputs.open(OutputContext(fps=20, sources=("cam0",)))
    captions = ["a", "a", "b", "c", "c", "d", "e", "f", "g", "h"]
    with caplog.at_level(logging.WARNING, logger="vbedge.outputs"):
        for i in range(3):                           # cue "a" written at clip 2
            outputs.write(event(i, captions[i]))
        link.unlink()
        link.symlink_to("/dev/full")                 # the disk is full: writes fail with ENOSPC
        outputs.write(event(3, captions[3]))         # cue "b" fails: kept, error counted
        outputs.write(event(4, captions[4]))         # before the retry time: missed
        clock.now = 1.5
        outputs.write(event(5, captions[5]))         # retry: reopen writes "b" -> ENOSPC again
        link.unlink()
        link.symlink_to(real)                        # space again
        clock.now = 4.0
        for i in range(6, 10):                       # reopen writes "b"; then c (clip 3 only), d, e...
            outputs.write(event(i, captions[i]))
    outputs.close()
    status = outputs.status()[0]
    assert status.failures == 2 and status.missed == 3 and "No space left" in status.last_error
    logged = [r.getMessage() for r in caplog.records if r.name == "vbedge.outputs"]
    assert len(logged) == 2 and "failed while writing" in logged[0] and "works again" in logged[1]
    rows = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [r["clip"] for r in rows] == list(range(10))  # captioning went on
    # Clips 4 and 5 were missed (never reached the output): "c" ends with clip 3, "d" has no clip.
    assert cues(real) == [(0.0, 3.0, "a"), (3.0, 4.5, "b"), (4.5, 6.0, "c"), (9.0, 10.5, "e"),
                          (10.5, 12.0, "f"), (12.0, 13.5, "g"), (13.5, 15.0, "h")]
    text = real.read_text()
    assert text.count("WEBVTT") == (suffix == ".vtt")
    numbers = re.findall(r"(?m)^(\d+)\n\d\d:", text)
    assert numbers == [str(n) for n in range(1, 8)]


def test_vbedge_caption_writes_srt_and_vtt(small_bundle, tmp_path):
    cv2 = pytest.importorskip("cv2")  # noqa: F841
    from test_pipeline import write_video

    video = write_video(tmp_path / "one.avi", 56, seed=3)
    srt, vtt, jsonl = tmp_path / "c.srt", tmp_path / "c.vtt", tmp_path / "e.jsonl"
    result = subprocess.run([sys.executable, "-m", "vbedge.cli", "caption", str(video), str(srt), str(vtt),
                             str(jsonl), "--bundle", str(small_bundle.root), "--backend", "onnxruntime",
                             "--template", "caption", "--stable", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    expected = []                                    # the reference: merge the JSONL events by caption
    for e in events:
        if e["caption"] is None:
            continue
        if expected and expected[-1][2] == e["caption"]:   # (4 clips of 0.8 s: shorter than a 6 s split)
            expected[-1] = (expected[-1][0], e["end"], e["caption"])
        else:
            expected.append((e["start"], e["end"], e["caption"]))
    assert len(events) == 4 and expected
    for path in (srt, vtt):
        got = cues(path)
        assert [c[2] for c in got] == [c[2] for c in expected]
        assert [c[:2] for c in got] == [pytest.approx(c[:2], abs=5e-4) for c in expected]


def test_a_cue_cut_short_by_the_file_size_limit_is_removed_before_the_retry(tmp_path):
    """RLIMIT_FSIZE makes the kernel write part of a cue and fail the rest (EFBIG), like a disk that
    fills in the middle of a cue; run in a child so the limit binds nothing else."""
    resource = pytest.importorskip("resource")
    path = tmp_path / "cut.vtt"
    script = f"""
import errno, resource
from vbedge.outputs import OutputContext
from vbedge.outputs.subtitles import SubtitleOutput
from vbedge.pipeline import ClipEvent

def event(i, caption):
    return ClipEvent(source_id="cam0", clip_index=i, start=1.5 * i, end=1.5 * (i + 1), leaf=i, token_id=i,
                     token="[V:0]", caption=caption)

out = SubtitleOutput({str(path)!r}, max_cue_seconds=None)
out.open(OutputContext(fps=20, sources=("cam0",)))
out.write(event(0, "first caption"))
out.write(event(1, "second caption"))           # header + cue 1 written: 55 bytes
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (70, hard))   # cue 2 (47 bytes) fits only in part
try:
    out.write(event(2, "third caption"))
    raise SystemExit("the write did not fail")
except OSError as error:
    assert error.errno == errno.EFBIG, error
size = len(open({str(path)!r}, "rb").read())
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
out.open(OutputContext(fps=20, sources=("cam0",)), resume=True)
out.write(event(3, "fourth caption"))
out.close()
print(size)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == len(b"WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.500\nfirst caption\n\n")
    assert cues(path) == [(0.0, 1.5, "first caption"), (1.5, 3.0, "second caption"),
                          (3.0, 4.5, "third caption"), (4.5, 6.0, "fourth caption")]
    assert re.findall(r"(?m)^(\d+)\n\d\d:", path.read_text()) == ["1", "2", "3", "4"]
