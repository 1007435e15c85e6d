"""Per-image scores of a trained run (``vaeflow score``, ``Run.score``, ``vaeflow ood``).

For each image, in bits per dimension (docs/scoring.md explains each score and its source):

- ``bpd``: the run's bound, the single-sample ELBO by default or IWAE_k (Burda et al., 2016), or a
  standalone flow's exact value. The same numbers as ``vaeflow evaluate`` on the same images,
  in the same order, with the same seed: both are ``bounds.BoundStream`` (image i of the set is
  dequantized with the EVAL_EPOCH noise of index i; the latent noise is one seeded stream,
  consumed in evaluate's fixed batches).
- ``latent_bpd`` and ``pixel_bpd``: the ELBO's two parts, KL(q(z|y) || p(z)) (the latent, global
  term) and -log p(y|z) with the Glow layer and the dequantization (the pixel, local term); they
  add up to ``elbo_bpd``, the ELBO (equal to ``bpd`` unless IWAE_k was asked for). A standalone
  flow has no latent: 0 and its whole bpd.
- ``png_bpd``: the image written as a PNG file by Pillow (optimize=True), 8 x its length in bytes
  / (C H W) (``yardsticks.png_bpd``), a lossless codec's bits (NaN for images of other than 1 or
  3 channels, which PNG does not store as such).
- ``complexity``: ``bpd - png_bpd``, the input-complexity correction of Serra et al. (2020): the
  model's bits minus a lossless compressor's, minus log2 of the likelihood ratio per dimension.

Images come as a uint8 array (``score_images``) or as files (``score_files``), decoded as the run
decodes images (``data.images.decode_as_run``: the Rust data path of training); files that cannot
be used are reported one by one (``on_failure``) and the others scored. Results come out in
order, a batch at a time, as ``Scores``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vaeflow_cli.errors import VaeflowError

CHUNK = 256
"""Files decoded at a time (``bounds.EVAL_BATCH``): the memory of a set of any size is a chunk's."""

COLUMNS = ("bpd", "latent_bpd", "pixel_bpd", "png_bpd", "complexity")
"""The per-image scores, in the order of the TSV's columns (after the path; ``elbo_bpd`` follows
``bpd`` when the bound is IWAE_k)."""


@dataclass
class Scores:
    """Per-image scores of a set of images, in bits/dim, each float64 (N,) in the images' order.

    ``bpd``: the bound (``bound`` says which: "elbo", "iwae" with ``k`` samples, or "exact" for a
    standalone flow), an upper bound on -log2 P(x) / D for the VAE. ``latent_bpd`` + ``pixel_bpd``
    = ``elbo_bpd`` (the ELBO's KL term and its pixel term; ``elbo_bpd`` is ``bpd`` unless ``bound``
    is "iwae"). ``png_bpd``: a PNG file's bits. ``complexity``: ``bpd - png_bpd`` (Serra et al.,
    2020). ``labels``: each image's name (its path, "NAME:SPLIT:INDEX" for a dataset's image, the
    index for an array). ``model``: the checkpoint's label ("vae" is phase 1, "full" phase 2, ...,
    "baseline" a standalone flow). ``failed``: (path, one line: why) of each file that could not
    be scored."""

    bpd: np.ndarray
    latent_bpd: np.ndarray
    pixel_bpd: np.ndarray
    elbo_bpd: np.ndarray
    png_bpd: np.ndarray
    labels: list[str]
    bound: str = "elbo"
    k: int | None = None
    model: str = "full"
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def complexity(self) -> np.ndarray:
        """Serra et al.'s input-complexity-corrected score, ``bpd - png_bpd``: float64 (N,)."""
        return self.bpd - self.png_bpd

    def __len__(self) -> int:
        return len(self.bpd)

    def columns(self) -> tuple[str, ...]:
        """The score names of a row, in order: ``COLUMNS``, with ``elbo_bpd`` after ``bpd`` for IWAE."""
        return ("bpd", "elbo_bpd", *COLUMNS[1:]) if self.bound == "iwae" else COLUMNS

    def column(self, name: str) -> np.ndarray:
        return getattr(self, name)

    @classmethod
    def join(cls, parts: list[Scores], failed=()) -> Scores:
        """The parts (of one set, in order) as one."""
        first = parts[0]
        arrays = {name: np.concatenate([p.column(name) for p in parts]) for name in ("bpd", "latent_bpd", "pixel_bpd", "elbo_bpd", "png_bpd")}
        return cls(**arrays, labels=[x for p in parts for x in p.labels], bound=first.bound, k=first.k, model=first.model, failed=list(failed))


