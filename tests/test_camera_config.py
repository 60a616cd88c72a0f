"""Camera configuration files (vbedge.camera_config) and ``vbedge caption --config`` / ``--input-loop``."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vbedge.camera_config import CameraConfigError, load_camera_config, parse_camera_config

GOOD = """\
bundle: bundles/kitchen
defaults: {template: howto, stable: 3}
outputs: [http://@:8080]
cameras:
  cam0:
    input: rtsp://10.0.0.5/stream
    outputs: [cam0.jsonl, out/cam0.srt]
    template: caption
    verbs: [cut, stir]
    input-rtsp-latency: 200
  cam1:
    input: 0
  file:
    input: videos/a.mp4
    nouns: words.txt
    min-confidence: 0.25
    input-loop: -1
    input-rate: 12.5
    live: false
"""


def parse(text, folder=Path("/cfg")):
    return parse_camera_config(textwrap.dedent(text), folder / "cameras.yaml")


def test_good_file(tmp_path):
    (tmp_path / "words.txt").write_text("# kitchen nouns\nonion\n\ntomato\n")
    path = tmp_path / "cameras.yaml"
    path.write_text(GOOD)
    config = load_camera_config(path)
    assert config.bundle == tmp_path / "bundles" / "kitchen"
    assert config.outputs == ("http://@:8080",)
    cam0, cam1, file = config.cameras
    assert (cam0.name, cam0.input, cam0.outputs) == ("cam0", "rtsp://10.0.0.5/stream",
                                                   (str(tmp_path / "cam0.jsonl"), str(tmp_path / "out" / "cam0.srt")))
    assert cam0.captioning == {"template": "caption", "stable_clips": 3, "verbs": ["cut", "stir"]}
    assert cam0.source_options == {"rtsp_latency": 200}
    assert (cam1.input, cam1.outputs, cam1.captioning, cam1.source_options) == \
        (0, (), {"template": "howto", "stable_clips": 3}, {})
    assert file.input == str(tmp_path / "videos" / "a.mp4")
    assert file.captioning == {"template": "howto", "stable_clips": 3, "nouns": ["onion", "tomato"],
                               "min_confidence": 0.25}
    assert file.source_options == {"loop": -1, "rate": 12.5, "live": False}
    assert config.sources == {"cam0": "rtsp://10.0.0.5/stream", "cam1": 0, "file": str(tmp_path / "videos" / "a.mp4")}
    assert set(config.captioning) == {"cam0", "cam1", "file"}
    assert set(config.source_options) == {"cam0", "file"}


def test_inputs_that_are_not_files_are_kept_as_written():
    config = parse("""\
        cameras:
          a: {input: "2"}
          b: {input: /dev/video1}
          c: {input: "videotestsrc ! appsink"}
          d: {input: csi://0}
          e: {input: /abs/v.mp4}
          f: {input: "verbs.txt", verbs: "cut, stir"}
        """)
    assert [c.input for c in config.cameras] == [2, "/dev/video1", "videotestsrc ! appsink", "csi://0", "/abs/v.mp4",
                                                 "/cfg/verbs.txt"]
    assert config.cameras[-1].captioning == {"verbs": ["cut", "stir"]}  # not a file: comma-separated words


BAD = [
    ("", r"cameras.yaml: the file is empty"),
    ("- a\n- b\n", r"cameras.yaml: expected a mapping with 'cameras:' at the top, got a list"),
    ("cameras: {a: {input: 0}\n", r"cameras.yaml: line \d+, column \d+: not valid YAML"),
    ("camera: {}\n", r"cameras.yaml: unknown key 'camera'; expected one of \['bundle', 'defaults', 'outputs', 'cameras'\]"),
    ("bundle: b\n", r"cameras.yaml: no 'cameras:' mapping"),
    ("cameras: {}\n", r"cameras.yaml: key 'cameras': expected a non-empty mapping"),
    ("cameras: {a: {outputs: [a.jsonl]}}\n", r"cameras.yaml: camera 'a': missing key 'input'"),
    ("cameras: {a: }\n", r"cameras.yaml: camera 'a': expected a mapping with 'input:', got nothing \(null\)"),
    ("cameras: {a: {input: 0, templat: howto}}\n",
     r"cameras.yaml: camera 'a': unknown key 'templat'; expected one of \['input', 'outputs', 'template'"),
    ("cameras: {a: {input: yes}}\n", r"camera 'a': key 'input': expected a path, URI or camera index >= 0, got a boolean"),
    ("cameras: {a: {input: -1}}\n", r"camera 'a': key 'input': expected a path, URI or camera index >= 0, got -1"),
    ("cameras: {a: {input: 0, outputs: a.jsonl}}\n", r"camera 'a': key 'outputs': expected a list of output targets"),
    ("cameras: {a: {input: 0, outputs: [1]}}\n", r"camera 'a': key 'outputs': expected output targets as strings"),
    ("cameras: {a: {input: 0, template: nothing to fill}}\n",
     r"camera 'a': key 'template': template 'nothing to fill' has no slot"),
    ("cameras: {a: {input: 0, template: 3}}\n", r"camera 'a': key 'template': expected a template name"),
    ("cameras: {a: {input: 0, stable: 0}}\n", r"camera 'a': key 'stable': expected an integer >= 1, got 0 \(int\)"),
    ("cameras: {a: {input: 0, stable: 1.5}}\n", r"camera 'a': key 'stable': expected an integer >= 1, got 1.5"),
    ("cameras: {a: {input: 0, context: -1}}\n", r"camera 'a': key 'context': expected an integer >= 0"),
    ("cameras: {a: {input: 0, min-confidence: 2}}\n", r"camera 'a': key 'min-confidence': expected a number in \[0, 1\]"),
    ("cameras: {a: {input: 0, verbs: []}}\n", r"camera 'a': key 'verbs': expected a non-empty list of words"),
    ("cameras: {a: {input: 0, nouns: [onion, 3]}}\n", r"camera 'a': key 'nouns': expected a non-empty list of words"),
    ("cameras: {a: {input: 0, nouns: lists/nouns.txt}}\n",
     r"camera 'a': key 'nouns': the word-list file /cfg/lists/nouns.txt does not exist"),
    ("cameras: {a: {input: 0, input-loop: -2}}\n", r"camera 'a': key 'input-loop': expected an integer >= -1 \(-1: forever"),
    ("cameras: {a: {input: 0, input-rate: 0}}\n", r"camera 'a': key 'input-rate': expected a positive number"),
    ("cameras: {a: {input: 0, input-rtsp-latency: fast}}\n",
     r"camera 'a': key 'input-rtsp-latency': expected an integer >= 0 \(milliseconds\), got 'fast' \(str\)"),
    ("cameras: {a: {input: 0, live: 1}}\n", r"camera 'a': key 'live': expected true or false"),
    ("defaults: {input: 0}\ncameras: {a: {input: 0}}\n",
     r"cameras.yaml: defaults: unknown key 'input'; .*\('input' and 'outputs' belong to a camera\)"),
    ("defaults: {stable: x}\ncameras: {a: {input: 0}}\n", r"defaults: key 'stable': expected an integer >= 1"),
    ("defaults: [1]\ncameras: {a: {input: 0}}\n", r"key 'defaults': expected a mapping"),
    ("bundle: 3\ncameras: {a: {input: 0}}\n", r"key 'bundle': expected a folder path"),
    ("cameras: {'bad name': {input: 0}}\n", r"camera name 'bad name': expected letters, digits"),
    ("cameras:\n  a: {input: 0, outputs: [x.jsonl]}\n  b: {input: 1, outputs: [./x.jsonl]}\n",
     r"output '/cfg/x.jsonl' appears in the outputs of camera 'a' and camera 'b'"),
    ("cameras:\n  a: {input: 0, outputs: [x.srt, x.srt]}\n", r"output '/cfg/x.srt' appears twice in its outputs"),
    ("outputs: [all.jsonl]\ncameras:\n  a: {input: 0, outputs: [all.jsonl]}\n",
     r"output '/cfg/all.jsonl' appears in the outputs of outputs and camera 'a'.*already serves every camera"),
    ("outputs: [http://@:8080]\ncameras:\n  a: {input: 0, outputs: [http://@:8080]}\n",
     r"output 'http://@:8080' appears in the outputs of outputs and camera 'a'"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_files_name_the_file_camera_and_key(text, message):
    with pytest.raises(CameraConfigError, match=message):
        parse(text)


def test_missing_file_and_word_list(tmp_path):
    with pytest.raises(CameraConfigError, match=r"nope.yaml: camera configuration file not found"):
        load_camera_config(tmp_path / "nope.yaml")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(CameraConfigError, match=r"camera 'a': key 'verbs': the word list .*empty.txt has no words"):
        parse("cameras: {a: {input: 0, verbs: empty.txt}}\n", folder=tmp_path)


# -- through the command line ------------------------------------------------------------------


def vbedge(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vbedge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_errors_before_anything_loads(tmp_path):
    path = tmp_path / "cameras.yaml"
    path.write_text("cameras: {a: {input: 0, stable: 0}}\n")
    result = vbedge("caption", "--config", path, "--bundle", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"vbedge: error: {path}: camera 'a': key 'stable': expected an integer >= 1, got 0 (int)"
    result = vbedge("caption", "video.mp4", "--config", path, "--bundle", tmp_path)
    assert result.returncode == 2 and "INPUT/OUTPUT arguments and --config are mutually exclusive" in result.stderr
    assert "Traceback" not in result.stderr
    result = vbedge("caption", "--bundle", tmp_path)
    assert result.returncode == 2 and "give an INPUT (video file, camera, URL) or --config" in result.stderr
    path.write_text("cameras: {a: {input: 0}}\n")
    result = vbedge("caption", "--config", path)
    assert result.returncode == 2 and "no bundle: pass --bundle or add a bundle: key" in result.stderr


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    pytest.importorskip("cv2")
    from test_pipeline import write_video

    folder = tmp_path_factory.mktemp("camera_videos")
    return write_video(folder / "one.avi", 40, seed=3), write_video(folder / "two.avi", 32, seed=4)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_two_cameras_through_one_pipeline(small_bundle, two_videos, tmp_path):
    one, two = two_videos
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "one.avi").write_bytes(one.read_bytes())
    config = tmp_path / "cameras.yaml"
    config.write_text(textwrap.dedent(f"""\
        bundle: {small_bundle.root}
        defaults: {{stable: 1}}
        outputs: [all.jsonl]
        cameras:
          kitchen:
            input: videos/one.avi
            outputs: [kitchen.jsonl]
            template: caption
          hall:
            input: {two}
            outputs: [hall.jsonl]
            template: "the person will [VERB] it"
        """))
    result = vbedge("caption", "--config", config, "--backend", "onnxruntime", "--metrics", "127.0.0.1:0",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "vbedge: metrics at http://127.0.0.1:" in result.stderr  # --metrics serves --config runs too
    kitchen, hall, every = (read_jsonl(tmp_path / f"{n}.jsonl") for n in ("kitchen", "hall", "all"))
    assert {e["source"] for e in kitchen} == {"kitchen"} and [e["clip"] for e in kitchen] == [0, 1, 2]
    assert {e["source"] for e in hall} == {"hall"} and [e["clip"] for e in hall] == [0, 1]
    assert all(e["clip_caption"].startswith("now let's ") for e in kitchen)
    assert all(e["clip_caption"].startswith("the person will ") and e["clip_caption"].endswith(" it")
               for e in hall)
    assert all(e["caption"] == e["clip_caption"] for e in kitchen + hall)  # stable: 1 from defaults
    # the shared output got both cameras' events, the same ones
    assert sorted(map(json.dumps, every)) == sorted(map(json.dumps, kitchen + hall))
    printed = [line for line in result.stdout.splitlines() if line.startswith(("kitchen: [", "hall: ["))]
    assert len(printed) == 5
    # independent check: the hall video alone with that template gives the same captions
    alone = tmp_path / "alone.jsonl"
    result = vbedge("caption", two, alone, "--bundle", small_bundle.root, "--backend", "onnxruntime",
                    "--template", "the person will [VERB] it", "--stable", "1")
    assert result.returncode == 0, result.stderr
    assert [e["clip_caption"] for e in read_jsonl(alone)] == [e["clip_caption"] for e in hall]


def test_input_loop_on_a_file(small_bundle, two_videos, tmp_path):
    _, two = two_videos  # 32 frames at 20 fps: 2 clips of 16 frames per play
    events = tmp_path / "events.jsonl"
    result = vbedge("caption", two, events, "--bundle", small_bundle.root, "--backend", "onnxruntime",
                    "--input-loop", "3", "--forecast-step", "0")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(events)
    assert [e["clip"] for e in rows] == list(range(6))
    starts = [e["start"] for e in rows]
    assert starts == sorted(starts) and len(set(starts)) == 6
    # one long video: the 2nd and 3rd plays continue the first one's clock
    assert [t for e in rows for t in (e["start"], e["end"])] == \
        pytest.approx([t for i in range(6) for t in (i * 0.8, (i + 1) * 0.8)], abs=1e-6)
    assert [e["leaf"] for e in rows[2:4]] == [e["leaf"] for e in rows[:2]]  # the same frames again
