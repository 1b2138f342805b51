"""plot_log.py: reads both scripts' logs, draws the panels they have, one-line errors."""

import pytest
from PIL import Image

import plot_log
import utils
from conftest import cli_error

SRGAN_LOG = ("iteration,perceptual,content,adversarial,discriminator,d_real,d_fake,lr,val_psnr,val_ssim,seconds\n"
             + "".join(f"{i},{0.02 + i * 1e-4},{0.02},{1 + i / 10},{1.3 - i / 100},{0.5 + i / 100},{0.5 - i / 100},"
                       f"1e-4,{'26.5' if i % 5 == 0 else ''},,{i}\n" for i in range(1, 21)))


def test_read_log_and_moving_average(tmp_path):
    path = tmp_path / "srgan_log.csv"
    path.write_text(SRGAN_LOG)
    series = plot_log.read_log(path)
    assert list(zip(*series["val_psnr"])) == [(5, 26.5), (10, 26.5), (15, 26.5), (20, 26.5)]  # empty cells skipped
    assert list(zip(*series["d_fake"]))[0] == (1, pytest.approx(0.49)) and len(series["adversarial"][0]) == 20
    assert plot_log.moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    # a byte-order mark and float iterations are read; columns without one finite number are named
    path.write_bytes(b"\xef\xbb\xbfiteration,loss,lr,val_psnr,val_ssim,seconds\n1e3,0.05,1e-4,,,1\n2e3,0.04,1e-4,25.1,0.7,2\n")
    assert list(zip(*plot_log.read_log(path)["loss"])) == [(1000, 0.05), (2000, 0.04)]
    path.write_text("iteration,loss,lr,val_psnr,val_ssim,seconds\n1,nan,1e-4,,,1\n2,inf,1e-4,nan,,2\n")
    with pytest.raises(utils.UserError, match=r"its columns \(loss, val_psnr\) hold no finite number"):
        plot_log.read_log(path)


def test_both_logs_become_pictures_with_their_panels(tmp_path):
    gan, srresnet = tmp_path / "srgan_log.csv", tmp_path / "srresnet_log.csv"
    gan.write_text(SRGAN_LOG)
    srresnet.write_text("iteration,loss,lr,val_psnr,val_ssim,seconds\n1,0.05,1e-4,,,1\n2,0.04,1e-4,25.1,0.7,2\n")
    assert len(plot_log.plot(plot_log.read_log(gan), "gan").axes) == 5
    assert len(plot_log.plot(plot_log.read_log(srresnet), "srresnet").axes) == 2  # loss and validation
    plot_log.main([str(gan), str(tmp_path / "gan.png")])
    assert Image.open(tmp_path / "gan.png").size[1] > Image.open(tmp_path / "gan.png").size[0]  # stacked panels
    # validation NIQE and grid columns get panels of their own
    gan.write_text("iteration,perceptual,content,adversarial,discriminator,d_real,d_fake,lr,val_psnr,val_ssim,"
                   "val_niqe,val_grid,seconds\n1,0.02,0.02,1,1.3,0.5,0.5,1e-4,,,,,1\n2,0.02,0.02,1,1.3,0.5,0.5,1e-4,"
                   "26.1,0.7,6.1,0.21,2\n")
    series = plot_log.read_log(gan)
    assert list(zip(*series["val_niqe"])) == [(2, 6.1)] and list(zip(*series["val_grid"])) == [(2, 0.21)]
    titles = [ax.get_title() for ax in plot_log.plot(series, "gan").axes]
    assert any("NIQE" in t for t in titles) and any("grid" in t for t in titles) and len(titles) == 7


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot read the log"), ("not a log", "not a training log"),
    ("same file", "this output is the input"), ("extension", "give a .png, .pdf or .svg"),
])
def test_errors_are_one_line(tmp_path, capsys, case, message):
    log = tmp_path / "log.csv"
    log.write_text("a,b\n1,2\n" if case == "not a log" else SRGAN_LOG)
    argv = [str(log), str(tmp_path / "out.png")]
    if case == "missing":
        argv[0] = str(tmp_path / "nope.csv")
    elif case == "same file":
        argv[1] = str(log)
    elif case == "extension":
        argv[1] = str(tmp_path / "out.jpg")
    assert message in cli_error(plot_log.main, argv, capsys)
    assert not (tmp_path / "out.png").exists()


def test_a_long_log_is_read_in_bounded_memory(tmp_path):
    import tracemalloc
    log = tmp_path / "long.csv"
    row = "{i},0.0123456789,0.01,0.02,1.2345,0.51,0.49,0.0001,,,{i}\n"
    with open(log, "w") as f:
        f.write("iteration,perceptual,content,adversarial,discriminator,d_real,d_fake,lr,val_psnr,val_ssim,seconds\n")
        f.writelines(row.format(i=i) for i in range(100_000))
    size = log.stat().st_size  # about 7 MB
    tracemalloc.start()
    series = plot_log.read_log(log)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(series["perceptual"][0]) == 100_000
    assert peak < 3 * size, (peak, size)  # was about 22x the file