def describe(run, k: int | None) -> tuple[str, int | None, str]:
    """(bound, k, a line on what is scored) for a loaded run (``vaeflow_cli.api.Run``) and
    ``--iwae-k``: a standalone flow's exact bits/dim (k dropped), else the ELBO or IWAE_k of the
    checkpoint's model, phase 1's said so."""
    from vaeflow_cli.runtime.phases import PHASES

    phase = PHASES[run.phase]
    if phase.standalone:
        extra = "; --iwae-k changes nothing for it" if k else ""
        return "exact", None, f"{run.path} is a standalone flow ({phase.command}): exact bits/dim, and no latent term (latent_bpd 0){extra}"
    bound = "the single-sample ELBO" if k is None else f"the IWAE_{k} bound"
    if not run.use_flow:
        return (
            ("elbo" if k is None else "iwae"),
            k,
            f"scoring {bound} of {run.path}'s phase-1 model, the VAE alone (no phase-2 checkpoint in use: the Glow layer is the identity)",
        )
    return ("elbo" if k is None else "iwae"), k, f"scoring {bound} of {run.path}, checkpoint {run.checkpoint.name} ({phase.title})"


class Scorer:
    """Scores of images fed in order (``push`` with their labels, then ``finish``), a batch at a
    time: the ELBO stream (with its terms), the IWAE_k stream when ``k`` is given, and PNG. Use as
    a context manager (the model is in eval mode inside)."""

    def __init__(self, model, *, seed: int, device, k: int | None = None, bound: str = "elbo", label: str = "full") -> None:
        from vaeflow_cli.evaluation.bounds import BoundStream

        self.bound, self.k, self.label = bound, k, label
        self.elbo = BoundStream(model, seed=seed, device=device)
        self.iwae = BoundStream(model, seed=seed, device=device, k=k) if bound == "iwae" else None
        self._labels: list[str] = []
        self._png: list[np.ndarray] = []
        self._elbo: list = []
        self._iwae: list = []

    def __enter__(self) -> Scorer:
        self.elbo.__enter__()
        if self.iwae is not None:
            self.iwae.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.iwae is not None:
            self.iwae.__exit__(*exc)
        self.elbo.__exit__(*exc)

    def push(self, labels: list[str], images: np.ndarray) -> Scores | None:
        """uint8 images (N, C, H, W) and their N labels; the scores now complete, or None."""
        from vaeflow_cli.evaluation.yardsticks import png_bpd

        if not len(images):
            return None
        self._labels += labels
        self._png.append(png_bpd(images) if images.shape[1] in (1, 3) else np.full(len(images), np.nan))  # PNG has modes for 1 and 3 channels
        self._elbo += self.elbo.push(images)
        if self.iwae is not None:
            self._iwae += self.iwae.push(images)
        return self._ready()

    def finish(self) -> Scores | None:
        """The scores of the images left over, or None."""
        self._elbo += self.elbo.finish()
        if self.iwae is not None:
            self._iwae += self.iwae.finish()
        return self._ready()

    def _ready(self) -> Scores | None:
        elbo = _cat(self._elbo, "per_image")
        n = len(elbo) if self.iwae is None else min(len(elbo), len(_cat(self._iwae, "per_image")))
        if n == 0:
            return None
        latent = _cat(self._elbo, "latent")
        if self.bound == "exact":  # a flow alone has no latent (its KL is -0.0, not a term)
            latent = np.zeros_like(latent)
        bpd = elbo if self.iwae is None else _cat(self._iwae, "per_image")
        png = np.concatenate(self._png)
        out = Scores(
            bpd=bpd[:n],
            latent_bpd=latent[:n],
            pixel_bpd=elbo[:n] - latent[:n],
            elbo_bpd=elbo[:n],
            png_bpd=png[:n],
            labels=self._labels[:n],
            bound=self.bound,
            k=self.k,
            model=self.label,
        )
        self._labels, self._png = self._labels[n:], [png[n:]]
        self._elbo = [_rest(elbo, latent, n)]
        if self.iwae is not None:
            self._iwae = [_rest(bpd, None, n)]
        return out


