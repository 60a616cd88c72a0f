"""``vbedge synth``: render a synthetic kitchen world (videos + narration.jsonl)."""


def register(subparsers):
    """Register ``vbedge synth``."""
    p = subparsers.add_parser("synth", help="render a synthetic kitchen world: recipe videos with their narration "
                                            "(verb and noun per step) in the corpus format")
    p.add_argument("-o", "--output", required=True, help="folder for the videos, narration.jsonl and world.json")
    p.add_argument("--videos", type=int, default=48, help="number of videos (default 48)")
    p.add_argument("--seed", type=int, default=0, help="world seed; two seeds give disjoint videos (default 0)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="train leaves out the held-out verb-noun pairs; test may show them (default train)")
    p.add_argument("--steps", type=int, default=4, help="steps per recipe (default 4)")
    p.add_argument("--step-seconds", type=float, default=3.0, help="seconds per step (default 3.0)")
    p.add_argument("--fps", type=float, default=20.0, help="frame rate (default 20)")
    p.add_argument("--size", type=int, default=96, help="frame width and height in pixels (default 96)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes rendering side by side (default: one per CPU core; the videos are the same "
                        "for any number)")
    p.set_defaults(func=run_synth)


def run_synth(args):
    """Handler of ``vbedge synth``."""
    from ..synthetic.world import render_world

    made = render_world(args.output, args.videos, args.seed, split=args.split, steps=args.steps,
                        step_seconds=args.step_seconds, fps=args.fps, size=args.size,
                        workers=args.workers)
    steps = sum(len(v.steps) for v in made)
    print(f"wrote {len(made)} SYNTHETIC videos ({steps} narrated steps, split {args.split}, seed {args.seed}) "
          f"and narration.jsonl, world.json to {args.output}")
    return 0
