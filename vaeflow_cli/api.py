"""The Python entry point to a trained run: ``load_run(path) -> Run``.

A notebook session::

    import vaeflow_cli as vf
    run = vf.load_run("runs/default")            # the newest checkpoint, on the GPU if there is one
    x = run.sample(16, temperature=0.5, seed=0)  # float32 (16, C, H, W) in [0, 1]
    bpd = run.log_prob_bound(images, k=64)       # IWAE_64 bound, bits/dim per image

Images going in are uint8 (values 0..255), as numpy arrays or tensors, (N, C, H, W) or
(N, H, W, C) (a single image, or (N, H, W) for one channel, is accepted too); each is read as the
centre of its dequantization bin, (k + 0.5) / 256 (``docs/model.md``, "Data and dequantization").
Images coming out are float32 CPU tensors in [0, 1]; ``vaeflow_cli.data.images.to_uint8`` quantizes
them as the CLI does (floor(256 x), clipped), so the CLI's ``sample`` and ``Run.sample`` give the
same pixels for the same seed. Seeds are 0 .. 2**32 - 1 (``limits.SEED_MAX``), temperatures 0 .. 100
(``limits.TEMPERATURE_MAX``), IWAE sample counts 1 .. 100,000; a request whose images would not
fit in the available memory is refused before any work. Errors are ``VaeflowError`` with a
one-line message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeflow_cli.config.limits import (
    IWAE_K_MAX,
    SEED_MAX,
    check_bool,
    check_count,
    check_seed,
    check_temperature,
    require_image_memory,
    temperature_list,
)
from vaeflow_cli.console import shell_arg, warning
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model import sampling
from vaeflow_cli.runtime.phases import LOAD_ORDER, PHASES, latest, no_latent_space
from vaeflow_cli.training import lineage

__all__ = ["Run", "load_run", "as_uint8_images"]


@dataclass
class Run:
    """A trained run loaded for use: the model in eval mode on ``device`` and what it was made with.

    Attributes: ``path`` (the run directory), ``config`` (the resolved config dict), ``phase``
    (which checkpoint: "vae", "glow", "prior", "joint" or "baseline"; see ``vaeflow_cli.runtime.phases``),
    ``checkpoint`` (its file), ``model`` (``VAEFlow``, or ``FlowModel`` for a baseline run),
    ``device`` (``torch.device``), ``start`` (the phase the checkpoint's phase started from).
    Methods run without gradients and leave the model in eval mode.
    """

    path: Path
    config: dict
    phase: str
    checkpoint: Path
    model: torch.nn.Module
    device: torch.device
    start: str | None = None
    complete: bool = False
    """Whether the checkpoint's phase ran all its epochs (False for a checkpoint saved mid-phase)."""
    stale: str | None = None
    """Why this checkpoint no longer sits on the run's state of the phase it was trained on (phase 2
    after phase 1 trained further, say), with the ways out, or None (``training.lineage``); ``load_run``
    also warns with it."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the run's images."""
        return tuple(self.model.image_shape)

    @property
    def use_flow(self) -> bool:
        """Whether this checkpoint's model runs its Glow layer (False for a phase-1 checkpoint, whose
        layer is still the identity)."""
        return PHASES[self.phase].use_flow(self.start)

    @property
    def seed(self) -> int:
        """The run's ``train.seed``: the default seed of ``log_prob_bound``, as in ``vaeflow evaluate``."""
        return self.config.train.seed

    def images(self, split: str = "test") -> np.ndarray:
        """A split of the run's own dataset (``[data]`` of its config): uint8 (N, C, H, W).
        :raises VaeflowError: an unknown split, or missing or damaged dataset files."""
        from vaeflow_cli.data.splits import load_split

        return load_split(self.config, split)

    # -- generation ---------------------------------------------------------------------------

    def sample(self, n: int, *, temperature: float = 0.5, seed: int | None = None, vae_only: bool = False) -> torch.Tensor:
        """Draw ``n`` images: u ~ N(0, I), z = h^-1(u), xbar = g_mu(z) + T g_sigma(z) eps,
        x = f^-1(xbar) (paper, section 3.5; T = ``temperature``, the paper samples at 0.5).

        :param vae_only: the decoder means g_mu(z) without the Glow layer (paper, Figure 4 left).
        :param seed: the same seed gives the same images on every device; None draws fresh noise.
        :returns: float32 (n, C, H, W) in [0, 1], on the CPU.
        :raises VaeflowError: n < 1, a negative or non-finite temperature, ``vae_only`` on a
            standalone flow."""
        check_count(n, "n")
        check_temperature(temperature)
        check_bool(vae_only, "vae_only")
        if vae_only:
            self._need_vae("vae_only sampling")
        _require_images(n, self.image_shape, "sampling")
        return sampling.sample(self.model, n, temperature=temperature, seed=_seed(seed), vae_only=vae_only)

    def interpolate(self, a: Any, b: Any, steps: int = 8) -> torch.Tensor:
        """Decode the straight line between the encoder means of images ``a`` and ``b`` at
        temperature 0 (paper, Figure 5).

        :param a: one uint8 image, and ``b`` the other (see the module docstring for the accepted layouts).
        :param steps: images along the path, the endpoints (the two reconstructions) included.
        :returns: float32 (steps, C, H, W) in [0, 1], on the CPU."""
        self._need_vae("interpolation")
        check_count(steps, "steps", low=2)
        _require_images(steps, self.image_shape, "interpolation")
        ya, yb = (as_uint8_images(img, self.image_shape, name) for img, name in ((a, "a"), (b, "b")))
        if len(ya) != 1 or len(yb) != 1:
            raise VaeflowError(f"interpolate takes one image for a and one for b, got {len(ya)} and {len(yb)}")
        return sampling.interpolate_images(self.model, ya[0], yb[0], steps=steps)

    def interpolate_prior(self, pairs: int, steps: int = 8, *, seed: int | None = None, temperature: float = 0.0) -> torch.Tensor:
        """Spherical paths between ``pairs`` pairs of base points u ~ N(0, I), mapped through the prior and decoded at ``temperature``.
        :returns: float32 (pairs, steps, C, H, W) in [0, 1]."""
        self._need_vae("interpolation")
        check_count(pairs, "pairs")
        check_count(steps, "steps", low=2)
        check_temperature(temperature)
        _require_images(pairs * steps, self.image_shape, "interpolation")
        return sampling.interpolate_prior(self.model, pairs=pairs, steps=steps, seed=_seed(seed), temperature=temperature)

    def compare(self, rows: int, per_z: int = 5, *, temperature: float = 0.5, seed: int | None = None) -> torch.Tensor:
        """The paper's Figure 4: per latent z ~ p(z), the VAE mean g_mu(z), then ``per_z`` Glow-layer samples of the same z.
        :returns: float32 (rows, 1 + per_z, C, H, W) in [0, 1]."""
        self._need_vae("the Figure-4 comparison")
        check_count(rows, "rows")
        check_count(per_z, "per_z")
        check_temperature(temperature)
        _require_images(rows * (1 + per_z), self.image_shape, "the comparison figure")
        return sampling.compare_grid(self.model, rows=rows, per_z=per_z, temperature=temperature, seed=_seed(seed))

    def temperature_sweep(self, temperatures: Sequence[float], n: int, *, seed: int | None = None) -> torch.Tensor:
        """One row per temperature, the same ``n`` latents and noise in every row.
        :returns: float32 (len(temperatures), n, C, H, W) in [0, 1]."""
        self._need_vae("a temperature sweep")
        check_count(n, "n")
        temps = temperature_list(temperatures)
        _require_images(n * len(temps), self.image_shape, "the temperature sweep")
        return sampling.temperature_grid(self.model, temperatures=temps, n=n, seed=_seed(seed))

    # -- inference ----------------------------------------------------------------------------

    def encode(self, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The approximate posterior q(z|y) of each image.

        :returns: ``(mean, log_std)``, float32 (N, latent_dim) each, on the CPU; ``log_std`` is
            the natural log of the standard deviation."""
        self._need_vae("encode")
        x = as_uint8_images(images, self.image_shape)
        means, log_stds = [], []
        with torch.no_grad():
            for i in range(0, len(x), BATCH):  # the activations of one batch at a time
                mean, log_std = self.model.encode(sampling.bin_centres(x[i : i + BATCH], self.device))
                means.append(mean.cpu())
                log_stds.append(log_std.cpu())
        return torch.cat(means), torch.cat(log_stds)

    def reconstruct(self, images: Any) -> torch.Tensor:
        """f^-1(g_mu(m(y))): decode each image's posterior mean at temperature 0.
        :returns: float32 (N, C, H, W) in [0, 1], on the CPU."""
        self._need_vae("reconstruct")
        x = as_uint8_images(images, self.image_shape)
        _require_images(len(x), self.image_shape, "reconstruct")
        return torch.cat([sampling.reconstruct(self.model, x[i : i + BATCH]) for i in range(0, len(x), BATCH)])

    def log_prob_bound(self, images: Any, *, k: int = 1, seed: int | None = None) -> torch.Tensor:
        """A lower bound on log p(x) of each discrete image, in bits/dim (lower is better): the
        one-sample ELBO for ``k`` = 1, the IWAE_k bound (Burda et al.) otherwise; for a baseline
        run, the flow's exact value. The images are dequantized with uniform noise as ``vaeflow
        evaluate`` does (``docs/model.md``, "Evaluation"); with the default seed (the run's
        ``train.seed``) the numbers match ``vaeflow evaluate`` on the same images (its mean adds float32
        batch sums: equal to about 1e-7 relative).

        :returns: float64 (N,) bits/dim, on the CPU.
        :raises VaeflowError: k < 1, images of another shape or dtype."""
        from vaeflow_cli.evaluation.bounds import elbo_bpd, iwae_bpd_per_image

        check_count(k, "k", high=IWAE_K_MAX)
        y = as_uint8_images(images, self.image_shape)
        s = self.seed if seed is None else _seed(seed)
        if k == 1 or PHASES[self.phase].standalone:
            b = elbo_bpd(self.model, y, seed=s, device=self.device)
        else:
            b = iwae_bpd_per_image(self.model, y, k=k, seed=s, device=self.device)
        return torch.from_numpy(b.per_image)

    def score(self, images: Any, *, k: int | None = None, seed: int | None = None, crop_resize: bool = False):
        """Per-image scores for finding the odd ones out (``vaeflow score``; docs/scoring.md): the
        bound in bits/dim (the one-sample ELBO, or the IWAE_k bound for ``k``; a standalone flow's
        exact value), its latent term KL(q(z|y) || p(z)) and pixel term -log p(y|z) (Havtorn et
        al., 2021, separate the two), the bits of a PNG file of the image, and the
        complexity-corrected score bpd - PNG (Serra et al., 2020). The same numbers as ``vaeflow
        score``, and on the same images in the same order with the same seed as ``vaeflow
        evaluate``'s per-image bounds (image i of the set gets the dequantization noise of index i).
        Scored a batch at a time (``bounds.EVAL_BATCH`` images), files read as many at a time.

        :param images: uint8 images (see the module docstring), or image files: a path (a PNG or
            JPEG file, or a folder: its .png/.jpg/.jpeg files, recursively, sorted by path) or a
            list of paths, decoded as the run decodes image files (the Rust data path).
        :param k: None for the ELBO, an int in [1, 100000] for the IWAE_k bound (tighter).
        :param seed: the dequantization and latent noise (None: the run's ``train.seed``, as evaluate).
        :param crop_resize: files of any size go through the run's own crop and resize (an
            imagefolder or celeba run's); without it each file must have the model's size.
        :returns: ``vaeflow_cli.evaluation.scoring.Scores``: float64 (N,) arrays ``bpd``,
            ``latent_bpd``, ``pixel_bpd``, ``elbo_bpd`` (``latent_bpd + pixel_bpd``; ``bpd`` unless
            ``k``), ``png_bpd`` and ``complexity``, bits/dim; ``labels`` (the paths, or the
            indices); ``failed``: (path, why) of each file that could not be scored.
        :raises VaeflowError: bad arguments, images of another shape or dtype, paths of which
            none could be scored (the first file's reason), ``crop_resize`` for a run whose dataset
            has no crop or resize (mnist, cifar10), images too large to score a batch of in the
            available memory."""
        from vaeflow_cli.evaluation.scoring import as_paths, score_images, score_paths

        k = None if k is None else check_count(k, "k", high=IWAE_K_MAX)
        s = self.seed if seed is None else check_seed(seed)
        paths = as_paths(images)
        if paths is not None:
            return score_paths(self, paths, k=k, seed=s, crop_resize=check_bool(crop_resize, "crop_resize"))
        if check_bool(crop_resize, "crop_resize"):
            raise VaeflowError("crop_resize applies to image files; images given as an array must have the run's size already")
        return score_images(self, as_uint8_images(images, self.image_shape), k=k, seed=s)

    def _need_vae(self, what: str) -> None:
        if PHASES[self.phase].standalone:
            raise VaeflowError(no_latent_space(self.path, what))


BATCH = 500
"""Images per forward pass of ``encode`` and ``reconstruct`` (as ``log_prob_bound`` batches)."""


def load_run(path: str | Path, *, device: str | torch.device = "auto", checkpoint: str | Path | None = None) -> Run:
    """Load a trained run directory for sampling, inference and scoring.

    :param path: a run directory (``--run``): its ``config.toml`` and ``checkpoints/``.
    :param device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    :param checkpoint: None for the checkpoint of the phase trained last among the VAE phases, by
        the phase table (``phases.latest``: joint after phase 2 after phase 1, train-prior after what
        it started from; never by file times), the baseline when only it exists; a phase name ("vae", "glow", "prior",
        "joint", "baseline"), or the path of a checkpoint file (a step-tagged one, say). A checkpoint
        trained on a state of its start phase that the run no longer holds (phase 2 after phase 1
        trained further) is stale: loaded when asked for by name or file, with a warning line and
        ``Run.stale``; passed over by default for the phase trained after it, with a warning line.
    :raises VaeflowError: a folder that is not a run, a missing, damaged or mismatched checkpoint,
        an unknown device (one line each)."""
    from vaeflow_cli.runtime.devices import resolve_device
    from vaeflow_cli.runtime.runs import RunDir, load_checkpoint, not_a_run
    from vaeflow_cli.training.runconfig import check_signature, model_from_state, resolved_config

    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise VaeflowError(f"load_run takes the path of a run directory (a str or Path), not {path!r}")
    if checkpoint is not None and (not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint)):
        raise VaeflowError(f"checkpoint must be None, a phase name ({', '.join(PHASES)}) or a checkpoint file, not {checkpoint!r}")
    rd = RunDir(path)
    if not rd.config_path.is_file():
        raise VaeflowError(not_a_run(rd.path))
    dev = resolve_device(str(device), "device")
    cfg = resolved_config(rd)
    head_of = lineage.heads(rd.path)
    passed_over = None
    if checkpoint is None:
        found = [p for p in LOAD_ORDER if rd.checkpoint_path(p).exists()]
        if found:
            stale = {p: lineage.stale_link(p, head_of) for p in found} if len(found) > 1 else {}
            checkpoint = latest(found, start_of=lambda p: head_of(p)["start"], stale=lambda p: stale.get(p) is not None)
            passed_over = next((stale[p] for p in LOAD_ORDER if stale.get(p) is not None and p != checkpoint), None)
        elif rd.checkpoint_path("baseline").exists():
            checkpoint = "baseline"
        else:
            raise VaeflowError(f"{rd.path} has no checkpoint yet; train it first (vaeflow train-vae --run {shell_arg(rd.path)})")
    if isinstance(checkpoint, str) and checkpoint in PHASES:
        file = rd.checkpoint_path(checkpoint)
        if not file.exists():
            have = [p for p in PHASES if rd.checkpoint_path(p).exists()]
            raise VaeflowError(f"{rd.path} has no checkpoint for {PHASES[checkpoint].title} ({file}); it has: {', '.join(have) or 'none'}")
    else:
        file = _checkpoint_file(rd, Path(checkpoint))
    state = load_checkpoint(file)
    stored = state.get("phase")
    if stored not in PHASES or (isinstance(checkpoint, str) and checkpoint in PHASES and stored != checkpoint):
        wanted = f"the {checkpoint} checkpoint" if isinstance(checkpoint, str) and checkpoint in PHASES else "a checkpoint"
        raise VaeflowError(
            f"checkpoint {file} holds phase {stored!r}, but it is {wanted} of {rd.path}; the file was copied or renamed "
            f"by hand: restore the right file, or load it by its own phase (checkpoint={stored!r})"
            if stored in PHASES
            else f"checkpoint {file} names no known phase ({stored!r}; phases: {', '.join(PHASES)}); the file is damaged: restore it or retrain"
        )
    check_signature(state, cfg, file)
    model = model_from_state(cfg, state, device=str(dev), path=file)
    model.use_flow = PHASES[state["phase"]].use_flow(state.get("start"))  # the checkpoint's phase decides
    stale = _staleness(rd, file, state, head_of)
    if stale is not None:
        warning(f"{stale.message(rd.path)}; loaded it as it is")
    elif passed_over is not None:
        warning(f"{passed_over.message(rd.path)}; loaded {PHASES[state['phase']].title} ({file}), trained after it")
    return Run(
        path=rd.path,
        config=cfg,
        phase=state["phase"],
        checkpoint=file,
        model=model,
        device=dev,
        start=state.get("start"),
        complete=bool(state.get("complete", False)),
        stale=stale.message(rd.path) if stale is not None else None,
    )


def _staleness(rd, file: Path, state: dict, head_of):
    """``lineage.stale_link`` for the checkpoint loaded from ``file`` (the run's own, or a
    step-tagged one: its chain is checked from its own recorded start)."""
    phase = state["phase"]
    if phase in PHASES and file.resolve() == rd.checkpoint_path(phase).resolve():
        return lineage.stale_link(phase, head_of)
    own = {k: state.get(k) for k in lineage.HEAD_KEYS}  # a step-tagged file: its own head, the run's for the rest
    return lineage.stale_link(phase, lambda p: own if p == phase else head_of(p))


def _checkpoint_file(rd, given: Path) -> Path:
    """A checkpoint named by its path, or by its file name in ``RUN/checkpoints/`` (``glow-step000000100.pt``)."""
    if given.is_file():
        return given
    inside = rd.path / "checkpoints" / given
    if not given.is_absolute() and inside.is_file():
        return inside
    have = sorted(p.name for p in (rd.path / "checkpoints").glob("*.pt"))
    raise VaeflowError(
        f"checkpoint {str(given)!r} is neither a phase ({', '.join(PHASES)}) nor a checkpoint file, here or in "
        f"{rd.path / 'checkpoints'} (which has: {', '.join(have) or 'nothing'})"
    )


def as_uint8_images(images: Any, image_shape: Sequence[int], name: str = "images") -> np.ndarray:
    """``images`` as a uint8 numpy array (N, C, H, W) of ``image_shape`` (C, H, W).

    Accepts numpy arrays and tensors of dtype uint8 in the layouts (N, C, H, W), (N, H, W, C),
    a single (C, H, W) or (H, W, C) image, and for one channel (N, H, W) or (H, W).
    :raises VaeflowError: another dtype, shape or an empty batch (one line naming ``name``)."""
    if isinstance(images, torch.Tensor):
        try:
            images = images.detach().to("cpu").to_dense().numpy()
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            raise VaeflowError(f"{name}: this tensor cannot be read ({type(exc).__name__}); pass a dense CPU or CUDA tensor") from None
    if not isinstance(images, np.ndarray) or isinstance(images, np.ma.MaskedArray):
        raise VaeflowError(f"{name} must be a uint8 numpy array or tensor, not {type(images).__name__}")
    if isinstance(images, np.matrix):  # a subclass that stays 2-D whatever the reshape
        images = np.asarray(images)
    if images.dtype != np.uint8:
        raise VaeflowError(
            f"{name} must be uint8 (values 0..255), not {images.dtype}; images in [0, 1] from vaeflow "
            "(Run.sample, Run.reconstruct) become uint8 through vaeflow_cli.data.images.to_uint8"
        )
    c, h, w = (int(s) for s in image_shape)
    shape = tuple(images.shape)
    if shape[-3:] == (c, h, w):
        out = images.reshape(-1, c, h, w) if images.ndim in (3, 4) else None
    elif shape[-3:] == (h, w, c):
        out = images.reshape(-1, h, w, c).transpose(0, 3, 1, 2) if images.ndim in (3, 4) else None
    elif c == 1 and shape[-2:] == (h, w) and images.ndim in (2, 3):
        out = images.reshape(-1, 1, h, w)
    else:
        out = None
    if out is None:
        raise VaeflowError(f"{name} has shape {shape}; this run's images are (C, H, W) = {(c, h, w)}: give (N, C, H, W) or (N, H, W, C) uint8")
    if len(out) == 0:
        raise VaeflowError(f"{name} holds no images")
    return np.ascontiguousarray(out)


def _require_images(count: int, image_shape, what: str) -> None:
    require_image_memory(count, image_shape, what, "ask for fewer images at a time")


def _seed(seed: int | None) -> int:
    """A seed for a CPU ``torch.Generator``: ``seed`` itself, or a fresh one when None."""
    if seed is None:
        return int(torch.Generator().seed()) & SEED_MAX  # a fresh seed; the global RNG is not touched
    return check_seed(seed)