def _cat(parts, name: str) -> np.ndarray:
    return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0)


def _rest(per_image: np.ndarray, latent, n: int):
    from vaeflow_cli.evaluation.bounds import PerImageBpd

    return PerImageBpd(float("nan"), per_image[n:], None if latent is None else latent[n:])


def scorer_for(run, *, k: int | None, seed: int | None) -> Scorer:
    """The ``Scorer`` of a loaded run with ``--iwae-k`` and ``--seed`` (None: the run's train.seed)."""
    from vaeflow_cli.config.limits import require_image_memory
    from vaeflow_cli.evaluation.bounds import EVAL_BATCH
    from vaeflow_cli.runtime.phases import PHASES

    require_image_memory(EVAL_BATCH, run.image_shape, "scoring", "free memory, or score on a machine with more")  # one batch in flight
    bound, k, _ = describe(run, k)
    return Scorer(run.model, seed=run.seed if seed is None else seed, device=run.device, k=k, bound=bound, label=PHASES[run.phase].label)


def score_images(run, images: np.ndarray, *, k: int | None = None, seed: int | None = None, labels=None, progress=None) -> Scores:
    """Scores of uint8 images (N >= 1, C, H, W) of the run's shape; ``labels`` (N names) default
    to the indices. ``progress(n)`` after each chunk of n images."""
    return Scores.join(list(score_array(run, images, k=k, seed=seed, labels=labels, progress=progress)))


def score_array(run, images: np.ndarray, *, k: int | None = None, seed: int | None = None, labels=None, progress=None) -> Iterator[Scores]:
    """``score_images`` a batch at a time, as the scores come."""
    labels = [str(i) for i in range(len(images))] if labels is None else list(labels)
    with scorer_for(run, k=k, seed=seed) as scorer:
        for start in range(0, len(images), CHUNK):
            out = scorer.push(labels[start : start + CHUNK], np.asarray(images[start : start + CHUNK]))
            if progress is not None:
                progress(min(CHUNK, len(images) - start))
            if out is not None:
                yield out
        out = scorer.finish()
        if out is not None:
            yield out


def score_files(
    run,
    paths: Iterable[str],
    *,
    k: int | None = None,
    seed: int | None = None,
    crop_resize: bool = False,
    on_failure: Callable[[str, str], object] | None = None,
    progress=None,
    size_fix: str = "resize it first, or let the run's own crop and resize do it (crop_resize=True)",
) -> Iterator[Scores]:
    """Scores of image files, in order, a batch at a time (the files are read ``CHUNK`` at a
    time, so ``paths`` may be a stream). A file that cannot be used (not found, not a PNG or JPEG,
    damaged, over the pixel bound, of another size than the model's without ``crop_resize``) is
    ``on_failure(path, one line)`` and left out; the others are scored. ``progress(n)`` after each
    chunk of n files. Raises VaeflowError for ``crop_resize`` on a run whose dataset has no crop
    or resize for image files (mnist, cifar10: arrays)."""
    from vaeflow_cli.data.images import decode_as_run
    from vaeflow_cli.data.splits import build_dataset

    dataset = build_dataset(run.config)
    if crop_resize and not callable(getattr(dataset, "file_decoding", None)):
        name = run.config.data.name
        c, h, w = run.image_shape
        raise VaeflowError(f"the run's dataset, {name}, has no crop or resize for image files (its images are arrays): give images already {w}x{h}")
    with scorer_for(run, k=k, seed=seed) as scorer:
        for chunk in _chunks(paths, CHUNK):
            images, failures, _ = decode_as_run(chunk, run.config, run.image_shape, crop_resize=crop_resize, size_fix=size_fix, dataset=dataset)
            bad = {i for i, _ in failures}
            for i, line in failures:
                if on_failure is not None:
                    on_failure(chunk[i], line)
            keep = [i for i in range(len(chunk)) if i not in bad]
            out = scorer.push([chunk[i] for i in keep], images[keep])
            if progress is not None:
                progress(len(chunk))
            if out is not None:
                yield out
        out = scorer.finish()
        if out is not None:
            yield out


