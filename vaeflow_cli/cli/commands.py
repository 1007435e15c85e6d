"""The ``vaeflow`` command line. Thin: it parses options and calls library functions.

torch is imported inside the commands, never at module level, so ``vaeflow --help`` is fast.
Results (paths, image or array bytes, JSON, TOML) go to stdout; progress and logs to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from vaeflow_cli.cli.exits import cli_errors, exit_process, run, streamed_rows
from vaeflow_cli.cli.options import DEVICE_HELP, JSON_HELP, RUN_HELP, parse_metrics, parse_number, parse_temperatures
from vaeflow_cli.cli.output import _check_out, _out, _out_format, _run_or_default, _write_output
from vaeflow_cli.cli.scoring import ood as ood_command
from vaeflow_cli.cli.scoring import score as score_command
from vaeflow_cli.config.limits import IWAE_K_MAX, N_SAMPLES_MAX, SEED_MAX, TEMPERATURE_MAX, check_temperature
from vaeflow_cli.data.download import names_help as download_names_help  # stdlib only, its network modules imported lazily
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.evaluation.metrics import METRICS
from vaeflow_cli.runtime.phases import PHASES, Phase, no_latent_space
from vaeflow_cli.runtime.threads import keeps_callers_threads

app = typer.Typer(
    name="vaeflow",
    help="Train, sample and evaluate VAEs with normalizing-flow decoders (Morrow & Chiu).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
data_app = typer.Typer(help="Download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    """``vaeflow --version``: the installed version, then exit."""
    if value:
        from vaeflow_cli._version import __version__

        _out(f"vaeflow {__version__}")
        raise typer.Exit()


@app.callback()
def verbosity(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only: no progress lines or bars."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug lines too (which config, which overrides)."),
    version: bool = typer.Option(
        False, "--version", is_eager=True, expose_value=False, callback=_print_version, help="Print vaeflow's version and exit."
    ),
):
    """Set the verbosity of the log lines on stderr (vaeflow_cli.console); stdout is the same either way."""
    from vaeflow_cli import console

    if quiet and verbose:
        raise typer.BadParameter("give -q/--quiet or -v/--verbose, not both", param_hint="'-q' / '-v'")
    console.configure(-1 if quiet else 1 if verbose else 0)


def _require_image_memory(count: int, image_shape, what: str) -> None:
    """Refuse before sampling, naming the options, when ``count`` images would not fit in memory."""
    from vaeflow_cli.config.limits import require_image_memory

    require_image_memory(count, image_shape, what, "ask for fewer images, or write several smaller batches with different --seed")


def _temperature(text) -> float:
    """Option parser of --temperature: the sampling temperature rule (config.limits.check_temperature)
    as a usage error (exit 2) naming the option and echoing its text as given."""
    try:
        return check_temperature(parse_number(str(text), 0, TEMPERATURE_MAX))
    except VaeflowError as e:
        raise typer.BadParameter(str(e)) from None


MAX_SECONDS = (0.001, 1e9)  # the range of --max-seconds


def _max_seconds(text) -> float:
    """Option parser of --max-seconds: a finite number in MAX_SECONDS, echoed as given in the usage error."""
    try:
        return parse_number(str(text), *MAX_SECONDS)
    except VaeflowError as e:
        raise typer.BadParameter(str(e)) from None


SAMPLE_N = 64  # vaeflow sample: images in a sample grid
COMPARE_ROWS = 6  # vaeflow sample --compare/--temperatures: rows of the figure (the paper's Figure 4 has a handful)


DeviceOpt = typer.Option("auto", "--device", help=DEVICE_HELP)
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: the embedded MNIST config).")
SetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set train.vae.epochs=3 (repeatable).")
RunOpt = typer.Option(
    None,
    "--run",
    "--run-dir",
    help="Run directory (default: [run] dir of the config). Under torchrun write --run-dir: torchrun's own parser takes --run for its --run-path.",
)


def _train(
    phase: str,
    config: Path | None,
    run: Path | None,
    overrides: list[str],
    resume: bool,
    restart: bool = False,
    max_steps: int | None = None,
    max_seconds: float | None = None,
) -> None:
    from vaeflow_cli.training.loop import train_phase
    from vaeflow_cli.training.runconfig import phase_config

    cfg, run_dir = phase_config(phase, run, config=config, overrides=overrides or [])
    result = train_phase(
        cfg,
        run_dir,
        phase,
        resume=resume,
        restart=restart,
        max_steps=max_steps,
        max_seconds=max_seconds,
        smoke=max_steps is not None or max_seconds is not None,
        config_path=config,
    )
    _out(str(result.run_dir))


def _train_command(phase: Phase):
    """The ``vaeflow train-PHASE`` command of one row of the phase table. Its -c/--config help says
    which config ``_train`` uses without it, and its --set example is a key of this phase."""
    stored = "the config stored in the run directory, --run or runs/default," if phase.starts_from else "the config stored in --run's directory"
    config_opt = typer.Option(None, "--config", "-c", help=f"TOML config file (default: {stored} when there is one; else the embedded MNIST config).")
    set_opt = typer.Option(None, "--set", help=f"Override a config key, e.g. --set train.{phase.name}.epochs=3 (repeatable).")

    def command(
        config: Path | None = config_opt,
        run: Path | None = RunOpt,
        set: list[str] | None = set_opt,
        resume: bool = typer.Option(False, "--resume", help=f"Continue from the run's {phase.name} checkpoint ({phase.title})."),
        restart: bool = typer.Option(
            False,
            "--restart",
            help=f"Train {phase.title} again from its start, replacing its checkpoints (e.g. after the phase it starts from trained further).",
        ),
        max_steps: int | None = typer.Option(
            None,
            "--max-steps",
            min=1,
            max=10**9,
            help="Smoke test: stop after N optimizer steps, print the held-out bound there (on train.eval_samples images: add "
            "--set train.eval_samples=64 to keep it quick) and write a sample grid; exits 0. The checkpoint it saves is "
            "resumable: --resume continues exactly (the phase is not finished), and the next phase may start from it with "
            "--max-steps too.",
        ),
        max_seconds: float | None = typer.Option(
            None,
            "--max-seconds",
            parser=_max_seconds,
            help="A time budget: stop at the first step boundary after this many seconds of training in this call (one step at least), and end as --max-steps "
            "does (held-out bound, sample grid, a checkpoint that --resume continues exactly). With --max-steps, whichever comes first.",
        ),
    ):
        _train(phase.name, config, run, set, resume, restart, max_steps, max_seconds)

    command.__name__ = phase.command.replace("-", "_")
    command.__doc__ = phase.help
    return cli_errors(command)


for _phase in PHASES.values():
    app.command(_phase.command, short_help=_phase.summary)(_train_command(_phase))


def _refuse_unused(ctx: typer.Context, *, compare: bool, temperatures: str | None, vae_only: bool) -> None:
    """``vaeflow sample``: an option that the other options given leave without effect is refused
    (one line), never silently ignored."""

    def given(name: str) -> bool:  # by name: Typer may bring its own copy of click's ParameterSource
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    if given("per_z") and not compare:
        raise VaeflowError("--per-z sets the samples per z of --compare's figure; add --compare or leave --per-z out")
    if vae_only and (compare or temperatures is not None):
        raise VaeflowError("--vae-only draws decoder means, and --compare and --temperatures draw their own figures; give one")
    if temperatures is not None and given("temperature"):
        raise VaeflowError("--temperatures gives each row its temperature, so -t/--temperature has no effect; give one of them")
    if vae_only and given("temperature"):
        raise VaeflowError("--vae-only draws the decoder means g_mu(z), which have no temperature; leave out -t/--temperature")


@app.command(short_help="Draw samples of a trained run (PNG grid or NPY).")
@cli_errors
@keeps_callers_threads  # sets the run's thread policy; an in-process caller (cli.main) gets its own back
def sample(
    ctx: typer.Context,
    run: Path | None = typer.Option(None, "--run", help=RUN_HELP),
    n: int | None = typer.Option(
        None,
        "--n",
        min=1,
        max=10**9,
        show_default=False,
        help=f"Number of samples (default {SAMPLE_N}; with --compare or --temperatures, rows: default {COMPARE_ROWS}). Refused when they would not fit in memory.",
    ),
    temperature: float = typer.Option(0.5, "--temperature", "-t", parser=_temperature, help="Glow-layer temperature T in [0, 100] (paper: 0.5)."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Random seed; the same seed gives the same images."),
    vae_only: bool = typer.Option(False, "--vae-only", help="Decoder means g_mu(z) (paper, Figure 4 left)."),
    fmt: str | None = typer.Option(
        None, "--format", show_default=False, help="png or npy (uint8, shape (N, C, H, W)); default: what --out's extension names, else png."
    ),
    as_grid: bool = typer.Option(True, "--grid/--no-grid", help="One grid PNG, or one PNG per sample."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output path, or - for stdout."),
    device: str = DeviceOpt,
    compare: bool = typer.Option(False, "--compare", help="Figure 4: per row, one z: its VAE mean, then --per-z Glow-layer samples at -t."),
    per_z: int = typer.Option(5, "--per-z", min=1, max=4096, help="With --compare: Glow-layer samples per z."),
    temperatures: str | None = typer.Option(
        None, "--temperatures", help="Temperature figure: one row per T (e.g. 0,0.25,0.5,0.75,1), the same --n latents and noise in each row."
    ),
):
    """Draw samples: u ~ N(0,I), z = h^-1(u), xbar = g_mu + T g_sigma eps, x = f^-1(xbar).

    Prints the written paths, one per line (or writes the PNG / NPY bytes to stdout with --out -).
    --compare and --temperatures write one grid PNG (the paper's Figure 4; a temperature figure).
    """
    from vaeflow_cli.api import load_run
    from vaeflow_cli.console import log
    from vaeflow_cli.data.images import grid, npy_bytes, png_bytes, to_uint8
    from vaeflow_cli.files import atomic_write_bytes
    from vaeflow_cli.runtime.devices import resolve_device, set_threads
    from vaeflow_cli.runtime.runs import RunDir

    # --no-grid's --out is a folder of PNGs: its name chooses no format
    fmt = _out_format(out if as_grid else None, fmt, {"png": ".png", "npy": ".npy"}, default="png", given_by=f"--format {fmt}")
    if fmt == "png" and not as_grid and out == "-":
        raise VaeflowError("--no-grid writes one file per sample and cannot go to stdout; use --grid or --format npy")
    figure = compare or temperatures is not None
    _refuse_unused(ctx, compare=compare, temperatures=temperatures, vae_only=vae_only)
    if figure:
        if compare and temperatures is not None:
            raise VaeflowError("--compare and --temperatures make different figures; give one")
        if fmt != "png" or not as_grid:
            raise VaeflowError("--compare and --temperatures write one PNG figure; leave out --format npy and --no-grid, and name --out *.png")
        temps = parse_temperatures(temperatures, "--temperatures") if temperatures is not None else []
    _check_out(out, folder=fmt == "png" and not as_grid and not figure)
    run = _run_or_default(run)
    r = load_run(run, device=resolve_device(device, "--device"))
    set_threads(r.config.train.threads, log=False)  # the run's thread policy, as in training
    if PHASES[r.phase].standalone and (vae_only or figure):
        raise VaeflowError(no_latent_space(run, "--vae-only, --compare and --temperatures"))
    if not r.use_flow and not vae_only and not RunDir(run).checkpoint_path("glow").exists():  # one there is stale: load_run said so
        log(f"{run} has no phase-2 checkpoint: sampling the phase-1 model (Glow layer = identity)")
    samples_dir = RunDir(run).samples_dir
    if figure:
        rows_n = n if n is not None else COMPARE_ROWS
        name, picture = _sample_figure(r, rows_n, per_z if compare else None, temps, temperature=temperature, seed=seed)
        _write_output(png_bytes(picture), out or str(samples_dir / name))
        return
    n = n if n is not None else SAMPLE_N
    _require_image_memory(n, r.image_shape, f"--n {n}")
    images = to_uint8(r.sample(n, temperature=temperature, seed=seed, vae_only=vae_only))  # (N, C, H, W)
    stem = f"sample-seed{seed}-" + ("vae" if vae_only else f"t{temperature:g}")
    if fmt == "npy":
        _write_output(npy_bytes(images), out or str(samples_dir / f"{stem}.npy"))
    elif as_grid:
        _write_output(png_bytes(grid(images)), out or str(samples_dir / f"{stem}.png"))
    else:
        folder = Path(out) if out else samples_dir / stem
        with streamed_rows():  # the paths are rows: a reader that leaves (| head) stops it quietly, as score
            for i, img in enumerate(images):
                path = folder / f"{i:05d}.png"
                atomic_write_bytes(path, png_bytes(img.transpose(1, 2, 0)))
                _out(str(path))


def _sample_figure(r, rows: int, per_z: int | None, temperatures: list[float], *, temperature: float, seed: int):
    """(file name, uint8 picture (H, W, C)): the paper's Figure 4 (``per_z`` Glow-layer samples of
    each of ``rows`` latents, after its VAE mean), or else a temperature sweep, one row per T."""
    from vaeflow_cli.data.images import grid, to_uint8

    count = rows * ((1 + per_z) if per_z else len(temperatures))
    what = f"--n {rows} x --per-z {per_z}" if per_z else f"--n {rows} x {len(temperatures)} temperatures"
    _require_image_memory(count, r.image_shape, what)
    if per_z:
        images, name = r.compare(rows, per_z, temperature=temperature, seed=seed), f"compare-seed{seed}-t{temperature:g}.png"
    else:
        images, name = r.temperature_sweep(temperatures, rows, seed=seed), f"temperatures-seed{seed}.png"
    return name, grid(to_uint8(images.reshape(-1, *images.shape[2:])), nrow=images.shape[1])


@app.command(short_help="Interpolate between prior points or two images.")
@cli_errors
@keeps_callers_threads  # sets the run's thread policy; an in-process caller (cli.main) gets its own back
def interpolate(
    run: Path | None = typer.Option(None, "--run", help=RUN_HELP),
    steps: int = typer.Option(8, "--steps", min=2, max=4096, help="Images per path, endpoints included."),
    pairs: int = typer.Option(4, "--pairs", min=1, max=10**9, help="Number of random pairs (rows)."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Random seed for the endpoints."),
    src: Path | None = typer.Option(
        None, "--from", help="Interpolate from this image (PNG/JPEG, any size: the run's own crop and resize are applied) ..."
    ),
    dst: Path | None = typer.Option(None, "--to", help="... to this one, through their encodings."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output PNG path, or - for stdout."),
    device: str = DeviceOpt,
):
    """Interpolate between random prior points (spherical, in u space) or between two images
    (linear, between their encoder means). Writes one grid PNG, a row per path; prints its path.
    --from and --to are decoded as the run's dataset decodes its images (its crop and resize, for
    imagefolder and celeba; a line on stderr says what was applied)."""
    from vaeflow_cli.api import load_run
    from vaeflow_cli.console import log
    from vaeflow_cli.data.images import grid, png_bytes, read_images_as_run, to_uint8
    from vaeflow_cli.runtime.devices import resolve_device, set_threads
    from vaeflow_cli.runtime.runs import RunDir

    if (src is None) != (dst is None):
        raise VaeflowError("--from and --to go together: give both images, or neither for random prior points")
    _out_format(out, None, {"png": ".png"}, default="png")
    _check_out(out, example="interpolate.png")
    run = _run_or_default(run)
    r = load_run(run, device=resolve_device(device, "--device"))
    set_threads(r.config.train.threads, log=False)  # the run's thread policy, as in training
    if PHASES[r.phase].standalone:
        raise VaeflowError(no_latent_space(run, "interpolation"))
    _require_image_memory(steps * (1 if src is not None else pairs), r.image_shape, f"--pairs {pairs} x --steps {steps}")
    if src is not None:
        (a, b), note = read_images_as_run([src, dst], r.config, r.image_shape)
        if note:
            log(f"interpolate: --from and --to: {note}")
        images = r.interpolate(a, b, steps)
        name = f"interpolate-{src.stem}-{dst.stem}.png"
    else:
        images = r.interpolate_prior(pairs, steps, seed=seed).reshape(-1, *r.image_shape)
        name = f"interpolate-seed{seed}.png"
    _write_output(png_bytes(grid(to_uint8(images), nrow=steps)), out or str(RunDir(run).samples_dir / name))


@app.command(short_help="Held-out bits/dim bounds (ELBO, IWAE), FID, digit_fd, cifar_fd, simclr_fd.")
@cli_errors
def evaluate(
    run: Path | None = typer.Option(None, "--run", help=RUN_HELP),
    split: str = typer.Option("test", "--split", help="Held-out split (test; val for CelebA)."),
    metrics: str = typer.Option("bpd", "--metrics", help=f"Comma-separated: {', '.join(METRICS)}."),
    iwae_k: int = typer.Option(64, "--iwae-k", min=1, max=IWAE_K_MAX, help="Importance samples K of the IWAE bound (the IWAE paper uses 5000)."),
    n_samples: int = typer.Option(
        10_000, "--n-samples", min=2, max=N_SAMPLES_MAX, help="Generated images for FID and *_fd (refused when they would not fit in memory)."
    ),
    temperature: str = typer.Option("0.5", "--temperature", "-t", help="Temperature for FID and *_fd, or a comma-separated sweep (writes a plot)."),
    fid_weights: Path | None = typer.Option(None, "--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (default: $VAEFLOW_FID_WEIGHTS)."),
    device: str = DeviceOpt,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    data: str | None = typer.Option(
        None, "--data", help="Score --split of this registered dataset (see vaeflow plugins) instead of the run's own; same image shape required."
    ),
    data_root: str | None = typer.Option(None, "--data-root", help="Root folder of --data (alone: the run's dataset read from this root)."),
    out: str | None = typer.Option(
        None, "--out", "-o", help="Save the results to this .json (JSON) or .txt (the table) file instead of RUN/eval/, sweep plots beside it."
    ),
):
    """Held-out bpd bounds (ELBO, IWAE) of the phase-1 and full models with their per-image
    distribution and the per-pixel histogram baseline, and FID of samples or, without Inception
    weights, a Frechet distance in a small CNN trained on the run's images (not FID): digit_fd
    (digits), cifar_fd (colour, class folders), simclr_fd (colour, no labels; SimCLR).

    The results are printed on stdout, and saved into RUN/eval/evaluate-SPLIT.json and .txt
    (evaluate-NAME-SPLIT.* with --data or --data-root), or with --out into that file; a run
    directory that cannot be written (read-only) is one warning line, the results still printed."""
    from vaeflow_cli.evaluation.arguments import OUT_FORMATS
    from vaeflow_cli.evaluation.evaluate import ResultsNotSaved, evaluate_run
    from vaeflow_cli.evaluation.table import format_table

    if out == "-":
        raise VaeflowError("--out -: the results are on stdout already; --out saves them to a .json or .txt file")
    if out is not None:
        _out_format(out, "json" if as_json else None, {fmt: ext for ext, fmt in OUT_FORMATS.items()}, default=None, given_by="--json")
        _check_out(out, example="results.json")
    try:
        result = evaluate_run(
            _run_or_default(run),
            split=split,
            metrics=parse_metrics(metrics),
            iwae_k=iwae_k,
            n_samples=n_samples,
            temperatures=parse_temperatures(temperature),
            fid_weights=fid_weights,
            device=device,
            data=data,
            data_root=data_root,
            out=out,
        )
    except ResultsNotSaved as exc:  # computed, but --out could not be written: print them, then the error line
        _out(json.dumps(exc.result) if as_json else format_table(exc.result))
        raise
    _out(json.dumps(result) if as_json else format_table(result))


app.command("score", short_help="Per-image bits/dim of images: the bound, its terms, PNG.")(score_command)
app.command("ood", short_help="Out-of-distribution detection: AUROC, AUPR, FPR@95.")(ood_command)


@app.command(short_help="Seconds per epoch of each phase and of a standalone Glow.")
@cli_errors
def timing(
    config: Path | None = ConfigOpt,
    set: list[str] | None = SetOpt,
    steps: int = typer.Option(20, "--steps", min=1, max=100_000, help="Timed training steps per model (after the warm-up)."),
    warmup: int = typer.Option(3, "--warmup", min=1, max=10_000, help="Untimed steps first (ActNorm init, caches)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, max=2**20, help="Batch size for all three models (default: train.vae.batch_size)."
    ),
    glow_levels: int = typer.Option(3, "--glow-levels", help="Standalone Glow: levels L (paper's baseline: 3)."),
    glow_steps: int = typer.Option(32, "--glow-steps", help="Standalone Glow: steps per level K (32)."),
    glow_width: int = typer.Option(512, "--glow-width", help="Standalone Glow: coupling width (512)."),
    glow_coupling: str = typer.Option("affine", "--glow-coupling", help="Standalone Glow: affine (Glow's sigmoid scale) or additive coupling."),
    device: str | None = typer.Option(None, "--device", help="Device (default: train.device of the config)."),
    threads: int | None = typer.Option(
        None, "--threads", min=0, max=1024, help="torch CPU threads (default: train.threads; 0 = usable cores / local processes)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Seconds per epoch of the VAE phase, the Glow-layer phase and a standalone multi-scale Glow
    on the config's data shape and batch size (the paper's Table 4), and the speedup. The three
    models' steps are interleaved round by round; each time is the median step (IQR as spread)."""
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.training.timing import format_table, run_timing

    cfg = config_mod.resolve(config, set or [])
    result = run_timing(
        cfg,
        steps=steps,
        warmup=warmup,
        batch_size=batch_size,
        device=device,
        threads=threads,
        baseline={"levels": glow_levels, "steps": glow_steps, "hidden_channels": glow_width, "coupling": glow_coupling},
    )
    _out(json.dumps(result) if as_json else format_table(result))


