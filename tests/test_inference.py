"""inference.py: BatchNorm folding, receptive field and tiling, precision, image kinds, files."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import images
import inference
import models
import utils
from conftest import SHARED_DATA, TINY, random_image


def randomize_batchnorm(model, seed=0):
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                bn.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return randomize_batchnorm(models.SRResNet(**dict(TINY, **overrides)), seed)


@pytest.fixture(scope="module")
def model():
    """tiny_model() ready for inference in fp32 (BatchNorm folded)."""
    return inference.prepare_model(tiny_model(), "cpu", "fp32")


def test_fold_batchnorm_is_exact_and_leaves_the_original_alone():
    for model in (tiny_model(), randomize_batchnorm(models.Generator(**TINY))):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        folded = inference.fold_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        x = torch.randn(2, 3, 17, 23)
        with torch.no_grad():
            diff = (model(x) - folded(x)).abs().max().item()
        assert diff < 1e-5
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_receptive_radius_values():
    assert inference.receptive_radius(models.SRResNet()) == 40
    assert inference.receptive_radius(models.Generator()) == 40
    assert inference.receptive_radius(models.SRResNet(n_blocks=2, n_channels=8)) == 12
    assert inference.receptive_radius(dict(models.SRResNet(scaling_factor=8).args)) == 41
    with pytest.raises(ValueError, match="tile_pad"):
        inference.receptive_radius(nn.Identity())


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_receptive_radius_bounds_the_influence_of_a_pixel(scale):
    """Changing one LR pixel changes no output pixel farther than the radius (in LR pixels)."""
    model = tiny_model(scaling_factor=scale, n_blocks=1, n_channels=4).double()
    radius = inference.receptive_radius(model)
    n = 2 * radius + 9
    c = n // 2
    x = torch.randn(1, 3, n, n, dtype=torch.float64)
    x2 = x.clone()
    x2[..., c, c] += 1.0
    with torch.no_grad():
        changed = (model(x2) - model(x)).abs().amax(1)[0] > 0  # (n * s, n * s)
    ys, xs = torch.nonzero(changed, as_tuple=True)
    reach = max((ys // scale - c).abs().max().item(), (xs // scale - c).abs().max().item())
    assert radius - 1 <= reach <= radius  # a bound, and (nearly) tight


def real_lr_image():
    """A real LR image (Set5 baby, 128x128) if the shared data is here, else a synthetic one."""
    path = SHARED_DATA / "Set5" / "baby_GT.bmp"
    hr = images.open_image(path) if path.is_file() else random_image((512, 512), seed=3)
    hr = images.crop_to_multiple(hr, 4)
    return images.bicubic_resize(hr, (hr.width // 4, hr.height // 4))


def test_tiled_output_equals_untiled_on_a_real_image(model):
    lr = real_lr_image()
    whole, _ = inference.upscale_image(model, lr, 4, "fp32", "cpu", tile=None)
    whole = np.asarray(whole).astype(int)
    for tile in (inference.MIN_TILE, 37, 48, 64):  # tiles that divide the image and tiles that do not
        tiled, _ = inference.upscale_image(model, lr, 4, "fp32", "cpu", tile=tile)
        # every size the scripts accept: the same output up to float rounding (convolutions sum in
        # another order on other sizes), i.e. one grey level on a handful of values (measured: 0-4 of 786k)
        diff = np.abs(np.asarray(tiled).astype(int) - whole)
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 1e-4 * diff.size, tile
    # without context the tiles show seams: the test above is sensitive to the padding
    seamed, _ = inference.upscale_image(model, lr, 4, "fp32", "cpu", tile=48, tile_pad=0)
    assert np.abs(np.asarray(seamed).astype(int) - whole).max() > 5


def test_upscale_tensor_shapes_batch_and_range(model):
    x = torch.randn(2, 3, 19, 26, generator=torch.Generator().manual_seed(0))
    y = inference.upscale_tensor(model, x, 4, "fp32", "cpu", tile=10)
    assert y.shape == (2, 3, 76, 104) and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1
    single = inference.upscale_tensor(model, x[1], 4, "fp32", "cpu")
    assert single.shape == (3, 76, 104)
    assert torch.allclose(single, y[1], atol=1e-5)


class NearestUpscaler(nn.Module):
    """A stand-in model: nearest-neighbour x4 up-scaling of the de-normalised input, in [-1, 1];
    out of memory (as CUDA says it, or with ``cpu`` as the CPU allocator) on inputs over ``max_side``."""

    def __init__(self, max_side=None, cpu=False):
        super().__init__()
        self.max_side, self.cpu = max_side, cpu
        self.sides = []

    def forward(self, x):
        self.sides.append(max(x.shape[-2:]))
        if self.max_side is not None and max(x.shape[-2:]) > self.max_side:
            if self.cpu:  # what the CPU allocator raises
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                   "memory: you tried to allocate 96000000000 bytes. Error code 12")
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return images.convert_image(nn.functional.interpolate(x, scale_factor=4), "imagenet-norm", "[-1, 1]")


@pytest.mark.parametrize("cpu", [False, True])
def test_out_of_memory_retries_with_halved_tiles(cpu):
    x = images.convert_image(torch.rand(1, 3, 100, 80), "[0, 1]", "imagenet-norm")
    expected = inference.upscale_tensor(NearestUpscaler(), x, 4, "fp32", "cpu", tile_pad=2)
    model = NearestUpscaler(max_side=40, cpu=cpu)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        out = inference.upscale_tensor(model, x, 4, "fp32", "cpu", tile=None, tile_pad=2)
    assert torch.allclose(out, expected, atol=1e-6)
    # the whole image with its mirrored margins, then 50, then 25 px tiles
    assert model.sides[0] == 100 + 2 * inference.PRE_PAD and max(model.sides[-4:]) <= 40
    with pytest.raises(utils.UserError, match="out of memory"), pytest.warns(RuntimeWarning):
        inference.upscale_tensor(NearestUpscaler(max_side=8), x, 4, "fp32", "cpu", tile_pad=2)


def test_self_ensemble(model):
    x = images.convert_image(torch.rand(3, 12, 9), "[0, 1]", "imagenet-norm")
    # an up-scaler that commutes with flips and rotations gives its plain output
    plain = inference.upscale_tensor(NearestUpscaler(), x, 4, "fp32", "cpu", tile_pad=0)
    ensemble = inference.upscale_tensor_x8(NearestUpscaler(), x, 4, "fp32", "cpu", tile_pad=0)
    assert ensemble.shape == (3, 48, 36)
    assert torch.allclose(ensemble, plain, atol=1e-6)
    # a real network does not: the average differs from a single pass, but stays close
    plain = inference.upscale_tensor(model, x, 4, "fp32", "cpu")
    ensemble = inference.upscale_tensor_x8(model, x, 4, "fp32", "cpu", tile=5)
    assert ensemble.shape == plain.shape
    assert 0 < (ensemble - plain).abs().max() < 1


def test_precision_choices(monkeypatch):
    with pytest.raises(utils.UserError, match="fp16 needs a CUDA GPU"):
        utils.resolve_precision("fp16", "cpu")
    with pytest.raises(utils.UserError, match="fp16"):
        inference.prepare_model(tiny_model(), "cpu", "fp16")
    with pytest.raises(utils.UserError):
        utils.resolve_precision("fp8", "cpu")
    monkeypatch.setattr(utils, "cpu_supports_bf16", lambda: True)
    assert utils.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(utils, "cpu_supports_bf16", lambda: False)
    assert utils.resolve_precision("auto", "cpu") == "fp32"
    assert utils.resolve_precision("bf16", "cpu") == "bf16"


def test_bf16_is_close_to_fp32_and_upscale_image_quantises_tiles_as_the_whole_float_output():
    model = inference.prepare_model(tiny_model(), "cpu", "bf16")
    lr = real_lr_image()
    x = images.convert_image(lr.crop((0, 0, 40, 32)), "pil", "imagenet-norm")
    fp32 = inference.upscale_tensor(model, x, 4, "fp32", "cpu")
    bf16 = inference.upscale_tensor(model, x, 4, "bf16", "cpu", tile=16)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() * 127.5 < 4  # within a few grey levels
    rgb = lr.crop((0, 0, 40, 33))
    for img in (rgb, rgb.convert("L")):
        sr, _ = inference.upscale_image(model, img, 4, "bf16", "cpu", tile=16)
        x = images.convert_image(img, "pil", "imagenet-norm")
        expected = images.convert_image(inference.upscale_tensor(model, x, 4, "bf16", "cpu"), "[-1, 1]", "pil")
        assert sr.mode == img.mode and np.array_equal(np.asarray(sr), np.asarray(expected.convert(img.mode)))


def test_prepare_model_copies_and_formats():
    model = tiny_model()
    prepared = inference.prepare_model(model, "cpu", "fp32", channels_last=True)
    assert prepared is not model and not prepared.training
    assert not any(p.requires_grad for p in prepared.parameters())
    assert prepared.conv_block1.conv_block[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    unfolded = inference.prepare_model(model, "cpu", "fp32", channels_last=False, fold_bn=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in unfolded.modules())
    x = torch.randn(1, 3, 10, 10)
    assert torch.allclose(inference.upscale_tensor(prepared, x, 4, "fp32", "cpu"),
                          inference.upscale_tensor(unfolded, x, 4, "fp32", "cpu"), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# image kinds


def with_alpha(img):
    """The image with its left half fully transparent, its right half opaque."""
    a = np.zeros((img.height, img.width), np.uint8)
    a[:, img.width // 2:] = 255
    img.putalpha(Image.fromarray(a))
    return img


def with_transparency(img):
    img.info["transparency"] = 0  # palette index 0 is transparent
    return img


def gradient16(size):
    """A 16-bit gradient whose values mostly fall between the 8-bit levels."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return (1000 + xx * 2011 + yy * 997).astype(np.uint16)


