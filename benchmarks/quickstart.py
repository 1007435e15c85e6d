"""The README's quick start, end to end, as a new user runs it: alone and beside a CPU-bound job.

    python benchmarks/quickstart.py                    # one round: alone, then beside a matmul loop
    python benchmarks/quickstart.py --rounds 2 --situations alone,vs_matmul

It clones this checkout's HEAD into a temporary folder (what a clean clone holds, nothing
uncommitted), makes a virtual environment that sees this interpreter's packages (so torch is not
downloaded again: "install" below is the build and install of vaeflow and its built-ins, the Rust
extension included, not torch's), runs the README's install, ``pip install -e ./plugins -e .``,
once and times it, then times the rest of the quick start,
``vaeflow train-vae && vaeflow train-glow && vaeflow sample``, in each situation of each round,
the situations alternating (who goes first rotates from round to round), from an empty ``runs/``:

- ``alone``: nothing else runs;
- ``vs_matmul``: beside a plain torch loop of 512x512 matmuls with torch's own defaults (every
  core, libgomp's default wait policy; the competitor of ``benchmarks/contention.py``), started
  3 s before and killed after.

Prints one JSON line on stdout: the install seconds, each situation's seconds per round with the
median, and the median slowdown beside the competitor (a fair share of two cores is 2x).
Progress goes to stderr. It takes about 30 minutes on 2 cores; run it on an otherwise quiet
machine, and set nothing of OpenMP's in the environment (the OpenMP variables are removed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from contention import MATMUL, OMP_VARS  # noqa: E402  (the same competitor and environment rule)

INSTALL = "pip install -e ./plugins -e ."
TRAIN = "vaeflow train-vae && vaeflow train-glow && vaeflow sample"
SITUATIONS = ("alone", "vs_matmul")


def _log(msg: str) -> None:
    print(f"quickstart: {msg}", file=sys.stderr, flush=True)


def _timed(cmd: str, *, cwd: Path, env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(["sh", "-c", cmd], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"quickstart: `{cmd}` exited {rc} in {cwd}; its output is in {log}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1, help="rounds; each runs every situation once")
    ap.add_argument("--situations", default=",".join(SITUATIONS), help=f"comma-separated, of {', '.join(SITUATIONS)}")
    ap.add_argument("--keep", type=Path, default=None, help="keep the clone, venv and logs in this folder (default: a temporary one)")
    args = ap.parse_args()
    situations = [s for s in args.situations.split(",") if s]
    if not situations or any(s not in SITUATIONS for s in situations) or args.rounds < 1:
        ap.error(f"--situations must name some of {', '.join(SITUATIONS)} and --rounds must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="vaeflow-quickstart-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    clone, venv = work / "clone", work / "venv"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in OMP_VARS and not k.startswith("VAEFLOW_")}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
        _log(f"installing in {clone} ({INSTALL})")
        install_s = _timed(INSTALL, cwd=clone, env=env, log=work / "install.log")
        _log(f"install: {install_s:.0f} s")
        where = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import vaeflow_cli, vaeflow_plugins; print(vaeflow_cli.__file__); print(vaeflow_plugins.__file__)"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not all(Path(f).resolve().is_relative_to(clone.resolve()) for f in where):
            raise SystemExit(f"quickstart: the venv imports {where}, not the clone {clone}; uninstall other editable installs of vaeflow first")
        seconds: dict[str, list[float]] = {s: [] for s in situations}
        for r in range(args.rounds):
            order = situations[r % len(situations) :] + situations[: r % len(situations)]
            for situation in order:
                shutil.rmtree(clone / "runs", ignore_errors=True)
                competitor = None
                if situation == "vs_matmul":
                    competitor = subprocess.Popen([sys.executable, "-c", MATMUL], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(3.0)
                try:
                    s = _timed(TRAIN, cwd=clone, env=env, log=work / f"train-{situation}-{r}.log")
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                seconds[situation].append(round(s, 1))
                _log(f"round {r + 1}/{args.rounds}, {situation}: {s:.0f} s")
        result = {
            "command": {"install": INSTALL, "train_and_sample": TRAIN},
            "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "install_s": round(install_s, 1),
            "train_and_sample_s": {s: {"rounds": v, "median": statistics.median(v)} for s, v in seconds.items()},
        }
        if "alone" in seconds and "vs_matmul" in seconds:
            result["slowdown_vs_matmul"] = round(statistics.median(seconds["vs_matmul"]) / statistics.median(seconds["alone"]), 2)
        print(json.dumps(result))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
