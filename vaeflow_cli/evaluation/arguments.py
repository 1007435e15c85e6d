"""``evaluate_run``'s arguments, checked at its door with the bounds the CLI's options declare."""

from __future__ import annotations

from pathlib import Path

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.evaluation.metrics import METRICS

OUT_FORMATS = {".json": "json", ".txt": "table"}  # evaluate_run(out=...): the file's format by its extension


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