RGB = random_image((20, 14), seed=7)
KINDS = {  # kind of input: (an input of that kind, the mode of its outputs)
    "RGB": (RGB, "RGB"),
    "L": (RGB.convert("L"), "L"),
    "1": (RGB.convert("1"), "L"),
    "RGBA": (with_alpha(RGB.convert("RGBA")), "RGBA"),
    "LA": (with_alpha(RGB.convert("LA")), "LA"),
    "P": (RGB.convert("P"), "RGB"),
    "P+transparency": (with_transparency(RGB.convert("P")), "RGBA"),
    "CMYK": (RGB.convert("CMYK"), "RGB"),
    "I;16": (Image.fromarray(gradient16(RGB.size)), "I;16"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_image_kind_gives_the_right_mode_and_size(model, kind, tmp_path):
    img, mode = KINDS[kind]
    sr, seconds = inference.upscale_image(model, img, 4, "fp32", "cpu", tile=8)
    bicubic = inference.bicubic_upscale(img, 4)
    assert sr.mode == mode and bicubic.mode == mode
    assert sr.size == bicubic.size == (80, 56)
    assert seconds >= 0
    if kind in ("RGBA", "LA"):  # the alpha survives
        alpha = np.asarray(sr.getchannel("A"))  # (56, 80)
        assert alpha[:, :30].max() == 0 and alpha[:, 50:].min() == 255
        assert np.array_equal(alpha, np.asarray(bicubic.getchannel("A")))
    # what is saved reads back the same
    sr.save(tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as back:
        assert back.mode == mode and back.size == (80, 56)
        assert np.array_equal(np.asarray(back), np.asarray(sr))


def test_sixteen_bit_input_is_not_truncated(model, tmp_path):
    data = gradient16((20, 14))
    Image.fromarray(data).save(tmp_path / "g16.png")
    img = images.open_image_any_mode(tmp_path / "g16.png")
    x, alpha = inference.image_to_input(inference.normalize_mode(img))
    assert alpha is None
    x01 = images.convert_image(x[0], "imagenet-norm", "[0, 1]")
    assert torch.allclose(x01[0], torch.from_numpy(data / 65535.0).float(), atol=1e-6)  # not rounded to 8 bits
    sr, _ = inference.upscale_image(model, img, 4, "fp32", "cpu")
    sr.save(tmp_path / "sr.png")
    with Image.open(tmp_path / "sr.png") as back:
        assert back.mode == "I;16"
        out = np.asarray(back)
    assert out.dtype == np.uint16 and (out % 257 != 0).any()  # 16-bit values, not 8-bit ones scaled
    bicubic = np.asarray(inference.bicubic_upscale(img, 4))
    assert abs(float(bicubic.mean()) - float(data.mean())) < 500  # same range as the input


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("large_kernel", [9, 7, 3])
def test_fused_last_upsampling_is_exact(scale, large_kernel):
    """Moving the last PixelShuffle after the output convolution computes the same function,
    borders included (an odd-sized input, fp32)."""
    torch.manual_seed(scale * 10 + large_kernel)
    model = models.SRResNet(large_kernel_size=large_kernel, n_channels=8, n_blocks=1, scaling_factor=scale).eval()
    fused = inference.fuse_last_upsampling(model)
    assert isinstance(fused.conv_block3.conv_block[-1], torch.nn.PixelShuffle)
    assert isinstance(fused.subpixel_convolutional_blocks[-1].pixel_shuffle, torch.nn.Identity)
    x = torch.randn(2, 3, 11, 13)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() < 1e-5
    # a Generator too, and the original is left untouched
    gen = models.Generator(large_kernel_size=large_kernel, n_channels=8, n_blocks=1, scaling_factor=scale).eval()
    with torch.no_grad():
        assert (inference.fuse_last_upsampling(gen)(x) - gen(x)).abs().max() < 1e-5
    assert isinstance(gen.net.subpixel_convolutional_blocks[-1].pixel_shuffle, torch.nn.PixelShuffle)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_strips_of_the_upsampling_layers_give_the_whole_output(monkeypatch, precision, scale):
    """The up-sampling layers run on just the tile's centre, in strips of a few rows (tiny strips
    forced here): the pieces are the untiled output, bit for bit in bf16 (the default on CPUs
    with bf16) and to float rounding in fp32."""
    model = inference.prepare_model(tiny_model(scaling_factor=scale), "cpu", precision)
    x = images.convert_image(real_lr_image().crop((0, 0, 45, 38)), "pil", "imagenet-norm")
    whole = inference.upscale_tensor(model, x, scale, precision, "cpu")
    monkeypatch.setattr(inference, "STRIP_BYTES", 1)  # one row per strip
    monkeypatch.setattr(inference, "WHOLE_BYTES", 0)  # even for this small image
    for tile in (None, 16, 23):
        tiled = inference.upscale_tensor(model, x, scale, precision, "cpu", tile=tile)
        if precision == "bf16":
            assert torch.equal(tiled, whole), tile
        else:
            assert (tiled - whole).abs().max() < 1e-5, tile
    # the stages of the default x4 model: x2 kept whole, then x2 with 3x3 and 5x5 convolutions in strips
    stages = inference._upsampling_stages(inference.prepare_model(models.SRResNet(), "cpu", "fp32"))
    assert [(factor, halo, width) for _, factor, halo, width in stages] == [(2, 1, 256), (2, 2, 256)]
    # any other module runs whole, as before
    assert inference._upsampling_stages(NearestUpscaler()) is None


def test_mirror_pad_is_matlab_symmetric_and_holds_tiny_images(model):
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    padded = inference.mirror_pad(x, 3, 4)
    expected = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3), (4, 4)), mode="symmetric")
    assert np.array_equal(padded.numpy(), expected)
    assert inference.mirror_pad(x, 0, 0).shape == x.shape
    one = torch.rand(1, 3, 1, 1)
    assert inference.upscale_tensor(model, one, 4, "fp32", "cpu").shape == (1, 3, 4, 4)


