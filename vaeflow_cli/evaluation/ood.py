"""Out-of-distribution detection with a run's per-image scores (``vaeflow ood``; docs/scoring.md).

Each score is oriented so that a higher value means "more out-of-distribution", fixed in advance
(never chosen on the data): the bound ``bpd`` (Nalisnick et al., 2019a, showed that it can rank
another data set as more likely), the complexity-corrected ``complexity`` = bpd - PNG bits (Serra
et al., 2020), the ELBO's latent term ``latent_bpd`` and its pixel term ``pixel_bpd`` alone (the
global and local parts that Havtorn et al., 2021, separate), and the typicality test on batches
of M images (Nalisnick et al., 2019b): |mean bpd of the batch - the mean bpd of in-distribution
reference images|. The out-of-distribution set is the positive class of every metric: AUROC
(``auroc``: the probability that a random outlier scores above a random inlier, ties counting
half), AUPR (``aupr``: average precision, outliers positive) and the false-positive rate at 95%
true positives (``fpr_at_tpr``: the fraction of inliers flagged when the threshold flags 95% of
the outliers). An AUROC below 0.5 means the score ranks the other set as the more typical one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from vaeflow_cli.errors import VaeflowError

SCORES = ("bpd", "complexity", "latent_bpd", "pixel_bpd", "typicality")
"""The scores compared, in the table's order."""

SCORE_TITLES = {
    "bpd": "bits/dim (the bound)",
    "complexity": "bits/dim - PNG (Serra et al.)",
    "latent_bpd": "latent term (KL)",
    "pixel_bpd": "pixel term",
    "typicality": "typicality, batches of {m}",
}

TPR_LEVEL = 0.95
REFERENCE_IMAGES = 2000
"""The most images of the run's own data whose mean bpd is the typicality test's reference."""


# ------------------------------------------------------------------------------ the metrics


def _ranked(inliers, outliers) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(true positives, false positives) at each distinct threshold, highest first, flagging
    scores >= the threshold (outliers positive), and the two counts. NaN counts as +inf."""
    pos = np.nan_to_num(np.asarray(outliers, np.float64).ravel(), nan=np.inf, posinf=np.inf, neginf=-np.inf)
    neg = np.nan_to_num(np.asarray(inliers, np.float64).ravel(), nan=np.inf, posinf=np.inf, neginf=-np.inf)
    if not len(pos) or not len(neg):
        raise VaeflowError(f"OOD metrics need scores of both sets, got {len(neg)} inliers and {len(pos)} outliers")
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]  # each distinct value's last place
    tp = np.cumsum(is_pos)[last]
    return tp, (last + 1) - tp, len(pos), len(neg)


def auroc(inliers, outliers) -> float:
    """Area under the ROC curve of telling ``outliers`` (positive) from ``inliers`` by a score
    that is higher for outliers: float in [0, 1], the Mann-Whitney probability P(out > in) +
    P(out = in) / 2. 1-D float arrays of scores (any lengths >= 1)."""
    tp, fp, p, n = _ranked(inliers, outliers)
    tpr, fpr = np.r_[0.0, tp / p], np.r_[0.0, fp / n]
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))


def aupr(inliers, outliers) -> float:
    """Average precision with ``outliers`` positive: the sum over thresholds of (recall gained) x
    precision, float in [0, 1]; chance is the outliers' fraction of all scores."""
    tp, fp, p, _ = _ranked(inliers, outliers)
    return float(np.sum(np.diff(np.r_[0.0, tp / p]) * tp / (tp + fp)))


def fpr_at_tpr(inliers, outliers, level: float = TPR_LEVEL) -> float:
    """The fraction of ``inliers`` flagged at the highest threshold that flags at least ``level``
    of the ``outliers``: float in [0, 1], lower is better."""
    tp, fp, p, n = _ranked(inliers, outliers)
    return float(fp[np.argmax(tp / p >= level)] / n)


def typicality(bpd, reference: float, m: int, seed: int) -> np.ndarray:
    """Nalisnick et al. (2019b)'s typicality test statistic: the images in a permutation seeded
    with ``seed``, cut into batches of ``m`` (a last, smaller batch left out), each scoring
    |mean bpd of its images - ``reference``|. float64 (len(bpd) // m,), bits/dim."""
    bpd = np.asarray(bpd, np.float64)
    batches = len(bpd) // m
    order = np.random.default_rng(seed).permutation(len(bpd))[: batches * m]
    return np.abs(bpd[order].reshape(batches, m).mean(axis=1) - reference)


