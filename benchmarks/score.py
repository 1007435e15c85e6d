"""Scoring speed: images per second of ``vaeflow score`` on a trained run. Prints a JSON object as
its last line.

    python benchmarks/score.py --run RUN [--images 2000] [--format png|jpeg] [--iwae-k K]

Writes --images of the run's held-out images (cycled when the split is smaller) as image files
of the model's size into a temporary folder, then times (best of --repeats):

- ``cli``: the whole command, ``python -m vaeflow_cli -q score --run RUN FOLDER > /dev/null``,
  start-up, loading the run and decoding included (the number a shell user sees);
- ``in_process``: ``Run.score(FOLDER)`` on the loaded run: decoding (the Rust data path), the
  bound in its batches of 256 and PNG, without the start-up.

Threads follow the run's ``train.threads`` in both, as the command does. The target on the real
CIFAR-10 config is 150 images/s with the ELBO on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from best_time import best_time  # benchmarks/, the scripts' folder, is on sys.path
from PIL import Image


def write_images(images: np.ndarray, folder: Path, n: int, fmt: str) -> None:
    for i in range(n):
        x = images[i % len(images)]
        picture = Image.fromarray(x[0]) if x.shape[0] == 1 else Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)))
        if fmt == "jpeg":
            picture.save(folder / f"{i:06d}.jpg", quality=95)
        else:
            picture.save(folder / f"{i:06d}.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a trained run directory")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--format", choices=("png", "jpeg"), default="png", help="the files' format (CIFAR-10 as vaeflow reads it: jpeg)")
    parser.add_argument("--iwae-k", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    import vaeflow_cli as vf
    from vaeflow_cli.runtime.devices import set_threads

    run = vf.load_run(args.run, device=args.device)
    threads = set_threads(run.config["train"].get("threads", 0), log=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(run.images("test"), folder, args.images, args.format)
        k = [] if args.iwae_k is None else ["--iwae-k", str(args.iwae_k)]
        command = [sys.executable, "-m", "vaeflow_cli", "-q", "score", "--run", args.run, "--device", args.device, *k, str(folder)]
        with open(os.devnull, "wb") as null:
            cli = best_time(lambda: subprocess.run(command, stdout=null, check=True), args.repeats, warm_up=False)
        scores = run.score(str(folder), k=args.iwae_k)  # warm-up, and the count
        in_process = best_time(lambda: run.score(str(folder), k=args.iwae_k), args.repeats, warm_up=False)
    result = {
        "run": args.run,
        "images": len(scores),
        "format": args.format,
        "bound": scores.bound if scores.bound != "iwae" else f"iwae_{scores.k}",
        "image_shape": list(run.image_shape),
        "device": args.device,
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cli_seconds": cli,
        "cli_images_per_s": len(scores) / cli,
        "in_process_seconds": in_process,
        "in_process_images_per_s": len(scores) / in_process,
    }
    print(f"score: {result['cli_images_per_s']:.1f} images/s end to end, {result['in_process_images_per_s']:.1f} in process", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