def test_pre_pad_changes_only_the_edges_and_keeps_tiles_exact(model):
    """The mirrored margin changes what the model sees near the edges only: beyond the receptive
    field the output is the one without it; and tiles still give the untiled output."""
    x = images.convert_image(real_lr_image(), "pil", "imagenet-norm")[None, :, :60, :70]
    with_pad = inference.upscale_tensor(model, x, 4, "fp32", "cpu")
    without = inference.upscale_tensor(model, x, 4, "fp32", "cpu", pre_pad=0)
    r = inference.receptive_radius(model) * 4
    assert (with_pad - without).abs().max() > 1e-3
    torch.testing.assert_close(with_pad[..., r:-r, r:-r], without[..., r:-r, r:-r], rtol=0, atol=1e-5)
    for tile in (32, 45):
        torch.testing.assert_close(inference.upscale_tensor(model, x, 4, "fp32", "cpu", tile=tile), with_pad,
                                   rtol=0, atol=1e-4)


def test_pre_pad_keeps_a_black_image_black_where_zero_padding_draws_a_frame():
    """A constant input gives an output of period 4 (the sub-pixel phases) unless the network's
    zero padding shows; the mirrored margin moves it out of the picture."""
    torch.manual_seed(0)
    model = inference.prepare_model(randomize_batchnorm(models.SRResNet(n_channels=8, n_blocks=1)), "cpu", "fp32")
    assert inference.receptive_radius(model) <= inference.PRE_PAD
    black = images.convert_image(torch.zeros(1, 3, 24, 24), "[0, 1]", "imagenet-norm")
    for pre_pad, flat in ((0, False), (inference.PRE_PAD, True)):
        out = inference.upscale_tensor(model, black, 4, "fp32", "cpu", pre_pad=pre_pad)
        off_period = max((out[..., 4:, :] - out[..., :-4, :]).abs().max(), (out[..., 4:] - out[..., :-4]).abs().max())
        assert (off_period < 1e-5) == flat, (pre_pad, off_period)
