"""Training speed at the paper's shapes, per precision: the VAE phase, the Glow-layer phase and the
standalone multi-scale Glow (L=3, K=32, width 512), on synthetic uint8 data through the real loader
and training step (``vaeflow_cli.training.timing``), with each model's data-wait share and peak memory.
Prints one line per measurement on stderr and a JSON object as its last line on stdout.

    python benchmarks/gpu.py                           # CUDA: fp32, bf16, fp16; CIFAR-10 and CelebA-64
    python benchmarks/gpu.py --device cpu --steps 2    # the same on the CPU (fp32, batch 8)

Shapes and models come from configs/cifar10.toml and configs/celeba.toml (3x32x32, 50,000 images;
3x64x64, 162,770 images). Nothing is downloaded. On one H200 the default run takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.training.timing import run_timing

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"cifar10": ("configs/cifar10.toml", (3, 32, 32), 50_000), "celeba64": ("configs/celeba.toml", (3, 64, 64), 162_770)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precisions", default=None, help="comma-separated (default: fp32,bf16,fp16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--shapes", default="cifar10,celeba64")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's (64) on CUDA, 8 on the CPU")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the objective")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    precisions = (args.precisions or ("fp32,bf16,fp16" if cuda else "fp32")).split(",")
    batch = args.batch_size or (None if cuda else 8)
    t_start = time.perf_counter()
    results = []
    for shape_name in args.shapes.split(","):
        path, shape, n_train = SHAPES[shape_name]
        for precision in precisions:
            cfg = config_mod.resolve(
                ROOT / path,
                [f"train.precision='{precision}'", f"train.device='{args.device}'", f"train.compile={'true' if args.compile else 'false'}"],
            )
            r = run_timing(cfg, steps=args.steps, warmup=args.warmup, batch_size=batch, device=args.device, image_shape=shape, train_images=n_train)
            row = {
                "shape": shape_name,
                "precision": precision,
                "batch_size": r["batch_size"],
                "vae_s_per_epoch": r["vae_s_per_epoch"],
                "glow_layer_s_per_epoch": r["glow_layer_s_per_epoch"],
                "glow_baseline_s_per_epoch": r["glow_baseline_s_per_epoch"],
                "speedup_vs_glow": r["speedup"],
                "data_wait_share": r["data_wait_share"],
                "peak_memory_gib": {k: (None if v is None else round(v / 2**30, 3)) for k, v in r["peak_memory_bytes"].items()},
            }
            results.append(row)
            print(
                f"{shape_name:9s} {precision}: VAE {row['vae_s_per_epoch']:9.1f} s/epoch, Glow layer "
                f"{row['glow_layer_s_per_epoch']:9.1f}, standalone Glow {row['glow_baseline_s_per_epoch']:9.1f}, "
                f"speedup {row['speedup_vs_glow']:.2f}x, data wait {max(row['data_wait_share'].values()):.1%}",
                file=sys.stderr,
            )
            if cuda:
                torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        json.dumps(
            {
                "device": device_name,
                "steps": args.steps,
                "warmup": args.warmup,
                "torch": torch.__version__,
                "seconds": round(time.perf_counter() - t_start, 1),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
