"""FID (Heusel et al., 2017): the Frechet distance between Gaussians fitted to Inception-v3 pool
features of two image sets.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` ("inception-v3-compat"): a port of
the TensorFlow FID graph, with its TF1-compatible bilinear resize to 299x299, that loads the
``pt_inception-2015-12-05`` weights used by pytorch-fid and torch-fidelity, so the numbers are
comparable with the literature. vaeflow never downloads them: the file comes from ``--fid-weights``
or ``$VAEFLOW_FID_WEIGHTS``, and it is loaded with ``weights_only=True`` (no unpickling of code).
The Frechet arithmetic is here (and tested against closed forms).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from vaeflow_cli.errors import VaeflowError

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
WEIGHTS_SHA256_PREFIX = "6726825d"  # the hash prefix in the file's published name
WEIGHTS_ENV = "VAEFLOW_FID_WEIGHTS"
FEATURE_DIM = 2048


def weights_path(option: str | Path | None) -> Path:
    """The Inception weights file from the option, else the environment; one clear error if absent."""
    value = option or os.environ.get(WEIGHTS_ENV)
    how = (f"download {WEIGHTS_URL} on a machine with network access, copy it here, and pass "
           f"--fid-weights PATH or set {WEIGHTS_ENV}=PATH")
    if not value:
        raise VaeflowError(f"fid needs the Inception-v3 FID weights {WEIGHTS_FILE}; {how}")
    path = Path(value)
    if not path.is_file():
        raise VaeflowError(f"fid weights file {path} not found (expected {WEIGHTS_FILE}); {how}")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_extractor(path: Path, device="cpu"):
    """torch-fidelity's FID Inception-v3 with the weights at ``path``, in eval mode on ``device``."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity calls torch.load(path) itself; this makes that call weights-only.
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", [str(FEATURE_DIM)], feature_extractor_weights_path=str(path))
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise VaeflowError(f"fid weights file {path} cannot be loaded ({first}); it must be {WEIGHTS_FILE} ({WEIGHTS_URL})") from None
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
    return net.to(torch.device(device)).eval()


def features(net, images: np.ndarray, *, batch_size: int = 100) -> np.ndarray:
    """Pool features (N, 2048) float64 of uint8 images (N, C, H, W), C in {1, 3} (grey repeated)."""
    import torch

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, 1|3, H, W) images, got {images.dtype} {images.shape}")
    device = next(net.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)  # a writable copy
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            out.append(net(x)[0].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


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
