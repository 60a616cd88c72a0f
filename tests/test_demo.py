"""The README's demo: `vbedge demo` runs end to end (shortened video)."""

import importlib.util
import json

import pytest

from vbedge.demo import DEMO_REQUIREMENTS, run_demo, write_demo_video

_missing = [dist for module, dist in DEMO_REQUIREMENTS if importlib.util.find_spec(module) is None]


def test_demo_video_is_readable(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = write_demo_video(tmp_path / "v.mp4", seconds=1.0, fps=20.0)
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 20


@pytest.mark.slow
@pytest.mark.skipif(bool(_missing), reason=f"demo needs {_missing}")
def test_demo_runs_end_to_end(tmp_path, capsys):
    assert run_demo(tmp_path / "demo", seconds=2.5, backend="onnxruntime") == 0
    events = [json.loads(line) for line in (tmp_path / "demo" / "events.jsonl").read_text().splitlines()]
    assert len(events) >= 3 and all({"leaf", "token", "clip_caption", "forecast"} <= set(e) for e in events)
    assert (tmp_path / "demo" / "kitchen-captioned.mp4").stat().st_size > 0
    assert "done in" in capsys.readouterr().out