def score_paths(run, paths: list[str], *, k: int | None = None, seed: int | None = None, crop_resize: bool = False) -> Scores:
    """``Run.score`` of paths: each a file, or a folder of them (``expand``), scored in order; the
    ones that cannot be scored (and the folders inside a folder that cannot be listed) are
    ``Scores.failed``. Raises VaeflowError when none could be."""
    from vaeflow_cli.data.images import expand

    failed, files = [], []
    for p in paths:
        found, why = expand(p, unreadable=lambda where, line: failed.append((where, line)))
        files += found
        if why is not None:
            failed.append((p, why))
    parts = list(score_files(run, files, k=k, seed=seed, crop_resize=crop_resize, on_failure=lambda p, why: failed.append((p, why))))
    if not parts:
        raise VaeflowError(f"none of the {len(files) or len(paths)} files could be scored; the first: {failed[0][1]}")
    return Scores.join(parts, failed)


def as_paths(images) -> list[str] | None:
    """``Run.score``'s input as a list of paths (a str or PathLike, or a non-empty list or tuple of
    them), or None when it is not paths (an array). Raises VaeflowError for an empty list, a list
    that mixes paths with other things, or an empty path."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if not isinstance(images, (list, tuple)) or not images or not all(isinstance(p, (str, os.PathLike)) for p in images):
        if isinstance(images, (list, tuple)) and (not images or any(isinstance(p, (str, os.PathLike)) for p in images)):
            raise VaeflowError(
                f"give score a uint8 array of images, a path, or a non-empty list of paths, not {type(images).__name__} {images!r:.80}"
            )
        return None
    found = [os.fsdecode(p) for p in images]
    if any(not p for p in found):
        raise VaeflowError("an empty path ('') names no image file; give the path of a file or a folder")
    return found


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def crop_resize_note(run) -> str | None:
    """The line saying which crop and resize ``crop_resize`` applies for this run, or None."""
    from vaeflow_cli.data.crop import describe_crop
    from vaeflow_cli.data.splits import build_dataset

    decoding = getattr(build_dataset(run.config), "file_decoding", None)
    if not callable(decoding):
        return None
    spec = decoding()
    return f"applying the run's preprocessing ({run.config.data.name}): {describe_crop(spec['crop'])}, resized to {spec['size']}x{spec['size']}"


# ------------------------------------------------------------------------------ rows on stdout


def escaped(label: str) -> str:
    """A label for one TSV field: backslash, tab, newline and carriage return escaped as \\\\, \\t,
    \\n, \\r, and the bytes of a name that is not UTF-8 as \\xNN."""
    return shown_bytes(label.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r"))


def shown_bytes(label: str) -> str:
    """``label`` with each byte of a file name that is not UTF-8 (os.fsdecode's surrogates) as \\xNN."""
    return "".join(f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else ch for ch in label)


def header(scores_or_columns) -> str:
    columns = scores_or_columns.columns() if isinstance(scores_or_columns, Scores) else scores_or_columns
    return "\t".join(("path", *columns))


def tsv_lines(scores: Scores) -> list[str]:
    """One TSV line per image: its escaped label, then each score with 6 decimals."""
    columns = [scores.column(c) for c in scores.columns()]
    return ["\t".join([escaped(label), *(f"{col[i]:.6f}" for col in columns)]) for i, label in enumerate(scores.labels)]


def json_lines(scores: Scores) -> list[str]:
    """One JSON object per image: "path" (non-UTF-8 bytes as \\xNN), then each score (null when
    not finite)."""
    import json

    names = scores.columns()
    columns = [scores.column(c) for c in names]
    lines = []
    for i, label in enumerate(scores.labels):
        row = {"path": shown_bytes(label)}
        row.update({n: (float(col[i]) if np.isfinite(col[i]) else None) for n, col in zip(names, columns, strict=True)})
        lines.append(json.dumps(row, ensure_ascii=False))
    return lines
