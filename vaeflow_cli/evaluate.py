"""``vaeflow evaluate``: held-out likelihood bounds and FID for a trained run.

- bpd: the single-sample ELBO bound for the phase-1 model ("vae", Glow layer = identity) and, when
  phase 2 has a checkpoint, the full model ("full"); a standalone baseline run gets its exact bpd.
- iwae: the IWAE_K bound for the same models (tighter than the ELBO; the paper reports only the
  ELBO bound).
- fid: FID between ``n_samples`` samples of the full model (the phase-1 model when there is no
  phase 2) at each temperature and the held-out split; the split's Inception statistics are
  cached in RUN/eval/.

Results go to stdout (by the CLI) and into RUN/eval/evaluate-SPLIT.json and .txt; a temperature
sweep also writes RUN/eval/fid-temperature-SPLIT.png.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np

from vaeflow_cli.console import log
from vaeflow_cli.errors import VaeflowError

METRICS = ("bpd", "iwae", "fid", "digit_fd")
SAMPLE_BATCH = 500  # samples drawn per forward pass when generating images for FID


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise VaeflowError(f"--metrics {text!r}: choose from {', '.join(METRICS)} (comma-separated)")
    return names


def parse_temperatures(text: str, option: str = "--temperature") -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise VaeflowError(f"{option} {text!r} must be a number or a comma-separated list, e.g. 0,0.25,0.5") from None
    if not values or any(t < 0 for t in values):
        raise VaeflowError(f"{option} {text!r}: give one or more non-negative numbers")
    return values


def generate(model, n: int, *, temperature: float, seed: int, batch: int = SAMPLE_BATCH) -> np.ndarray:
    """n samples as uint8 (n, C, H, W), drawn ``batch`` at a time from one seeded stream."""
    import torch

    from vaeflow_cli.images import to_uint8

    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        model.eval()
        for start in range(0, n, batch):
            out.append(to_uint8(model.sample(min(batch, n - start), temperature=temperature, generator=g)))
    return np.concatenate(out)


def _split_statistics(rd, net, images: np.ndarray, split: str, weights_sha: str) -> tuple[np.ndarray, np.ndarray]:
    """Inception statistics of the held-out split, cached in RUN/eval/ (keyed by the images and
    the weights), written atomically."""
    from vaeflow_cli import fid
    from vaeflow_cli.runs import atomic_write

    data_sha = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    path = rd.path / "eval" / f"fid-stats-{split}-{data_sha}-{weights_sha[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["mu"], z["sigma"]
    log(f"fid: Inception features of the {len(images)} {split} images (cached in {path})")
    mu, sigma = fid.statistics(fid.features(net, images))
    atomic_write(path, lambda fh: np.savez(fh, mu=mu, sigma=sigma))
    return mu, sigma


def _frechet_by_temperature(model, featurize, reference, temperatures, n: int, seed: int, what: str) -> dict:
    """{T: Frechet distance between the features of n samples at T and the reference (mu, sigma)}."""
    from vaeflow_cli import fid

    scores = {}
    for t in temperatures:
        log(f"{what}: {n} samples at T={t:g}")
        mu, sigma = fid.statistics(featurize(generate(model, n, temperature=t, seed=seed)))
        scores[t] = fid.frechet_distance(mu, sigma, *reference)
    return scores


def _per_temperature(scores: dict, temperatures) -> float | dict:
    """One number for one temperature, else {"T": number} (the JSON form)."""
    return scores[temperatures[0]] if len(temperatures) == 1 else {f"{t:g}": v for t, v in scores.items()}


def evaluate_run(run: str | Path, *, split: str = "test", metrics=("bpd",), iwae_k: int = 64,
                 n_samples: int = 10_000, temperatures=(0.5,), fid_weights: str | Path | None = None,
                 device: str = "cpu", seed: int | None = None) -> dict:
    """Evaluate a run directory; returns the result dict (also written into RUN/eval/)."""
    from vaeflow_cli import fid as fid_mod
    from vaeflow_cli.data import load_split
    from vaeflow_cli.likelihood import held_out_bpd, iwae_bpd
    from vaeflow_cli.runs import RunDir, atomic_write_bytes, check_signature, model_from_state
    from vaeflow_cli.train import resolve_device, uses_flow

    metrics = list(metrics)
    if iwae_k < 1 or n_samples < 2:
        raise VaeflowError("--iwae-k must be at least 1 and --n-samples at least 2")
    rd = RunDir(run)
    cfg = rd.resolved_config()
    seed = cfg["train"]["seed"] if seed is None else seed
    dev = resolve_device(device)
    weights = fid_mod.weights_path(fid_weights) if "fid" in metrics else None  # fail before any work
    models = [p for p in ("vae", "glow", "prior", "joint", "baseline") if rd.checkpoint_path(p).exists()]
    if not models:
        raise VaeflowError(f"{rd.path} has no checkpoint; train it first (vaeflow train-vae --run {rd.path})")
    images = load_split(cfg, split)
    result: dict = {"run": str(rd.path), "split": split, "images": len(images), "seed": seed,
                    "prior_type": cfg["model"]["prior"]["type"]}
    label = {"vae": "vae", "glow": "full", "prior": "prior", "joint": "joint", "baseline": "baseline"}
    loaded = {}
    for phase in models:
        state = rd.load_checkpoint(phase)
        check_signature(state, cfg, rd.checkpoint_path(phase))
        model = loaded[phase] = model_from_state(cfg, state, device=str(dev))
        result[f"{label[phase]}_checkpoint_complete"] = bool(state.get("complete", False))
        use_flow = uses_flow(phase, state.get("start"))
        if phase == "baseline":  # a flow's likelihood is exact: no bound, no IWAE
            if "bpd" in metrics or "iwae" in metrics:
                result["bpd_baseline"] = held_out_bpd(model, images, seed=seed, use_flow=True, device=dev)
            continue
        if "bpd" in metrics:
            log(f"bpd: ELBO bound of the {label[phase]} model on {len(images)} {split} images")
            result[f"bpd_elbo_{label[phase]}"] = held_out_bpd(model, images, seed=seed, use_flow=use_flow, device=dev)
        if "iwae" in metrics:
            result["iwae_k"] = iwae_k
            log(f"iwae: IWAE_{iwae_k} bound of the {label[phase]} model on {len(images)} {split} images")
            result[f"bpd_iwae_{label[phase]}"] = iwae_bpd(model, images, k=iwae_k, seed=seed, use_flow=use_flow, device=dev)
    if "digit_fd" in metrics:
        from vaeflow_cli import digitfd

        net, accuracy = digitfd.load_or_train(rd.path / "eval" / "digit-cnn.pt")
        mu_r, sigma_r = fid_mod.statistics(digitfd.features(net, images))
        result.update(digit_fd_classifier_accuracy=accuracy, n_samples=n_samples)
        for phase in (p for p in models if p != "baseline"):
            scores = _frechet_by_temperature(loaded[phase], lambda x: digitfd.features(net, x), (mu_r, sigma_r),
                                             temperatures, n_samples, seed, f"digit_fd ({label[phase]} model)")
            result[f"digit_fd_{label[phase]}"] = _per_temperature(scores, temperatures)
    if "fid" in metrics:
        phase = "glow" if "glow" in loaded else models[0]  # the two-phase model (the paper's)
        model = loaded[phase]
        sha = fid_mod.file_sha256(weights)
        net = fid_mod.build_extractor(weights, dev)
        mu_r, sigma_r = _split_statistics(rd, net, images, split, sha)
        scores = _frechet_by_temperature(model, lambda x: fid_mod.features(net, x), (mu_r, sigma_r), temperatures,
                                         n_samples, seed, f"fid ({label[phase]} model)")
        result.update(
            fid=_per_temperature(scores, temperatures),
            fid_model=label[phase], n_samples=n_samples,
            fid_weights={"path": str(weights), "sha256": sha,
                         "standard": sha.startswith(fid_mod.WEIGHTS_SHA256_PREFIX)},
        )
        if not sha.startswith(fid_mod.WEIGHTS_SHA256_PREFIX):
            log(f"fid: {weights} is not the standard {fid_mod.WEIGHTS_FILE} (sha256 {sha[:12]}...): these FIDs are not comparable with published ones")
        if len(temperatures) > 1:
            from vaeflow_cli.plots import fid_sweep

            result["fid_plot"] = str(fid_sweep(rd.path / "eval" / f"fid-temperature-{split}.png", scores, label[phase], n_samples))
    result["temperature"] = temperatures[0] if len(temperatures) == 1 else list(temperatures)
    result["versions"] = {p: _version(p) for p in ("vaeflow", "torch", "torch-fidelity", "numpy")}
    out = rd.path / "eval"
    atomic_write_bytes(out / f"evaluate-{split}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(out / f"evaluate-{split}.txt", (format_table(result) + "\n").encode())
    return result


def format_table(r: dict) -> str:
    """A readable table; likelihood bounds are printed as upper bounds ("<=")."""
    lines = [f"run {r['run']}, split {r['split']} ({r['images']} images)"]
    names = {"vae": "VAE (phase 1)", "full": "VAE + Glow layer", "prior": "prior retrained", "joint": "jointly fine-tuned",
             "baseline": "standalone flow"}
    if r.get("prior_type") == "two-stage-vae":
        lines.append("  (two-stage-vae prior: once trained, log p(z) is itself bounded by the second stage's ELBO, so these are bounds of bounds)")
    if "bpd_baseline" in r:
        lines.append(f"  {names['baseline']:18s} bpd = {r['bpd_baseline']:.4f} (exact)")
    for key, name in names.items():
        cells = []
        if f"bpd_elbo_{key}" in r:
            cells.append(f"ELBO bpd <= {r[f'bpd_elbo_{key}']:.4f}")
        if f"bpd_iwae_{key}" in r:
            cells.append(f"IWAE_{r['iwae_k']} bpd <= {r[f'bpd_iwae_{key}']:.4f}")
        if cells:
            lines.append(f"  {name:18s} " + "   ".join(cells))
    for key, name in names.items():
        if f"digit_fd_{key}" in r:
            v = r[f"digit_fd_{key}"]
            per_t = v if isinstance(v, dict) else {f"{r['temperature']:g}": v}
            cells = ", ".join(f"T={t}: {x:.3f}" for t, x in per_t.items())
            lines.append(f"  {name:18s} digit_fd ({r['n_samples']} samples; digit-CNN features, not Inception): {cells}")
    if "digit_fd_classifier_accuracy" in r:
        lines.append(f"  (digit classifier accuracy on the 500 held-out digits: {r['digit_fd_classifier_accuracy']:.3f})")
    if "fid" in r:
        fids = r["fid"] if isinstance(r["fid"], dict) else {f"{r['temperature']:g}": r["fid"]}
        for t, v in fids.items():
            lines.append(f"  FID ({r['fid_model']} model, T={t}, {r['n_samples']} samples): {v:.2f}")
        if "fid_plot" in r:
            lines.append(f"  plot: {r['fid_plot']}")
    return "\n".join(lines)
