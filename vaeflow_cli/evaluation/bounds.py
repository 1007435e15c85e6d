"""Held-out likelihood bounds in bits per dimension (model.md, "Evaluation"): the single-sample
ELBO bound that training reports each epoch, and the importance-weighted IWAE_K bound.

Both use fixed dequantization noise (the EVAL_EPOCH stream, keyed by each image's position in the
set) and a seeded latent-noise generator consumed batch by batch, so that the same model and the
same images in the same order always give the same numbers. ``BoundStream`` is the one loop:
images go in (all at once, or in pieces as they are read) and the per-image terms come out in
order, batch by batch; ``per_image_bounds`` runs it over an array. ``elbo_bpd`` and
``iwae_bpd_per_image`` (what ``vaeflow evaluate`` reports) and ``vaeflow score`` are that loop,
so their numbers are the same on the same images and seed; ``held_out_bpd`` and ``iwae_bpd`` are
the means.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vaeflow_cli.data.dequantization import EVAL_EPOCH, dequantize
from vaeflow_cli.model.distributions import bits_per_dim
from vaeflow_cli.runtime.threads import tick

EVAL_BATCH = 256  # images (ELBO) or image x sample pairs (IWAE) per forward pass; fixed, so the
# numbers do not depend on the training batch size


@dataclass
class PerImageBpd:
    """A bound over a set of images: ``mean`` (float, bits/dim) and ``per_image`` (float64 (N,),
    bits/dim, in the images' order). ``mean`` is the sum of the per-batch float32 sums divided by
    N, the number ``held_out_bpd``/``iwae_bpd`` return; it equals per_image.mean() up to rounding.

    For the ELBO also its two parts, float64 (N,) bits/dim each: ``latent`` = KL(q(z|y) ||
    p(z)) / (D log 2) (``Bound.latent_bpd``: what the code z costs; 0 for a flow alone) and
    ``pixel`` = per_image - latent (``Bound.pixel_bpd``: -log p(y|z) with the flow's log-det and the
    dequantization's D log 256, up to float32 rounding), so ``latent + pixel == per_image``. None
    for IWAE_K, which does not split so."""

    mean: float
    per_image: np.ndarray
    latent: np.ndarray | None = None
    pixel: np.ndarray | None = None


Advance = Callable[[int], object]  # progress(images done since the last call), e.g. vaeflow_cli.progress.Progress.advance


class _OwnGlobalRng:
    """A global torch RNG stream of its own, seeded with ``seed``: a component that draws its own
    noise (the two-stage prior's ELBO) gets the same numbers on every evaluation, whatever else
    runs between the batches (another ``BoundStream``, training); the caller's stream is restored
    after each batch."""

    def __init__(self, seed: int, device) -> None:
        device = torch.device(device)
        self.devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self):
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def active(self):
        with torch.random.fork_rng(devices=self.devices):
            cpu, cuda = self.state
            torch.set_rng_state(cpu)
            for d, s in zip(self.devices, cuda, strict=True):
                torch.cuda.set_rng_state(s, d)
            yield
            self.state = self._get()


class BoundStream:
    """The per-image bound of images fed in order (``push``, then ``finish``), computed in the
    fixed batches of ``evaluate``: EVAL_BATCH images a pass for the ELBO (``k`` = 1), max(1,
    EVAL_BATCH // k) for IWAE_k. Image i (its position in the stream) is dequantized with the
    EVAL_EPOCH noise of index i and ``seed``; the latent noise comes from one CPU generator seeded
    with ``seed``, consumed batch by batch; a component's own draws come from a global stream of
    its own (``_OwnGlobalRng``). So feeding an array in any pieces gives exactly the numbers of
    feeding it at once, and those of ``evaluate`` on the same images and seed.

    ``model``: a ``VAEFlow`` (``k`` None: the ELBO; an int: IWAE_k; ``use_flow`` None: the model's
    phase) or a ``FlowModel`` (exact either way). Use it as a context manager: the model is in
    eval mode inside, and back in its mode after. ``progress(n)`` after each batch of n images."""

    def __init__(self, model, *, seed: int, device, k: int | None = None, use_flow: bool | None = None, progress: Advance | None = None) -> None:
        self.model, self.seed, self.device, self.k, self.use_flow, self.progress = model, seed, torch.device(device), k, use_flow, progress
        self.batch = EVAL_BATCH if k is None else max(1, EVAL_BATCH // k)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = _OwnGlobalRng(seed, self.device)
        self.done = 0  # images scored so far: the index of the next batch's first image
        self.total = 0.0  # the sum of the per-batch float32 sums of the bound
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    def __enter__(self) -> BoundStream:
        self._was_training = self.model.training
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        self.model.train(self._was_training)

    def push(self, images: np.ndarray) -> list[PerImageBpd]:
        """Add uint8 images (N, C, H, W); returns the bounds of every batch completed by them (in
        order; ``mean`` of each is its own batch's), possibly none yet."""
        out = []
        while len(images):
            take = min(len(images), self.batch - self._pending_n)
            self._pending.append(images[:take])
            self._pending_n += take
            images = images[take:]
            if self._pending_n == self.batch:
                out.append(self._run())
        return out

    def finish(self) -> list[PerImageBpd]:
        """The bounds of the images left over (the last, partial batch), or []."""
        return [self._run()] if self._pending_n else []

    @torch.no_grad()
    def _run(self) -> PerImageBpd:
        tick()  # the thread count follows the machine's load (vaeflow_cli.runtime.threads)
        x = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        idx = np.arange(self.done, self.done + len(x))
        y = torch.from_numpy(dequantize(x, seed=self.seed, epoch=EVAL_EPOCH, indices=idx)).to(self.device)
        latent = None
        with self.rng.active():
            if self.k is None:
                bound = self.model.bound(y, use_flow=self.use_flow, generator=self.generator)
                bpd, latent = bound.bpd, bound.latent_bpd.detach().to("cpu", torch.float64).numpy()
            else:
                log_w = self.model.iwae_log_likelihood(y, k=self.k, use_flow=self.use_flow, generator=self.generator, chunk=min(self.k, EVAL_BATCH))
                bpd = bits_per_dim(log_w, self.model.dims)
        batch_sum = bpd.sum().item()
        self.total += batch_sum
        self.done += len(x)
        per_image = bpd.detach().to("cpu", torch.float64).numpy()
        if self.progress is not None:
            self.progress(len(x))
        return PerImageBpd(batch_sum / len(x), per_image, latent, None if latent is None else per_image - latent)


def joined(parts: list[PerImageBpd], total: float, n: int) -> PerImageBpd:
    """The batches' bounds as one PerImageBpd over their ``n`` images, ``mean`` = ``total`` / n
    (the float32 batch sums added as Python floats, as the means always were)."""

    def cat(name):
        arrays = [getattr(p, name) for p in parts]
        return None if not arrays or arrays[0] is None else np.concatenate(arrays)

    return PerImageBpd(total / n if n else float("nan"), cat("per_image") if parts else np.zeros(0), cat("latent"), cat("pixel"))


def per_image_bounds(
    model,
    images: np.ndarray,
    *,
    seed: int,
    device,
    k: int | None = None,
    use_flow: bool | None = None,
    limit: int = 0,
    progress: Advance | None = None,
) -> PerImageBpd:
    """The bound of each of the first ``limit`` (0: all) uint8 ``images`` (N, C, H, W), in
    bits/dim: the single-sample ELBO with its latent and pixel parts (``k`` None), the IWAE_k bound
    for an int ``k``, a ``FlowModel``'s exact value (its latent part 0). See ``BoundStream`` for the
    batches and the noise. Returns PerImageBpd (mean, float64 (n,) each)."""
    n = len(images) if limit <= 0 else min(limit, len(images))
    with BoundStream(model, seed=seed, device=device, k=k, use_flow=use_flow, progress=progress) as stream:
        parts = stream.push(images[:n]) + stream.finish()
    return joined(parts, stream.total, n)


def elbo_bpd(
    model, images: np.ndarray, *, seed: int, device: torch.device, use_flow: bool | None = None, limit: int = 0, progress: Advance | None = None
) -> PerImageBpd:
    """Single-sample ELBO bound (bits/dim) of each of the first ``limit`` (0: all) uint8 ``images``
    (N, C, H, W), dequantized with the EVAL_EPOCH noise, in batches of EVAL_BATCH, one latent
    sample per image from a generator seeded with ``seed``. ``progress(k)`` is called after each
    batch of k images. Returns PerImageBpd (mean, float64 (n,), its latent and pixel parts)."""
    return per_image_bounds(model, images, seed=seed, device=device, use_flow=use_flow, limit=limit, progress=progress)


def held_out_bpd(model, images: np.ndarray, *, seed: int, device: torch.device, use_flow: bool | None = None, limit: int = 0) -> float:
    """Mean single-sample ELBO bound (bits/dim) on uint8 ``images`` (the first ``limit``; 0: all)."""
    return elbo_bpd(model, images, seed=seed, use_flow=use_flow, device=device, limit=limit).mean


def iwae_bpd_per_image(
    model,
    images: np.ndarray,
    *,
    k: int,
    seed: int,
    device: torch.device,
    use_flow: bool | None = None,
    limit: int = 0,
    progress: Advance | None = None,
) -> PerImageBpd:
    """IWAE_K bound (bits/dim) of each image: -log (1/K) sum_k p(y|z_k) p(z_k) / q(z_k|y),
    z_k ~ q(z|y), converted by ``bits_per_dim``; max(1, EVAL_BATCH // K) images per forward pass.
    ``images``: uint8 (N, C, H, W); ``progress(n)`` is called after each batch of n images.
    Returns PerImageBpd (mean, float64 (n,))."""
    return per_image_bounds(model, images, k=k, seed=seed, device=device, use_flow=use_flow, limit=limit, progress=progress)


def iwae_bpd(model, images: np.ndarray, *, k: int, seed: int, device: torch.device, use_flow: bool | None = None, limit: int = 0) -> float:
    """Mean IWAE_K bound (bits/dim): -log (1/K) sum_k p(y|z_k) p(z_k) / q(z_k|y), z_k ~ q(z|y)."""
    return iwae_bpd_per_image(model, images, k=k, seed=seed, use_flow=use_flow, device=device, limit=limit).mean