@app.command(short_help="Plot training loss and held-out bound per epoch.")
@cli_errors
def plot(
    run: Path | None = typer.Option(None, "--run", help="Run directory (default: the embedded config's, runs/default)."),
    out: str | None = typer.Option(
        None, "--out", "-o", help="Output file, PNG, SVG or PDF by its extension (default: RUN/training-curves.png), or - for PNG bytes on stdout."
    ),
):
    """Plot training loss and held-out bound per epoch, all phases. Prints the plot's path (or
    writes the PNG bytes to stdout with --out -)."""
    from vaeflow_cli.evaluation.plots import PLOT_FORMATS, training_curves, training_curves_bytes

    _out_format(out, None, {f: f".{f}" for f in PLOT_FORMATS}, default="png")
    _check_out(out, example="training-curves.png")
    if out == "-":
        _write_output(training_curves_bytes(_run_or_default(run), "png"), "-")
        return
    _out(str(training_curves(_run_or_default(run), out)))


@app.command("plugins", short_help="List the plugins and the components they registered.")
@cli_errors
def plugins_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """List each plugin, its version and the components it registered, or why it failed to load."""
    from vaeflow_cli.registry.core import get_registry

    registry = get_registry(warn_failures=False)  # failed plugins are listed below, with their errors
    rows = [
        {"name": p.name, "version": p.version, "builtin": p.builtin, "registered": p.registered, "error": p.error} for p in registry.plugins.values()
    ]
    if as_json:
        _out(json.dumps(rows, indent=2))
        return
    with streamed_rows():  # a listing: a reader that leaves (| head -1) stops it quietly
        for row in rows:
            kind = "built-in" if row["builtin"] else "external"
            if row["error"] is not None:
                _out(f"{row['name']} {row['version']} ({kind}, FAILED to load): {row['error']}")
                continue
            _out(f"{row['name']} {row['version']} ({kind})")
            for k, names in row["registered"].items():
                _out(f"  {k}: {', '.join(names)}")


