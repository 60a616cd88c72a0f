"""INT8 judged on a model that means something: the demo's trained bundle, FP32 vs INT8, on a SYNTHETIC world.

Needs a finished `vbedge demo --workdir W` (its trained S3D, codebook, VideoBERT and worlds). Then:

0. `W/world-judge`: a held-out world of ``--judge-videos`` videos (default 36) with the demo's
   held-out seed, whose first 12 videos are the demo's own held-out videos (``--judge-videos 12``
   judges on exactly those, 48 clips: one clip is then 2.1 points of token agreement);
1. `vbedge calibrate W/bundle --videos W/world-judge -o W/int8-report --holdout 0.5 --max-clips N
   --openvino`: the bundle's models calibrated on half of that world's clips and judged on
   the other half (clips never calibrated on): S3D visual-token agreement, VideoBERT text top-1
   agreement at the masked words (caption templates and held-out sentences), and the speed of each
   INT8 form beside FP32, timed interleaved in one process;
2. `W/bundle-int8`: the same trained models exported with fp32 and int8 graphs, calibrated on the
   *training* world's clips (`build_bundle(..., precisions=("fp32", "int8"))`);
3. the zero-shot table of that bundle on `W/world-judge` at fp32 and at int8, side by side
   (same backend, same videos), and the INT8 - FP32 differences.

Everything is measured on rendered videos (vbedge.synthetic), not real ones.

    python benchmarks/bench_demo_int8.py --workdir vbedge-demo [--judge-videos 36] [--backend onnxruntime]
        [--json out.json]
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def judge_world(work, videos):
    """Render ``W/world-judge`` (``videos`` held-out videos, the demo's held-out seed and steps)
    unless it is there already; return its folder and its number of clips."""
    from vbedge.demo import DEMO_SIZES, TEST_SEED
    from vbedge.synthetic.world import render_world

    demo = json.loads((work / "demo.json").read_text())
    judge = work / "world-judge"
    steps = demo.get("steps", DEMO_SIZES["default"]["steps"])
    made = json.loads((judge / "world.json").read_text()) if (judge / "world.json").is_file() else {}
    if (made.get("videos"), made.get("steps")) != (videos, steps):
        shutil.rmtree(judge, ignore_errors=True)  # calibrate takes every video in the folder
        render_world(judge, videos, TEST_SEED, split="test", steps=steps, progress=False, workers=None)
    print(f"judged on W/world-judge: {videos} held-out videos (seed {TEST_SEED}, the first "
          f"{min(videos, demo.get('test_videos', 12))} are the demo's own)")
    return judge, 2 * steps * videos  # every clip of the world (a 3 s step holds two 1.5 s clips)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="vbedge-demo", help="a finished `vbedge demo` work folder")
    p.add_argument("--backend", default="onnxruntime", help="zero-shot backend (onnxruntime or openvino)")
    p.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out of the calibrate report")
    p.add_argument("--judge-videos", type=int, default=36,
                   help="held-out videos to calibrate on (half) and judge on (the other half) and to run the "
                        "zero-shot table on (default 36: 288 clips, 144 steps)")
    p.add_argument("--repeats", type=int, default=15,
                   help="interleaved timed runs per variant (default 15: one S3D clip takes 20-60 ms, and a shared "
                        "VM's timings can be bimodal)")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    if args.judge_videos < 2:
        p.error("--judge-videos must be at least 2 (half are calibrated on, half judged)")

    from vbedge import HierarchicalCodebook
    from vbedge.cli import main as cli_main
    from vbedge.export.bundle import build_bundle
    from vbedge.info import machine_summary
    from vbedge.models.videobert import VideoBert
    from vbedge.synthetic.evaluate import zero_shot
    from vbedge.synthetic.pretrain import WORLD_SPEC

    work = Path(args.workdir)
    needed = [work / "bundle" / "manifest.json", work / "world-train" / "world.json", work / "world-test" / "world.json",
              work / "videobert" / "model", work / "codebook.npz", work / "s3d-pretrained.pth"]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        sys.exit(f"{work} is not a finished demo folder (missing {', '.join(missing)}): run `vbedge demo --workdir {work}`")
    print(f"machine: {machine_summary()}")
    print("SYNTHETIC world (vbedge synth): every figure below is about rendered videos, not real ones")
    started = time.perf_counter()

    judge, clips = judge_world(work, args.judge_videos)
    report_dir = work / "int8-report"
    command = ["calibrate", str(work / "bundle"), "--videos", str(judge), "-o", str(report_dir),
               "--holdout", "0.5", "--max-clips", str(clips), "--repeats", str(args.repeats), "-q"] + ([] if args.no_openvino else ["--openvino"])
    print("$ vbedge " + " ".join(command))
    rc = cli_main(command)
    if rc not in (0, None):
        sys.exit(f"vbedge calibrate failed ({rc})")
    calibrate_report = json.loads((report_dir / "int8_report.json").read_text())

    int8_dir = work / "bundle-int8"
    if not (int8_dir / "manifest.json").is_file():
        print("building W/bundle-int8 (fp32 + int8, calibrated on the training world's clips)")
        codebook = HierarchicalCodebook.load(work / "codebook.npz")
        videobert = VideoBert.load(work / "videobert" / "model", codebook=codebook)
        build_bundle(int8_dir, videobert=videobert, codebook=codebook, s3d_weights=work / "s3d-pretrained.pth",
                     precisions=("fp32", "int8"), spec=WORLD_SPEC, top_k=min(10, codebook.num_leaves),
                     calib_videos=[str(work / "world-train")], overwrite=True, progress=False)
    keys = ("verb_top1", "verb_top5", "noun_top1", "noun_top5", "prior_verb_top1", "prior_noun_top1")
    tables = {}
    for precision in ("fp32", "int8"):
        result, _ = zero_shot(int8_dir, judge, backend=args.backend, precision=precision,
                              train_world=work / "world-train", progress=False)
        tables[precision] = {k: result[k] for k in keys + ("steps",)}
    print(f"\nzero-shot on W/world-judge, held-out SYNTHETIC videos ({tables['fp32']['steps']} steps), "
          f"backend {args.backend}")
    print(f"{'':8s}" + "".join(f"{k:>16s}" for k in keys[:4]))
    for precision, row in tables.items():
        print(f"{precision:8s}" + "".join(f"{100 * row[k]:16.1f}" for k in keys[:4]))
    diff = {k: round(100 * (tables["int8"][k] - tables["fp32"][k]), 1) for k in keys[:4]}
    print(f"{'int8-fp32':8s}" + "".join(f"{diff[k]:+16.1f}" for k in keys[:4]) + "   (points)")
    within = all(abs(diff[k]) <= 2.0 for k in ("verb_top1", "noun_top1"))
    print(f"INT8 zero-shot verb/noun top-1 within 2 points of FP32: {'yes' if within else 'NO'}")
    print(f"calibrate goals met: {calibrate_report.get('goals_met')}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_summary(), "synthetic": True,
                                               "judge_videos": args.judge_videos,
                                               "calibrate": {"s3d": calibrate_report.get("s3d"),
                                                             "videobert": calibrate_report.get("videobert"),
                                                             "goals_met": calibrate_report.get("goals_met")},
                                               "zero_shot": tables, "int8_minus_fp32_points": diff,
                                               "zero_shot_within_2_points": within}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
