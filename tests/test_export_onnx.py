"""export_onnx.py: the ONNX graph computes what PyTorch fp32 computes, at any size and batch."""

import functools

import numpy as np
import pytest
import torch

import checkpoint
import models
from conftest import TINY, cli, load_script

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
export_onnx = load_script("export_onnx")


run = functools.partial(cli, export_onnx.main)  # the exit code of the command line with these flags


def tiny_file(tmp_path, arch, scale):
    torch.manual_seed(scale)
    model = models.build_model(arch, dict(TINY, scaling_factor=scale))
    # BatchNorm statistics that are not the identity, so that folding them is tested too
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / f"{arch}_x{scale}.pth"
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model), path)
    return path


@pytest.mark.parametrize("arch, scale, exporter", [pytest.param("SRResNet", 4, "dynamo", marks=pytest.mark.slow),
                                                   pytest.param("Generator", 2, "dynamo", marks=pytest.mark.slow),
                                                   ("SRResNet", 2, "torchscript")])
def test_onnx_matches_pytorch_on_odd_sizes_and_batches(tmp_path, capsys, arch, scale, exporter):
    ckpt = tiny_file(tmp_path, arch, scale)
    out = tmp_path / "model.onnx"
    assert run([ckpt, out, "--exporter", exporter]) == 0
    assert "max abs difference" in capsys.readouterr().out
    model = checkpoint.load_model(ckpt)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 13, 21), (2, 3, 9, 5)]:  # neither the export's size nor square, batch of 2
        x = torch.randn(shape)
        got = session.run(["sr"], {"lr": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
        diff = np.abs(got - expected).max()
        print(f"{arch} x{scale} {exporter} {shape}: max abs diff {diff:.2g}")
        assert diff <= 1e-4
    meta = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
    assert meta["scale"] == str(scale) and meta["arch"] == arch


def test_max_difference_sees_a_wrong_graph(tmp_path):
    # the built-in check is not vacuous: a graph of other weights fails it (the older exporter:
    # the check does not depend on which one made the graph, and it exports in a second, not five)
    a = models.SRResNet(**TINY).eval()
    b = models.SRResNet(**TINY).eval()
    assert export_onnx.max_difference(export_onnx.export(a, exporter="torchscript"), a) <= 1e-4
    assert export_onnx.max_difference(export_onnx.export(b, exporter="torchscript"), a) > 1e-2


@pytest.mark.filterwarnings("ignore::UserWarning")  # the old exporter's notes about opset 1
def test_errors_are_one_line_and_write_nothing(tmp_path, capsys, tiny_checkpoint):
    """Also: the output is never the input (itself or through a link), and the temporaries of a killed
    export are removed (a run that fails after the clean-up)."""
    disc = tmp_path / "disc.pth"
    checkpoint.save_checkpoint({"format_version": 1, "discriminator": checkpoint.model_spec(models.Discriminator())},
                               disc)
    (tmp_path / "folder.onnx").mkdir()
    own = tmp_path / "x.pth"
    own.write_bytes(tiny_checkpoint.read_bytes())
    (tmp_path / "link.onnx").symlink_to(own)
    (tmp_path / ".a.onnx.abc.tmp").write_bytes(b"")
    cases = [([tmp_path / "missing.pth", tmp_path / "a.onnx"], "no such file"),
             ([tmp_path, tmp_path / "a.onnx"], "is a folder"),
             ([disc, tmp_path / "a.onnx"], "holds no super-resolution model"),
             ([tiny_checkpoint, tmp_path / "folder.onnx"], "folder is in the way"),
             ([own, own], f"error: {own}: this output is the input"),
             ([own, tmp_path / "link.onnx"], f"error: {tmp_path / 'link.onnx'}: this output is the input"),
             ([tiny_checkpoint, tmp_path / "a.onnx", "--opset", "13"], "opset 18 or newer"),
             ([tiny_checkpoint, tmp_path / "a.onnx", "--opset", "1", "--exporter", "torchscript"], "export failed")]
    for argv, message in cases:
        assert run(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert own.read_bytes() == tiny_checkpoint.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.pth", "folder.onnx", "link.onnx", "x.pth"]
