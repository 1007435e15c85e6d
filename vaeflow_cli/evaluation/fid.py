"""FID (Heusel et al., 2017): the Frechet distance between Gaussians fitted to Inception-v3 pool
features of two image sets.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` ("inception-v3-compat"): a port of
the TensorFlow FID graph, with its TF1-compatible bilinear resize to 299x299, that loads the
``pt_inception-2015-12-05`` weights used by pytorch-fid and torch-fidelity, so the numbers are
comparable with the literature. vaeflow never downloads them: the file comes from ``--fid-weights``,
else ``$VAEFLOW_FID_WEIGHTS``, else the copy pytorch-fid or torch-fidelity downloaded into the torch
hub cache (``weights_path``), and it is loaded with ``weights_only=True`` (no unpickling of code).
The Frechet arithmetic is here (and tested against closed forms).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from vaeflow_cli.errors import VaeflowError

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
WEIGHTS_SHA256_PREFIX = "6726825d"  # the hash prefix in the file's published name
WEIGHTS_ENV = "VAEFLOW_FID_WEIGHTS"
FEATURE_DIM = 2048
HUB_WEIGHTS_FILES = ((WEIGHTS_FILE, "pytorch-fid"), ("weights-inception-2015-12-05-6726825d.pth", "torch-fidelity"))
"""The names under which pytorch-fid and torch-fidelity keep the same FID Inception weights (the
same hash prefix: one file, two names) in the torch hub cache, in the order they are looked for.
Both are plain state dicts of this network; a file found there is loaded weights-only and checked
against the network's keys and shapes exactly as one given with --fid-weights."""


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where ``torch.hub.load_state_dict_from_url`` (used by
    pytorch-fid and torch-fidelity) saves downloads; ``$TORCH_HOME/hub/checkpoints`` when
    TORCH_HOME is set, else ``$XDG_CACHE_HOME/torch/hub/checkpoints`` or
    ``~/.cache/torch/hub/checkpoints`` (or what ``torch.hub.set_dir`` chose)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_path(option: str | Path | None) -> Path:
    """The Inception weights file, looked for in this order: ``option`` (``--fid-weights``), the
    environment variable ``VAEFLOW_FID_WEIGHTS``, then ``HUB_WEIGHTS_FILES`` in the torch hub
    checkpoint directory (``hub_checkpoint_dir``). The first one given or present is loaded and
    checked here (weights only, against the network's keys and shapes), so that a wrong file fails
    before any work, with one VaeflowError naming it; a later place is not tried then. When none is
    given or present: one VaeflowError listing every place looked and how to get the file."""
    value = option or os.environ.get(WEIGHTS_ENV)
    if value:
        path = Path(value)
    else:
        hub = hub_checkpoint_dir()
        found = [hub / name for name, _ in HUB_WEIGHTS_FILES if os.path.lexists(hub / name)]
        if not found:
            looked = ", ".join(f"{hub / name} ({who}'s download)" for name, who in HUB_WEIGHTS_FILES)
            raise VaeflowError(
                f"fid needs the Inception-v3 FID weights {WEIGHTS_FILE} and found them nowhere: no --fid-weights, "
                f"{WEIGHTS_ENV} is not set, and none of {looked} exists; {_HOW} (or put it at {hub / WEIGHTS_FILE})"
            )
        path = found[0]
    build_extractor(path)  # checks the file; the network is built again on the evaluation device
    return path


_HOW = f"download {WEIGHTS_URL} on a machine with network access, copy it here, and pass --fid-weights PATH or set {WEIGHTS_ENV}=PATH"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_problem(exc: BaseException) -> str:
    """A short, safe description of why torch.load(weights_only=True) refused or failed on a file."""
    import pickle
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if "Unsupported global" in text or "GLOBAL" in text:
        return "it holds pickled Python objects, not only tensors; refused (vaeflow loads weights only and never runs pickled code)"
    if isinstance(exc, pickle.UnpicklingError) or text.startswith("Weights only load failed"):
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        return f"not a PyTorch weights file: corrupt, truncated or another format ({detail.group(1)[:120] if detail else 'unpickling failed'})"
    first = " ".join(text.splitlines()[0].split())[:160] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_weights_file(path: Path, *, what: str, fix: str) -> object:
    """torch.load(path, weights_only=True) on the CPU, or one VaeflowError "<what> <path> ...;
    <fix>" for a missing, empty, unreadable, corrupt or hostile file (a pickle of code is refused
    by the weights-only unpickler and reported here, without a traceback)."""
    import torch

    from vaeflow_cli.config.limits import file_problem

    problem = file_problem(path)
    if problem is not None:
        raise VaeflowError(f"{what} {path} {problem}; {fix}")
    try:
        if os.path.getsize(path) == 0:
            raise VaeflowError(f"{what} {path} is empty (0 bytes); {fix}")
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except VaeflowError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a truncated zip, a pickle of code, garbage: all the file's fault
        raise VaeflowError(f"{what} {path} cannot be loaded ({_load_problem(exc)}); {fix}") from None


def state_dict_problem(state, reference: dict) -> str | None:
    """Why ``state`` is not a state dict for a module whose own state dict is ``reference`` (keys,
    types, shapes, floating point or not, finite values), or None. BatchNorm's
    ``num_batches_tracked`` may be missing (weights files saved by other tools may lack it;
    load_state_dict accepts that)."""
    import torch

    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a state dict"
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        k = bad[0]
        return f"entry {k!r} is a {type(state[k]).__name__}, not a tensor"
    missing = [k for k in reference if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in reference]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        return " and ".join(parts)
    for k, v in state.items():
        ref = reference[k]
        if tuple(v.shape) != tuple(ref.shape):
            return f"{k!r} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}"
        if v.is_floating_point() != ref.is_floating_point():
            return f"{k!r} is {v.dtype}, expected {ref.dtype}"
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return f"{k!r} holds non-finite values (NaN or inf)"
    return None


