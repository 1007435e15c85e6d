"""Where FID finds the Inception weights: --fid-weights, then $VAEFLOW_FID_WEIGHTS, then the copy that
pytorch-fid or torch-fidelity downloaded into the torch hub cache ($TORCH_HOME/hub/checkpoints),
each checked the same way (weights-only load, the network's keys and shapes)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.evaluation import fid

PYTORCH_FID = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY = "weights-inception-2015-12-05-6726825d.pth"


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub checkpoint directory under TORCH_HOME, and no VAEFLOW_FID_WEIGHTS."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


@pytest.fixture()
def checked(monkeypatch):
    """build_extractor replaced by a recorder: the discovery order without building the network."""
    seen = []
    monkeypatch.setattr(fid, "build_extractor", lambda path, device="cpu": seen.append(path))
    return seen


def test_the_hub_directory_follows_torch_home(hub):
    assert fid.hub_checkpoint_dir() == hub
    assert [name for name, _ in fid.HUB_WEIGHTS_FILES] == [PYTORCH_FID, TORCH_FIDELITY]


def test_not_found_lists_every_place_looked(hub):
    with pytest.raises(VaeflowError) as exc:
        fid.weights_path(None)
    msg = str(exc.value)
    assert "\n" not in msg
    for words in (
        "--fid-weights",
        fid.WEIGHTS_ENV,
        str(hub / PYTORCH_FID),
        str(hub / TORCH_FIDELITY),
        "pytorch-fid",
        "torch-fidelity",
        fid.WEIGHTS_URL,
    ):
        assert words in msg, (words, msg)


def test_discovery_order(hub, tmp_path, monkeypatch, checked):
    (hub / TORCH_FIDELITY).write_bytes(b"x")
    assert fid.weights_path(None) == hub / TORCH_FIDELITY  # torch-fidelity's download alone
    (hub / PYTORCH_FID).write_bytes(b"x")
    assert fid.weights_path(None) == hub / PYTORCH_FID  # pytorch-fid's name (vaeflow's documented file) first
    env_file, option = tmp_path / "env.pth", tmp_path / "option.pth"
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(env_file))
    assert fid.weights_path(None) == env_file  # the environment before the hub
    assert fid.weights_path(str(option)) == option  # the option before everything
    assert checked == [hub / TORCH_FIDELITY, hub / PYTORCH_FID, env_file, option]  # every found file is checked


def test_a_bad_file_in_the_hub_is_one_line_naming_it_and_never_unpickled(hub, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"fc.weight": Evil()}, hub / TORCH_FIDELITY)
    with pytest.raises(VaeflowError) as exc:
        fid.weights_path(None)
    assert str(hub / TORCH_FIDELITY) in str(exc.value) and "pickled Python objects" in str(exc.value)
    assert not marker.exists()
    (hub / PYTORCH_FID).write_bytes(b"")  # found first, and empty: named, not skipped
    with pytest.raises(VaeflowError, match=f"{PYTORCH_FID} is empty"):
        fid.weights_path(None)


def test_a_hub_file_of_the_network_s_keys_and_shapes_is_accepted(hub):
    """The real validation path, on a tiny file: the network's own state dict as zero tensors
    expanded to their shapes (torch.save keeps one number per tensor)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with (
        mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
    ):
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save({k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in net.state_dict().items()}, hub / TORCH_FIDELITY)
    assert (hub / TORCH_FIDELITY).stat().st_size < 1_000_000
    assert fid.weights_path(None) == hub / TORCH_FIDELITY
