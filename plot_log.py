"""Plot a training log (the <script>_log.csv that train_srresnet.py and train_srgan.py write).

    python plot_log.py runs/srgan_log.csv docs/srgan_training.png
    python plot_log.py runs/srresnet_log.csv srresnet.png --smooth 50

One panel per group of columns that the log has: the losses (the generator's terms for SRGAN), the
discriminator's loss, its mean outputs D(HR) and D(SR) (how the two networks balance), and the
validation PSNR (and NIQE and grid, from train_srgan.py --val-artifacts). Losses are drawn raw
(faint) and as a moving average over --smooth rows.
"""

import array
import csv
import io
import math
import os

import utils

# (panel title, columns, log scale); a panel is drawn if the log has any of its columns
PANELS = [
    ("loss", ["loss", "perceptual", "content", "pixel", "texture"], True),
    ("generator's adversarial loss", ["adversarial"], False),
    ("discriminator loss", ["discriminator"], False),
    ("discriminator output (mean probability 'real')", ["d_real", "d_fake"], False),
    ("validation PSNR (dB)", ["val_psnr"], False),
    ("validation NIQE (lower: more natural statistics)", ["val_niqe"], False),
    ("validation grid over flat regions (grey levels)", ["val_grid"], False),
]
LABELS = {"d_real": "D(HR)", "d_fake": "D(SR)"}


def read_log(path):
    """{column: (iterations, values)} of the finite numeric cells of a training log, as two arrays
    of doubles per column (16 bytes a cell: a 200 MB log stays a few hundred MB in memory).

    The file is read as a stream; a spreadsheet's UTF-8 byte-order mark is ignored, and an iteration
    written as a float ('1e3') counts. UserError if it is not a training log, or if its columns hold
    no finite number at all (a run that diverged at once).
    """
    series, seen = {}, []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or "iteration" not in header:
                raise utils.UserError(f"{path}: not a training log (no 'iteration' column, or no rows)")
            at = header.index("iteration")
            seen = [c for c in header if c != "iteration"]
            rows = 0
            for row in reader:
                rows += 1
                try:
                    iteration = float(row[at])
                except (IndexError, ValueError):
                    continue
                if not math.isfinite(iteration):
                    continue
                for key, text in zip(header, row):
                    if key == "iteration" or not text:  # empty cells: validation is not on every row
                        continue
                    try:
                        value = float(text)
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        its, values = series.setdefault(key, (array.array("d"), array.array("d")))
                        its.append(iteration)
                        values.append(value)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise utils.UserError(f"{path}: cannot read the log ({getattr(e, 'strerror', None) or e})") from None
    if not rows:
        raise utils.UserError(f"{path}: not a training log (no 'iteration' column, or no rows)")
    plotted = [c for _, cols, _ in PANELS for c in cols if c in seen]
    if plotted and not any(c in series for c in plotted):
        raise utils.UserError(f"{path}: its columns ({', '.join(plotted)}) hold no finite number (NaN or inf "
                              "only: the run diverged at once?)")
    return series


def moving_average(values, window):
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(series, title, smooth=20):
    """A matplotlib figure of the log's panels."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no screen needed
    import matplotlib.pyplot as plt

    panels = [(name, [c for c in cols if c in series], log) for name, cols, log in PANELS
              if any(c in series for c in cols)]
    if not panels:
        raise utils.UserError("the log has none of the columns this script plots")
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (name, columns, log) in zip(axes[:, 0], panels):
        for column in columns:
            x, y = series[column]
            if column.startswith("val_"):
                ax.plot(x, y, "o-", ms=3, label="validation")
                continue
            line, = ax.plot(x, moving_average(y, smooth), label=LABELS.get(column, column))
            ax.plot(x, y, color=line.get_color(), alpha=0.2, lw=0.5)
        if log and all(v > 0 for c in columns for v in series[c][1]):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("iteration")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = utils.ArgumentParser(
        description="Plot a train_srresnet.py / train_srgan.py log (*_log.csv) to an image.")
    parser.add_argument("log", help="the CSV log, e.g. runs/srgan_log.csv")
    parser.add_argument("output", help="the image to write (.png, .pdf or .svg)")
    parser.add_argument("--smooth", type=int, default=20, metavar="N", help="moving average over N rows (default: 20)")
    parser.add_argument("--title", default=None, help="figure title (default: the log's file name)")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        raise utils.UserError(f"--smooth {args.smooth}: must be at least 1")
    utils.refuse_overwriting_input(args.output, [args.log])
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in (".png", ".pdf", ".svg"):
        raise utils.UserError(f"{args.output}: give a .png, .pdf or .svg file name")
    utils.check_writable(args.output)
    fig = plot(read_log(args.log), args.title or os.path.basename(args.log), args.smooth)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=ext[1:], dpi=110)
    with utils.atomic_write(args.output) as f:
        f.write(buffer.getvalue())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    utils.run_cli(main)
