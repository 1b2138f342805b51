"""Write a small inference checkpoint of this project from a classic tutorial file or a training checkpoint.

    python convert_checkpoint.py checkpoint_srresnet.pth.tar checkpoints/imported.pth   # classic tutorial
    python convert_checkpoint.py runs/x4/srresnet_best.pth checkpoints/mine.pth --info data=DIV2K
    python convert_checkpoint.py runs/x4/srresnet_latest.pth latest_average.pth --ema   # a run with --ema

The classic PyTorch tutorial saved whole pickled models (``{'epoch', 'model'}`` or ``{'epoch',
'generator', 'discriminator', 'optimizer_g', ...}``). Unpickling runs code, so those files are read
with an unpickler that resolves only the classes the tutorial pickles; a file that names anything
else (``os.system``...) is refused before any of it runs. A checkpoint of this project keeps its
generator (and, from an SRGAN training checkpoint, the discriminator is dropped) plus its info.
"""

import collections
import os
import pickle
import zipfile

import torch
from torch import nn

import checkpoint
import models
import utils
from utils import UserError, run_cli


def _allowed_globals():
    """{(module, name): object} of what a tutorial checkpoint references; nothing else resolves."""
    allowed = [
        # the tutorial's models and their layers
        models.SRResNet, models.Generator, models.Discriminator, models.ConvolutionalBlock,
        models.ResidualBlock, models.SubPixelConvolutionalBlock,
        nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.LeakyReLU, nn.Tanh, nn.Sequential, nn.PixelShuffle,
        nn.Linear, nn.AdaptiveAvgPool2d, nn.Parameter,
        # its Adam optimizers (whose state is a defaultdict)
        torch.optim.Adam, collections.OrderedDict, collections.defaultdict, dict, set, list, tuple,
        # how torch.save pickles tensors
        torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter,
        torch._utils._rebuild_parameter_with_state, torch.Size, torch.device, torch.storage.UntypedStorage,
    ]
    table = {(obj.__module__, obj.__qualname__): obj for obj in allowed}
    for name in dir(torch):  # typed storages (torch.FloatStorage...) and dtypes (torch.float32...)
        obj = getattr(torch, name)
        if name.endswith("Storage") or isinstance(obj, torch.dtype):
            table[("torch", name)] = obj
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals (the 'restricting globals' recipe of Python's pickle docs)."""

    allowed = {}

    def find_class(self, module, name):
        if module == "__builtin__":  # protocol-2 pickles use Python 2's name for builtins
            module = "builtins"
        obj = self.allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not one of the tutorial's classes")
        return obj


class _RestrictedPickle:
    """What torch.load needs of a pickle module, with the restricted unpickler."""

    Unpickler = _RestrictedUnpickler
    __name__ = "restricted_pickle"

    @staticmethod
    def load(f, **kwargs):
        return _RestrictedUnpickler(f, **kwargs).load()


def _srresnet_args(sd):
    """SRResNet constructor arguments read from the shapes of its state dict."""
    first = sd["conv_block1.conv_block.0.weight"]
    blocks = {k.split(".")[1] for k in sd if k.startswith("residual_blocks.")}
    subpixel = {k.split(".")[1] for k in sd if k.startswith("subpixel_convolutional_blocks.")}
    return dict(large_kernel_size=first.shape[-1], small_kernel_size=sd["conv_block2.conv_block.0.weight"].shape[-1],
                n_channels=first.shape[0], n_blocks=len(blocks), scaling_factor=2 ** len(subpixel))


def _discriminator_args(sd):
    """Discriminator constructor arguments read from the shapes of its state dict."""
    first = sd["conv_blocks.0.conv_block.0.weight"]
    blocks = {k.split(".")[1] for k in sd if k.startswith("conv_blocks.")}
    return dict(kernel_size=first.shape[-1], n_channels=first.shape[0], n_blocks=len(blocks),
                fc_size=sd["fc1.weight"].shape[0])


def read_tutorial_checkpoint(path):
    """The pickled dict of a classic tutorial checkpoint, read through the allow-list."""
    _RestrictedUnpickler.allowed = _allowed_globals()
    try:
        # weights_only=False because the tutorial pickled whole modules and optimizers (with
        # defaultdicts that torch's weights-only unpickler refuses); safety comes from the restricted
        # unpickler, which refuses every global outside the allow-list before anything runs
        old = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, UnicodeDecodeError, MemoryError) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable PyTorch file, or a damaged one ({detail})") from None
    if not isinstance(old, dict):
        raise UserError(f"{path}: a {type(old).__name__}, not a tutorial checkpoint "
                        "(a dict with 'model' or 'generator')")
    return old


