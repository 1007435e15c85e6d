"""The one loop of every sample score (FID, digit_fd, cifar_fd, simclr_fd: ``evaluate`` and
benchmarks/paper_claim.py): a model's samples drawn from one seeded stream at each temperature, and
the Frechet distance of their features to a reference; the reference statistics of the scored
images for FID, cached in RUN/eval/."""

from __future__ import annotations

import hashlib

import numpy as np

from vaeflow_cli.console import counted
from vaeflow_cli.progress import Progress

SAMPLE_BATCH = 500  # samples drawn per forward pass when generating images for FID


def generate(model, n: int, *, temperature: float, seed: int, batch: int = SAMPLE_BATCH, progress=None, diverged_counts=None) -> np.ndarray:
    """n samples as uint8 (n, C, H, W), drawn ``batch`` at a time from one seeded stream
    (``sampling.sample``, quantized as the CLI's ``sample`` does); ``progress(k)`` after each batch
    of k samples; how many diverged (non-finite pixels, drawn 0 or 255) is appended to the list
    ``diverged_counts`` when given."""
    from vaeflow_cli.data.images import to_uint8
    from vaeflow_cli.model.sampling import sample

    drawn = sample(
        model if progress is None else _Counted(model, progress), n, temperature=temperature, seed=seed, batch=batch, diverged_counts=diverged_counts
    )
    return to_uint8(drawn)


class _Counted:
    """``model`` whose ``sample(n, ...)`` also calls ``progress(n)``: ``sampling.sample`` draws batch
    by batch from one seeded stream through it, so the images are ``model``'s own, counted."""

    def __init__(self, model, progress) -> None:
        self._model, self._progress = model, progress

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def sample(self, n: int, **kwargs):
        x = self._model.sample(n, **kwargs)
        self._progress(n)
        return x


def split_statistics(rd, net, images: np.ndarray, split: str, weights_sha: str, bar: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Inception statistics of the held-out split, cached in RUN/eval/ (keyed by the images and
    the weights), written atomically (a cache that cannot be written is a warning)."""
    from vaeflow_cli.evaluation import fid

    data_sha = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    path = rd.path / "eval" / f"fid-stats-{split}-{data_sha}-{weights_sha[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["mu"], z["sigma"]
    bar.message(f"fid: Inception features of the {counted(len(images), split + ' image')} (cached in {path})")
    mu, sigma = fid.statistics(fid.features(net, images, progress=bar.start(f"fid: features of the {split} images", len(images))))
    fid.write_cache(path, lambda fh: np.savez(fh, mu=mu, sigma=sigma), f"the Inception statistics of the {split} images")
    return mu, sigma


def frechet_by_temperature(
    model, featurize, reference, temperatures, n: int, seed: int, what: str, bar: Progress, *, diverged: dict | None = None
) -> dict:
    """{T: Frechet distance between the features of n samples at T and the reference (mu, sigma)};
    ``featurize(images, progress)``. With ``diverged`` (a dict), {T: how many of the n samples
    diverged} goes into it: they are scored as drawn (non-finite pixels black or white). The one
    loop of every sample score (``evaluate`` and benchmarks/paper_claim.py)."""
    from vaeflow_cli.evaluation import fid

    scores = {}
    for t in temperatures:
        bar.message(f"{what}: {n} samples at T={t:g}")
        counts: list[int] = []
        images = generate(model, n, temperature=t, seed=seed, progress=bar.start(f"{what}: samples at T={t:g}", n), diverged_counts=counts)
        mu, sigma = fid.statistics(featurize(images, bar.start(f"{what}: features at T={t:g}", n)))
        scores[t] = fid.frechet_distance(mu, sigma, *reference)
        if diverged is not None:
            diverged[t] = counts[0]
    return scores


def per_temperature(scores: dict, temperatures) -> float | dict:
    """One number for one temperature, else {"T": number} (the JSON form)."""
    return scores[temperatures[0]] if len(temperatures) == 1 else {f"{t:g}": v for t, v in scores.items()}