@config_app.command("show", short_help="Print the resolved config as TOML.")
@cli_errors
def config_show(config: Path | None = ConfigOpt, set: list[str] | None = SetOpt):
    """Print the resolved config as TOML: the file laid over its base (the embedded default unless the
    file names another with base = "..."), then the --set overrides, with component defaults filled in."""
    from vaeflow_cli.config import core as config_mod

    _out(config_mod.dumps(config_mod.resolve(config, set or [])), nl=False)


@data_app.command("download", short_help="Download a dataset's official files, MD5-verified.")
@cli_errors
def data_download(
    name: str = typer.Argument(..., help=download_names_help()), root: Path = typer.Option(..., "--root", help="Folder to download into (data.root).")
):
    """Download a dataset's official files: resumable, MD5-verified, written atomically. Prints the files."""
    from vaeflow_cli.console import log
    from vaeflow_cli.data.download import download

    for path in download(name, root, log=log):
        _out(str(path))


@data_app.command("info", short_help="Print a dataset's split sizes and image shape (JSON).")
@cli_errors
def data_info(
    name: str = typer.Argument(..., help="A registered dataset."), root: str = typer.Option("", "--root", help="The dataset's folder (data.root).")
):
    """Print a dataset's split sizes, image shape and cache state as JSON."""
    from vaeflow_cli.data.splits import dataset_info

    _out(json.dumps(dataset_info(name, root), indent=2))


def main(argv: list[str] | None = None) -> None:
    """The ``vaeflow`` console script: every failure, parse errors included, ends as one stderr
    line and an exit code (``vaeflow_cli.cli.exits.run``). ``argv=None`` (the process's own
    command line) keeps vaeflow's signal handlers until the process exits."""
    code = run(app, argv, exiting=argv is None)
    if argv is None:
        exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
