"""Export the generator of a checkpoint to ONNX, with dynamic batch size, height and width.

    python export_onnx.py checkpoints/srresnet_x4.pth srresnet_x4.onnx

The graph is the fp32 inference model (BatchNorm folded into the convolutions, as inference.py
runs it). Input ``lr``: ImageNet-normalised RGB, float32 (N, 3, h, w); output ``sr``:
(N, 3, h * scale, w * scale) in [-1, 1]. If onnxruntime is installed, the file is checked against
PyTorch on a random odd-sized input before it is written. The graph is the network alone: to get
this project's outputs at the image edges, mirror 10 LR pixels around the input first (numpy's
``np.pad(..., mode="symmetric")``) and cut 10 * scale pixels from each side of the output
(inference.PRE_PAD, docs/artifacts.md).
"""

import inspect
import io
import logging
import warnings

import numpy as np
import torch

import checkpoint
import inference
import utils

TOLERANCE = 1e-4  # max abs difference to PyTorch fp32 accepted by the check (on [-1, 1])


def export(model, opset=18, exporter="dynamo"):
    """The ONNX file (bytes) of an SRResNet / Generator, with metadata saying how to use it.

    Args:
        model: the model (not modified).
        opset: ONNX opset version.
        exporter: 'dynamo' (torch.export based, needs onnxscript) or 'torchscript' (the older
            tracing exporter).
    """
    try:
        import onnx
    except ImportError:
        raise utils.UserError("the ONNX export needs the onnx package: pip install onnx onnxscript") from None
    scale = model.scaling_factor
    net = inference.prepare_model(model, "cpu", "fp32", channels_last=False)
    example = torch.randn(1, 3, 24, 24)  # (N, 3, h, w); any size: the axes are dynamic
    if exporter == "dynamo":
        if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            raise utils.UserError(f"the dynamo exporter needs torch >= 2.5 (this is {torch.__version__}); "
                                  "use --exporter torchscript")
        if opset < 18:
            raise utils.UserError(f"--opset {opset}: the dynamo exporter writes opset 18 or newer; "
                                  "use --exporter torchscript for older opsets")
        try:
            import onnxscript  # noqa: F401 - the dynamo exporter needs it
        except ImportError:
            raise utils.UserError("the dynamo exporter needs onnxscript: pip install onnxscript "
                                  "(or use --exporter torchscript)") from None
        dim = torch.export.Dim
        shapes = ({0: dim("batch"), 2: dim("height"), 3: dim("width")},)
        loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:  # opset conversion notices: the result is checked below, with a clearer message
            logger.setLevel(logging.CRITICAL)
        try:
            program = torch.onnx.export(net, (example,), input_names=["lr"], output_names=["sr"],
                                        opset_version=opset, dynamo=True, dynamic_shapes=shapes, verbose=False)
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
        proto = program.model_proto
    else:
        axes = {"lr": {0: "batch", 2: "height", 3: "width"},
                "sr": {0: "batch", 2: f"height_x{scale}", 3: f"width_x{scale}"}}
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # chosen on purpose: no need to say it is old
            torch.onnx.export(net, (example,), buffer, input_names=["lr"], output_names=["sr"],
                              opset_version=opset, dynamo=False, dynamic_axes=axes)
        proto = onnx.load_from_string(buffer.getvalue())
    made = {entry.domain: entry.version for entry in proto.opset_import}.get("", opset)
    if made != opset:  # the dynamo exporter falls back to its own opset when it cannot convert
        raise utils.UserError(f"the {exporter} exporter cannot write opset {opset} for this model (it made "
                              f"opset {made}); use --opset {made}")
    proto.doc_string = (f"{type(model).__name__} x{scale} (Ledig et al., CVPR 2017). Input lr: ImageNet-normalised "
                        "RGB (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225), float32 (N, 3, h, w). "
                        f"Output sr: RGB in [-1, 1], (N, 3, {scale}h, {scale}w).")
    for key, value in {"scale": str(scale), "arch": type(model).__name__, "args": repr(model.args)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def max_difference(onnx_bytes, model, shape=(1, 3, 17, 23)):
    """Max abs difference between onnxruntime on the file and PyTorch fp32 on a random input."""
    import onnxruntime

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(["sr"], {"lr": x.numpy()})[0]
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def build_parser():
    parser = utils.ArgumentParser(
        description="Export a checkpoint's generator to ONNX (dynamic batch, height, width).")
    parser.add_argument("checkpoint", help="a checkpoint of this project (SRResNet or SRGAN generator)")
    parser.add_argument("output", help="the ONNX file to write, e.g. srresnet_x4.onnx")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="torch.onnx exporter: dynamo (current) or torchscript (older; no onnxscript needed) "
                             "(default: dynamo)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    utils.refuse_overwriting_input(args.output, [args.checkpoint])
    utils.check_writable(args.output)
    utils.remove_stale_temporaries(args.output)
    model = checkpoint.load_model(args.checkpoint, "cpu")
    try:
        onnx_bytes = export(model, args.opset, args.exporter)
    except utils.UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporters fail in many ways (unsupported opset, ...)
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise utils.UserError(f"the ONNX export failed ({type(e).__name__}: {first_line[:300]})") from None
    try:
        diff = max_difference(onnx_bytes, model)
    except ImportError:
        print("onnxruntime is not installed: the file was not checked (pip install onnxruntime)")
    else:
        if not diff <= TOLERANCE:
            raise utils.UserError(f"the exported graph differs from PyTorch by {diff:.3g} (more than {TOLERANCE}); "
                                  "nothing was written")
        print(f"checked with onnxruntime: max abs difference to PyTorch fp32 {diff:.2g}")
    with utils.atomic_write(args.output) as f:
        f.write(onnx_bytes)
    print(f"wrote {args.output} ({len(onnx_bytes) / 2**20:.1f} MB; x{model.scaling_factor}, input 'lr' "
          "ImageNet-normalised RGB (N, 3, h, w), output 'sr' in [-1, 1])")


if __name__ == "__main__":
    utils.run_cli(main)
