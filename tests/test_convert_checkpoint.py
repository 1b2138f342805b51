"""Importing classic tutorial checkpoints without running their pickled code."""

import os
import pickle

import pytest
import torch

import checkpoint
import convert_checkpoint
import models
import utils
from conftest import TINY, cli_error


def _classic_checkpoint(tmp_path, legacy_format):
    """A checkpoint as the classic tutorial saved it: whole pickled model (and optimizer) objects."""
    torch.manual_seed(0)
    model = models.SRResNet(**TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(1, 3, 8, 8)).mean().backward()
    optimizer.step()
    gen = models.Generator(**TINY)
    disc = models.Discriminator(n_channels=8, fc_size=16)
    for m in (model, gen, disc):  # the classic classes had no `args` attribute
        del m.args
    path = tmp_path / ("legacy.pth.tar" if legacy_format else "zip.pth.tar")
    torch.save({"epoch": 7, "model": model, "optimizer": optimizer}, path,
               _use_new_zipfile_serialization=not legacy_format)
    gan_path = tmp_path / "gan.pth.tar"
    torch.save({"epoch": 3, "generator": gen, "discriminator": disc}, gan_path)
    return model, path, gen, disc, gan_path


@pytest.mark.parametrize("legacy_format", [False, True])
def test_import_classic_checkpoint(tmp_path, legacy_format):
    model, path, gen, disc, gan_path = _classic_checkpoint(tmp_path, legacy_format)
    with pytest.raises(utils.UserError, match="python convert_checkpoint.py"):
        checkpoint.load_model(path)  # plain loading refuses pickled objects and says what to do
    convert_checkpoint.main([str(path), str(tmp_path / "new.pth")])
    loaded = checkpoint.load_model(tmp_path / "new.pth")
    assert loaded.args == TINY
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    ckpt = convert_checkpoint.main([str(gan_path), str(tmp_path / "gan.pth")])
    assert ckpt["model"]["arch"] == "Generator" and ckpt["discriminator"]["args"]["fc_size"] == 16
    assert isinstance(checkpoint.load_model(tmp_path / "gan.pth"), models.Generator)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_import_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 1, "model": _Evil(marker)}, path)
    with pytest.raises(utils.UserError, match="refused"):
        convert_checkpoint.main([str(path), str(tmp_path / "out.pth")])
    with pytest.raises(utils.UserError, match="refused"):
        checkpoint.load_model(path)
    assert not marker.exists()
    assert not (tmp_path / "out.pth").exists()
    # the same with a plain pickle file (no zip container)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    with pytest.raises(utils.UserError):
        convert_checkpoint.main([str(raw), str(tmp_path / "out.pth")])
    assert not marker.exists()


def test_allow_list_holds_only_what_the_tutorial_pickles():
    allowed = {name for _, name in convert_checkpoint._allowed_globals()}
    assert "TruncatedVGG19" not in allowed and "ReLU" not in allowed and "MaxPool2d" not in allowed
    assert {"SRResNet", "Generator", "Discriminator", "Adam"} <= allowed


def test_ema_takes_the_moving_average_of_a_training_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    trained, averaged = models.SRResNet(**TINY), models.SRResNet(**TINY)
    src = tmp_path / "latest.pth"
    checkpoint.save_checkpoint({**checkpoint.inference_checkpoint(trained), "ema": checkpoint.model_spec(averaged),
                                "training": {"args": {"ema": 0.999}}}, src)
    convert_checkpoint.main([str(src), str(tmp_path / "ema.pth"), "--ema"])
    convert_checkpoint.main([str(src), str(tmp_path / "model.pth")])
    for name, model in (("ema", averaged), ("model", trained)):
        out = checkpoint.load_checkpoint(tmp_path / f"{name}.pth")
        assert set(out) == {"format_version", "model", "info"}
        for key, value in model.state_dict().items():
            assert torch.equal(out["model"]["state_dict"][key], value), (name, key)
    assert checkpoint.load_checkpoint(tmp_path / "ema.pth")["info"] == {"converted_from": src.name, "ema": 0.999}
    # a file without an average: one line, nothing written
    plain = tmp_path / "plain.pth"
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(trained), plain)
    _, tutorial, *_ = _classic_checkpoint(tmp_path, False)
    for source, message in ((plain, "plain.pth: --ema: holds no moving average"),
                            # a best file of a run with --ema already is the average: said so
                            (tmp_path / "ema.pth", "ema.pth: --ema: its weights already are the moving average "
                                                   "(its info says ema 0.999)"),
                            (tutorial, "--ema: a tutorial checkpoint holds no moving average")):
        assert message in cli_error(convert_checkpoint.main, [source, tmp_path / "none.pth", "--ema"], capsys)
        assert not (tmp_path / "none.pth").exists()


