"""Turn a text file into torch-rnn style HDF5 token splits and a JSON vocabulary.

    python preprocess.py --input lyrics.txt
"""
from util.corpus import preprocess
from util.errors import run_main
from util.options import Option, parse_options

OPTIONS = [
    Option("input", "", "text file to read", aliases=("input_txt",), required=True),
    Option("output_h5", "data/input.h5", "HDF5 file for the token splits"),
    Option("output_json", "data/input.json", "JSON file for the vocabulary"),
    Option("val_frac", 0.05, "fraction of tokens for validation"),
    Option("test_frac", 0.0, "fraction of tokens for test"),
    Option("encoding", "utf-8", "text codec; 'bytes' = one token per byte (any file)"),
    Option("quiet", 0, "no progress output (a flag: -quiet alone means 1)", value_type=bool),
]


def main(argv: list[str]) -> None:
    opt = parse_options(argv, "preprocess.py", "Build the vocabulary and the train/val/test splits.", OPTIONS).values
    preprocess(opt.input, opt.output_h5, opt.output_json, opt.val_frac, opt.test_frac, opt.encoding,
               log=(lambda _: None) if opt.quiet else print)


if __name__ == "__main__":
    run_main(main)