def metrics(inliers, outliers) -> dict:
    """{"auroc", "aupr", "fpr95"} of two score arrays (None each when either holds nothing)."""
    if not len(inliers) or not len(outliers):
        return {"auroc": None, "aupr": None, "fpr95": None}
    return {"auroc": auroc(inliers, outliers), "aupr": aupr(inliers, outliers), "fpr95": fpr_at_tpr(inliers, outliers)}


# ------------------------------------------------------------------------------ sets of images


def load_set(
    run, spec: str, option: str, *, unreadable: Callable[[str, str], object] | None = None
) -> tuple[str, list[str] | None, np.ndarray | None]:
    """What ``--in``/``--out`` names: (label, image files, None) for an existing folder or file,
    (label, None, uint8 images (N, C, H, W)) for ``NAME:SPLIT`` or ``NAME:SPLIT:ROOT``, a
    registered dataset's split of the run's image shape (the run's own dataset keeps its options).
    One VaeflowError line naming ``option`` for what names nothing to score. A folder inside a
    folder that cannot be listed is ``unreadable(subfolder, line)`` (``expand``), the rest kept."""
    from vaeflow_cli.data.images import expand
    from vaeflow_cli.evaluation.selection import eval_data_config, load_eval_images

    where = f"ood {option} {spec}"
    if os.path.lexists(spec):
        files, why = expand(spec, unreadable=unreadable)
        if why is not None:
            raise VaeflowError(f"{option}: {why}")
        return spec, files, None
    name, _, rest = spec.partition(":")
    split, _, root = rest.partition(":")
    if not name or not split:
        own = run.config.data.name
        raise VaeflowError(
            f"{where}: no such file or folder, and not NAME:SPLIT[:ROOT] of a registered dataset (the run's own test images: {own}:test)"
        )
    cfg = eval_data_config(run.config, data=name, data_root=root or None, source=where)
    return spec, None, load_eval_images(cfg, split, run.image_shape, run.path, where, split_hint=f"as {name}:SPLIT")


def reference_mean(run, *, k, seed: int, count: int = REFERENCE_IMAGES) -> tuple[float, dict]:
    """The typicality test's reference: the mean bound (bits/dim) of at most ``count`` images of
    the run's own held-out validation split ("val") when its dataset has one, else of its training
    split (images the model was trained on: see docs/scoring.md), drawn with ``seed``. Returns
    (mean, {"split", "images"})."""
    from vaeflow_cli.data.splits import build_dataset, load_split
    from vaeflow_cli.evaluation.scoring import score_images

    dataset = build_dataset(run.config)
    split = "val" if "val" in (getattr(dataset, "splits", None) or ()) else "train"
    images = load_split(run.config, split, dataset=dataset)
    pick = np.sort(np.random.default_rng(seed).choice(len(images), size=min(count, len(images)), replace=False))
    scores = score_images(run, np.asarray(images[pick]), k=k, seed=seed)
    return float(scores.bpd.mean()), {"split": split, "images": int(len(pick))}


def score_set(
    run,
    loaded,
    option: str,
    *,
    k,
    seed: int,
    crop_resize: bool,
    on_failure: Callable[[str, str], object] | None = None,
    failed_before=(),
    size_fix: str | None = None,
):
    """The ``Scores`` of one ``--in``/``--out`` set, ``loaded`` by ``load_set``; files that cannot
    be scored are ``on_failure(path, line)``; ``failed_before``: (path, line) of what ``load_set``
    could not list, counted with them. ``size_fix`` ends the line of a file of another size
    (``score_files``' default, the Python keyword, when None). Raises VaeflowError when none could be."""
    from vaeflow_cli.evaluation.scoring import Scores, score_files, score_images

    label, files, images = loaded
    if files is None:
        return score_images(run, images, k=k, seed=seed, labels=[f"{label}:{i}" for i in range(len(images))])
    failed = list(failed_before)

    def failure(path: str, line: str) -> None:
        failed.append((path, line))
        if on_failure is not None:
            on_failure(path, line)

    fix = {} if size_fix is None else {"size_fix": size_fix}
    parts = list(score_files(run, files, k=k, seed=seed, crop_resize=crop_resize, on_failure=failure, **fix))
    if not parts:
        raise VaeflowError(f"{option} {label}: none of its {len(files)} files could be scored; the first: {failed[0][1]}")
    return Scores.join(parts, failed)