def _pickle_calling(module, name, *args, protocol=2):
    """Pickle bytes of {'model': module.name(*args)}, written opcode by opcode (GLOBAL, REDUCE)."""
    def text(s):
        return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()
    encoded = b"".join(text(a) if isinstance(a, str) else b"\x89" if a is False else b"K" + bytes([a]) for a in args)
    return (bytes([0x80, protocol]) + b"}" + text("model") + f"c{module}\n{name}\n".encode() + b"(" + encoded
            + b"tRs.")


def test_a_crafted_pickle_cannot_download_or_read_files_through_the_allow_list(tmp_path, monkeypatch):
    downloads = []
    monkeypatch.setattr(models, "_imagenet_vgg19_state_dict", lambda: downloads.append("vgg19") or {})
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: downloads.append(a))
    crafted = {  # {the global called: the pickle}
        # the VGG loss network downloads ImageNet weights when built: not a class the tutorial pickles
        "models.TruncatedVGG19": _pickle_calling("models", "TruncatedVGG19", 5, 4),
        # protocol 4 resolves dotted names: this maps /etc/passwd into a storage
        "torch.storage.UntypedStorage.from_file": _pickle_calling(
            "torch.storage", "UntypedStorage.from_file", "/etc/passwd", False, 100, protocol=4),
        "torch.hub.load_state_dict_from_url": _pickle_calling("torch.hub", "load_state_dict_from_url",
                                                              "http://example.invalid/x.pth"),
        "builtins.getattr": _pickle_calling("builtins", "getattr", "x", "y"),
    }
    # the crafted files are real attacks: an unrestricted unpickler does what they ask
    with pytest.raises(ValueError):  # (the stand-in download returns no weights)
        pickle.loads(crafted["models.TruncatedVGG19"])
    assert downloads == ["vgg19"]
    assert pickle.loads(crafted["torch.storage.UntypedStorage.from_file"])["model"].nbytes() == 100
    downloads.clear()
    for name, data in crafted.items():
        path = tmp_path / f"{name}.pth.tar"
        path.write_bytes(data)
        with pytest.raises(utils.UserError, match=f"{name}.pth.tar: refused: GLOBAL {name} "):
            convert_checkpoint.main([str(path), str(tmp_path / "out.pth")])
    # an allowed class called with a path builds nothing from it
    path = tmp_path / "odd.pth.tar"
    path.write_bytes(_pickle_calling("models", "SRResNet", "/etc/passwd"))
    with pytest.raises(utils.UserError, match="odd.pth.tar: not a readable PyTorch file"):
        convert_checkpoint.main([str(path), str(tmp_path / "out.pth")])
    assert downloads == []
    assert not (tmp_path / "out.pth").exists()


def test_the_output_is_never_the_source(tmp_path, capsys, tiny_checkpoint):
    own = tmp_path / "x.pth"
    own.write_bytes(tiny_checkpoint.read_bytes())
    os.link(own, tmp_path / "hard.pth")
    for output in (own, tmp_path / "hard.pth"):
        assert "this output is the input" in cli_error(convert_checkpoint.main, [own, output], capsys)
    assert own.read_bytes() == tiny_checkpoint.read_bytes()


def test_a_training_checkpoint_becomes_an_inference_file_with_info_and_a_state_dict_is_imported(tmp_path, capsys):
    """The info record: made from the training entry, or the file's own plus --info KEY=VALUE."""
    torch.manual_seed(0)
    net = models.SRResNet(**TINY)
    ckpt = {"format_version": 1, "model": checkpoint.model_spec(net),
            "training": {"script": "srresnet", "iteration": 7, "args": {"lr": 1e-4, "ema": 0.0}}}
    checkpoint.save_checkpoint(ckpt, tmp_path / "latest.pth")
    convert_checkpoint.main([str(tmp_path / "latest.pth"), str(tmp_path / "out.pth")])
    info = checkpoint.load_checkpoint(tmp_path / "out.pth")["info"]
    assert (info["script"], info["iteration"], info["lr"], info["converted_from"]) == (
        "train_srresnet.py", 7, 1e-4, "latest.pth")
    src = tmp_path / "with_info.pth"
    checkpoint.save_checkpoint({**checkpoint.inference_checkpoint(net, {"a": 1}), "training": {"x": 1}}, src)
    convert_checkpoint.main([str(src), str(tmp_path / "inference.pth"), "--info", "b=2.5", "c=text"])
    out = checkpoint.load_checkpoint(tmp_path / "inference.pth")
    assert "training" not in out and out["info"] == {"a": 1, "b": 2.5, "c": "text"}
    gen = models.Generator(**TINY)
    for model, name in ((net, "bare.pth"), (gen, "bare_gen.pth")):
        torch.save(model.state_dict(), tmp_path / name)
        convert_checkpoint.main([str(tmp_path / name), str(tmp_path / f"new_{name}")])
        loaded = checkpoint.load_model(tmp_path / f"new_{name}")
        assert type(loaded) is type(model) and loaded.args == model.args
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    line = cli_error(convert_checkpoint.main, [tmp_path / "other.pth", tmp_path / "x.pth"], capsys)
    assert "a state dict, but not of an SRResNet" in line and "convert_checkpoint.py" not in line
