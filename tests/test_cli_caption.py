"""`vbedge caption` and `vbedge tokenize` through a subprocess, as a user runs them."""

import json
import subprocess
import sys

import pytest

cv2 = pytest.importorskip("cv2")

from test_pipeline import write_video  # noqa: E402  (tests/ is on sys.path via conftest)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_videos")
    good1 = write_video(folder / "one.avi", 40, seed=3)      # 2 full clips + 1 padded
    good2 = write_video(folder / "two.avi", 32, seed=4)      # 2 clips
    damaged = folder / "damaged.avi"
    data = good1.read_bytes()
    damaged.write_bytes(data[:len(data) // 2])
    empty = folder / "empty.avi"
    empty.write_bytes(b"")
    return {"one": good1, "two": good2, "damaged": damaged, "empty": empty}


def vbedge(*args):
    return subprocess.run([sys.executable, "-m", "vbedge.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_caption_writes_jsonl_and_annotated_video(small_bundle, clips, tmp_path):
    jsonl, out = tmp_path / "events.jsonl", tmp_path / "annotated.avi"
    result = vbedge("caption", clips["one"], "--bundle", small_bundle.root, "--backend",
                    "onnxruntime", "--jsonl", jsonl, "--out", out, "--template", "caption",
                    "--stable", "1")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [e["clip"] for e in events] == [0, 1, 2]
    assert [(e["start"], e["end"]) for e in events] == [(0.0, 0.8), (0.8, 1.6), (1.6, 2.4)]
    assert events[0]["caption_changed"] and events[0]["caption"] == events[0]["clip_caption"]
    assert events[0]["clip_caption"].startswith("now let's ")
    assert all(e["token"] == f"[V:0{e['leaf'] // 3}.0{e['leaf'] % 3}]" for e in events)
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 3 and "0.80" in lines[1] and events[0]["caption"] in lines[0]
    capture = cv2.VideoCapture(str(out))
    written = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert written == 40  # every sampled frame once; the padding of the last clip is not drawn


def test_tokenize_continues_after_bad_videos(small_bundle, clips, tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    result = vbedge("tokenize", clips["one"], clips["damaged"], clips["empty"], clips["two"],
                    "--bundle", small_bundle.root, "--backend", "onnxruntime", "-o", tokens)
    assert result.returncode == 1
    assert f"{clips['damaged']}: " in result.stderr and "truncated or damaged" in result.stderr
    assert f"{clips['empty']}: " in result.stderr and "empty" in result.stderr
    assert "2 of 4 video(s) failed" in result.stderr
    rows = [json.loads(line) for line in tokens.read_text().splitlines()]
    by_video = {}
    for row in rows:
        by_video.setdefault(row["video"], []).append(row)
        assert set(row) == {"video", "start", "end", "leaf", "token"}
    assert len(by_video[str(clips["one"])]) == 3 and len(by_video[str(clips["two"])]) == 2
    assert 1 <= len(by_video.get(str(clips["damaged"]), [])) < 3  # the clips before the damage
    assert str(clips["empty"]) not in by_video
    good = vbedge("tokenize", clips["two"], "--bundle", small_bundle.root, "--backend",
                  "onnxruntime", "-o", tmp_path / "ok.jsonl", "-q")
    assert good.returncode == 0, good.stderr