def set_key(spec: str) -> tuple:
    """What a ``--in``/``--out`` set names, whatever its spelling: an existing file or folder by
    its resolved path (``flat``, ``./flat/``), a dataset as (NAME, SPLIT, resolved ROOT or "")
    (``mnist:test`` and ``mnist:test:``)."""
    if os.path.lexists(spec):
        return ("path", os.path.realpath(spec))
    name, _, rest = spec.partition(":")
    split, _, root = rest.partition(":")
    return ("dataset", name, split, os.path.realpath(root) if root else "")


def _check_distinct(specs: list[str]) -> None:
    """One VaeflowError when two of ``specs`` name the same set (``set_key``), however spelled."""
    seen: dict[tuple, list[str]] = {}
    for spec in specs:
        seen.setdefault(set_key(spec), []).append(spec)
    for spellings in seen.values():
        if len(spellings) > 1:
            what = spellings[0] if len(set(spellings)) == 1 else f"one set twice ({' and '.join(dict.fromkeys(spellings))})"
            raise VaeflowError(f"--in and --out name {what}{' twice' if len(set(spellings)) == 1 else ''}; give each set once")


def compare(sets: dict, in_label: str, *, reference: float, m: int, seed: int) -> tuple[list[dict], dict]:
    """Every score of the in-distribution set ``sets[in_label]`` against each other set
    (``sets``: {label: Scores}): (rows {"out", "score", "auroc", "aupr", "fpr95", "n_in", "n_out",
    "mean_in", "mean_out", "note"}, {label: {score: float64 values}} for the histograms). The
    typicality scores are per batch of ``m`` (``typicality``), every other per image. A standalone
    flow's sets have no latent term: its two terms are left out."""
    exact = sets[in_label].bound == "exact"
    values = {}
    for label, s in sets.items():
        values[label] = {name: (typicality(s.bpd, reference, m, seed) if name == "typicality" else s.column(name)) for name in SCORES}
        if exact:
            del values[label]["latent_bpd"], values[label]["pixel_bpd"]
    rows = []
    for label in sets:
        if label == in_label:
            continue
        for name in values[label]:
            a, b = values[in_label][name], values[label][name]
            row = {"out": label, "score": name, **metrics(a, b), "n_in": len(a), "n_out": len(b)}
            row["mean_in"] = float(a.mean()) if len(a) else None
            row["mean_out"] = float(b.mean()) if len(b) else None
            row["note"] = _note(row, m)
            rows.append(row)
    return rows, values


def _note(row: dict, m: int) -> str:
    if row["auroc"] is None:
        return f"fewer than {m} images in a set: no batch of {m}"
    if row["auroc"] < 0.5:
        return "below chance: ranks the other set as more typical"
    return ""


def format_table(result: dict) -> str:
    """The ``vaeflow ood`` table: a block per out-of-distribution set, a row per score."""
    m = result["typicality_batch"]
    ref = result["reference"]
    lines = [
        f"run {result['run']} ({result['model']} model, {result['bound_text']}); in-distribution: {result['in']} ({result['sets'][result['in']]} images)",
        f"typicality reference: mean {ref['mean']:.4f} bits/dim of {ref['images']} images of the run's {ref['split']} split; batches of {m}",
        "higher score = more out-of-distribution; outliers are the positive class",
    ]
    if result["bound"] == "exact":
        lines.append("a standalone flow has no latent term: only the bound, the complexity and the typicality scores")
    header = f"  {'score':32s} {'AUROC':>6s} {'AUPR':>6s} {'FPR@95':>6s} {'mean in':>8s} {'mean out':>8s}  n in/out"
    for out in [label for label in result["sets"] if label != result["in"]]:
        lines += [f"out: {out} ({result['sets'][out]} images)", header]
        for row in (r for r in result["rows"] if r["out"] == out):
            title = SCORE_TITLES[row["score"]].format(m=m)
            cells = " ".join("   n/a" if row[key] is None else f"{row[key]:6.3f}" for key in ("auroc", "aupr", "fpr95"))
            means = " ".join("     n/a" if row[key] is None else f"{row[key]:8.4f}" for key in ("mean_in", "mean_out"))
            lines.append(f"  {title:32s} {cells} {means}  {row['n_in']}/{row['n_out']}" + (f"  ({row['note']})" if row["note"] else ""))
    if result.get("figure"):
        lines.append(f"figure: {result['figure']}")
    return "\n".join(lines)


