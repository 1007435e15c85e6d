"""The measurements behind configs/cifar10-cpu.toml: each model choice trained on the same 10,000
real CIFAR-10 images and scored on the same ~1,000 held-out ones (the per-epoch held-out ELBO
bound that training records), two variants at a time with one thread each.

    python benchmarks/colour_choices.py --data /tmp/data/train --out runs/colour-choices [--only V8,V9] [--jobs 2]

--data is the extracted CIFAR-10 JPEG folder (train/<class>/*.jpg, see ../shared/data/README.md);
the script links the first 1,000 images of each class into OUT/data (an imagefolder with a 10%
hash split, about 1,000 held-out images). Each variant runs `vaeflow train-vae` then `vaeflow
train-glow` with the base config below plus its --set overrides (a variant named "X<-Y" copies
Y's phase-1 checkpoint and trains only phase 2 with its own phase-2 settings). Prints one JSON
line per variant on stdout: the held-out bound after each epoch of each phase and the seconds per
epoch. Seconds are of one thread beside another job, comparable within one run of this script only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = """
[data]
name = "imagefolder"
root = "{root}"
size = 32
test_fraction = 0.1

[model]
latent_dim = 64
pixel_transform = "logit"
logit_alpha = 0.05

[model.encoder]
type = "resnet"
base_channels = 16
depth = 3
fc_width = 256

[model.decoder]
type = "resnet-diagonal"
base_channels = 16
depth = 3
fc_width = 256
min_std = 0.001
init_std = 0.3

[model.prior]
type = "realnvp"
layers = 8
hidden = 256

[model.flow]
type = "glow-layer"
depth = 8
hidden_channels = 32
lu = true

[train]
device = "cpu"
seed = 0
channels_last = true
threads = 1
eval_samples = 1000

[train.vae]
epochs = 2
batch_size = 32
lr = 1e-3
grad_clip = 100.0

[train.glow]
epochs = 2
batch_size = 32
lr = 2e-3
warmup_steps = 200
grad_clip = 100.0

[run]
sample_n = 16
"""

# name -> --set overrides; "X<-Y": phase 2 only, on a copy of Y's phase 1
VARIANTS: dict[str, list[str]] = {
    "A_literal": ["model.pixel_transform='none'", "model.decoder.init_std=0.1", "train.glow.epochs=1"],
    "B_channel": ["train.glow.epochs=1"],
    "B_checkerboard": ["model.flow.split='checkerboard'", "train.glow.epochs=3"],
    "V2_checkerboard_d16_w64": ["model.flow.split='checkerboard'", "model.flow.depth=16", "model.flow.hidden_channels=64", "train.glow.epochs=1"],
    "V3_alternate": ["model.flow.split='alternate'", "train.glow.epochs=3"],
    "V5_alternate_lr4e-3<-V3_alternate": ["train.glow.epochs=3", "train.glow.lr=4e-3"],
    "V6_alternate_w64": ["model.flow.split='alternate'", "model.flow.hidden_channels=64"],
    "V7_alternate_phase1_6": ["model.flow.split='alternate'", "train.vae.epochs=6"],
    "V8_alternate_affine": ["model.flow.split='alternate'", "model.flow.coupling='affine'"],
    "V9_alternate_no_logit": ["model.flow.split='alternate'", "model.pixel_transform='none'", "model.decoder.init_std=0.1"],
}


def subset(data: Path, out: Path, per_class: int) -> Path:
    """OUT/data/<class>/ links to the first ``per_class`` JPEGs of each class folder of ``data``."""
    root = out / "data"
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        target = root / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(folder.glob("*.jpg"))[:per_class]:
            link = target / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return root


def vaeflow(*args) -> None:
    subprocess.run([sys.executable, "-m", "vaeflow_cli", "-q", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def run_variant(name: str, config: Path, out: Path) -> dict:
    own, _, source = name.partition("<-")
    run = out / "runs" / own
    shutil.rmtree(run, ignore_errors=True)
    sets = [a for s in VARIANTS[name] for a in ("--set", s)]
    t0 = time.perf_counter()
    if source:  # phase 2 only, from the source's phase 1
        src = out / "runs" / source
        run.mkdir(parents=True)
        shutil.copy(src / "config.toml", run / "config.toml")
        shutil.copytree(src / "checkpoints", run / "checkpoints", ignore=shutil.ignore_patterns("glow*"))
        vaeflow("train-glow", "--run", run, *sets)
    else:
        vaeflow("train-vae", "--config", config, "--run", run, *sets)
        vaeflow("train-glow", "--config", config, "--run", run, *sets)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = {"variant": own, "from": source or None, "overrides": VARIANTS[name], "seconds": round(time.perf_counter() - t0, 1)}
    for phase in ("vae", "glow"):
        rows = [r for r in records if r["phase"] == phase and r.get("epoch", 0) > 0]
        result[f"{phase}_heldout_bpd"] = [round(r["test_bpd"], 4) for r in rows]
        result[f"{phase}_seconds_per_epoch"] = [r["seconds"] for r in rows]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the CIFAR-10 JPEG folder: DATA/<class>/*.jpg")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="variants trained at once, one thread each")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: {args.data} is not a folder of class folders; extract cifar10-train-jpeg75.tar.gz first")
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "base.toml"
    config.write_text(BASE.format(root=subset(args.data, args.out, args.per_class)))
    names = [n for n in VARIANTS if not args.only or n.partition("<-")[0] in args.only.split(",")]
    first = [n for n in names if "<-" not in n]
    later = [n for n in names if "<-" in n]  # after the variants they copy
    for batch in (first, later):
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for result in pool.map(lambda n: run_variant(n, config, args.out), batch):
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