def build_extractor(path: Path, device="cpu"):
    """torch-fidelity's FID Inception-v3 with the weights at ``path``, in eval mode on ``device``.

    The file is loaded weights-only by vaeflow itself and checked against the network's own keys
    and shapes before it is loaded into it; anything else is one VaeflowError."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(path)
    fix = f"it must be {WEIGHTS_FILE} ({WEIGHTS_URL}); {_HOW}"
    state = load_weights_file(path, what="fid weights file", fix=fix)
    if isinstance(state, dict) and len(state) == 0:
        raise VaeflowError(f"fid weights file {path} holds an empty state dict; {fix}")

    class Unloaded(FeatureExtractorInceptionV3):
        """The network, built without its weights: vaeflow checks them and loads them itself."""

        def load_state_dict(self, *args, **kwargs):
            return None

    # torch-fidelity calls torch.load(path) in its constructor (its result is discarded here);
    # this makes that call weights-only too.
    previous = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        net = Unloaded("inception-v3-compat", [str(FEATURE_DIM)], feature_extractor_weights_path=str(path))
    except Exception as exc:  # noqa: BLE001 -- the file changed under us, or torch-fidelity refuses it
        raise VaeflowError(f"fid weights file {path} cannot be loaded ({_load_problem(exc)}); {fix}") from None
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        os.environ.update({k: v for k, v in previous.items() if v is not None})
    net.__class__ = FeatureExtractorInceptionV3  # its own load_state_dict again
    problem = state_dict_problem(state, net.state_dict())
    if problem is not None:
        raise VaeflowError(f"fid weights file {path} is not the Inception-v3 FID network's weights: {problem}; {fix}")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise VaeflowError(f"fid weights file {path} cannot be loaded ({_load_problem(exc)}); {fix}") from None
    return net.to(torch.device(device)).eval()


def features(net, images: np.ndarray, *, batch_size: int = 100, progress=None) -> np.ndarray:
    """Pool features (N, 2048) float64 of uint8 images (N, C, H, W), C in {1, 3} (grey repeated);
    ``progress(k)`` after each batch of k images."""
    import torch

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, 1|3, H, W) images, got {images.dtype} {images.shape}")
    device = next(net.parameters()).device

    def pool(batch: np.ndarray):
        x = torch.from_numpy(np.array(batch)).to(device)  # a writable copy
        return net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)[0]

    with torch.no_grad():
        out = batched_features(pool, images, batch_size, progress)
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


def batched_features(featurize, images: np.ndarray, batch: int, progress=None) -> list[np.ndarray]:
    """``featurize`` (a uint8 batch of ``images`` -> a tensor of features) applied ``batch`` images
    at a time: the float64 arrays, one per batch; ``progress(k)`` after each batch of k images.
    The one loop of fid, digit_fd and cifar_fd."""
    out = []
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        out.append(featurize(part).double().cpu().numpy())
        if progress is not None:
            progress(len(part))
    return out


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of features (N, D), covariance with the N - 1 denominator."""
    if len(feats) < 2:
        raise VaeflowError(f"FID needs at least 2 images per set, got {len(feats)}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the squared 2-Wasserstein distance between
    N(mu1, S1) and N(mu2, S2). tr (S1 S2)^(1/2) is computed as the sum of the square roots of the
    eigenvalues of S1^(1/2) S2 S1^(1/2), a symmetric positive semi-definite matrix with the same
    spectrum, which stays real and stable when the covariances are singular (fewer images than
    feature dimensions)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError("mean and covariance shapes do not match")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def load_classifier_cache(cache, net, *, metric: str, kind: str, fmt: int, extra=None) -> float:
    """Load the feature classifier cached at ``cache`` (weights only) into ``net`` and return its
    held-out accuracy, for ``digit_fd`` and ``cifar_fd``: the file must carry ``format`` = ``fmt``,
    pass ``extra(state)`` (a problem string or None), hold an accuracy in [0, 1] and weights of
    ``net``'s keys and shapes. Anything else is one VaeflowError naming ``metric`` and saying to
    delete the file (``kind`` names what the file should be)."""
    fix = "delete it and evaluate again to retrain the classifier"
    state = load_weights_file(cache, what=f"{metric} classifier cache", fix=fix)
    if not isinstance(state, dict) or state.get("format") != fmt:
        problem = f"not a {kind} cache of this vaeflow (no 'format' = {fmt})"
    else:
        problem = extra(state) if extra is not None else None
    if problem is None and (not isinstance(state.get("accuracy"), float) or not 0.0 <= state["accuracy"] <= 1.0):
        problem = "its 'accuracy' is not a number in [0, 1]"
    if problem is None:
        problem = state_dict_problem(state.get("model"), net.state_dict())
    if problem is not None:
        raise VaeflowError(f"{metric} classifier cache {cache} is unusable: {problem}; {fix}")
    net.load_state_dict(state["model"])
    net.eval()
    return state["accuracy"]


def write_cache(path: Path, write, what: str) -> None:
    """Write the cache file ``path`` atomically (``write(fileobj)``, as ``files.atomic_write``).
    A cache is an aid, not a result: one that cannot be written (a read-only run directory) is one
    warning line, and the work is done again next time."""
    from vaeflow_cli.console import warning
    from vaeflow_cli.errors import RuntimeFailure
    from vaeflow_cli.files import atomic_write

    try:
        atomic_write(path, write)
    except RuntimeFailure as exc:
        warning(f"{what} was not cached ({exc}); it is computed again next time")
