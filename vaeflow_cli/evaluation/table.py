"""The results of ``evaluate`` as the text table that ``vaeflow evaluate`` prints and saves."""

from __future__ import annotations

from vaeflow_cli.console import counted
from vaeflow_cli.evaluation.results import PER_IMAGE_STATS


def format_table(r: dict) -> str:
    """A readable table; likelihood bounds are printed as upper bounds ("<="), followed by the
    per-pixel histogram baseline and the per-image distribution (mean / median / p90 / max) of
    every bpd number."""
    data = r.get("data") or {}
    where = "" if data.get("run_dataset", True) else f" of dataset {data['name']}" + (f" (root {data['root']})" if data["root"] else "")
    lines = [f"run {r['run']}, split {r['split']}{where} ({counted(r['images'], 'image')})"]
    names = {
        "vae": "VAE (phase 1)",
        "full": "VAE + flow decoder",
        "prior": "prior retrained",
        "joint": "jointly fine-tuned",
        "baseline": "standalone flow",
    }
    if r.get("prior_type") == "two-stage-vae":
        lines.append("  (two-stage-vae prior: once trained, log p(z) is itself bounded by the second stage's ELBO, so these are bounds of bounds)")
    if "bpd_baseline" in r:
        lines.append(f"  {names['baseline']:18s} bpd = {r['bpd_baseline']:.4f} (exact)")
    rows = [("standalone flow", r.get("bpd_baseline_per_image"))]
    for key, name in names.items():
        cells = []
        if f"bpd_elbo_{key}" in r:
            split = f" (latent {r[f'bpd_latent_{key}']:.4f} + pixel {r[f'bpd_pixel_{key}']:.4f})" if f"bpd_latent_{key}" in r else ""
            cells.append(f"ELBO bpd <= {r[f'bpd_elbo_{key}']:.4f}{split}")
            rows.append((f"{name} ELBO", r.get(f"bpd_elbo_{key}_per_image")))
        if f"bpd_iwae_{key}" in r:
            cells.append(f"IWAE_{r['iwae_k']} bpd <= {r[f'bpd_iwae_{key}']:.4f}")
            rows.append((f"{name} IWAE_{r['iwae_k']}", r.get(f"bpd_iwae_{key}_per_image")))
        if cells:
            lines.append(f"  {name:18s} " + "   ".join(cells))
    if "bpd_histogram" in r:
        lines.append(
            f"  per-pixel histogram baseline  bpd = {r['bpd_histogram']:.4f} (exact; fitted on the run's "
            f"training split, {counted(r['histogram_train_images'], 'image')}, add-{r['histogram_alpha']:g} smoothing)"
        )
        rows.append(("histogram baseline", r.get("bpd_histogram_per_image")))
    if "bpd_png" in r:
        lines.append(f"  PNG (lossless codec)          bpd = {r['bpd_png']:.4f} (file length of each image, Pillow optimize=True)")
        rows.append(("PNG files", r.get("bpd_png_per_image")))
    rows = [(name, stats) for name, stats in rows if stats]
    if rows:
        width = max(len(name) for name, _ in rows)
        lines.append(f"  {'per-image bpd':{width + 2}s} " + "".join(f"{s:>9s}" for s in PER_IMAGE_STATS))
        for name, stats in rows:
            lines.append(f"    {name:{width}s} " + "".join(f"{stats[s]:9.4f}" for s in PER_IMAGE_STATS))
    classifier_fds = {  # metric -> (what its features are, the line on its classifier)
        "digit_fd": ("digit-CNN features", lambda: f"digit classifier accuracy on the 500 held-out digits: {r['digit_fd_classifier_accuracy']:.3f}"),
        "cifar_fd": (
            "features of a classifier of the run's classes",
            lambda: f"classifier accuracy on the run's held-out images, {r['cifar_fd_classes']} classes: {r['cifar_fd_classifier_accuracy']:.3f}",
        ),
        "simclr_fd": (
            "features of a SimCLR network of the run's images",
            lambda: f"SimCLR pair accuracy on the run's held-out images (an image's other augmented view found): {r['simclr_fd_pair_accuracy']:.3f}",
        ),
    }
    for metric, (features, accuracy) in classifier_fds.items():
        for key, name in names.items():
            if f"{metric}_{key}" in r:
                v = r[f"{metric}_{key}"]
                per_t = v if isinstance(v, dict) else {f"{r['temperature']:g}": v}
                cells = ", ".join(f"T={t}: {x:.3f}" for t, x in per_t.items())
                lines.append(f"  {name:18s} {metric} ({r['n_samples']} samples; {features}, not Inception): {cells}")
        if f"{metric}_classifier_accuracy" in r or f"{metric}_pair_accuracy" in r:
            lines.append(f"  ({accuracy()})")
        if f"{metric}_plot" in r:
            lines.append(f"  plot: {r[f'{metric}_plot']}")
    if "fid" in r:
        fids = r["fid"] if isinstance(r["fid"], dict) else {f"{r['temperature']:g}": r["fid"]}
        for t, v in fids.items():
            lines.append(f"  FID ({r['fid_model']} model, T={t}, {r['n_samples']} samples): {v:.2f}")
        if "fid_plot" in r:
            lines.append(f"  plot: {r['fid_plot']}")
    return "\n".join(lines)
