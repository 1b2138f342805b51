"""Checkpoint files: atomic saving, weights-only loading, load_model."""

import os

import pytest
import torch

import checkpoint
import models
import utils
from conftest import TINY, full_disk


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    checkpoint.save_checkpoint({"format_version": 1, "x": torch.arange(3)}, path)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save_checkpoint({"format_version": 1, "x": torch.arange(5)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pth"]  # no temporary file left behind
    monkeypatch.undo()
    assert torch.equal(checkpoint.load_checkpoint(path)["x"], torch.arange(3))


def test_load_checkpoint_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    torch.save({"a": torch.zeros(1)}, tmp_path / "foreign.pth")
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(models.SRResNet(**TINY)), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    for name, message in [("none.pth", "no such file"), ("junk.pth", "junk.pth: not a PyTorch checkpoint"),
                          ("foreign.pth", "not a checkpoint of this project"), ("cut.pth", "cut.pth")]:
        with pytest.raises(utils.UserError, match=message):
            checkpoint.load_checkpoint(tmp_path / name)


def test_random_bytes_always_give_a_user_error(tmp_path):
    """Whatever a corrupt file holds, loading it is a one-line UserError, never another exception."""
    import random

    for seed in range(40):
        path = tmp_path / f"r{seed}.pth"
        rng = random.Random(seed)
        data = rng.randbytes(rng.randrange(1, 3000))
        if seed % 2:  # start like a pickle so that the unpickler gets further
            data = b"\x80\x02" + data
        path.write_bytes(data)
        with pytest.raises(utils.UserError, match=f"r{seed}.pth"):
            checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("cls", [models.SRResNet, models.Generator])
def test_load_model_round_trip(tmp_path, cls):
    torch.manual_seed(0)
    model = cls(**TINY)
    with torch.no_grad():  # non-trivial BN statistics so that eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    model.eval()
    path = tmp_path / "m.pth"
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model), path)
    loaded = checkpoint.load_model(path)
    assert type(loaded) is cls and not loaded.training
    x = torch.randn(1, 3, 11, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_model_from_a_cuda_saved_file_on_cpu(tmp_path, monkeypatch):
    """A file whose tensors are tagged 'cuda:0' (as when saved on a GPU) loads on a CPU-only machine."""
    model = models.SRResNet(**TINY).eval()
    path = tmp_path / "cuda.pth"
    if torch.cuda.is_available():
        checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model.cuda()), path)
        model.cpu()
    else:
        # without a GPU, write the same file by tagging every storage with the CUDA location
        monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        ckpt = checkpoint.inference_checkpoint(model)
        torch.save(ckpt, path)
        monkeypatch.undo()
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a plain load does on this machine
    loaded = checkpoint.load_model(path, device="cpu")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_full_disk_while_saving_is_a_user_error(tmp_path):
    """torch.save reports a failed write as a RuntimeError; the user sees the disk problem."""
    with full_disk("write"), pytest.raises(utils.UserError, match=r"ck.pth: cannot write \(No space left on device\)"):
        checkpoint.save_checkpoint(checkpoint.inference_checkpoint(models.SRResNet(**TINY)), tmp_path / "ck.pth")
    assert os.listdir(tmp_path) == []


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


def test_malformed_model_entries_are_named(tmp_path):
    good = checkpoint.inference_checkpoint(models.SRResNet(**TINY))
    cases = [({"args": dict(TINY, n_channels="8")}, "n_channels='8' is not a whole number"),
             ({"args": dict(TINY, wings=2)}, "unexpected keyword argument 'wings'"),
             ({"args": dict(TINY, n_blocks=-1)}, "n_blocks=-1 is out of range")]
    for change, message in cases:
        checkpoint.save_checkpoint(dict(good, model=dict(good["model"], **change)), tmp_path / "c.pth")
        with pytest.raises(utils.UserError, match=f"c.pth: malformed checkpoint: cannot build SRResNet.*{message}"):
            checkpoint.load_model(tmp_path / "c.pth")
    state = {k: v for k, v in good["model"]["state_dict"].items() if not k.startswith("residual_blocks.1.")}
    checkpoint.save_checkpoint(dict(good, model=dict(good["model"], state_dict=state)), tmp_path / "c.pth")
    with pytest.raises(utils.UserError, match=r"c.pth: the weights do not fit SRResNet.*: missing "
                                              r"residual_blocks\.1\.conv_block1.* \.\.\.$"):
        checkpoint.load_model(tmp_path / "c.pth")


@pytest.mark.parametrize("change, message", [
    (dict(n_blocks=10**9), "n_blocks=1000000000 is out of range"),  # a size bomb: refused before building
    (dict(n_blocks=900), "missing residual_blocks.2."),  # within the bound, but not what the file holds
    (dict(n_channels=4096), "has shape (8, 3, 9, 9), the arguments make (4096, 3, 9, 9)"),
    (dict(small_kernel_size=4), "small_kernel_size=4 must be odd")])
def test_sizes_that_the_weights_do_not_have_are_refused_before_anything_is_built(tmp_path, change, message):
    good = checkpoint.inference_checkpoint(models.SRResNet(**TINY))
    checkpoint.save_checkpoint(dict(good, model=dict(good["model"], args=dict(TINY, **change))), tmp_path / "c.pth")
    with pytest.raises(utils.UserError, match="c.pth: ") as e:
        checkpoint.load_model(tmp_path / "c.pth")
    assert message in str(e.value) and "\n" not in str(e.value)


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
