"""Draw a run's loss curves as a PNG: the training loss of every iteration, the validation loss of
every validation and the best validation point, against the epoch (util/plot.py describes the plot).

    python plot.py cv/lm_log.csv                 # train.py's training log -> cv/lm_loss.png
    python plot.py cv/lm_NAME_epoch30.pt         # a checkpoint's losses -> cv/lm_NAME_loss.png
    python plot.py cv/lm_lstm_epoch18.18_2.2153.t7 -output lstm.png   # a Torch7 char-rnn checkpoint

A file ending in .csv is read as a training log, anything else as a checkpoint (.pt or .t7). The
PNG goes beside the input unless -output says otherwise; one already there is replaced. Prints the
path written.
"""
import os

from util.errors import run_main
from util.options import Option, parse_options
from util.plot import default_plot_path, draw_loss_plot, rows_from_checkpoint, rows_from_log

OPTIONS = [
    Option("output", "", "PNG file to write; default: beside the input, lm_NAME_loss.png for lm_NAME_..."),
]


def main(argv: list[str]) -> None:
    opt = parse_options(argv, "plot.py", "Draw the loss curves of a training log or a checkpoint as a PNG.", OPTIONS,
                        positional=[("input", "training log (cv/lm_log.csv) or checkpoint (.pt, .t7)")]).values
    if opt.input.lower().endswith(".csv"):
        curves = rows_from_log(opt.input)
    else:
        from util.checkpoint import load_checkpoint  # here: a log is plotted without importing torch

        curves = rows_from_checkpoint(load_checkpoint(opt.input), name=opt.input)
    output = opt.output or default_plot_path(opt.input)
    draw_loss_plot(output, *curves, f"{os.path.basename(opt.input)}: loss per character")
    print(output)


if __name__ == "__main__":
    run_main(main)
