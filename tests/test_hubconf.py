"""hubconf.py: torch.hub.load of a clone gives the shipped model, fresh paper models, clear errors."""

import sys
import types

import pytest
import torch

import checkpoint
import models
from conftest import ROOT, load_script


def hub_load(entry, **kwargs):
    return torch.hub.load(str(ROOT), entry, source="local", **kwargs)


def test_pretrained_srresnet_is_the_shipped_model_and_fresh_models_have_the_papers_defaults():
    pretrained = hub_load("srresnet", pretrained=True)
    assert isinstance(pretrained, models.SRResNet)  # the project's class, not a second copy of it
    assert not pretrained.training
    shipped = checkpoint.load_checkpoint(ROOT / "checkpoints" / "srresnet_x4.pth")["model"]["state_dict"]
    state = pretrained.state_dict()
    assert state.keys() == shipped.keys()
    assert all(torch.equal(state[k], shipped[k]) for k in shipped)
    with torch.no_grad():
        out = pretrained(torch.randn(1, 3, 7, 9))
    assert out.shape == (1, 3, 28, 36)
    fresh = hub_load("srresnet", pretrained=False)
    assert sum(p.numel() for p in fresh.parameters()) == 1_549_462
    assert fresh.args["scaling_factor"] == 4
    assert not torch.equal(fresh.conv_block1.conv_block[0].weight, pretrained.conv_block1.conv_block[0].weight)
    for entry, cls, count in (("generator", models.Generator, 1_549_462),
                              ("discriminator", models.Discriminator, 23_565_505)):
        model = hub_load(entry)
        assert isinstance(model, cls) and sum(p.numel() for p in model.parameters()) == count
    assert hub_load("srresnet", scaling_factor=2, n_blocks=1).args["scaling_factor"] == 2


@pytest.mark.parametrize("entry, kwargs, message", [
    ("generator", dict(pretrained=True), "the trained SRGAN generator is the 'srgan' entry"),
    ("discriminator", dict(pretrained=True), "no pretrained discriminator weights are shipped"),
    ("srresnet", dict(pretrained=True, scaling_factor=2), "pretrained=False"),  # other arguments with pretrained
    ("srresnet", dict(n_blocks=0), "out of range"), ("generator", dict(small_kernel_size=4), "must be odd"),
    ("discriminator", dict(n_channels=0), "out of range"), ("discriminator", dict(n_blocks=0), "out of range")])
def test_clear_errors_for_no_shipped_weights_and_bad_sizes(entry, kwargs, message):
    with pytest.raises(ValueError, match=message):
        hub_load(entry, **kwargs)


def test_srgan_entry(tmp_path, monkeypatch):
    """srgan: a fresh Generator, or the shipped generator file (here a stand-in) in eval mode; a clear
    error where that file is absent."""
    hubconf = load_script("hubconf")
    assert isinstance(hubconf.srgan(), models.Generator) and hubconf.srgan().training
    shipped = hubconf.srgan(pretrained=True)  # checkpoints/srgan_mse_x4.pth
    assert isinstance(shipped, models.Generator) and not shipped.training
    monkeypatch.setattr(hubconf, "SHIPPED_SRGAN", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="no pretrained SRGAN generator weights are shipped"):
        hubconf.srgan(pretrained=True)
    torch.manual_seed(0)
    stand_in = models.Generator(n_blocks=1, n_channels=8)
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(stand_in), tmp_path / "gan.pth")
    monkeypatch.setattr(hubconf, "SHIPPED_SRGAN", str(tmp_path / "gan.pth"))
    loaded = hubconf.srgan(pretrained=True)
    assert isinstance(loaded, models.Generator) and not loaded.training
    assert torch.equal(loaded.net.conv_block1.conv_block[0].weight, stand_in.net.conv_block1.conv_block[0].weight)


def test_entry_points_and_docstrings():
    # what torch.hub.list and torch.hub.help show (they read GitHub repositories only)
    hubconf = load_script("hubconf")
    entries = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert entries == {"srresnet", "srgan", "generator", "discriminator"}
    assert hubconf.dependencies == ["torch", "torchvision"]
    assert "shipped x4" in hubconf.srresnet.__doc__
    assert all(getattr(hubconf, name).__doc__ for name in entries)


def test_loads_where_other_modules_named_models_and_utils_are_imported(monkeypatch):
    # a user's own project often has its own 'models' and 'utils' modules
    foreign_models, foreign_utils = types.ModuleType("models"), types.ModuleType("utils")
    monkeypatch.setitem(sys.modules, "models", foreign_models)
    monkeypatch.setitem(sys.modules, "utils", foreign_utils)
    monkeypatch.delitem(sys.modules, "checkpoint")
    model = hub_load("srresnet", pretrained=True)
    assert type(model).__name__ == "SRResNet" and not model.training
    assert sys.modules["models"] is foreign_models and sys.modules["utils"] is foreign_utils


def test_a_copy_elsewhere_loads_its_own_weights_whatever_the_working_directory(tmp_path, monkeypatch):
    # what torch.hub does with a GitHub repository: it unpacks a copy and loads that copy locally
    import shutil

    copy = tmp_path / "owner_repo_main"
    (copy / "checkpoints").mkdir(parents=True)
    for name in ("hubconf.py", "models.py", "checkpoint.py", "utils.py"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copy(ROOT / "checkpoints" / "srresnet_x4.pth", copy / "checkpoints" / "srresnet_x4.pth")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = torch.hub.load(str(copy), "srresnet", source="local", pretrained=True)
    assert type(model).forward.__code__.co_filename == str(copy / "models.py") and not model.training
    assert sys.modules["models"].__file__ == str(ROOT / "models.py")  # the tests' own modules are left alone
    # the copy's weights, not the clone's: a copy without them fails, naming the file
    (copy / "checkpoints" / "srresnet_x4.pth").unlink()
    with pytest.raises(Exception, match="srresnet_x4.pth: no such file"):
        torch.hub.load(str(copy), "srresnet", source="local", pretrained=True)