def detect(
    run,
    in_spec: str,
    out_specs: list[str],
    *,
    k: int | None = None,
    seed: int | None = None,
    m: int = 10,
    reference_images: int = REFERENCE_IMAGES,
    crop_resize: bool = False,
    figure=None,
    on_failure: Callable[[str, str], object] | None = None,
    message: Callable[[str], object] | None = None,
    size_fix: str | None = None,
) -> dict:
    """``vaeflow ood``: score ``in_spec`` and every ``out_specs`` set (``load_set``) with a loaded
    run, the typicality reference (``reference_mean``), and every score's metrics for each pair.
    ``figure``: a path for the histograms of every score per set (PNG; None: none; one that cannot
    be written is a warning, the results stand). ``size_fix``: how the line of a file of another
    size than the model's ends (the CLI names its --crop-resize; default: the Python keyword). A
    set of fewer than ``m`` images has no typicality batch: one warning line says so. Returns the
    JSON-ready result: run, model, bound, k, seed, typicality_batch, reference {mean, split,
    images}, sets {label: images scored}, failed (count), rows (see ``compare``), figure.
    :raises VaeflowError: a set that names nothing to score, or none of whose files could be."""
    from vaeflow_cli.evaluation.scoring import describe

    bound, k, line = describe(run, k)
    seed = run.seed if seed is None else seed
    say = message or (lambda text: None)
    specs = [("--in", in_spec), *(("--out", s) for s in out_specs)]
    _check_distinct([spec for _, spec in specs])
    unlisted: dict[str, list] = {spec: [] for _, spec in specs}
    loaded = [  # every set is checked before any is scored
        load_set(run, spec, option, unreadable=lambda where, why, spec=spec: unlisted[spec].append((where, why))) for option, spec in specs
    ]
    say(line)
    sets = {}
    for (option, spec), found in zip(specs, loaded, strict=True):
        for where, why in unlisted[spec]:
            if on_failure is not None:
                on_failure(where, why)
        say(f"ood: scoring {option} {spec}")
        sets[spec] = score_set(
            run, found, option, k=k, seed=seed, crop_resize=crop_resize, on_failure=on_failure, failed_before=unlisted[spec], size_fix=size_fix
        )
    from vaeflow_cli.console import warning

    for (option, spec), s in zip(specs, sets.values(), strict=True):
        if len(s) < m:
            warning(
                f"ood: {option} {spec} has {len(s)} scored images, fewer than --typicality-batch {m}: no typicality batch of it "
                f"(n/a in the table, an empty panel in the figure); give --typicality-batch {len(s)} or less to compare it"
            )
    say("ood: the typicality test's reference images")
    ref, where = reference_mean(run, k=k, seed=seed, count=reference_images)
    rows, values = compare(sets, in_spec, reference=ref, m=m, seed=seed)
    result = {
        "run": str(run.path),
        "model": sets[in_spec].model,
        "bound": bound,
        "k": k,
        "bound_text": {"elbo": "ELBO bound", "iwae": f"IWAE_{k} bound", "exact": "exact bits/dim"}[bound],
        "seed": seed,
        "typicality_batch": m,
        "reference": {"mean": ref, **where},
        "in": in_spec,
        "sets": {label: len(s) for label, s in sets.items()},
        "failed": sum(len(s.failed) for s in sets.values()),
        "rows": rows,
        "figure": None,
    }
    if figure is not None:
        from vaeflow_cli.errors import RuntimeFailure
        from vaeflow_cli.evaluation.plots import score_histograms

        titles = {name: SCORE_TITLES[name].format(m=m) for name in SCORES}
        try:
            result["figure"] = str(score_histograms(figure, values, titles, in_spec))
        except RuntimeFailure as exc:  # a run directory that cannot be written (read-only): the numbers still count
            warning(f"the figure was not written ({exc}); --figure FILE writes it elsewhere")
    return result
