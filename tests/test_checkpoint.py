"""Checkpoint files: atomic saving, weights-only loading, load_model."""

import os
import random

import pytest
import torch

import checkpoint
import models
import utils
from conftest import TINY, full_disk


def test_save_checkpoint_is_atomic_and_a_full_disk_is_a_user_error(tmp_path, monkeypatch):
    """A save that fails half-way leaves the old file whole and no temporary file. torch.save reports a
    failed write as a RuntimeError; the user sees the disk problem."""
    path = tmp_path / "ck.pth"
    checkpoint.save_checkpoint({"format_version": 1, "x": torch.arange(3)}, path)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save_checkpoint({"format_version": 1, "x": torch.arange(5)}, path)
    monkeypatch.undo()
    with full_disk("write"), pytest.raises(utils.UserError, match=r"ck.pth: cannot write \(No space left on device\)"):
        checkpoint.save_checkpoint(checkpoint.inference_checkpoint(models.SRResNet(**TINY)), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pth"]
    assert torch.equal(checkpoint.load_checkpoint(path)["x"], torch.arange(3))


def test_load_checkpoint_errors(tmp_path):
    """Whatever a bad file holds (these, then 40 of random bytes), loading it is a UserError naming it."""
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    torch.save({"a": torch.zeros(1)}, tmp_path / "foreign.pth")
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(models.SRResNet(**TINY)), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    for name, message in [("none.pth", "no such file"), ("junk.pth", "junk.pth: not a PyTorch checkpoint"),
                          ("foreign.pth", "not a checkpoint of this project"), ("cut.pth", "cut.pth")]:
        with pytest.raises(utils.UserError, match=message):
            checkpoint.load_checkpoint(tmp_path / name)
    for seed in range(40):
        path = tmp_path / f"r{seed}.pth"
        rng = random.Random(seed)
        data = rng.randbytes(rng.randrange(1, 3000))
        if seed % 2:  # start like a pickle so that the unpickler gets further
            data = b"\x80\x02" + data
        path.write_bytes(data)
        with pytest.raises(utils.UserError, match=f"r{seed}.pth"):
            checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("cls, cuda_tagged", [(models.SRResNet, False), (models.Generator, False),
                                              (models.SRResNet, True)])
def test_load_model_round_trip(tmp_path, monkeypatch, cls, cuda_tagged):
    """cuda_tagged: a file whose tensors are tagged 'cuda:0' (as when saved on a GPU) loads on a CPU."""
    torch.manual_seed(0)
    model = cls(**TINY)
    with torch.no_grad():  # non-trivial BN statistics so that eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    model.eval()
    path = tmp_path / "m.pth"
    if cuda_tagged and torch.cuda.is_available():
        checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model.cuda()), path)
        model.cpu()
    elif cuda_tagged:
        # without a GPU, write the same file by tagging every storage with the CUDA location
        monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint.inference_checkpoint(model), path)
        monkeypatch.undo()
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a plain load does on this machine
    else:
        checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model), path)
    loaded = checkpoint.load_model(path, device="cpu")
    assert type(loaded) is cls and not loaded.training
    x = torch.randn(1, 3, 11, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("version, ok", [(1, True), (1.0, True), (1.5, False), ("1", False), (None, False),
                                         (True, False)])
def test_format_version_must_be_a_whole_number(tmp_path, version, ok):
    path = tmp_path / "c.pth"
    ckpt = checkpoint.inference_checkpoint(models.SRResNet(**TINY))
    checkpoint.save_checkpoint(dict(ckpt, format_version=version), path)
    if ok:
        assert isinstance(checkpoint.load_model(path), models.SRResNet)
    else:
        with pytest.raises(utils.UserError, match=f"c.pth: malformed checkpoint: format_version is {version!r}, not a "
                                                  "version number"):
            checkpoint.load_model(path)


BUILD, FIT = "malformed checkpoint: cannot build", "the weights do not fit"


@pytest.mark.parametrize("change, kind, message", [
    (dict(n_channels="8"), BUILD, "n_channels='8' is not a whole number"),
    (dict(wings=2), BUILD, "unexpected keyword argument 'wings'"),
    (dict(n_blocks=-1), BUILD, "n_blocks=-1 is out of range"),
    (dict(n_blocks=10**9), BUILD, "n_blocks=1000000000 is out of range"),  # a size bomb: refused before building
    (dict(small_kernel_size=4), BUILD, "small_kernel_size=4 must be odd"),
    (dict(n_blocks=900), FIT, r": missing residual_blocks\.2\."),  # within the bounds, but not what the file holds
    (dict(n_channels=4096), FIT, r"has shape \(8, 3, 9, 9\), the arguments make \(4096, 3, 9, 9\)"),
    (None, FIT, r": missing residual_blocks\.1\.conv_block1.* \.\.\.$")])  # None: a block's weights removed
def test_malformed_or_misfitting_model_entries_are_one_line_naming_the_problem(tmp_path, change, kind, message):
    good = checkpoint.inference_checkpoint(models.SRResNet(**TINY))
    if change is None:
        state = {k: v for k, v in good["model"]["state_dict"].items() if not k.startswith("residual_blocks.1.")}
        model = dict(good["model"], state_dict=state)
    else:
        model = dict(good["model"], args=dict(TINY, **change))
    checkpoint.save_checkpoint(dict(good, model=model), tmp_path / "c.pth")
    with pytest.raises(utils.UserError, match=f"c.pth: {kind} SRResNet.*{message}") as e:
        checkpoint.load_model(tmp_path / "c.pth")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_naming_the_entry(tmp_path, bad):
    torch.manual_seed(0)
    net = models.SRResNet(**TINY)
    with torch.no_grad():
        net.conv_block2.conv_block[1].running_var[0] = bad
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(net), tmp_path / "c.pth")
    with pytest.raises(utils.UserError, match=r"c.pth: its 'model' weights are not finite \(NaN or inf in "
                                              r"conv_block2\.conv_block\.1\.running_var\)"):
        checkpoint.load_model(tmp_path / "c.pth")


def test_load_model_says_once_which_weights_of_a_file_with_an_average_it_uses(tmp_path, capsys):
    net = models.SRResNet(**TINY)
    ckpt = dict(checkpoint.inference_checkpoint(net), ema=checkpoint.model_spec(net))
    checkpoint.save_checkpoint(ckpt, tmp_path / "latest.pth")
    checkpoint.load_model(tmp_path / "latest.pth")
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "the trained weights are used" in err and "--ema" in err
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(net), tmp_path / "plain.pth")
    checkpoint.load_model(tmp_path / "plain.pth")
    assert capsys.readouterr().err == ""
