"""Phase 2 with more than the flow decoder trained: does a decoder that learns to be the flow's
condition pay for its backward pass?

    python benchmarks/phase2_parts.py --run RUN --parts decoder [--threads 1] [--set KEY=VALUE ...]
    python benchmarks/phase2_parts.py --run RUN --parts heads

RUN is a run whose phase 1 has trained (``vaeflow train-vae``). This trains its phase 2 as
``vaeflow train-glow --run RUN`` does (``training.loop.train_phase``, the run's ``[train.glow]``
with the ``--set`` overrides), except that it also trains

- ``decoder``: the whole decoder (trunk and output heads), or
- ``heads``: only the decoder's output heads (``mean_head``, ``std_head`` of the built-in ResNet
  decoders),

beside the flow decoder (and the prior, with ``train_prior``). The encoder stays frozen, so the code
z keeps the information phase 1 put into it (training the encoder too, the joint fine-tune, empties
the code: docs/reproduce.md). With the conditional flow decoder f(x; c) = g_mu + g_sigma G(x; c) the
decoder's Gaussian cancels out of log p(x|z), so these parts learn only through the condition c:
the decoder becomes a learned condition network for the flow. Compare the run's per-epoch held-out
bound (RUN/metrics.jsonl, or ``vaeflow evaluate --run RUN``) and seconds per epoch with a copy of
the same phase-1 run trained by ``vaeflow train-glow`` beside it (``--threads`` each).

The extra parts are chosen by replacing ``training.setup.phase_modules`` in this process only; a
run trained this way loads and evaluates as any other (its checkpoint holds the whole model), and
its phase 2 resumes with this script and the same ``--parts`` (its optimizer state holds those
parts). Prints the run directory on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run whose phase 1 has trained")
    ap.add_argument("--parts", required=True, choices=("decoder", "heads"), help="what phase 2 trains beside the flow decoder")
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: the machine's share)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, as vaeflow --set takes it")
    ap.add_argument("--resume", action="store_true", help="resume the run's phase 2 (trained this way before)")
    ap.add_argument("--restart", action="store_true", help="train the run's phase 2 again from the start (its checkpoints replaced)")
    args = ap.parse_args()

    from vaeflow_cli.errors import VaeflowError
    from vaeflow_cli.training import setup
    from vaeflow_cli.training.loop import train_phase
    from vaeflow_cli.training.runconfig import phase_config

    phase_modules = setup.phase_modules

    def with_decoder(model, phase, train_prior=False):
        modules = phase_modules(model, phase, train_prior)
        if phase != "glow" or not hasattr(model, "decoder"):
            return modules
        if args.parts == "decoder":
            return [*modules, model.decoder]
        heads = [getattr(model.decoder, name, None) for name in ("mean_head", "std_head")]
        if any(h is None for h in heads):
            raise SystemExit(f"phase2_parts: the decoder {type(model.decoder).__name__} has no mean_head and std_head; use --parts decoder")
        return [*modules, *heads]

    setup.phase_modules = with_decoder
    try:
        cfg, run_dir = phase_config("glow", args.run, overrides=[f"train.threads={args.threads}", *args.set])  # as vaeflow train-glow --run
        train_phase(cfg, run_dir, "glow", resume=args.resume, restart=args.restart, progress=False)
    except VaeflowError as e:
        raise SystemExit(f"phase2_parts: {e}") from None
    print(run_dir)


if __name__ == "__main__":
    sys.exit(main())
