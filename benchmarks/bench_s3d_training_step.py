"""One S3D pretraining step on the CPU: default layout vs channels-last vs bf16, side by side.

The two steps of ``vbedge.synthetic.pretrain`` at the synthetic world's input (64 x 64):

- ``window``: every layer, forward and backward, on 8-frame windows (``window_epochs``);
- ``top``: the blocks from Mixed_4b on, on the cached stem output of 12-frame clips.

Contenders, interleaved round by round in this process on the same batch and weights, each with
its whole gradient's relative error against a float64 reference (the layouts agree with it to
float32 rounding; bf16 shows what it gives up):

- ``fp32``: the default (contiguous) memory format;
- ``fp32 channels-last``: weights and activations in ``torch.channels_last_3d``, which pretraining
  uses (oneDNN's conv3d kernels prefer it);
- ``bf16 channels-last``: the same under ``torch.autocast("cpu", torch.bfloat16)``, only where
  the CPU has bf16 instructions (AVX512-BF16 or AMX); for reference, pretraining does not use it.

    .venv/bin/python benchmarks/bench_s3d_training_step.py [--rounds 5] [--batch 16]
"""

import argparse
import statistics
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)

    import torch
    from torch import nn

    from vbedge.info import machine_summary
    from vbedge.models.s3d import build_s3d_feature_extractor
    from vbedge.synthetic.pretrain import DEFAULT_TRAINABLE_FROM, MIN_WINDOW_FRAMES

    bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    print(f"machine: {machine_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"bf16 instructions: {'yes' if bf16 else 'no'}")
    contenders = ["fp32", "fp32 channels-last"] + (["bf16 channels-last"] if bf16 else [])
    torch.manual_seed(0)
    extractor = build_s3d_feature_extractor(random_init=True, seed=0)
    head = nn.Linear(1024, 8)
    labels = torch.randint(0, 8, (args.batch,))
    phases = {}
    for phase, frames, first in (("window", MIN_WINDOW_FRAMES, 0), ("top", 12, DEFAULT_TRAINABLE_FROM)):
        x = torch.randn(args.batch, 3, frames, 64, 64)
        if first:
            with torch.no_grad():
                x = extractor.features[:first].eval()(x)
        phases[phase] = (extractor.features[first:], x)

    def step(network, x, contender, dtype=torch.float32):
        layout = torch.contiguous_format if contender == "fp32" else torch.channels_last_3d
        network.to(dtype).to(memory_format=layout)
        head.to(dtype)
        network.train()
        network.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=contender.startswith("bf16")):
            feature = network(x.to(dtype).contiguous(memory_format=layout)).mean(dim=(2, 3, 4))
            loss = nn.functional.cross_entropy(head(feature.to(dtype)), labels)
        loss.backward()
        grads = torch.cat([p.grad.detach().double().flatten() for p in network.parameters()])
        network.float()
        head.float()
        return grads

    for phase, (network, x) in phases.items():
        state = {k: v.clone() for k, v in network.state_dict().items()}
        # Every contender's whole gradient against a float64 reference on the same weights and batch
        # (relative L2 error): the layouts must agree with it, bf16 shows what it gives up.
        errors = {}
        reference = step(network, x, "fp32", torch.float64)
        for contender in contenders:
            network.load_state_dict(state)
            errors[contender] = float((step(network, x, contender) - reference).norm() / reference.norm())
        times = {c: [] for c in contenders}
        for _ in range(args.rounds):
            for contender in contenders:
                network.load_state_dict(state)
                step(network, x, contender)  # warm the layout's kernels
                started = time.perf_counter()
                step(network, x, contender)
                times[contender].append((time.perf_counter() - started) / args.batch * 1000)
        network.load_state_dict(state)
        base = statistics.median(times["fp32"])
        print(f"\n{phase} step (input {tuple(x.shape[1:])}, batch {args.batch})")
        for contender in contenders:
            median = statistics.median(times[contender])
            print(f"  {contender:20s} {median:7.1f} ms per clip (min {min(times[contender]):.1f})   "
                  f"{base / median:4.2f}x fp32   gradient vs float64: {errors[contender]:.1e} relative")


if __name__ == "__main__":
    main()