def convert_tutorial(path, info=None):
    """An inference checkpoint dict (plus 'discriminator' if present) from a classic tutorial file."""
    old = read_tutorial_checkpoint(path)
    gen = old.get("generator", old.get("model"))
    if not isinstance(gen, (models.SRResNet, models.Generator)):
        raise UserError(f"{path}: holds no SRResNet under 'model' nor Generator under 'generator'")
    try:
        sd = gen.state_dict()
        net_sd = {k[len("net."):]: v for k, v in sd.items()} if isinstance(gen, models.Generator) else sd
        new_model = models.build_model(type(gen).__name__, _srresnet_args(net_sd))
        new_model.load_state_dict(sd)
    except (KeyError, AttributeError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{path}: the pickled {type(gen).__name__} is incomplete or damaged "
                        f"({type(e).__name__}: {str(e)[:200]})") from None
    epoch = old.get("epoch")
    ckpt = checkpoint.inference_checkpoint(new_model, {"imported_from": os.path.basename(path),
                                                       "epoch": epoch if isinstance(epoch, int) else None,
                                                       **(info or {})})
    disc = old.get("discriminator")
    if isinstance(disc, models.Discriminator):
        try:
            new_disc = models.Discriminator(**_discriminator_args(disc.state_dict()))
            new_disc.load_state_dict(disc.state_dict())
        except (KeyError, AttributeError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"{path}: the pickled Discriminator is incomplete or damaged "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
        ckpt["discriminator"] = checkpoint.model_spec(new_disc)
    return ckpt


def convert_state_dict(path, state, info=None):
    """An inference checkpoint from a bare state dict (``torch.save(model.state_dict(), path)``) of
    an SRResNet or a Generator; its size is read from the shapes."""
    is_generator = any(str(k).startswith("net.") for k in state)
    net_sd = {k[len("net."):]: v for k, v in state.items()} if is_generator else state
    arch = "Generator" if is_generator else "SRResNet"
    try:
        args = _srresnet_args(net_sd)
    except (KeyError, AttributeError, IndexError, TypeError):
        raise UserError(f"{path}: a state dict, but not of an SRResNet or SRGAN generator "
                        f"(keys such as {', '.join(map(str, list(state)[:3]))})") from None
    model = checkpoint.build_from_spec({"arch": arch, "args": args, "state_dict": state}, path)
    return checkpoint.inference_checkpoint(model, {"imported_from": os.path.basename(path), **(info or {})})


def convert_project(path, info=None, ema=False):
    """The inference-only part of a checkpoint of this project: its generator (with ``ema``, the
    moving average of the weights that a training checkpoint of a run with --ema holds) and info.
    A training checkpoint has no info record: the run's script, iteration and settings become it."""
    ckpt = checkpoint.load_checkpoint(path)
    old_info = ckpt.get("info") if isinstance(ckpt.get("info"), dict) else {}
    training = ckpt.get("training") if isinstance(ckpt.get("training"), dict) else {}
    if training and not old_info:
        run_args = training.get("args") if isinstance(training.get("args"), dict) else {}
        old_info = {"converted_from": os.path.basename(path),
                    **({"script": f"train_{training['script']}.py"} if training.get("script") else {}),
                    **({"iteration": training["iteration"]} if "iteration" in training else {}), **run_args}
    if not ema:
        model = checkpoint.load_model(path)  # checks the entry completely
    elif "ema" in ckpt:
        model = checkpoint.build_from_spec(ckpt["ema"], path, "ema")
        run_args = training.get("args") if isinstance(training.get("args"), dict) else {}
        old_info = {**old_info, "ema": run_args.get("ema")}  # the decay, as the best files record it
    elif old_info.get("ema"):  # a best or --keep-every file of a run with --ema: already the average
        raise UserError(f"{path}: --ema: its weights already are the moving average (its info says ema "
                        f"{old_info['ema']}); convert it without --ema, or use it as it is")
    else:
        raise UserError(f"{path}: --ema: holds no moving average of the weights (the training checkpoint "
                        "of a run with --ema has one)")
    return checkpoint.inference_checkpoint(model, {**old_info, **(info or {})})


def _is_project_checkpoint(path):
    """True if torch's weights-only loader reads the file (this project's format); False for pickles."""
    try:
        checkpoint.load_torch_file(path)
    except UserError as e:
        if "refused to load" in str(e):
            return False
        raise
    return True


def _parse_info(item):
    """'key=value' -> (key, value), with value an int or float where it reads as one."""
    if "=" not in item or not item.split("=", 1)[0]:
        raise UserError(f"--info entries are KEY=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def main(argv=None):
    parser = utils.ArgumentParser(description="Write an inference checkpoint of this project from a classic "
                                                 "tutorial checkpoint (*.pth.tar) or from a training checkpoint.")
    parser.add_argument("source", help="tutorial checkpoint, or a checkpoint of this project")
    parser.add_argument("output", help="where to write the new checkpoint (e.g. checkpoints/imported.pth)")
    parser.add_argument("--info", nargs="*", default=[], metavar="KEY=VALUE",
                        help="entries for the file's 'info' record (numbers are stored as numbers)")
    parser.add_argument("--ema", action="store_true",
                        help="from a training checkpoint of a run with --ema: take the moving average of the "
                             "weights instead of the trained weights")
    args = parser.parse_args(argv)
    info = dict(_parse_info(x) for x in args.info)
    if os.path.isdir(args.output) or args.output.endswith(os.sep):
        raise UserError(f"{args.output}: is a folder; give the new file's name")
    utils.refuse_overwriting_input(args.output, [args.source])
    utils.check_writable(args.output)  # before the work
    utils.remove_stale_temporaries(args.output)
    if _is_project_checkpoint(args.source):
        obj = checkpoint.load_torch_file(args.source)
        if isinstance(obj, dict) and "format_version" not in obj and obj and all(
                isinstance(v, torch.Tensor) for v in obj.values()):
            if args.ema:
                raise UserError(f"{args.source}: --ema: a bare state dict holds no moving average of the weights")
            ckpt = convert_state_dict(args.source, obj, info)
        else:
            ckpt = convert_project(args.source, info, args.ema)
    elif args.ema:
        raise UserError(f"{args.source}: --ema: a tutorial checkpoint holds no moving average of the weights")
    else:
        ckpt = convert_tutorial(args.source, info)
    for part in ("model", "discriminator"):  # weights of a diverged run make a useless file
        broken = [k for k, v in ckpt.get(part, {}).get("state_dict", {}).items()
                  if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            raise UserError(f"{args.source}: the {part}'s weights are not finite (NaN or inf) in {broken[0]}"
                            + (f" and {len(broken) - 1} more" if len(broken) > 1 else "") + "; nothing written")
    checkpoint.save_checkpoint(ckpt, args.output)
    spec = ckpt["model"]
    extra = " + Discriminator" if "discriminator" in ckpt else ""
    print(f"wrote {args.output}: {spec['arch']} {spec['args']}{extra}")
    return ckpt


if __name__ == "__main__":
    run_cli(main)
